"""Denoising sequence-to-sequence pretraining: corrupt the text, train an encoder-decoder to restore it.

The backbone is a stock ``BartForConditionalGeneration`` or ``T5ForConditionalGeneration``; the export is
its ``save_pretrained`` and loads with ``AutoModelForSeq2SeqLM``. Per family:

* BART (``text_infilling`` and/or ``sentence_permutation``): batches are packed segments ``<s> ... </s>``
  padded to ``--max_seq_length``; the encoder reads the corrupted segment (padded to the longest the
  corruption can make, e.g. 114 for 128), the decoder rebuilds the whole original (every token a target).
* T5 (``span_corruption``): batches are raw blocks of ``tokens_length`` tokens
  (:func:`~hfssl.objectives.denoising.span_corruption_lengths`); the encoder reads the text with each
  noise span replaced by a sentinel, the decoder writes the sentinels and the spans behind them.

The corruption runs in ``prepare_batch`` on the device, drawing from the loop's checkpointed generator.
The loss is the summed token cross-entropy of the decoder (objective contract: sums + target counts),
computed through :func:`~hfssl.objectives.linear_cross_entropy.linear_cross_entropy` on the model's own
LM head weights (BART's ``final_logits_bias`` and T5's ``d_model ** -0.5`` output scaling included), so
it equals ``model(..., labels=labels).loss`` times the target count (tested) without building the logits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from transformers import BartForConditionalGeneration, PreTrainedModel, T5ForConditionalGeneration

from hfssl.errors import ConfigError
from hfssl.objectives.base import Objective, ObjectiveOutput
from hfssl.objectives.denoising import (
    IGNORE_INDEX,
    noise_region,
    noise_span_counts,
    permute_sentences,
    sentence_end_table,
    shift_right,
    span_corruption,
    span_corruption_lengths,
    text_infilling,
    text_infilling_width,
)
from hfssl.objectives.linear_cross_entropy import linear_cross_entropy
from hfssl.objectives.mlm import unwrap_model

#: Each corruption and the model family it trains.
NOISE_FAMILY = {"text_infilling": "bart", "sentence_permutation": "bart", "span_corruption": "t5"}
#: The corruption a family trains with when ``--noise`` is not given.
DEFAULT_NOISE = {"bart": ("text_infilling",), "t5": ("span_corruption",)}
MODEL_CLASSES = {"bart": BartForConditionalGeneration, "t5": T5ForConditionalGeneration}
_SENTINEL = re.compile(r"^<extra_id_(\d+)>$")


def parse_noise(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"text_infilling,sentence_permutation"`` -> the corruptions in a fixed order; raises ConfigError for
    unknown names or a mix of families."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in NOISE_FAMILY]
    if unknown or not names:
        raise ConfigError(f"--noise {','.join(names) or spec!r}: choose from {', '.join(NOISE_FAMILY)} "
                          "(BART's two combine: text_infilling,sentence_permutation)")
    families = {NOISE_FAMILY[n] for n in names}
    if len(families) > 1:
        raise ConfigError(f"--noise {','.join(names)}: span_corruption is T5's corruption and does not combine "
                          "with BART's text_infilling/sentence_permutation")
    # Sentence permutation first, then infilling on the permuted text (BART's order).
    return tuple(n for n in ("sentence_permutation", "text_infilling", "span_corruption") if n in names)


def noise_family(noise: Sequence[str]) -> str:
    return NOISE_FAMILY[noise[0]]


def sentinel_token_ids(tokenizer) -> list[int]:
    """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... in span order (empty when the tokenizer has none)."""
    found = {}
    for token, token_id in tokenizer.get_vocab().items():
        match = _SENTINEL.match(token)
        if match:
            found[int(match.group(1))] = token_id
    ids = []
    while len(ids) in found:  # a contiguous run from <extra_id_0>
        ids.append(found[len(ids)])
    return ids


def model_family(model: PreTrainedModel) -> str:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_CLASSES:
        raise ConfigError(f"denoising pretraining trains bart or t5 models; this checkpoint is {model_type!r} "
                          f"({type(model).__name__})")
    return model_type


def choose_family(model_type: str | None, noise: str | None) -> str:
    """The family a run trains: ``--model_type``, else the one ``--noise`` names, else BART."""
    family = model_type or (noise_family(parse_noise(noise)) if noise else "bart")
    if family not in MODEL_CLASSES:
        raise ConfigError(f"--model_type {family}: denoising pretraining trains {' or '.join(MODEL_CLASSES)}")
    return family


def decoder_start_token_id(family: str, tokenizer) -> int:
    """BART's decoder starts from ``</s>``, T5's from ``<pad>`` (their configs' ``decoder_start_token_id``)."""
    return tokenizer.eos_token_id if family == "bart" else tokenizer.pad_token_id


class DenoisingObjective(Objective):
    """BART text infilling / sentence permutation or T5 span corruption on a stock encoder-decoder.

    Build it with :meth:`from_tokenizer`, which checks that the tokenizer has what the corruption needs.
    """

    model_class: ClassVar[type[PreTrainedModel]] = BartForConditionalGeneration
    primary_term: ClassVar[str] = "loss"

    def __init__(self, *, noise: Sequence[str], pad_token_id: int, eos_token_id: int, decoder_start_token_id: int,
                 mask_token_id: int | None = None, sentinel_ids: Sequence[int] = (),
                 sentence_ends: torch.Tensor | None = None, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                 noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                 loss_chunk_size: int | None = None) -> None:
        super().__init__()
        self.noise = parse_noise(noise)
        self.family = noise_family(self.noise)
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"--mask_ratio must be in (0, 1), got {mask_ratio}")
        if poisson_lambda <= 0:
            raise ConfigError(f"--poisson_lambda must be positive, got {poisson_lambda}")
        if not 0.0 < noise_density < 1.0:
            raise ConfigError(f"--noise_density must be in (0, 1), got {noise_density}")
        if mean_noise_span_length < 1:
            raise ConfigError(f"--mean_noise_span_length must be at least 1, got {mean_noise_span_length}")
        if loss_chunk_size is not None and loss_chunk_size < 1:
            raise ConfigError(f"--loss_chunk_size must be positive, got {loss_chunk_size}")
        if "text_infilling" in self.noise and mask_token_id is None:
            raise ConfigError("--noise text_infilling needs a mask token")
        if "span_corruption" in self.noise and not sentinel_ids:
            raise ConfigError("--noise span_corruption needs sentinel tokens <extra_id_0>, <extra_id_1>, ...")
        if "sentence_permutation" in self.noise and sentence_ends is None:
            raise ConfigError("--noise sentence_permutation needs a sentence-end table")
        self.pad_token_id = int(pad_token_id)
        self.eos_token_id = int(eos_token_id)
        self.decoder_start_token_id = int(decoder_start_token_id)
        self.mask_token_id = None if mask_token_id is None else int(mask_token_id)
        self.mask_ratio, self.poisson_lambda = mask_ratio, poisson_lambda
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.loss_chunk_size = loss_chunk_size
        # Buffers follow .to(device); not persistent: they derive from the tokenizer.
        self.register_buffer("sentinel_ids", torch.tensor(list(sentinel_ids), dtype=torch.long), persistent=False)
        self.register_buffer("sentence_ends", sentence_ends, persistent=False)

    @classmethod
    def from_tokenizer(cls, tokenizer, model: PreTrainedModel, noise: Sequence[str] | str | None = None,
                       **kwargs: Any) -> DenoisingObjective:
        """The objective for ``model`` (BART or T5) and ``tokenizer``; ``noise`` defaults to the family's
        (BART: text_infilling, T5: span_corruption). One-line ``ConfigError`` for a corruption of the other
        family or a tokenizer without the mask token / sentinels the corruption needs."""
        family = model_family(model)
        noise = parse_noise(noise) if noise else DEFAULT_NOISE[family]
        if noise_family(noise) != family:
            raise ConfigError(f"--noise {','.join(noise)} is {noise_family(noise).upper()}'s corruption but the "
                              f"model is {family} ({type(model).__name__}); {family} trains with "
                              f"--noise {','.join(DEFAULT_NOISE[family])}")
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if "text_infilling" in noise and mask_id is None:
            raise ConfigError(f"--noise text_infilling replaces spans with a mask token, and the tokenizer {name!r} "
                              "has none: give a BART tokenizer (e.g. recipes/train_tokenizer.py --tokenizer_type "
                              "bart) or leave out --tokenizer_name to train one")
        sentinels = sentinel_token_ids(tokenizer) if "span_corruption" in noise else []
        if "span_corruption" in noise and not sentinels:
            raise ConfigError(f"--noise span_corruption needs sentinel tokens <extra_id_0>, <extra_id_1>, ... and "
                              f"the tokenizer {name!r} has none: give a T5 tokenizer (e.g. recipes/"
                              "train_tokenizer.py --tokenizer_type t5) or leave out --tokenizer_name to train one")
        config = model.config
        pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        start = config.decoder_start_token_id
        if pad is None or eos is None or start is None:
            raise ConfigError(f"the {family} model needs pad_token_id, eos_token_id and decoder_start_token_id in "
                              f"its config (got {pad}, {eos}, {start})")
        ends = sentence_end_table(tokenizer) if "sentence_permutation" in noise else None
        if ends is not None and ends.numel() < config.vocab_size:
            ends = torch.cat([ends, ends.new_zeros(config.vocab_size - ends.numel())])
        return cls(noise=noise, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=start,
                   mask_token_id=mask_id, sentinel_ids=sentinels, sentence_ends=ends, **kwargs)

    def data_pipeline(self, tokenizer, max_seq_length: int) -> tuple[Callable, Callable, str]:
        """``(documents -> examples, collate_fn, description)`` for this family's batches.

        BART: ``<s> ... </s>`` segments of ``max_seq_length`` (documents joined by ``</s>``), padded to exactly
        that width. T5: raw blocks of the length whose corrupted input is ``max_seq_length`` long
        (:func:`~hfssl.objectives.denoising.span_corruption_lengths`); refused when a row would need more
        holes than the tokenizer has sentinels.
        """
        from hfssl.data.collate import collate_fixed, collate_padded
        from hfssl.data.packing import pack_clm, pack_mlm_segments

        if self.family == "bart":
            examples = functools.partial(pack_mlm_segments, tokenizer=tokenizer, max_seq_length=max_seq_length)
            collate = functools.partial(collate_padded, pad_token_id=self.pad_token_id,
                                        pad_to_multiple_of=max_seq_length)
            return examples, collate, f"{','.join(self.noise)} on segments of {max_seq_length} tokens"
        block, inputs, targets = span_corruption_lengths(max_seq_length, self.noise_density,
                                                         self.mean_noise_span_length)
        spans = noise_span_counts(block, self.noise_density, self.mean_noise_span_length)[1]
        if spans > len(self.sentinel_ids):
            raise ConfigError(f"--max_seq_length {max_seq_length} gives {spans} noise spans per row but the tokenizer "
                              f"has {len(self.sentinel_ids)} sentinels: use a shorter length or more --extra_ids")
        examples = functools.partial(pack_clm, tokenizer=tokenizer, max_seq_length=block)
        return examples, collate_fixed, (f"span_corruption of blocks of {block} tokens: inputs of {inputs}, "
                                         f"targets of {targets}")

    def _buffers_to(self, device: torch.device) -> None:
        # The loop may not move the objective; moving two small buffers lazily is cheap and idempotent.
        if self.sentinel_ids.device != device:
            self.to(device)

    # -- corruption ---------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                      ) -> dict[str, torch.Tensor]:
        input_ids = batch["input_ids"]
        self._buffers_to(input_ids.device)
        if self.family == "t5":
            inputs, labels = span_corruption(input_ids, sentinel_ids=self.sentinel_ids, eos_token_id=self.eos_token_id,
                                             noise_density=self.noise_density,
                                             mean_noise_span_length=self.mean_noise_span_length, generator=generator)
            # Every row has the same widths and no padding: no attention masks at all.
            return {"input_ids": inputs, "labels": labels,
                    "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.pad_token_id)}
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        region = noise_region(attention_mask)
        corrupted, corrupted_mask = input_ids, attention_mask
        if "sentence_permutation" in self.noise:
            corrupted = permute_sentences(corrupted, region=region, sentence_ends=self.sentence_ends[corrupted],
                                          generator=generator)
        if "text_infilling" in self.noise:
            # The encoder input is only as wide as the longest row the corruption can produce (static).
            width = text_infilling_width(input_ids.shape[1], self.mask_ratio, self.poisson_lambda)
            infilled = text_infilling(corrupted, region=region, mask_token_id=self.mask_token_id,
                                      pad_token_id=self.pad_token_id, attention_mask=attention_mask,
                                      mask_ratio=self.mask_ratio, poisson_lambda=self.poisson_lambda,
                                      generator=generator, width=width)
            corrupted, corrupted_mask = infilled.input_ids, infilled.attention_mask
        # The decoder rebuilds the original segment; its padding is no target.
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return {"input_ids": corrupted, "attention_mask": corrupted_mask, "labels": labels,
                "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.pad_token_id)}

    def target_counts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": (batch["labels"] != IGNORE_INDEX).sum()}

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Encoder plus decoder positions: both stacks run over them."""
        return batch["input_ids"].numel() + batch["decoder_input_ids"].numel()

    # -- loss ---------------------------------------------------------------------------------------
    def forward(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        hidden, weight, bias = decoder_hidden_and_head(model, batch)
        loss, correct = linear_cross_entropy(hidden, weight, batch["labels"], bias=bias,
                                             chunk_rows=self.loss_chunk_size)
        return ObjectiveOutput(loss_sums={"loss": loss}, metric_sums={"loss/accuracy": correct})


def decoder_hidden_and_head(model: PreTrainedModel, batch: dict[str, torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The decoder's final states as the LM head sees them, and the head's weight and bias.

    Mirrors ``BartForConditionalGeneration.forward`` (``lm_head`` + ``final_logits_bias``) and
    ``T5ForConditionalGeneration.forward`` (states scaled by ``d_model ** -0.5`` when the head is tied),
    stopping before the logits.
    """
    model = unwrap_model(model)
    mask = batch.get("attention_mask")
    if model.config.model_type == "t5":
        encoded = model.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        hidden = model.decoder(input_ids=batch["decoder_input_ids"], encoder_hidden_states=encoded,
                               encoder_attention_mask=mask, use_cache=False).last_hidden_state
        if getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings):
            hidden = hidden * (model.model_dim ** -0.5)
        return hidden, model.lm_head.weight, None
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=mask,
                         decoder_input_ids=batch["decoder_input_ids"], use_cache=False).last_hidden_state
    return hidden, model.lm_head.weight, model.final_logits_bias[0]


