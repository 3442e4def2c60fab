"""Neighbourhood-topology loss (Li, Pang and Song, "Photo Pre-Training, But for Sketch", CVPR 2023).

A pretrained photo encoder already knows which photos look alike. The loss asks
each sketch to rank the photos of its batch in the order the frozen pretrained
photo space ranks them around the sketch's own photo. With ``D`` the
pretrained photo-to-photo distance, ``d(x, y) = 1 - cos(x, y)`` the learned
sketch-to-photo distance, anchor sketch ``s_i`` (photo ``p_i``) and pairs
``(j, k)`` of other photos of the batch ordered so that ``D(p_i, p_j) < D(p_i, p_k)``::

    l_i  = 1/|P_i|  sum_{(j, k) in P_i}  max(0, d(s_i, p_j) - d(s_i, p_k) + margin)
    loss = mean_i l_i

``P_i`` holds ``pairs`` (K) pairs drawn at random from the batch (all pairs
when ``pairs`` is None); pairs with equal ``D`` carry no order and are left
out. The paper uses K = 10 and margin 0.01.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NeighbourhoodTopologyLoss(nn.Module):
    """``forward(sketch, photo, ref_dist) -> scalar``; ``ref_dist`` is the (B, B) pretrained photo distance
    matrix of the batch's photos (row ``i`` = photo of sketch ``i``)."""

    def __init__(self, margin: float = 0.01, pairs: int | None = 10):
        super().__init__()
        if margin < 0:
            raise ValueError(f"topology margin must be >= 0, got {margin}")
        if pairs is not None and pairs < 1:
            raise ValueError(f"topology pairs must be >= 1 (or None for all pairs), got {pairs}")
        self.margin = float(margin)
        self.pairs = pairs

    def _pairs(self, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) indices j and k for every anchor (global torch RNG, so resumed runs draw the same)."""
        if self.pairs is None:
            jj, kk = torch.meshgrid(torch.arange(b), torch.arange(b), indexing="ij")
            keep = jj < kk
            j, k = jj[keep], kk[keep]
            return j.expand(b, -1).to(device), k.expand(b, -1).to(device)
        j = torch.randint(b, (b, self.pairs)).to(device)
        k = torch.randint(b, (b, self.pairs)).to(device)
        return j, k

    def forward(self, sketch: torch.Tensor, photo: torch.Tensor, ref_dist: torch.Tensor) -> torch.Tensor:
        b = sketch.shape[0]
        if photo.shape != sketch.shape or ref_dist.shape != (b, b):
            raise ValueError(
                f"expected (B, D) sketch and photo embeddings and a (B, B) reference distance matrix, got "
                f"{tuple(sketch.shape)}, {tuple(photo.shape)}, {tuple(ref_dist.shape)}"
            )
        with torch.autocast(device_type=sketch.device.type, enabled=False):
            d = 1.0 - F.normalize(sketch.float(), dim=1) @ F.normalize(photo.float(), dim=1).t()
            ref = ref_dist.float().to(d.device)
            j, k = self._pairs(b, d.device)
            anchor = torch.arange(b, device=d.device)[:, None].expand_as(j)
            ref_j, ref_k = ref[anchor, j], ref[anchor, k]
            valid = (j != anchor) & (k != anchor) & (j != k) & (ref_j != ref_k)
            near = torch.where(ref_j < ref_k, j, k)  # the photo closer to the anchor's photo
            far = torch.where(ref_j < ref_k, k, j)
            hinge = F.relu(d[anchor, near] - d[anchor, far] + self.margin)
            per_anchor = (hinge * valid).sum(1) / valid.sum(1).clamp(min=1)
            has_pairs = valid.any(1)
            if not has_pairs.any():
                return (sketch.sum() + photo.sum()) * 0.0
            return per_anchor[has_pairs].mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, pairs={self.pairs}"


__all__ = ["NeighbourhoodTopologyLoss"]
