"""BART text infilling / sentence permutation and T5 span corruption as pure batched functions: statistics,
static shapes, determinism, and that the target put into the input's holes gives back the original."""

from __future__ import annotations

import math

import pytest
import torch

from hfssl.objectives.denoising import (
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
from tests.helpers import denoising

BOS, PAD, EOS, MASK = 0, 1, 2, 4


def segments(batch: int, seq: int, seed: int, min_length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> tokens </s> <pad>...`` rows of random lengths (the first one full), tokens from 10 up."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 5000, (batch, seq), generator=gen)
    lengths = torch.randint(min_length, seq + 1, (batch,), generator=gen)
    lengths[0] = seq
    positions = torch.arange(seq).expand(batch, seq)
    ids[:, 0] = BOS
    ids[positions == (lengths - 1).unsqueeze(1)] = EOS
    ids[positions >= lengths.unsqueeze(1)] = PAD
    return ids, (positions < lengths.unsqueeze(1)).long()


def infill(ids, mask, seed=0, **kwargs):
    return text_infilling(ids, region=noise_region(mask), mask_token_id=MASK, pad_token_id=PAD, attention_mask=mask,
                          generator=torch.Generator().manual_seed(seed), **kwargs)


def fill_holes(corrupted: list[int], span_lengths: list[int], original: list[int]) -> list[int]:
    """Put the original back: each mask takes its span's tokens from the target, other tokens are copied."""
    out, source, spans = [], 0, iter(span_lengths)
    for token in corrupted:
        if token == MASK:
            n = next(spans)
            out += original[source:source + n]
            source += n
        else:
            assert token == original[source]
            out.append(token)
            source += 1
    return out


def test_text_infilling_masks_thirty_percent_in_poisson_spans_and_the_holes_give_the_original_back():
    ids, mask = segments(64, 256, seed=0)
    out = infill(ids, mask)
    assert out.input_ids.shape == ids.shape and out.attention_mask.shape == ids.shape
    n = noise_region(mask).sum(1)
    lengths = out.span_lengths
    masked = lengths.clamp(min=0).sum(1)
    # Exactly round(0.3 n) tokens per row.
    assert torch.equal(masked, torch.floor(n * 0.3 + 0.5).long())
    all_spans = lengths[lengths >= 0].float()
    assert 2.6 < all_spans.mean().item() < 3.2, all_spans.mean()  # Poisson(3), the last span of a row cut to fit
    assert 0.02 < (all_spans == 0).float().mean().item() < 0.09     # P(0) = e^-3 = 0.05: insertions happen
    for row in range(ids.shape[0]):
        real = int(mask[row].sum())
        corrupted = out.input_ids[row, : int(out.attention_mask[row].sum())].tolist()
        spans = lengths[row][lengths[row] >= 0].tolist()
        # One mask per span (an inserted mask for a zero-length one), the rest right-padded.
        assert corrupted.count(MASK) == len(spans)
        assert len(corrupted) == real - sum(spans) + len(spans)
        assert corrupted[0] == BOS and corrupted[-1] == EOS
        assert (out.input_ids[row, len(corrupted):] == PAD).all() and (out.attention_mask[row, len(corrupted):] == 0).all()
        assert fill_holes(corrupted, spans, ids[row, :real].tolist()) == ids[row, :real].tolist()


def test_static_width_holds_every_row_and_the_span_cap_merges_only_far_in_the_tail(monkeypatch):
    import hfssl.objectives.denoising as denoising_module

    assert text_infilling_width(128) == 114 and text_infilling_width(512) == 432
    ids, mask = segments(2000, 128, seed=3)
    out = infill(ids, mask, width=text_infilling_width(128))
    assert out.input_ids.shape == (2000, 114)
    spans = (out.span_lengths >= 0).sum(1)
    budgets = (noise_region(mask).sum(1) * 0.3 + 0.5).long()
    caps = torch.tensor(denoising_module.max_spans_table(38, 3.0))[budgets]
    binding = caps < budgets                         # below the budget (from 11 masked tokens on)
    assert binding.float().mean() > 0.6 and (spans[binding] < caps[binding]).all()   # 5 sigmas: none reached
    # With no margin at all the cap merges spans often; rows still fit and still give the original back.
    monkeypatch.setattr(denoising_module, "_SPAN_COUNT_SIGMAS", 0.0)
    for cached in (denoising_module.max_spans_table, denoising_module._span_caps):
        cached.cache_clear()
    try:
        tight = text_infilling_width(128)
        out = infill(ids[:200], mask[:200], width=tight)
        caps = torch.tensor(denoising_module.max_spans_table(38, 3.0))[(noise_region(mask[:200]).sum(1) * 0.3 + 0.5).long()]
        counts = (out.span_lengths >= 0).sum(1)
        assert tight < 114 and (counts <= caps).all() and (counts == caps).float().mean() > 0.2
        assert torch.equal(out.span_lengths.clamp(min=0).sum(1), (noise_region(mask[:200]).sum(1) * 0.3 + 0.5).long())
        for row in range(200):
            real = int(mask[row].sum())
            corrupted = out.input_ids[row, : int(out.attention_mask[row].sum())].tolist()
            lengths = out.span_lengths[row][out.span_lengths[row] >= 0].tolist()
            assert fill_holes(corrupted, lengths, ids[row, :real].tolist()) == ids[row, :real].tolist()
    finally:
        for cached in (denoising_module.max_spans_table, denoising_module._span_caps):
            cached.cache_clear()


def test_text_infilling_is_a_function_of_the_generator_and_varies_with_it():
    ids, mask = segments(8, 64, seed=1)
    a, b, c = infill(ids, mask, seed=5), infill(ids, mask, seed=5), infill(ids, mask, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.input_ids, c.input_ids)


def test_text_infilling_of_short_rows_and_its_argument_checks():
    ids, mask = segments(32, 12, seed=2, min_length=2)
    out = infill(ids, mask, mask_ratio=0.5)
    assert (out.attention_mask.sum(1) <= mask.sum(1)).all()  # never longer than the original
    assert (out.span_lengths.clamp(min=0).sum(1) == torch.floor(noise_region(mask).sum(1) * 0.5 + 0.5)).all()
    with pytest.raises(ValueError, match="mask_ratio"):
        infill(ids, mask, mask_ratio=1.0)
    with pytest.raises(ValueError, match="region"):
        text_infilling(ids, region=noise_region(mask)[:, :5], mask_token_id=MASK, pad_token_id=PAD)


def test_sentence_permutation_shuffles_whole_sentences_inside_the_region():
    seq = 40
    ids = torch.tensor([[BOS, *range(100, 100 + seq - 2), EOS]] * 200)
    ends = (ids % 7 == 0) & (ids >= 100)                       # a sentence ends at every multiple of 7
    region = noise_region(torch.ones_like(ids))
    out = permute_sentences(ids, region=region, sentence_ends=ends, generator=torch.Generator().manual_seed(0))

    def sentences(row: list[int]) -> list[tuple[int, ...]]:
        found, current = [], []
        for token in row[1:-1]:
            current.append(token)
            if token % 7 == 0:
                found.append(tuple(current))
                current = []
        return found + ([tuple(current)] if current else [])

    original = sentences(ids[0].tolist())
    orders = set()
    for row in out.tolist():
        assert row[0] == BOS and row[-1] == EOS
        # The same sentences, each intact, in some order (the unterminated tail counts as one).
        pieces = [p for p in original]
        rebuilt, rest = [], row[1:-1]
        while rest:
            piece = next(p for p in pieces if tuple(rest[: len(p)]) == p)
            pieces.remove(piece)
            rebuilt.append(piece)
            rest = rest[len(piece):]
        assert sorted(rebuilt) == sorted(original)
        orders.add(tuple(rebuilt))
    assert len(orders) > 150  # 6 sentences: 720 orders, 200 draws


def test_sentence_end_table_of_a_trained_bart_tokenizer():
    tok = denoising.tokenizer("bart")
    table = sentence_end_table(tok)
    assert table.shape == (len(tok),)
    ids = tok("It works. Does it? Yes!", add_special_tokens=False)["input_ids"]
    ends = [tok.decode([i]) for i in ids if table[i]]
    assert [e.strip() for e in ends][-3:] == [".", "?", "!"] or len(ends) == 3
    assert not table[tok.all_special_ids].any()


@pytest.mark.parametrize("inputs_length,expected", [(512, (568, 512, 114)), (128, (141, 128, 29))])
def test_t5_length_arithmetic_matches_t5s_published_numbers(inputs_length, expected):
    # T5 (and run_t5_mlm_flax.py): 568 raw tokens -> 512 input positions and 114 target positions.
    assert span_corruption_lengths(inputs_length) == expected


def test_t5_length_arithmetic_is_the_longest_block_that_fits_for_every_length():
    for length in range(3, 700):
        block, inputs, targets = span_corruption_lengths(length)
        noise, spans = noise_span_counts(block, 0.15, 3.0)
        assert inputs == block - noise + spans + 1 <= length
        assert targets == noise + spans + 1
        bigger = noise_span_counts(block + 1, 0.15, 3.0)
        assert block + 1 - bigger[0] + bigger[1] + 1 > length


def test_span_corruption_statistics_sentinel_order_and_round_trip():
    sentinels = torch.arange(999, 899, -1)          # <extra_id_0> is the highest id, as in T5
    block, inputs_length, targets_length = span_corruption_lengths(128)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 800, (64, block), generator=gen)
    inputs, targets = span_corruption(ids, sentinel_ids=sentinels, eos_token_id=EOS, generator=gen)
    assert inputs.shape == (64, inputs_length) and targets.shape == (64, targets_length)
    noise, spans = noise_span_counts(block, 0.15, 3.0)
    assert noise == round(0.15 * block) and spans == round(noise / 3)
    span_lengths = []
    for row, source in enumerate(ids.tolist()):
        inp, tgt = inputs[row].tolist(), targets[row].tolist()
        assert inp[-1] == EOS and tgt[-1] == EOS
        holes = [t for t in inp if t in sentinels.tolist()]
        assert holes == sentinels[:spans].tolist()                   # <extra_id_0>, <extra_id_1>, ... in order
        assert [t for t in tgt if t in sentinels.tolist()] == holes and tgt[0] == holes[0]
        assert inp[0] == source[0]                                   # rows start with kept text, as T5
        # Decode the target into the input's holes: the original row comes back.
        fills, current = {}, None
        for token in tgt[:-1]:
            if token in holes:
                current = token
                fills[current] = []
            else:
                fills[current].append(token)
        restored = [t for token in inp[:-1] for t in (fills[token] if token in fills else [token])]
        assert restored == source
        span_lengths += [len(v) for v in fills.values()]
    assert all(n >= 1 for n in span_lengths)
    assert math.isclose(sum(span_lengths) / len(span_lengths), noise / spans)   # mean span ~3 (19/6 here)
    # Holes sit in other places in every row, and span lengths vary (a random segmentation, not fixed spans).
    assert len({tuple((row >= 900).nonzero().flatten().tolist()) for row in inputs}) == 64
    assert len(set(span_lengths)) > 3


def test_span_corruption_needs_enough_sentinels_and_is_deterministic():
    ids = torch.arange(200).repeat(2, 1)
    with pytest.raises(ValueError, match="sentinel"):
        span_corruption(ids, sentinel_ids=torch.tensor([7, 8]), eos_token_id=EOS)
    one = span_corruption(ids, sentinel_ids=torch.arange(1000, 1100), eos_token_id=EOS,
                          generator=torch.Generator().manual_seed(3))
    two = span_corruption(ids, sentinel_ids=torch.arange(1000, 1100), eos_token_id=EOS,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_round_trip_on_real_text_through_the_t5_tokenizer():
    from hfssl.objectives.seq2seq import sentinel_token_ids

    tok = denoising.tokenizer("t5")
    text = denoising.corpus_texts()[5][:2000]
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:141]])
    inputs, targets = span_corruption(ids, sentinel_ids=torch.tensor(sentinel_token_ids(tok)),
                                      eos_token_id=tok.eos_token_id, generator=torch.Generator().manual_seed(0))
    spans = {}
    for piece in tok.decode(targets[0]).replace("</s>", "").split("<extra_id_")[1:]:
        number, _, span = piece.partition(">")
        spans[number] = span
    corrupted = tok.decode(inputs[0]).replace("</s>", "")
    restored = corrupted
    for number, span in spans.items():
        restored = restored.replace(f"<extra_id_{number}>", span)
    assert restored.split() == tok.decode(ids[0]).split()


def test_shift_right_makes_teacher_forcing_inputs():
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    assert shift_right(labels, decoder_start_token_id=2, pad_token_id=1).tolist() == [[2, 5, 6, 7], [2, 8, 9, 1]]
