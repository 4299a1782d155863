"""Projection heads of the joint-embedding tasks: MLP projectors/predictors and DINO's head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DinoHead", "default_head_width", "mlp"]


def default_head_width(hidden_size: int) -> int:
    """Hidden width of a head for a backbone of ``hidden_size``: the papers' 2048 for ViT-S and up, four times
    the backbone's width below that (a 2048-wide head on a 64-wide tiny ViT would cost more than the ViT)."""
    return 2048 if hidden_size >= 384 else max(256, 4 * hidden_size)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, *, last_batch_norm: bool = False) -> nn.Sequential:
    """``layers`` linear layers with BatchNorm + ReLU between them (SimCLR/BYOL/MoCo v3's projector and
    predictor); ``last_batch_norm`` adds an affine-free BatchNorm on the output (MoCo v3's projector).

    Batch statistics are per process (no SyncBatchNorm), as in most reimplementations."""
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    modules: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        last = i == layers - 1
        # A bias right before a BatchNorm is cancelled by it: only the last layer without BatchNorm has one.
        modules.append(nn.Linear(a, b, bias=last and not last_batch_norm))
        if not last:
            modules += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_batch_norm:
            modules.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*modules)


class DinoHead(nn.Module):
    """DINO's head: a 3-layer GELU MLP to a ``bottleneck_dim`` vector, L2-normalised, then a weight-normalised
    linear layer to ``out_dim`` prototype scores.

    The last layer is weight-normalised (no parametrization object, so copies, EMA updates and sharding see
    plain parameters): each score is a cosine between the bottleneck vector and a normalised row of
    ``last_layer``, times that row's gain. ``norm_last_layer=True`` fixes the gains to 1 (DINO's setting for
    ViT-B); ``False`` learns them (``last_layer_gain``, starting at 1: DINO's setting for ViT-S and smaller),
    so the student can sharpen its scores beyond ``1 / student_temperature``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        # batch_norm: DINO's use_bn_in_head (its ResNet setting), BatchNorm after the hidden layers.
        def hidden(a: int, b: int) -> list[nn.Module]:
            return [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if batch_norm else []), nn.GELU()]

        self.mlp = nn.Sequential(*hidden(in_dim, hidden_dim), *hidden(hidden_dim, hidden_dim),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.kaiming_uniform_(self.last_layer, a=5 ** 0.5)  # nn.Linear's own initialisation
        # 1-D, so the optimizer's no-decay group holds it, as it holds norm weights.
        self.last_layer_gain = None if norm_last_layer else nn.Parameter(torch.ones(out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(features), dim=-1)
        scores = F.linear(x, F.normalize(self.last_layer, dim=-1))
        return scores if self.last_layer_gain is None else scores * self.last_layer_gain
