"""NT-Xent (InfoNCE) losses for fine-grained SBIR, including the EffNet/ARNet double-siamese loss.

Notation: ``a`` and ``b`` are two aligned batches of embeddings, (B, D); row
``i`` of ``a`` and row ``i`` of ``b`` are two views of the same thing (a sketch
and its photo, or two augmentations of one image). ``s(x, y) = x·y / (|x||y|)``
is the cosine similarity (inputs are L2-normalised here again, which is a no-op
for :meth:`SBIRModel.embed` outputs), ``t`` the temperature and ``g`` an
optional (B,) tensor of group ids (the photo index of each row).

Groups: two *different* rows of the same group (e.g. two sketches of one photo,
or the same photo twice) are not negatives of each other; they are removed from
the softmax denominator. Only the aligned partner is the positive. Without
``groups`` every row is its own group.

Two forms exist and both are implemented:

* ``negatives="cross"`` (CLIP form, :class:`CrossModalNTXent`)::

      l(a→b)_i = -log  exp(s(a_i, b_i)/t) / Σ_{j : j = i or g_j ≠ g_i} exp(s(a_i, b_j)/t)
      loss     = 1/2 [ mean_i l(a→b)_i + mean_i l(b→a)_i ]

  i.e. ``1/2 [CE(a bᵀ/t, diag) + CE(b aᵀ/t, diag)]`` with same-group
  off-diagonal logits masked to -inf. Each row has B-1 negatives (other view only).

* ``negatives="all"`` (SimCLR form, what EffNet/ARNet's ``cross_loss`` computes)::

      z = [a; b]  (2B, D),   partner(r) = r ± B,   G = [g; g]
      l_r  = -log  exp(s(z_r, z_partner(r))/t) / Σ_{c ≠ r : c = partner(r) or G_c ≠ G_r} exp(s(z_r, z_c)/t)
      loss = mean over the 2B rows of l_r

  Each row has 2B-2 negatives: the other rows of *both* views. Without
  ``groups`` this equals ``pytorch_metric_learning.losses.NTXentLoss`` on the
  concatenated embeddings with labels = pair ids (tested), but is computed here
  from one (2B, 2B) logit matrix: pml's implementation materialises a
  (2B) x (2B)² mask, which needs gigabytes at B=256 and is ~40x slower.

Both forms are symmetric in ``a`` and ``b``. The loss is evaluated in float32
with autocast disabled, so it is safe inside a mixed-precision training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses.factory import FineGrainedLoss, register_loss, set_values

NEGATIVES = ("all", "cross")


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ConfigError(f"NT-Xent temperature must be a positive number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ConfigError(f"NT-Xent temperature must be a positive finite number, got {temperature!r}")
    return t


def _check_weight(name: str, value: float) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(w) or w < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return w


def check_pair(a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Validate two aligned (B, D) batches and return (B,) long group ids (``arange(B)`` when None)."""
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"expected two (B, D) embedding batches, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"the two embedding batches must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] == 0:
        raise ValueError("empty embedding batch")
    n = a.shape[0]
    if groups is None:
        return torch.arange(n, device=a.device)
    groups = torch.as_tensor(groups, device=a.device)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
    if groups.dtype.is_floating_point or groups.dtype == torch.bool or groups.is_complex():
        raise ValueError(f"groups must be an integer tensor, got dtype {groups.dtype}")
    return groups.long()


