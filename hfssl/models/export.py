"""Export a trained backbone as a stock transformers checkpoint and prove it reloads.

The export is what ``Trainer.save_model`` writes: ``config.json`` + ``model.safetensors`` (+ the
tokenizer or image processor) at the top of a directory. ``verify_reload`` loads it back with an
Auto class (no ``trust_remote_code``) and checks that it computes the same outputs as the model
still in memory.

A model may *train* with its vocabulary padded (``pad_vocab``: GPT-2's 50257 rows become 50304,
a multiple of 64, which GPU matmul kernels handle much faster). The padding is a training detail:
the export slices the embedding/LM head back to the true vocabulary and writes the true
``vocab_size``, so the saved checkpoint is exactly the unpadded model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel
from transformers.utils import logging as hf_logging

from hfssl.errors import HfsslError

# Instance attribute (never in the config, so never in a checkpoint) holding the unpadded vocabulary size.
_TRUE_VOCAB_ATTR = "_hfssl_true_vocab_size"


def pad_vocab(model: PreTrainedModel, multiple: int) -> int:
    """Pad ``model``'s input embedding and LM head (tied or not) to a multiple of ``multiple`` rows.

    The extra rows are zero and stay zero: no input id reaches them, objectives that honour
    ``true_vocab_size`` give their logits no probability (so no gradient), and AdamW's decay of
    zero is zero. Training is then the unpadded model's training, on faster matmul shapes.
    Returns the padded size.
    """
    vocab = true_vocab_size(model)
    if multiple <= 1 or vocab % multiple == 0:
        return model.config.vocab_size
    model.resize_token_embeddings(vocab, pad_to_multiple_of=multiple, mean_resizing=False)
    with torch.no_grad():
        for tensor in _vocab_tensors(model):
            tensor[vocab:].zero_()
    setattr(model, _TRUE_VOCAB_ATTR, vocab)
    return model.config.vocab_size


def true_vocab_size(model: PreTrainedModel) -> int | None:
    """The vocabulary the model really has: ``config.vocab_size`` unless ``pad_vocab`` padded it
    (None for models without a vocabulary, such as vision backbones)."""
    return getattr(model, _TRUE_VOCAB_ATTR, None) or getattr(model.config, "vocab_size", None)


def _vocab_tensors(model: PreTrainedModel) -> list[torch.Tensor]:
    """The embedding/LM-head weights and biases with one row per vocabulary entry (a tied one twice)."""
    tensors = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            tensors.append(module.weight)
            if getattr(module, "bias", None) is not None:
                tensors.append(module.bias)
    return tensors


def _vocab_param_names(model: PreTrainedModel) -> list[str]:
    """State-dict names of the embedding/LM-head tensors with one row per vocabulary entry."""
    targets = _vocab_tensors(model)
    return [name for name, param in model.named_parameters(remove_duplicate=False)
            if any(param is t for t in targets)]


@contextlib.contextmanager
def _unpadded_view(model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None
                   ) -> Iterator[dict[str, torch.Tensor] | None]:
    """The state dict to save with the padding sliced off, while ``model.config`` says the true size."""
    vocab = true_vocab_size(model)
    padded = getattr(model.config, "vocab_size", None)
    if vocab == padded:
        yield state_dict
        return
    state = dict(state_dict if state_dict is not None else model.state_dict())
    for name in _vocab_param_names(model):
        if name in state:  # slices of one tensor stay one storage: tied weights are still detected
            state[name] = state[name][:vocab]
    text_config = model.config.get_text_config()
    text_config.vocab_size = vocab
    try:
        yield state
    finally:
        text_config.vocab_size = padded


def export_pretrained(model: PreTrainedModel, processing_class: Any, output_dir: str,
                      state_dict: dict[str, torch.Tensor] | None = None) -> str:
    """``save_pretrained`` (safetensors) the model and its tokenizer/processor into ``output_dir``.

    ``state_dict`` is for sharded training (FSDP/DeepSpeed), where the full weights have to be
    gathered first; otherwise the model's own weights are written. A vocabulary padded by
    ``pad_vocab`` is saved unpadded (weights and ``config.vocab_size``).
    """
    os.makedirs(output_dir, exist_ok=True)
    with _unpadded_view(model, state_dict) as state:
        model.save_pretrained(output_dir, state_dict=state)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
    return output_dir


_HEAD_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForPreTraining", "AutoModelForMaskedLM",
                      "AutoModelForMaskedImageModeling", "AutoModelForImageClassification",
                      "AutoModelForSequenceClassification")


def auto_classes_for(model: PreTrainedModel) -> list[Any]:
    """``AutoModel`` plus the first Auto class whose mapping yields exactly ``type(model)``."""
    import transformers

    classes: list[Any] = [AutoModel]
    for name in _HEAD_AUTO_CLASSES:
        auto = getattr(transformers, name)
        try:
            if auto._model_mapping[type(model.config)] is type(model):
                classes.append(auto)
                break
        except KeyError:
            continue
    return classes


def _example_inputs(model: PreTrainedModel, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if model.main_input_name == "pixel_values":
        size = model.config.image_size
        pixels = torch.randn(2, model.config.num_channels, size, size, generator=generator)
        return {"pixel_values": pixels.to(device)}
    vocab = true_vocab_size(model)
    if not vocab:
        raise ValueError(f"pass example_inputs for {type(model).__name__}: it takes neither input_ids nor pixel_values")
    ids = torch.randint(0, vocab, (2, 12), generator=generator)
    return {"input_ids": ids.to(device)}


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if not isinstance(output, torch.Tensor) else output


def verify_reload(output_dir: str, model: PreTrainedModel, auto_class: Any = AutoModel,
                  example_inputs: dict[str, torch.Tensor] | None = None, atol: float = 1e-5,
                  reference_output: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> float:
    """Reload ``output_dir`` with ``auto_class`` and compare its outputs with ``model``'s.

    When ``auto_class`` yields the bare backbone (``AutoModel`` for a ``GPT2LMHeadModel``) the
    reference is ``model.base_model``. ``reference_output`` compares against another output of
    ``model`` instead (e.g. BertForPreTraining's ``prediction_logits`` for an
    ``AutoModelForMaskedLM`` reload). Returns the max absolute difference; raises if it exceeds
    ``atol`` or the reloaded class is not the expected one.
    """
    device = next(model.parameters()).device
    # A head-less class reports the heads it drops (or a pooler it adds) at warning level: expected here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        reloaded = auto_class.from_pretrained(output_dir).to(device)
    finally:
        hf_logging.set_verbosity(verbosity)
    if reference_output is None:
        if type(reloaded) is type(model):
            reference_module = model
        elif type(reloaded) is type(model.base_model):
            reference_module = model.base_model
        else:
            raise HfsslError(f"{auto_class.__name__} loaded {type(reloaded).__name__} from {output_dir}, "
                             f"which matches neither {type(model).__name__} nor its base model")

        vocab = true_vocab_size(model)
        padded = reference_module is model and vocab is not None and vocab != model.config.vocab_size

        def reference_output(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            output = _first_tensor(reference_module(**inputs))
            return output[..., :vocab] if padded else output

    inputs = example_inputs if example_inputs is not None else _example_inputs(model, device)
    was_training = model.training
    model.eval()
    reloaded.eval()
    try:
        with torch.no_grad():
            expected = reference_output(inputs).float()
            actual = _first_tensor(reloaded(**inputs)).float()
    finally:
        model.train(was_training)
    diff = (expected - actual).abs().max().item()
    if not diff <= atol:
        raise HfsslError(f"the export in {output_dir} does not reproduce the trained model "
                         f"(max |diff| {diff:.3g} > {atol:g}) when reloaded with {auto_class.__name__}")
    return diff
