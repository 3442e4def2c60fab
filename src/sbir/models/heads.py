"""Projection heads mapping pooled backbone features to an L2-normalised embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``identity``: no projection; ``linear``: one Linear; ``mlp``: Linear-BN-ReLU-Linear (SimCLR style).

    The output is L2-normalised.
    """

    def __init__(self, in_features: int, embed_dim: int = 512, kind: str = "linear", dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if kind == "identity":  # off-the-shelf features, e.g. the ImageNet baseline
            self.proj = nn.Identity()
        elif kind == "linear":
            self.proj = nn.Linear(in_features, embed_dim)
        elif kind == "mlp":
            hidden = max(embed_dim, in_features)
            self.proj = nn.Sequential(
                nn.Linear(in_features, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, embed_dim),
            )
        else:
            raise ValueError(f"unknown head kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.dropout(x)), dim=-1)
