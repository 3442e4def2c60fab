"""Relative-distance regulariser for fine-grained zero-shot SBIR (Sketch_LVM).

A triplet loss alone lets the gap between a sketch's own photo and the other photos of
its class differ widely from one category to the next; a model that generalises to
unseen categories should keep it uniform. With ``d = 1 - cos``, ``p_i`` the photo of
sketch ``s_i`` and ``n_i`` another photo of the same class ``y_i``::

    δ_i = d(s_i, n_i) - d(s_i, p_i)                 relative distance of triplet i
    Δ_c = mean_{i : y_i = c} δ_i                    for each of the C classes in the batch
    q   = softmax_c(Δ_c / τ)
    loss = KL(q || U) = Σ_c q_c log(C · q_c)         U the uniform distribution over the C classes

The loss is 0 exactly when every class has the same mean relative distance (``τ`` = 1 by
default). This is our reading of the paper's regulariser (a KL divergence between the
distribution of per-category relative distances and a uniform one); a batch with one
class gives 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.losses.cosine_triplet import cosine_distance


class RelativeDistanceLoss(nn.Module):
    """``KL(softmax(Δ / τ) || uniform)`` over the batch's classes (see the module docstring).

    ``forward(sketch, positive, negative, labels) -> scalar``.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(
        self, sketch: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        delta = cosine_distance(sketch, negative) - cosine_distance(sketch, positive)
        classes, inverse = torch.unique(labels, return_inverse=True)
        c = len(classes)
        if c < 2:
            return delta.sum() * 0.0
        sums = torch.zeros(c, dtype=delta.dtype, device=delta.device).index_add(0, inverse, delta)
        counts = torch.bincount(inverse, minlength=c).to(delta.dtype)
        log_q = F.log_softmax(sums / counts / self.temperature, dim=0)
        return (log_q.exp() * (log_q + torch.log(torch.tensor(float(c), device=delta.device)))).sum()


__all__ = ["RelativeDistanceLoss"]
