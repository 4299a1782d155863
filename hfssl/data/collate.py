"""Turn lists of examples into batches of CPU tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hfssl.errors import DataError

# Sequence fields padded per example and the value they are padded with (None: the tokenizer's pad id).
_PADDED_FIELDS = {
    "input_ids": None,
    "token_type_ids": 0,
    "position_ids": 0,
    "special_tokens_mask": 1,
    "labels": -100,
    "attention_mask": 0,  # recomputed below from the lengths
}


def collate_fixed(examples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack equal-length examples (CLM blocks) into ``[batch, seq]`` long tensors."""
    if not examples:
        raise DataError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key in examples[0]:
        try:
            batch[key] = torch.tensor([ex[key] for ex in examples], dtype=torch.long)
        except ValueError:
            lengths = sorted({len(ex[key]) for ex in examples})
            raise DataError(
                f"collate_fixed needs equal-length {key!r} but got lengths {lengths}; use collate_padded"
            ) from None
    return batch


def collate_padded(
    examples: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int | None = 8, omit_full_mask: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad variable-length examples and add ``attention_mask``.

    ``input_ids`` are padded with ``pad_token_id``, ``token_type_ids``/``position_ids`` with 0; other
    per-example scalars or lists (``next_sentence_label``, ...) become tensors as they are.
    ``omit_full_mask`` leaves ``attention_mask`` out when no row is padded: transformers then needs no
    mask at all (SDPA's flash kernel, and no device-to-host check of an all-ones mask every step).
    """
    if not examples:
        raise DataError("cannot collate an empty batch")
    lengths = [len(ex["input_ids"]) for ex in examples]
    width = max(lengths)
    if pad_to_multiple_of and width % pad_to_multiple_of:
        # Multiples of 8 keep tensor-core friendly shapes on GPU.
        width += pad_to_multiple_of - width % pad_to_multiple_of
    batch: dict[str, torch.Tensor] = {}
    for key in examples[0]:
        if key in _PADDED_FIELDS:
            fill = pad_token_id if _PADDED_FIELDS[key] is None else _PADDED_FIELDS[key]
            out = torch.full((len(examples), width), fill, dtype=torch.long)
            for i, ex in enumerate(examples):
                out[i, : len(ex[key])] = torch.as_tensor(ex[key], dtype=torch.long)
            batch[key] = out
        else:
            batch[key] = torch.as_tensor([ex[key] for ex in examples])
    if omit_full_mask and min(lengths) == width:
        return batch
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    batch["attention_mask"] = mask
    return batch
