"""Triplet loss on cosine distance with explicit anchor / positive / negative rows (CLIP prompt learning).

With ``d(x, y) = 1 - x·y / (|x| |y|)``::

    loss = mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin),   margin = 0.2

Sketch_LVM: the anchor is a sketch, the positive a photo of its class (or, fine-grained,
its own photo), the negative a photo of another class (fine-grained: another photo of the
same class). This is PyTorch's ``TripletMarginWithDistanceLoss`` with that distance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sbir.errors import ConfigError


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise ``1 - cos(x_i, y_i)``."""
    return 1.0 - F.cosine_similarity(x.float(), y.float(), dim=-1)


def check_margin(margin, key: str = "loss.triplet_margin") -> float:
    try:
        m = float(margin)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number >= 0, got {margin!r}") from None
    if not math.isfinite(m) or m < 0:
        raise ConfigError(f"{key} must be a finite number >= 0 (cosine-distance units, e.g. 0.2), got {margin!r}")
    return m


class CosineTripletLoss(nn.Module):
    """``mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)`` with ``d = 1 - cos``.

    ``forward(anchor, positive, negative) -> scalar``; all (B, D), row ``i`` one triplet.
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = check_margin(margin)

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        if not (anchor.shape == positive.shape == negative.shape) or anchor.dim() != 2:
            raise ValueError(
                f"triplet rows must be three (B, D) tensors of one shape, got {tuple(anchor.shape)}, "
                f"{tuple(positive.shape)}, {tuple(negative.shape)}"
            )
        gap = cosine_distance(anchor, positive) - cosine_distance(anchor, negative) + self.margin
        return F.relu(gap).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance='cosine'"


__all__ = ["CosineTripletLoss", "cosine_distance"]
