"""Pure, batched corruptions for denoising sequence-to-sequence pretraining: BART and T5.

* :func:`text_infilling` (BART): a fraction of each row's tokens (30%) is covered by spans whose lengths
  are drawn from a Poisson distribution (lambda 3); each span becomes ONE mask token, so the model must
  also infer how many tokens are missing. A zero-length span inserts a mask where nothing is missing.
* :func:`permute_sentences` (BART): the sentences of each row are shuffled.
* :func:`span_corruption` (T5): 15% of the tokens in spans of mean length 3; each span becomes one
  sentinel (``<extra_id_0>``, ``<extra_id_1>``, ... in order) in the input, and the target lists each
  sentinel followed by the tokens it hides.

Every function takes a whole batch on any device and draws only from the ``generator`` it is given, so
the corruption runs on the GPU inside the objective and a resumed run (whose generator state is
restored from the checkpoint) corrupts exactly as the uninterrupted one. Nothing here syncs with the
host: counts stay on the device and every output has a shape known from the input shape alone (static
shapes for ``torch.compile`` and CUDA graphs).

Rows handed to the BART functions carry their noisable tokens as ONE contiguous run per row (``region``):
everything between the leading ``<s>`` and the final ``</s>`` of a packed segment (:func:`noise_region`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

IGNORE_INDEX = -100
# Characters that may follow a sentence's final punctuation inside the same token: closing quotes/brackets.
_CLOSERS = "\"')]}\u201d\u2019\u00bb"


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator)


def _round_half_up(values: torch.Tensor) -> torch.Tensor:
    return torch.floor(values + 0.5).long()


def noise_region(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool ``(batch, seq)``: the positions strictly between a row's first token and its last real token.

    For BART's packed segments (``<s> ... </s>``, right-padded) that is the text, separators between
    documents included (fairseq's BART may mask those too); ``<s>``, the final ``</s>`` and padding stay.
    """
    length = attention_mask.long().sum(1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions >= 1) & (positions < length - 1)


def _region_start(region: torch.Tensor) -> torch.Tensor:
    """Index of each row's first region position (0 for an empty region)."""
    return region.long().argmax(1)


