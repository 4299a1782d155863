"""export_pretrained + verify_reload on real classes: passes for a faithful export, fails for a wrong one."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from hfssl.errors import HfsslError
from hfssl.models.export import auto_classes_for, export_pretrained, verify_reload


def test_verify_reload_accepts_the_export_and_catches_a_different_model(tiny_gpt2, tokenizer, tmp_path):
    model = tiny_gpt2()
    export_pretrained(model, tokenizer, str(tmp_path))
    assert auto_classes_for(model) == [AutoModel, AutoModelForCausalLM]
    for auto_class in auto_classes_for(model):
        assert verify_reload(str(tmp_path), model, auto_class=auto_class) == 0.0
    with torch.no_grad():
        model.transformer.ln_f.bias.add_(0.01)  # the in-memory model drifts from the export
    with pytest.raises(HfsslError, match="does not reproduce"):
        verify_reload(str(tmp_path), model, auto_class=AutoModelForCausalLM)