# -- export ------------------------------------------------------------------------------------------
def _example_inputs(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 12), generator=generator)
    decoder = torch.randint(0, vocab, (2, 7), generator=generator)
    return {"input_ids": ids.to(device), "decoder_input_ids": decoder.to(device)}


def verify_seq2seq_export(output_dir: str, model: PreTrainedModel) -> list[str]:
    """Reload ``output_dir`` with ``AutoModelForSeq2SeqLM`` (same logits as ``model``) and ``AutoModel`` (same
    decoder states); the loop's ``verify_fn``. Raises ``HfsslError`` on a mismatch."""
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    from hfssl.models.export import verify_reload

    inputs = _example_inputs(model)
    messages = []
    diff = verify_reload(output_dir, model, auto_class=AutoModelForSeq2SeqLM, example_inputs=inputs)
    messages.append(f"reloads with AutoModelForSeq2SeqLM (max |diff| {diff:.2g})")
    diff = verify_reload(output_dir, model, auto_class=AutoModel, example_inputs=inputs,
                         reference_output=lambda x: model(**x, output_hidden_states=True).decoder_hidden_states[-1])
    messages.append(f"reloads with AutoModel (max |diff| {diff:.2g})")
    return messages


# -- using the export ----------------------------------------------------------------------------------
def fill_masked_spans(model: PreTrainedModel, tokenizer, texts: str | Sequence[str], *, max_new_tokens: int = 32,
                      num_beams: int = 1) -> list[str]:
    """Fill the holes of ``texts`` with a denoising model: what transformers' ``text2text-generation``
    pipeline did (removed in transformers 5), plus putting the spans back for T5.

    BART: holes are ``<mask>``; the model writes the whole text, which is returned. T5: holes are
    ``<extra_id_0>``, ``<extra_id_1>``, ...; the model writes each sentinel and its span, and each hole is
    replaced by its span.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        return []
    family = model_family(model)
    device = next(model.parameters()).device
    encoded = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    encoded.pop("token_type_ids", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                       do_sample=False)
    finally:
        model.train(was_training)
    if family == "bart":
        return tokenizer.batch_decode(generated, skip_special_tokens=True)
    sentinels = sentinel_token_ids(tokenizer)
    filled = []
    for text, output in zip(texts, generated.tolist()):
        spans: dict[int, list[int]] = {}
        current = None
        for token_id in output:
            if token_id in sentinels:
                current = sentinels.index(token_id)
                spans[current] = []
            elif token_id == tokenizer.eos_token_id:
                break
            elif current is not None and token_id != tokenizer.pad_token_id:
                spans[current].append(token_id)

        def span_text(match: re.Match, spans: dict[int, list[int]] = spans) -> str:
            return tokenizer.decode(spans.get(int(match.group(1)), []), skip_special_tokens=True).strip()

        filled.append(re.sub(r"<extra_id_(\d+)>", span_text, text))
    return filled
