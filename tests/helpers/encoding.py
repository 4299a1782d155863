"""Counting what a module hands to its tokenizer, to prove a resume does not tokenize the skipped text."""

from __future__ import annotations

from types import ModuleType

import pytest


def count_encoded_chars(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[int]:
    """Wrap ``module.make_encoder`` so every batch it encodes adds its characters to the returned
    one-element list (reset it freely)."""
    count = [0]
    real = module.make_encoder

    def counting(tokenizer):
        encode = real(tokenizer)

        def wrapped(batch):
            count[0] += sum(map(len, batch))
            return encode(batch)

        return wrapped

    monkeypatch.setattr(module, "make_encoder", counting)
    return count
