"""Build the fine-grained training loss from :class:`~sbir.config.LossConfig`."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses.ntxent import DoubleSiameseNTXent
from sbir.losses.triplet import HardTripletLoss

LOSS_NAMES = ("ntxent", "triplet", "ntxent+triplet")


class FineGrainedLoss(nn.Module):
    """The loss ``build_loss`` returns; see :func:`build_loss`."""

    def __init__(self, ntxent: Optional[DoubleSiameseNTXent], triplet: Optional[HardTripletLoss], weight_triplet: float):
        super().__init__()
        if ntxent is None and triplet is None:
            raise ConfigError("a fine-grained loss needs an NT-Xent term, a triplet term or both")
        self.ntxent = ntxent
        self.triplet = triplet
        self.weight_triplet = float(weight_triplet)

    def required_keys(self) -> tuple[str, ...]:
        keys = ["sketch", "photo"]
        if self.ntxent is not None and self.ntxent.needs_sketch_aug:
            keys.append("sketch_aug")
        if self.ntxent is not None and self.ntxent.needs_photo_aug:
            keys.append("photo_aug")
        return tuple(keys)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        missing = [k for k in self.required_keys() if batch.get(k) is None]
        if missing:
            raise ValueError(f"loss batch lacks {missing}; it needs {list(self.required_keys())} (+ optional 'groups')")
        groups = batch.get("groups")
        parts: dict[str, float] = {}
        total: Optional[torch.Tensor] = None
        if self.ntxent is not None:
            total, parts = self.ntxent(batch["sketch"], batch.get("sketch_aug"), batch["photo"], batch.get("photo_aug"), groups)
        if self.triplet is not None:
            trip = self.triplet(batch["sketch"], batch["photo"], groups)
            parts["triplet"] = float(trip.detach())
            total = trip if total is None else total + self.weight_triplet * trip
        assert total is not None
        return total, parts


def build_loss(cfg: LossConfig) -> FineGrainedLoss:
    """Fine-grained loss module for ``cfg``.

    ``forward(batch) -> (loss, parts)`` with ``batch`` a dict of L2-normalised
    (B, D) embeddings ``{"sketch": s1, "sketch_aug": s2, "photo": p1,
    "photo_aug": p2, "groups": g}`` (``groups``, the (B,) photo index of each
    row, is optional; the ``*_aug`` views are needed only by NT-Xent terms with
    a weight > 0).

    * ``"ntxent"``: ``w_cross·NTXent(s1,p1) + w_sketch·NTXent(s1,s2) + w_photo·NTXent(p1,p2)``
      (:class:`~sbir.losses.ntxent.DoubleSiameseNTXent`, SimCLR/ARNet form, ``cfg.temperature``).
    * ``"triplet"``: batch-hard cross-modal triplet on cosine distance with
      ``cfg.triplet_margin`` (:class:`~sbir.losses.triplet.HardTripletLoss`);
      ``weight_triplet`` is not applied (it would only rescale the loss).
    * ``"ntxent+triplet"``: the NT-Xent total ``+ cfg.weight_triplet · triplet``.

    ``parts`` holds the unweighted value of each computed term as a float:
    ``ntxent_cross``, ``ntxent_sketch``, ``ntxent_photo``, ``triplet`` (never
    the total, which is the returned tensor). Raises :class:`ConfigError` for an
    unknown name, bad values, or a setting with no cross-modal term (retrieval
    could not learn).
    """
    if not isinstance(cfg, LossConfig):
        raise ConfigError(f"build_loss expects a LossConfig, got {type(cfg).__name__}")
    if cfg.name not in LOSS_NAMES:
        raise ConfigError(f"loss.name must be one of {list(LOSS_NAMES)}, got {cfg.name!r}")
    cfg.validate()
    use_ntxent = cfg.name in ("ntxent", "ntxent+triplet")
    use_triplet = cfg.name in ("triplet", "ntxent+triplet")
    if cfg.name == "ntxent" and cfg.weight_cross == 0:
        raise ConfigError(
            "loss.weight_cross is 0 with loss.name='ntxent': no term links sketches to photos. "
            "Set loss.weight_cross > 0 or use loss.name='ntxent+triplet'"
        )
    if cfg.name == "ntxent+triplet" and cfg.weight_triplet == 0:
        raise ConfigError("loss.weight_triplet is 0 with loss.name='ntxent+triplet': use loss.name='ntxent' instead")
    ntxent = (
        DoubleSiameseNTXent(cfg.temperature, cfg.weight_cross, cfg.weight_sketch, cfg.weight_photo) if use_ntxent else None
    )
    triplet = HardTripletLoss(cfg.triplet_margin) if use_triplet else None
    return FineGrainedLoss(ntxent, triplet, cfg.weight_triplet)
