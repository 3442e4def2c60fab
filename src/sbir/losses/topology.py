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

First-order meta update (``loss.topology_meta``, :func:`first_order_meta_step`). The
paper does not add the term to the retrieval loss ``L_main``; it asks that the
topology hold *after* a step of retrieval learning. With parameters ``θ``,
virtual learning rate ``α`` and topology weight ``w``::

    g  = ∇_θ L_main(θ)
    θ' = θ - α g                          (virtual SGD step; g taken as a constant)
    h  = ∇_θ' L_topo(θ')                  (first order: no second derivatives through θ')
    θ <- optimiser step with gradient  g + w h

Without the option the term is simply added: gradient ``g + w ∇_θ L_topo(θ)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def first_order_meta_step(
    params: Sequence[torch.Tensor],
    main_loss: torch.Tensor,
    topology_loss: Callable[[], torch.Tensor],
    lr: float,
    weight: float,
    scale: float = 1.0,
) -> torch.Tensor:
    """Leave ``g + weight * h`` (see the module docstring) in every parameter's ``.grad``; return ``L_topo(θ')``.

    ``main_loss`` is ``L_main(θ)`` with its graph; ``topology_loss()`` computes ``L_topo`` with the
    parameters as they are when it is called (it runs a fresh forward at ``θ'``). The parameters are
    restored to ``θ`` before returning; only ``.grad`` changes. ``scale`` is a mixed-precision loss scale
    (``GradScaler.get_scale()``): both gradients are taken of the scaled losses, so ``.grad`` is scaled
    like a plain ``scaler.scale(loss).backward()`` and the optimiser step unscales it as usual; the virtual
    step uses the unscaled ``g``. A non-finite ``g`` (an overflowing scale) skips the virtual step: the
    scaler then skips the update anyway. Parameters a loss does not reach get a zero gradient from it.
    """
    params = [p for p in params if p.requires_grad]

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        gs = torch.autograd.grad(loss * scale, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]

    g = grads(main_loss)
    theta = [p.detach().clone() for p in params]
    finite = all(bool(torch.isfinite(x).all()) for x in g)
    try:
        if finite:
            with torch.no_grad():
                for p, gi in zip(params, g, strict=True):
                    p.sub_(gi, alpha=lr / scale)
        topo = topology_loss()
        h = grads(topo)
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta, strict=True):
                p.copy_(t)
    for p, gi, hi in zip(params, g, h, strict=True):
        p.grad = gi + weight * hi
    return topo.detach()


__all__ = ["NeighbourhoodTopologyLoss", "first_order_meta_step"]
