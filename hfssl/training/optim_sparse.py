"""AdamW for embedding tables with row-sparse gradients (``nn.Embedding(..., sparse=True)``).

A dense AdamW step reads and writes every row of a table (parameter, gradient, second moment), and the
embedding backward first fills a dense zero gradient of the table's size. For word2vec, whose batches touch a
few thousand of tens of thousands of rows, that is most of a CPU step. :class:`RowSparseAdamW` updates only
the rows a step's gradient has, and stays *exactly* AdamW (up to float rounding) under the settings where a
row with a zero gradient does not move: ``beta1 = 0`` (no momentum) and no weight decay. Dense AdamW then
leaves an untouched row where it is and only multiplies its second moment by ``beta2``; this optimizer keeps
the step at which each row was last updated and applies the ``beta2 ** missed_steps`` it missed when the row is
next touched:

    v_t = beta2 ** (t - s) * v_s + (1 - beta2) * g_t ** 2,    p_t = p_{t-1} - lr_t * g_t / (sqrt(v_t / (1 - beta2 ** t)) + eps)

(``s``: the row's last update). Other settings (momentum, decay) would move untouched rows, which a lazy update
cannot reproduce: they are refused with a clear error rather than approximated. Dense gradients (a parameter that
is not a sparse embedding) update every row by the same formula.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from hfssl.errors import ConfigError


def has_sparse_embeddings(module: nn.Module) -> bool:
    """Whether ``module`` holds an ``nn.Embedding``/``nn.EmbeddingBag`` with ``sparse=True`` (row-sparse grads)."""
    return any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in module.modules())


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW (``beta1 = 0``, no weight decay) that reads and writes only the rows present in each gradient."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.0, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if betas[0] != 0.0 or weight_decay != 0.0:
            raise ConfigError("row-sparse embedding updates are exact AdamW only with --adam_beta1 0 and "
                              f"--weight_decay 0 (got {betas[0]} and {weight_decay}): set them, or use dense "
                              "embedding gradients")
        if not 0.0 <= betas[1] < 1.0:
            raise ConfigError(f"--adam_beta2 must be in [0, 1), got {betas[1]}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch casts every floating parameter's state to the parameter's dtype: the row clocks are integers.
        for state in self.state.values():
            if "last_step" in state:
                state["last_step"] = state["last_step"].to(torch.int64)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            beta2 = group["betas"][1]
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, lr, beta2, eps)
        return loss

    def _update(self, param: torch.Tensor, grad: torch.Tensor, lr: float, beta2: float, eps: float) -> None:
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["last_step"] = torch.zeros(param.shape[0] if param.dim() else 1, dtype=torch.int64,
                                             device=param.device)
        state["step"] += 1
        step = state["step"]
        exp_avg_sq, last_step = state["exp_avg_sq"], state["last_step"]
        flat_param = param if param.dim() else param.view(1)   # rows along dim 0; a scalar is one row
        flat_v = exp_avg_sq.view_as(flat_param)
        if grad.is_sparse and grad.sparse_dim() != 1:  # sparse elements, not rows: take it whole
            grad = grad.to_dense()
        if grad.is_sparse:
            rows = grad._indices()[0]
            # Rows strictly increasing: already one entry per row (autograd drops the coalesced flag of the
            # objective's gradient when it stores it); otherwise (accumulated micro-batches) sum them first.
            if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
                grad = grad.coalesce()
                rows = grad._indices()[0]
            # The kernel below overwrites its exp_avg argument, these values: a sparse gradient's own values may
            # go (the loop drops the gradient after the step), a dense .grad may not, so that one is copied.
            values = grad._values().to(param.dtype).contiguous()
            rows_param, v = flat_param.index_select(0, rows), flat_v.index_select(0, rows)
            missed = step - 1 - last_step.index_select(0, rows)
        else:
            rows, values = None, grad.reshape_as(flat_param).to(param.dtype, memory_format=torch.contiguous_format,
                                                                copy=True)
            rows_param, v = flat_param, flat_v
            missed = step - 1 - last_step
        # The beta2 decays of the steps a row sat out (zero gradient: dense AdamW only decays its v), then this
        # step's update by torch's own fused AdamW kernel on the gathered rows (beta1 = 0: the first moment is the
        # gradient itself, so the gradient buffer serves as the kernel's exp_avg).
        if bool((missed > 0).any()):
            decay = torch.pow(torch.full(missed.shape, beta2, dtype=param.dtype, device=param.device),
                              missed.to(param.dtype))
            v.mul_(decay.view(-1, *([1] * (v.dim() - 1))))
        torch._fused_adamw_([rows_param], [values], [values], [v], [],
                            [torch.tensor(float(step), dtype=torch.float32, device=param.device)],
                            lr=lr, beta1=0.0, beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        if rows is None:
            last_step.fill_(step)
        else:
            flat_param.index_copy_(0, rows, rows_param)
            flat_v.index_copy_(0, rows, v)
            last_step.index_fill_(0, rows, step)


__all__ = ["RowSparseAdamW", "has_sparse_embeddings"]
