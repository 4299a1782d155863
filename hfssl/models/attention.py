"""Keep SDPA's flash kernel for causal training batches under ``torch.compile``.

transformers decides per batch whether a causal LM's SDPA call can go without an explicit mask
(``is_causal=True``, which lets PyTorch pick the flash kernel). Under ``torch.compile`` with torch
< 2.14 it never takes that shortcut (``masking_utils._ignore_causal_mask_sdpa`` sees a constant
"exporting" flag), so every compiled step builds a ``(batch, 1, T, T)`` boolean mask and SDPA falls
back to a slower kernel. (Its packed-sequence check cannot read position ids while tracing either,
so even position ids the model made itself count as "maybe packed".)

The caller knows better: a CLM batch with neither a padding mask nor position ids is plainly
causal. ``declare_plain_causal(True)`` says so (``CausalLMObjective`` calls it per batch, a
Python-level fact with no tensor values involved: nothing to sync on), and the attention
implementation ``hfssl_sdpa`` (stock SDPA attention) then gets no mask for such batches; any
other batch gets transformers' own ``sdpa_mask``.

The switch is in memory only: ``config.json`` does not record the attention implementation, so
the export loads with the stock ``sdpa`` one.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from hfssl.logging import get_logger

logger = get_logger(__name__)

HFSSL_SDPA = "hfssl_sdpa"

# Set per forward by the objective that built the batch; read only by the hfssl_sdpa mask builder.
_plain_causal_batch = False


def declare_plain_causal(plain: bool) -> None:
    """Declare whether the next forward's batch is unpadded and unpacked (each row one causal sequence)."""
    global _plain_causal_batch
    _plain_causal_batch = plain


def _causal_mask_or_none(*, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: int = 0,
                         mask_function: Any = None, attention_mask: Any = None, allow_is_causal_skip: bool = True,
                         **kwargs: Any) -> Any:
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    plain_causal = (
        _plain_causal_batch
        and attention_mask is None  # no padding mask at all: every position is real
        and isinstance(q_offset, int) and q_offset == 0 and kv_offset == 0
        and q_length == kv_length  # no KV cache: training, not decoding
    )
    if plain_causal:
        return None
    return sdpa_mask(q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     mask_function=mask_function, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(HFSSL_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(HFSSL_SDPA, _causal_mask_or_none)


def is_generative(model: PreTrainedModel) -> bool:
    """Whether ``model`` is a generative (causal) LM: transformers' own ``can_generate()``."""
    can_generate = getattr(model, "can_generate", None)
    return callable(can_generate) and bool(can_generate())


def use_causal_sdpa_shortcut(model: PreTrainedModel) -> bool:
    """Switch a causal LM that uses ``sdpa`` to ``hfssl_sdpa`` (same numbers, no mask for plain causal
    batches under compile). Returns whether it switched; other models and attention types are left alone.
    """
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not is_generative(model):
        return False
    try:
        _register()
        model.set_attn_implementation(HFSSL_SDPA)
    except (AttributeError, ImportError, ValueError, TypeError) as exc:  # an older transformers: keep stock SDPA
        logger.warning("keeping stock SDPA masks under torch.compile: %s", str(exc).splitlines()[0])
        return False
    return True


def use_stock_sdpa(model: PreTrainedModel) -> None:
    """Undo ``use_causal_sdpa_shortcut`` (after training: the in-memory model behaves as the export)."""
    declare_plain_causal(False)
    if getattr(model.config, "_attn_implementation", None) == HFSSL_SDPA:
        model.set_attn_implementation("sdpa")
