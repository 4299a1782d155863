"""hfssl.training.optim_sparse: the row-sparse AdamW is dense AdamW (beta1 = 0, no decay) on the rows a step touches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfssl.config import TrainingArguments
from hfssl.errors import ConfigError
from hfssl.training.optim import build_optimizer
from hfssl.training.optim_sparse import RowSparseAdamW, has_sparse_embeddings

V, D = 12, 3


def sparse_grad(rows: list[int], generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A row-sparse gradient with duplicated, unsorted rows (as autograd sums them under accumulation)."""
    index = torch.tensor([rows])
    values = torch.randn(len(rows), D, generator=generator, dtype=dtype)
    return torch.sparse_coo_tensor(index, values, (V, D), check_invariants=True)


@pytest.mark.parametrize("lr_schedule", [[0.1] * 8, [0.1, 0.08, 0.06, 0.05, 0.04, 0.02, 0.01, 0.005]])
def test_equals_dense_adamw_on_touched_rows_and_leaves_the_others_unchanged(lr_schedule):
    torch.manual_seed(0)
    start = torch.randn(V, D, dtype=torch.float64)
    dense_p = nn.Parameter(start.clone())
    sparse_p = nn.Parameter(start.clone())
    dense = torch.optim.AdamW([dense_p], lr=0.1, betas=(0.0, 0.99), eps=1e-8, weight_decay=0.0)
    lazy = RowSparseAdamW([sparse_p], lr=0.1, betas=(0.0, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    # Row 11 is never touched; rows come back after gaps of several steps (their second moment must have decayed).
    touched = [[0, 3, 3, 7], [1, 0], [5], [0, 9, 2, 2], [4], [3, 10, 1], [6, 6], [0, 8, 3]]
    for lr, rows in zip(lr_schedule, touched):
        for group in (*dense.param_groups, *lazy.param_groups):
            group["lr"] = lr
        grad = sparse_grad(rows, gen)
        before = sparse_p.detach().clone()
        dense_p.grad, sparse_p.grad = grad.to_dense(), grad
        dense.step()
        lazy.step()
        untouched = sorted(set(range(V)) - set(rows))
        assert torch.equal(sparse_p.detach()[untouched], before[untouched])
        torch.testing.assert_close(sparse_p.detach(), dense_p.detach(), rtol=1e-12, atol=1e-13)
    assert torch.equal(sparse_p.detach()[11], start[11])
    # Second moments agree too once the decays a row missed are applied (rows not touched since: catch up here).
    state = lazy.state[sparse_p]
    missed = state["step"] - state["last_step"]
    caught_up = state["exp_avg_sq"] * (0.99 ** missed.double())[:, None]
    torch.testing.assert_close(caught_up, dense.state[dense_p]["exp_avg_sq"], rtol=1e-12, atol=1e-15)


def test_dense_gradients_take_the_dense_update():
    torch.manual_seed(0)
    dense_p, lazy_p = (nn.Parameter(torch.randn(V, D, dtype=torch.float64)) for _ in range(2))
    with torch.no_grad():
        lazy_p.copy_(dense_p)
    dense = torch.optim.AdamW([dense_p], lr=0.05, betas=(0.0, 0.999), weight_decay=0.0)
    lazy = RowSparseAdamW([lazy_p], lr=0.05, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(2)
    for i in range(4):
        grad = torch.randn(V, D, generator=gen, dtype=torch.float64)
        if i in (1, 2):  # row-sparse, then element-sparse (taken whole), steps in between
            grad = sparse_grad([1, 4], gen).to_dense()
            lazy_p.grad = grad.to_sparse(sparse_dim=1) if i == 1 else grad.to_sparse()
        else:
            lazy_p.grad = grad
        dense_p.grad = grad
        dense.step()
        lazy.step()
    torch.testing.assert_close(lazy_p.detach(), dense_p.detach(), rtol=1e-12, atol=1e-13)


def test_state_round_trips_with_integer_row_clocks():
    p = nn.Parameter(torch.zeros(V, D))
    opt = RowSparseAdamW([p], lr=0.1)
    p.grad = sparse_grad([2, 5], torch.Generator().manual_seed(0), dtype=torch.float32)
    opt.step()
    saved = opt.state_dict()
    fresh = RowSparseAdamW([p], lr=0.1)
    fresh.load_state_dict(saved)
    state = fresh.state[p]
    assert state["last_step"].dtype == torch.int64 and state["step"] == 1
    assert state["last_step"].tolist() == [0, 0, 1, 0, 0, 1] + [0] * (V - 6)


def test_settings_it_cannot_reproduce_are_refused():
    p = nn.Parameter(torch.zeros(V, D))
    with pytest.raises(ConfigError, match="adam_beta1 0"):
        RowSparseAdamW([p], betas=(0.9, 0.999))
    with pytest.raises(ConfigError, match="weight_decay 0"):
        RowSparseAdamW([p], weight_decay=0.01)


def test_build_optimizer_picks_it_only_for_sparse_embeddings(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), adam_beta1=0.0, weight_decay=0.0)
    dense_model = nn.Sequential(nn.Embedding(V, D), nn.Linear(D, 2))
    assert not has_sparse_embeddings(dense_model)
    assert type(build_optimizer(dense_model, args, torch.device("cpu"))) is torch.optim.AdamW
    sparse_model = nn.Sequential(nn.Embedding(V, D, sparse=True))
    assert has_sparse_embeddings(sparse_model)
    assert isinstance(build_optimizer(sparse_model, args, torch.device("cpu")), RowSparseAdamW)
