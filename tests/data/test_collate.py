"""Collation of fixed and variable-length examples."""

from __future__ import annotations

import pytest
import torch

from hfssl.data import collate_fixed, collate_padded
from hfssl.errors import DataError


def test_collate_fixed_stacks_and_rejects_ragged():
    batch = collate_fixed(
        [
            {"input_ids": [1, 2, 3], "position_ids": [0, 1, 0]},
            {"input_ids": [4, 5, 6], "position_ids": [0, 1, 2]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]] and batch["input_ids"].dtype == torch.long
    assert batch["position_ids"].tolist() == [[0, 1, 0], [0, 1, 2]]
    with pytest.raises(
        DataError, match=r"equal-length 'input_ids' but got lengths \[1, 2\]; use collate_padded"
    ):
        collate_fixed([{"input_ids": [1]}, {"input_ids": [1, 2]}])


def test_collate_padded_pads_and_masks():
    examples = [
        {"input_ids": [2, 7, 8, 3, 9, 3], "token_type_ids": [0, 0, 0, 0, 1, 1], "next_sentence_label": 1},
        {"input_ids": [2, 5, 3, 6, 3], "token_type_ids": [0, 0, 0, 1, 1], "next_sentence_label": 0},
    ]
    batch = collate_padded(examples, pad_token_id=0)
    assert batch["input_ids"].shape == (2, 8)  # padded up to a multiple of 8
    assert batch["input_ids"][1].tolist() == [2, 5, 3, 6, 3, 0, 0, 0]
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0] * 2, [1] * 5 + [0] * 3]
    assert batch["next_sentence_label"].tolist() == [1, 0]
    assert collate_padded(examples, pad_token_id=0, pad_to_multiple_of=None)["input_ids"].shape == (2, 6)


def test_collate_padded_can_omit_an_all_ones_mask_but_never_a_real_one():
    full = [{"input_ids": [2, 7, 8, 3, 9, 3, 4, 3]}, {"input_ids": [2, 5, 3, 6, 3, 1, 1, 3]}]
    assert "attention_mask" not in collate_padded(full, pad_token_id=0, omit_full_mask=True)
    assert collate_padded(full, pad_token_id=0)["attention_mask"].min().item() == 1  # default keeps it
    ragged = [full[0], {"input_ids": [2, 5, 3]}]
    assert collate_padded(ragged, pad_token_id=0, omit_full_mask=True)["attention_mask"][1].tolist() == [1] * 3 + [0] * 5
    # A batch whose rows are equal but shorter than the multiple-of-8 width is padded: the mask stays.
    short = [{"input_ids": [2, 7, 3]}, {"input_ids": [2, 5, 3]}]
    assert "attention_mask" in collate_padded(short, pad_token_id=0, omit_full_mask=True)