def ntxent(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    groups: torch.Tensor | None = None,
    negatives: str = "all",
) -> torch.Tensor:
    """Functional NT-Xent; see the module docstring for both forms' formulas."""
    if negatives not in NEGATIVES:
        raise ConfigError(f"NT-Xent negatives must be one of {NEGATIVES}, got {negatives!r}")
    g = check_pair(a, b, groups)
    n = a.shape[0]
    with torch.autocast(device_type=a.device.type, enabled=False):
        a32 = F.normalize(a.float(), dim=1)
        b32 = F.normalize(b.float(), dim=1)
        same = g.unsqueeze(0) == g.unsqueeze(1)  # (B, B)
        if negatives == "cross":
            logits = (a32 @ b32.T) / temperature
            eye = torch.eye(n, dtype=torch.bool, device=a.device)
            logits = logits.masked_fill(same & ~eye, float("-inf"))
            target = torch.arange(n, device=a.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        z = torch.cat([a32, b32], dim=0)
        logits = (z @ z.T) / temperature  # (2B, 2B)
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
        same2 = same.repeat(2, 2)  # includes the self-similarity diagonal
        is_partner = torch.zeros_like(same2)
        is_partner[torch.arange(2 * n, device=a.device), partner] = True
        logits = logits.masked_fill(same2 & ~is_partner, float("-inf"))
        return F.cross_entropy(logits, partner)


class NTXent(nn.Module):
    """NT-Xent between two aligned views ``a`` and ``b``, (B, D) each.

    ``negatives="all"`` (default, SimCLR / EffNet-ARNet)::

        z = [a; b], l_r = -log exp(s(z_r, z_r')/t) / Σ_{c≠r, c=r' or g_c≠g_r} exp(s(z_r, z_c)/t),
        loss = mean_r l_r   (r over 2B rows, r' = r's partner in the other view)

    ``negatives="cross"`` (CLIP)::

        loss = 1/2 [CE(a bᵀ/t, diag) + CE(b aᵀ/t, diag)], same-group off-diagonal logits masked

    ``forward(a, b, groups=None) -> scalar``. Rows with equal ``groups`` are not
    negatives of each other.
    """

    def __init__(self, temperature: float = 0.07, negatives: str = "all"):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if negatives not in NEGATIVES:
            raise ConfigError(f"NT-Xent negatives must be one of {NEGATIVES}, got {negatives!r}")
        self.negatives = negatives

    def forward(self, a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return ntxent(a, b, self.temperature, groups, self.negatives)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, negatives={self.negatives!r}"


class CrossModalNTXent(NTXent):
    """Symmetric cross-view InfoNCE (CLIP form)::

        loss = 1/2 [ CE(a bᵀ/t, diag) + CE(b aᵀ/t, diag) ]

    where logits ``(a_i·b_j)/t`` with ``i ≠ j`` and ``groups[i] == groups[j]``
    are set to -inf (same-group rows are not negatives; the diagonal stays the
    positive). ``forward(a, b, groups=None) -> scalar``.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__(temperature, negatives="cross")

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class DoubleSiameseNTXent(nn.Module):
    """EffNet/ARNet double-siamese contrastive loss::

        loss = w_cross  · NTXent(s1, p1)     sketch  <-> its photo
             + w_sketch · NTXent(s1, s2)     sketch  <-> augmented sketch
             + w_photo  · NTXent(p1, p2)     photo   <-> augmented photo

    ``NTXent`` is :func:`ntxent` with ``negatives`` (default ``"all"``, the
    SimCLR form ARNet's ``cross_loss`` uses for all three terms; ``"cross"``
    uses the CLIP form) and the same ``groups`` for every term, so two sketches
    of one photo, or one photo appearing twice, are never negatives.

    ``forward(s1, s2, p1, p2, groups=None) -> (total, parts)`` where ``parts``
    maps ``ntxent_cross`` / ``ntxent_sketch`` / ``ntxent_photo`` to the
    *unweighted* term values as floats (for logging). A term with weight 0 is
    not computed and its views may be ``None``.
    (ARNet additionally applies the cross term to pre-projection backbone
    features; that needs model internals and is not part of this loss.)
    """

    def __init__(
        self,
        temperature: float = 0.07,
        weight_cross: float = 1.0,
        weight_sketch: float = 1.0,
        weight_photo: float = 1.0,
        negatives: str = "all",
    ):
        super().__init__()
        self.ntxent = NTXent(temperature, negatives)
        self.weight_cross = _check_weight("loss.weight_cross", weight_cross)
        self.weight_sketch = _check_weight("loss.weight_sketch", weight_sketch)
        self.weight_photo = _check_weight("loss.weight_photo", weight_photo)
        if self.weight_cross == self.weight_sketch == self.weight_photo == 0:
            raise ConfigError("loss.weight_cross, loss.weight_sketch and loss.weight_photo are all 0: nothing to train")

    @property
    def needs_sketch_aug(self) -> bool:
        return self.weight_sketch > 0

    @property
    def needs_photo_aug(self) -> bool:
        return self.weight_photo > 0

    def forward(
        self,
        s1: torch.Tensor,
        s2: torch.Tensor | None,
        p1: torch.Tensor,
        p2: torch.Tensor | None,
        groups: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms: list[tuple[str, float, torch.Tensor | None, torch.Tensor | None]] = [
            ("ntxent_cross", self.weight_cross, s1, p1),
            ("ntxent_sketch", self.weight_sketch, s1, s2),
            ("ntxent_photo", self.weight_photo, p1, p2),
        ]
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for name, w, x, y in terms:
            if w == 0:
                continue
            if x is None or y is None:
                raise ValueError(f"{name} has weight {w} but one of its views is missing (None)")
            value = self.ntxent(x, y, groups)
            parts[name] = float(value.detach())
            total = w * value if total is None else total + w * value
        assert total is not None  # at least one weight is > 0 (checked in __init__)
        return total, parts

    def extra_repr(self) -> str:
        return (
            f"temperature={self.ntxent.temperature}, negatives={self.ntxent.negatives!r}, "
            f"weight_cross={self.weight_cross}, weight_sketch={self.weight_sketch}, weight_photo={self.weight_photo}"
        )


@register_loss("ntxent", kind="pairs")
def _build_ntxent(cfg: LossConfig, num_classes=None, embed_dim=None) -> FineGrainedLoss:
    """``w_cross·NTXent(s1,p1) + w_sketch·NTXent(s1,s2) + w_photo·NTXent(p1,p2)`` (SimCLR/ARNet form)."""
    if cfg.weight_cross == 0:
        raise ConfigError(
            "loss.weight_cross is 0 with loss.name='ntxent': no term links sketches to photos. "
            "Set loss.weight_cross > 0 or use loss.name='ntxent+triplet'"
        )
    terms = set_values(cfg, "temperature", "weight_cross", "weight_sketch", "weight_photo")
    return FineGrainedLoss(DoubleSiameseNTXent(**terms), None)
