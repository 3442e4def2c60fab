"""Multiplicative Euclidean Margin Softmax (MEMS), from Lu et al. (ACM MM 2021,
arXiv:1812.04275; code github.com/Ben-Louis/SBIR-DASE-MEMS ``models/losses.py``).

Defaults follow the published code and README: margin target ``m = 4`` (their
TU-Berlin and Sketchy ResNeXt-101 runs), margin annealed over ``100000`` steps
(``--annealing_step``), class centres initialised as random unit vectors, no
logit scale (``scale = 1``), features not normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import LossConfig
from sbir.losses.factory import register_loss, set_values


class AnnealedStep(nn.Module):
    """A step counter in a buffer (saved in ``state_dict``, so a resumed run continues the schedule).

    ``alpha(t) = min(t / anneal_steps, 1)`` (1 at once when ``anneal_steps == 0``).
    With ``auto_step=True`` (the published behaviour) every ``forward`` in
    training mode advances the counter after computing the loss; with
    ``auto_step=False`` the caller calls :meth:`step` once per optimizer step
    (use this with gradient accumulation). Eval-mode forwards never advance it.
    """

    def __init__(self, anneal_steps: int, auto_step: bool = True):
        super().__init__()
        if anneal_steps < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {anneal_steps}")
        self.anneal_steps = int(anneal_steps)
        self.auto_step = bool(auto_step)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def alpha(self) -> float:
        if self.anneal_steps == 0:
            return 1.0
        return min(float(self.num_steps.item()) / self.anneal_steps, 1.0)

    def step(self, n: int = 1) -> None:
        self.num_steps += int(n)

    def _after_forward(self) -> None:
        if self.training and self.auto_step:
            self.step()


class MEMSLoss(AnnealedStep):
    """Multiplicative Euclidean Margin Softmax.

    With learnable class centres ``c_j`` (``centers``, shape ``(num_classes, embed_dim)``)
    and the current margin ``m_t``::

        logit_j = -s * ||f - c_j||^2            for j != y
        logit_y = -s * m_t^2 * ||f - c_y||^2    (true class)
        loss    = cross_entropy(logits, y)      (mean over the batch by default)

    so a sample is classified correctly only when its distance to its own centre,
    multiplied by ``m_t``, is still below the distance to every other centre: the
    largest intra-class distance is pushed below the smallest inter-class one.
    The margin is annealed linearly from 1 to ``margin``:
    ``m_t = 1 + (margin - 1) * min(t / anneal_steps, 1)``; see :class:`AnnealedStep`
    for how ``t`` advances. ``s`` (``scale``, default 1 as published) is a fixed
    temperature. Use the same (euclidean) distance at test time.
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        margin: float = 4.0,
        anneal_steps: int = 100_000,
        scale: float = 1.0,
        auto_step: bool = True,
        reduction: str = "mean",
    ):
        super().__init__(anneal_steps, auto_step)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if margin < 1.0:
            raise ValueError(f"MEMS margin must be >= 1 (1 = plain softmax on distances), got {margin}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.margin = float(margin)
        self.scale = float(scale)
        self.reduction = reduction
        self.centers = nn.Parameter(F.normalize(torch.randn(num_classes, embed_dim), dim=1))

    def current_margin(self) -> float:
        return 1.0 + (self.margin - 1.0) * self.alpha()

    def logits(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` logits with the current margin on the true class."""
        d2 = torch.cdist(features, self.centers.to(features.dtype)).pow(2)
        m = self.current_margin()
        onehot = F.one_hot(labels, self.num_classes).to(torch.bool)
        d2 = torch.where(onehot, d2 * (m * m), d2)
        return -self.scale * d2

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.embed_dim:
            raise ValueError(f"features must be (B, {self.embed_dim}), got {tuple(features.shape)}")
        loss = F.cross_entropy(self.logits(features, labels), labels, reduction=self.reduction)
        self._after_forward()
        return loss

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest-centre class of each feature."""
        return torch.cdist(features, self.centers.to(features.dtype)).argmin(dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, margin={self.margin}, "
            f"anneal_steps={self.anneal_steps}, scale={self.scale}"
        )


@register_loss("mems", kind="classes", distance="euclidean", normalized=False)
def _build_mems(cfg: LossConfig, num_classes: int, embed_dim: int) -> MEMSLoss:
    """MEMS over ``num_classes`` centres shared by both domains; raw embeddings, euclidean test distance."""
    return MEMSLoss(num_classes, embed_dim, **set_values(cfg, "margin", "anneal_steps", "scale"))


__all__ = ["AnnealedStep", "MEMSLoss"]
