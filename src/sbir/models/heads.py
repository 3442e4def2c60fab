"""Projection heads mapping pooled backbone features to an L2-normalised embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ridge_map(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """The ``(D, D)`` linear map ``W`` nearest the identity that takes the rows of ``a`` to those of ``b``.

    Ridge regression shrunk towards the identity rather than towards zero, so that with few pairs the map
    stays close to "compare the features as they are":

        W = argmin_W ||a W^T - b||^2 + lam ||W - I||^2   =>   W^T = (a^T a + lam I)^(-1) (a^T b + lam I)

    ``a``, ``b``: ``(N, D)`` paired rows (a sketch's features, its photo's); ``lam > 0``. Solved in float64.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ridge_map needs two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not lam > 0:
        raise ValueError(f"ridge_map needs lam > 0, got {lam}")
    a64, b64 = a.double(), b.double()
    eye = torch.eye(a.shape[1], dtype=torch.float64, device=a.device)
    wt = torch.linalg.solve(a64.T @ a64 + lam * eye, a64.T @ b64 + lam * eye)
    return wt.T.to(a.dtype).contiguous()


class CentredMap(nn.Module):
    """``x -> W normalize(x - mean)``: one domain's centring and linear map, fitted in closed form.

    ``mean`` and ``W`` are buffers, not parameters: the fine-grained task fits them on the training split
    (``model.head=ridge``; :meth:`sbir.engine.finegrained.FineGrainedTask.fit_closed_form`). Subtracting each
    domain's own mean removes what all sketches (or all edge maps) share, which otherwise dominates the
    cosine between a sketch and a photo. Until fitted (``mean`` 0, ``W`` the identity) it is the identity
    head.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("weight", torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x - self.mean, dim=-1), self.weight)


class ProjectionHead(nn.Module):
    """``identity``: no projection; ``linear``: one Linear; ``mlp``: Linear-BN-ReLU-Linear (SimCLR style);
    ``ridge``: a :class:`CentredMap`, fitted in closed form rather than trained (fine-grained only).

    The output is L2-normalised.
    """

    def __init__(self, in_features: int, embed_dim: int = 512, kind: str = "linear", dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if kind == "identity":  # off-the-shelf features, e.g. the ImageNet baseline
            self.proj = nn.Identity()
        elif kind == "linear":
            self.proj = nn.Linear(in_features, embed_dim)
        elif kind == "ridge":  # the features' own width, like identity
            self.proj = CentredMap(in_features)
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