class Infilled(NamedTuple):
    """Output of :func:`text_infilling`.

    ``span_lengths`` (batch, seq) lists, in row order, how many original tokens each mask token of the
    row replaced (0 for an inserted mask), then -1: the i-th mask of a row hides ``span_lengths[row, i]``
    tokens. Training does not need it; it is what lets a test or a user put the original back.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    span_lengths: torch.Tensor


# How far above its mean a row's number of spans may go (in standard deviations) before the excess spans are
# merged: the corrupted rows then fit a static width well below the segment's (no encoder work on padding
# that can never be filled), and a merge happens about once in millions of rows (checked in the tests).
_SPAN_COUNT_SIGMAS = 5.0


@functools.lru_cache(maxsize=64)
def max_spans_table(max_budget: int, poisson_lambda: float) -> tuple[int, ...]:
    """``table[t]``: the most spans a row with ``t`` masked tokens keeps (host-side, exact integers).

    Spans are drawn until their Poisson(lambda) lengths cover ``t``: about ``t / lambda`` of them, with a
    standard deviation of ``sqrt(t) / lambda``. The cap sits 5 deviations above, and never above ``t``.
    """
    return tuple(min(t, math.ceil(t / poisson_lambda + 1 + _SPAN_COUNT_SIGMAS * math.sqrt(t) / poisson_lambda))
                 for t in range(max_budget + 1))


@functools.lru_cache(maxsize=64)
def _span_caps(max_budget: int, poisson_lambda: float, device: str) -> torch.Tensor:
    # Made once per device: a fresh host-to-device copy every step would make the host wait.
    return torch.tensor(max_spans_table(max_budget, poisson_lambda), device=device)


def _budget(noisable: int, mask_ratio: float) -> int:
    return math.floor(noisable * mask_ratio + 0.5)


def text_infilling_width(seq_len: int, mask_ratio: float = 0.3, poisson_lambda: float = 3.0) -> int:
    """The static width of :func:`text_infilling`'s output for rows of at most ``seq_len`` tokens with one
    leading and one trailing token outside the noise region (``<s> ... </s>``): the longest a corrupted row can
    be, ``seq_len - masked + max spans`` (the bound grows with the row, so the full row sets it)."""
    if seq_len < 2:
        return seq_len
    budget = _budget(seq_len - 2, mask_ratio)
    return seq_len - budget + max_spans_table(budget, float(poisson_lambda))[budget]


def text_infilling(
    input_ids: torch.Tensor,
    *,
    region: torch.Tensor,
    mask_token_id: int,
    pad_token_id: int,
    attention_mask: torch.Tensor | None = None,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    generator: torch.Generator | None = None,
    width: int | None = None,
) -> Infilled:
    """BART's text infilling on ``input_ids`` (batch, seq), right-padded, with ``region`` (bool, same shape)
    one contiguous run of noisable positions per row.

    Each row masks exactly ``round(mask_ratio * n)`` of its ``n`` region tokens. Span lengths are drawn from
    Poisson(``poisson_lambda``) until they cover that budget (the last one is cut to fit, as fairseq does);
    the spans are laid out uniformly at random without overlapping, and each one becomes a single
    ``mask_token_id``. Zero-length spans insert a mask. A row never keeps more spans than masked tokens, nor
    more than :func:`max_spans_table` allows (5 standard deviations above the mean count; further spans
    are merged into the last one kept), so a corrupted row is never longer than the original and the
    output fits ``width`` columns (default: the input's), right-padded with ``pad_token_id``. When ``region``
    is :func:`noise_region` of the rows, ``width=text_infilling_width(seq, mask_ratio, poisson_lambda)`` holds
    every corrupted row, and the encoder does not run on padding that no row can fill (a segment of 128 tokens
    corrupts into at most 114); a smaller region would need the full width.
    """
    if input_ids.dim() != 2 or region.shape != input_ids.shape:
        raise ValueError(f"input_ids and region must both be (batch, seq); got {tuple(input_ids.shape)} and "
                         f"{tuple(region.shape)}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if poisson_lambda <= 0:
        raise ValueError(f"poisson_lambda must be positive, got {poisson_lambda}")
    batch, seq = input_ids.shape
    width = seq if width is None else width
    if not text_infilling_width(seq, mask_ratio, poisson_lambda) <= width <= seq:
        raise ValueError(f"width {width} must be between text_infilling_width(...) = "
                         f"{text_infilling_width(seq, mask_ratio, poisson_lambda)} and the input width {seq}")
    device = input_ids.device
    region = region.bool()
    if attention_mask is None:
        attention_mask = input_ids.new_ones(input_ids.shape)
    positions = torch.arange(seq, device=device).expand(batch, seq)
    n = region.sum(1, keepdim=True)                                   # noisable tokens per row
    budget = _round_half_up(n.float() * mask_ratio)                    # tokens to mask per row
    caps = _span_caps(_budget(seq, mask_ratio), float(poisson_lambda), str(device))

    # Span lengths: at most `seq` draws per row; the last draw is a guard that always covers the budget.
    lengths = torch.poisson(torch.full((batch, seq), float(poisson_lambda), device=device),
                            generator=generator).long()
    lengths[:, -1] = seq
    covered_before = lengths.cumsum(1) - lengths
    used = covered_before < budget
    lengths = torch.minimum(lengths, (budget - covered_before).clamp(min=0))
    # More spans than masked tokens is only possible through zero-length spans: drop the first extra ones.
    zero = used & (lengths == 0)
    excess = (used.sum(1, keepdim=True) - budget).clamp(min=0)
    used &= ~(zero & (zero.long().cumsum(1) <= excess))
    front = torch.sort((~used).to(torch.uint8), dim=1, stable=True).indices   # used draws first, in order
    drawn = used.sum(1, keepdim=True)
    span_lengths = lengths.gather(1, front).masked_fill(positions >= drawn, 0)
    # Above the cap (a 5-sigma count), the spans from the last kept one on become that one span.
    cap = caps[budget]
    last = positions == (cap - 1)
    merged = torch.where(positions >= cap - 1, span_lengths, 0).sum(1, keepdim=True)
    span_lengths = torch.where(last & (drawn > cap), merged, span_lengths)
    spans = torch.minimum(drawn, cap)                                  # k spans per row
    span_lengths = span_lengths.masked_fill(positions >= spans, -1)

    # Layout: the corrupted region is a sequence of `items`: n - budget kept tokens and k spans, one slot
    # each. Choosing which k of those slots hold spans, uniformly, places the spans uniformly at random.
    items = n - budget + spans
    keys = _rand((batch, seq), device, generator).masked_fill(positions >= items, 2.0)
    is_span = keys.argsort(1).argsort(1) < spans
    ordinal = (is_span.long().cumsum(1) - 1).clamp(min=0)             # which span a slot holds
    item_width = torch.where(is_span, span_lengths.gather(1, ordinal).clamp(min=0), 1)
    item_width = item_width.masked_fill(positions >= items, 0)
    source_offset = item_width.cumsum(1) - item_width                 # where each item starts in the region

    # Gather the output: prefix (<s>), the items, then the rest of the row (</s>) shifted left, then padding.
    out = positions[:, :width]
    start = _region_start(region).unsqueeze(1)
    real = attention_mask.long().sum(1, keepdim=True)
    out_length = real - budget + spans
    item = (out - start).clamp(0, seq - 1)
    in_items = (out >= start) & (out < start + items)
    source = torch.where(out < start, out, torch.where(in_items, start + source_offset.gather(1, item), out + n - items))
    corrupted = input_ids.gather(1, source.clamp(0, seq - 1))
    corrupted = corrupted.masked_fill(in_items & is_span.gather(1, item), mask_token_id)
    valid = out < out_length
    corrupted = corrupted.masked_fill(~valid, pad_token_id)
    return Infilled(corrupted, valid.to(attention_mask.dtype), span_lengths)


def permute_sentences(
    input_ids: torch.Tensor,
    *,
    region: torch.Tensor,
    sentence_ends: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BART's sentence permutation: shuffle the sentences inside each row's ``region`` (one contiguous run).

    ``sentence_ends`` (bool, same shape) marks the tokens that end a sentence (see :func:`sentence_end_table`);
    a sentence runs up to and including its end token, and text after the last end is a sentence too.
    Tokens outside the region keep their place.
    """
    if region.shape != input_ids.shape or sentence_ends.shape != input_ids.shape:
        raise ValueError("input_ids, region and sentence_ends must have the same (batch, seq) shape")
    batch, seq = input_ids.shape
    region = region.bool()
    ends = (sentence_ends.bool() & region).long()
    sentence = ends.cumsum(1) - ends                                  # index of each token's sentence
    sentence_key = _rand((batch, seq), input_ids.device, generator).gather(1, sentence)
    positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
    before = positions < _region_start(region).unsqueeze(1)
    # Region tokens sort by their sentence's random key (in [1, 2)); a stable sort keeps each sentence's
    # tokens in order. Tokens before the region sort first, those after it last, both in their order.
    key = torch.where(region, 1.0 + sentence_key, torch.where(before, -1.0, 3.0))
    order = torch.sort(key, dim=1, stable=True).indices
    return input_ids.gather(1, order)


def sentence_end_table(tokenizer, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool lookup ``table[token_id]``: True for tokens that end a sentence (their text ends in ``.``, ``!``
    or ``?``, possibly followed by closing quotes, brackets or whitespace). Special tokens never end one."""
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    table = torch.zeros(size, dtype=torch.bool)
    for token_id, text in enumerate(texts):
        if token_id not in special and text.rstrip().rstrip(_CLOSERS).endswith((".", "!", "?")):
            table[token_id] = True
    return table.to(device)


def noise_span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(noise tokens, noise spans)`` that :func:`span_corruption` uses for rows of ``length`` tokens.

    ``round(density * length)`` noise tokens (at least 1, at most ``length - 1``) in ``round(noise /
    mean_span)`` spans (at least 1, and never more than the noise or the kept tokens can fill).
    """
    if length < 2:
        raise ValueError(f"span corruption needs rows of at least 2 tokens, got {length}")
    noise = min(max(math.floor(length * noise_density + 0.5), 1), length - 1)
    spans = max(math.floor(noise / mean_noise_span_length + 0.5), 1)
    return noise, min(spans, noise, length - noise)


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int, int]:
    """T5's length arithmetic: ``(tokens_length, inputs_length, targets_length)``.

    ``tokens_length`` is the longest row of raw tokens whose corrupted input (kept tokens, one sentinel per
    span, ``</s>``) fits in ``inputs_length`` positions: pack the text in blocks of that many tokens and every
    corrupted batch has exactly the returned input and target widths. The input may come out one shorter
    than asked when no block length hits it exactly (the count of spans moves in whole steps).
    """
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_noise_span_length < 1.0:
        raise ValueError(f"mean_noise_span_length must be at least 1, got {mean_noise_span_length}")
    if inputs_length < 3:
        raise ValueError(f"span corruption needs an input length of at least 3, got {inputs_length}")

    def corrupted(length: int) -> tuple[int, int]:
        noise, spans = noise_span_counts(length, noise_density, mean_noise_span_length)
        return length - noise + spans + 1, noise + spans + 1

    # The corrupted input never shrinks when a token is added, so walk up from a length that surely fits.
    tokens = inputs_length - 1
    while corrupted(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return (tokens, *corrupted(tokens))


def _random_partition(batch: int, total: int, parts: int, device: torch.device,
                      generator: torch.Generator | None) -> torch.Tensor:
    """Long ``(batch, parts)``: each row a uniformly random split of ``total`` into ``parts`` positive sizes."""
    if parts == 1:
        return torch.full((batch, 1), total, dtype=torch.long, device=device)
    # Cut the `total - 1` gaps between items at `parts - 1` distinct random places.
    cuts = _rand((batch, total - 1), device, generator).argsort(1)[:, : parts - 1]
    is_cut = torch.zeros((batch, total - 1), dtype=torch.long, device=device).scatter_(1, cuts, 1)
    part = torch.cat([torch.zeros((batch, 1), dtype=torch.long, device=device), is_cut.cumsum(1)], dim=1)
    return torch.zeros((batch, parts), dtype=torch.long, device=device).scatter_add_(1, part, torch.ones_like(part))


def _compact(values: torch.Tensor, keep: torch.Tensor, width: int) -> torch.Tensor:
    """The kept entries of each row, in order; every row keeps exactly ``width`` (a stable sort, no scatter)."""
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    return values.gather(1, order)


def span_corruption(
    input_ids: torch.Tensor,
    *,
    sentinel_ids: torch.Tensor,
    eos_token_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's span corruption of full rows ``input_ids`` (batch, length); returns ``(inputs, targets)``.

    Each row gets the same number of noise tokens and spans (:func:`noise_span_counts`), split at random
    into spans of random lengths, alternating with kept spans (the row starts with kept text, as T5's
    ``random_spans_noise_mask``). The i-th noise span becomes ``sentinel_ids[i]`` in the input; the target
    is ``sentinel_ids[0]``, the first span's tokens, ``sentinel_ids[1]``, ... Both end with ``eos_token_id``.
    Widths: see :func:`span_corruption_lengths`.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    device = input_ids.device
    noise, spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    if spans > sentinel_ids.numel():
        raise ValueError(f"rows of {length} tokens get {spans} noise spans but there are only "
                         f"{sentinel_ids.numel()} sentinel tokens")
    noise_lengths = _random_partition(batch, noise, spans, device, generator)
    kept_lengths = _random_partition(batch, length - noise, spans, device, generator)
    # Spans alternate kept, noise, kept, noise, ...; mark where each one starts.
    span_lengths = torch.stack([kept_lengths, noise_lengths], dim=2).reshape(batch, 2 * spans)
    starts = span_lengths.cumsum(1)[:, :-1]
    span_start = torch.zeros((batch, length), dtype=torch.bool, device=device)
    span_start[:, 0] = True
    span_start.scatter_(1, starts, True)
    span_index = span_start.long().cumsum(1) - 1
    is_noise = span_index % 2 == 1
    # A noise span and the kept span before it share a sentinel: the i-th noise span is hole i.
    sentinel = sentinel_ids.to(device=device, dtype=input_ids.dtype)[span_index // 2]

    eos = input_ids.new_full((batch, 1), eos_token_id)
    inputs = _compact(torch.where(is_noise, sentinel, input_ids), ~is_noise | span_start, length - noise + spans)
    targets = _compact(torch.where(is_noise, input_ids, sentinel), is_noise | span_start, noise + spans)
    return torch.cat([inputs, eos], dim=1), torch.cat([targets, eos], dim=1)


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``labels`` moved one step right behind the start token, with
    ignored positions (-100) read as padding (what ``prepare_decoder_input_ids_from_labels`` gives)."""
    shifted = labels.new_empty(labels.shape)
    shifted[:, 0] = decoder_start_token_id
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)
