"""CosFace (large margin cosine loss, Wang et al. CVPR 2018), as used by SBIR-DASE-MEMS.

The computation is pytorch-metric-learning's ``CosFaceLoss`` (checked against
the explicit formula in the tests); this module adds the published margin
annealing and a step counter that is saved with the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import CosFaceLoss as _PMLCosFace

from sbir.config import LossConfig
from sbir.losses.factory import register_loss, set_values
from sbir.losses.mems import AnnealedStep


class CosFaceLoss(AnnealedStep):
    """Large margin cosine loss.

    With class weights ``w_j`` (``weight``, shape ``(num_classes, embed_dim)``),
    ``cos_j = <f/||f||, w_j/||w_j||>`` and the current margin ``m_t``::

        logit_j = s * cos_j               for j != y
        logit_y = s * (cos_y - m_t)
        loss    = mean_i cross_entropy(logits_i, y_i)

    ``m_t = margin * min(t / anneal_steps, 1)``: the published code blends
    ``cos_y`` and ``cos_y - m`` with weight ``t / anneal_steps``, which is this
    linear ramp from 0. ``anneal_steps = 0`` (the default) applies the full margin
    from the start (plain CosFace). Test with cosine / angular distance on
    L2-normalised embeddings.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        margin: float = 0.35,
        scale: float = 32.0,
        anneal_steps: int = 0,
        auto_step: bool = True,
    ):
        super().__init__(anneal_steps, auto_step)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= margin < 2.0:
            raise ValueError(f"CosFace margin must be in [0, 2), got {margin}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.margin = float(margin)
        self.scale = float(scale)
        self.impl = _PMLCosFace(num_classes=num_classes, embedding_size=embed_dim, margin=margin, scale=scale)

    @property
    def weight(self) -> torch.Tensor:
        """Class weights as ``(num_classes, embed_dim)`` (pytorch-metric-learning stores the transpose)."""
        return self.impl.W.t()

    def current_margin(self) -> float:
        return self.margin * self.alpha()

    def logits(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The margin-adjusted, scaled logits (explicit formula; the loss uses pytorch-metric-learning)."""
        cos = F.normalize(features, dim=1) @ F.normalize(self.impl.W.to(features.dtype), dim=0)
        onehot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        return self.scale * (cos - self.current_margin() * onehot)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.embed_dim:
            raise ValueError(f"features must be (B, {self.embed_dim}), got {tuple(features.shape)}")
        self.impl.margin = self.current_margin()
        loss = self.impl(features, labels)
        self._after_forward()
        return loss

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Margin-free class of each feature: the largest cosine to a class weight."""
        w = F.normalize(self.weight.to(features.dtype), dim=1)
        return (F.normalize(features, dim=1) @ w.t()).argmax(dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, margin={self.margin}, "
            f"scale={self.scale}, anneal_steps={self.anneal_steps}"
        )


@register_loss("cosface", kind="classes", distance="angular", normalized=True)
def _build_cosface(cfg: LossConfig, num_classes: int, embed_dim: int) -> CosFaceLoss:
    """CosFace over ``num_classes`` weights shared by both domains; normalised embeddings, angular distance."""
    return CosFaceLoss(num_classes, embed_dim, **set_values(cfg, "margin", "scale", "anneal_steps"))


__all__ = ["CosFaceLoss"]
