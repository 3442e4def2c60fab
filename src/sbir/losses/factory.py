"""The loss registry and the one loss factory, :func:`build_loss`.

Every loss registers a builder in its own module with :func:`register_loss`,
naming what it trains on and the distance it trains for::

    @register_loss("mems", kind="classes", distance="euclidean", normalized=False)
    def _build(cfg: LossConfig, num_classes: int, embed_dim: int) -> nn.Module:
        return MEMSLoss(num_classes, embed_dim, **set_values(cfg, "margin", "anneal_steps", "scale"))

``sbir/losses/__init__.py`` imports each loss module once (one line per loss).
Defaults live only in the loss constructors' signatures: :func:`set_values`
passes just the config values the user set.

Kinds:

* ``pairs``: fine-grained losses; ``forward(batch) -> (loss, parts)`` on a dict
  of L2-normalised (B, D) embeddings ``{"sketch", "sketch_aug", "photo",
  "photo_aug", "groups"}`` (``groups``: the (B,) photo index of each row).
* ``classes``: category-level losses with learnable class centres / weights;
  ``forward(z, labels) -> loss``, ``predict(z) -> class``, ``current_margin()``.
* ``clip``: CLIP prompt learning (:mod:`sbir.losses.clip_prompt`); ``forward(batch) -> (loss, parts)``
  on a dict of prompted-encoder embeddings, the class weights being frozen text embeddings
  (``set_class_embeddings``).
* ``logits``: plain classification (sketch-domain pretraining, :mod:`sbir.losses.classify`);
  ``forward(logits, labels) -> loss`` on the model's own classifier's (B, C) logits, ``predict(logits)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from sbir.config import LossConfig
from sbir.errors import ConfigError

KINDS = ("pairs", "classes", "clip", "logits")
DISTANCES = ("cosine", "euclidean", "angular")


@dataclass(frozen=True)
class LossSpec:
    name: str
    kind: str  # "pairs" | "classes"
    distance: str  # the test distance the loss trains for
    normalized: bool  # whether the model should L2-normalise its embeddings for this loss
    build: Callable[..., nn.Module]


_LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, kind: str, distance: str = "cosine", normalized: bool = True):
    """Decorator registering ``builder(cfg: LossConfig, num_classes: int | None, embed_dim: int | None)``."""
    if kind not in KINDS:
        raise ValueError(f"loss kind must be one of {KINDS}, got {kind!r}")
    if distance not in DISTANCES:
        raise ValueError(f"loss distance must be one of {DISTANCES}, got {distance!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _LOSSES[name] = LossSpec(name, kind, distance, normalized, fn)
        return fn

    return deco


def list_losses(kind: str | None = None) -> list[str]:
    return sorted(n for n, s in _LOSSES.items() if kind is None or s.kind == kind)


def get_loss_spec(name: str, kind: str | None = None) -> LossSpec:
    """The registered loss ``name``; with ``kind``, it must be of that kind."""
    spec = _LOSSES.get(name)
    if spec is None:
        raise ConfigError(f"loss.name must be one of {list_losses(kind)}, got {name!r}")
    if kind is not None and spec.kind != kind:
        raise ConfigError(
            f"loss.name {name!r} trains on {spec.kind}, but this task needs a loss on {kind}: one of "
            f"{list_losses(kind)}"
        )
    return spec


def set_values(cfg: LossConfig, *names: str, prefix: str = "") -> dict:
    """``{name: value}`` for the ``names`` the config sets (not None): the rest keep the signature defaults.

    ``prefix`` is stripped from the keyword names (``topology_margin`` -> ``margin``).
    """
    return {n.removeprefix(prefix): getattr(cfg, n) for n in names if getattr(cfg, n) is not None}


def build_loss(
    cfg: LossConfig, num_classes: int | None = None, embed_dim: int | None = None, kind: str | None = None
) -> nn.Module:
    """The loss module ``cfg.name`` describes (see the module docstring for the kinds' interfaces).

    ``num_classes`` and ``embed_dim`` are needed by ``classes`` losses (their centres / weights).
    Raises :class:`ConfigError` for an unknown name, a loss of another ``kind``, or bad values.
    """
    if not isinstance(cfg, LossConfig):
        raise ConfigError(f"build_loss expects a LossConfig, got {type(cfg).__name__}")
    cfg.validate()
    if cfg.name is None:
        raise ConfigError("loss.name is unset; the task fills in its default loss (sbir.engine.tasks.with_defaults)")
    spec = get_loss_spec(cfg.name, kind)
    if spec.kind in ("classes", "clip") and (num_classes is None or embed_dim is None):
        raise ConfigError(f"loss {cfg.name!r} needs num_classes and embed_dim (it learns class centres)")
    loss = spec.build(cfg, num_classes=num_classes, embed_dim=embed_dim)
    if cfg.weight_topology:
        from sbir.losses.topology import NeighbourhoodTopologyLoss

        if not isinstance(loss, FineGrainedLoss):
            raise ConfigError(f"loss.weight_topology adds a term to fine-grained losses, not to {cfg.name!r}")
        loss.topology = NeighbourhoodTopologyLoss(
            **set_values(cfg, "topology_margin", "topology_pairs", prefix="topology_")
        )
        loss.weight_topology = float(cfg.weight_topology)
        loss.topology_meta = bool(cfg.topology_meta)
    if cfg.weight_negative_triplet:
        from sbir.losses.triplet import NegativeTripletLoss

        if not isinstance(loss, FineGrainedLoss):
            raise ConfigError(f"loss.weight_negative_triplet adds a term to fine-grained losses, not to {cfg.name!r}")
        loss.negative_triplet = NegativeTripletLoss(**set_values(cfg, "triplet_margin", prefix="triplet_"))
        loss.weight_negative_triplet = float(cfg.weight_negative_triplet)
    return loss


class FineGrainedLoss(nn.Module):
    """NT-Xent and / or batch-hard triplet on a fine-grained batch: ``ntxent + weight_triplet * triplet``.

    ``parts`` holds the unweighted value of each computed term as a float: ``ntxent_cross``,
    ``ntxent_sketch``, ``ntxent_photo``, ``triplet`` (never the total, which is the returned tensor).
    """

    def __init__(
        self,
        ntxent: nn.Module | None,
        triplet: nn.Module | None,
        weight_triplet: float = 1.0,
        topology: nn.Module | None = None,
        weight_topology: float = 1.0,
    ):
        super().__init__()
        if ntxent is None and triplet is None:
            raise ConfigError("a fine-grained loss needs an NT-Xent term, a triplet term or both")
        self.ntxent = ntxent
        self.triplet = triplet
        self.weight_triplet = float(weight_triplet)
        # Optional neighbourhood-topology term (sbir.losses.topology); needs batch["ref_photo_dist"].
        self.topology = topology
        self.weight_topology = float(weight_topology)
        # loss.topology_meta: forward leaves the term out; the task's first-order meta step adds its gradient.
        self.topology_meta = False
        # Optional triplet term with explicit (e.g. human-annotated) negatives; needs batch["negative"].
        self.negative_triplet: nn.Module | None = None
        self.weight_negative_triplet = 1.0

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
        total: torch.Tensor | None = None
        if self.ntxent is not None:
            total, parts = self.ntxent(
                batch["sketch"], batch.get("sketch_aug"), batch["photo"], batch.get("photo_aug"), groups
            )
        if self.triplet is not None:
            trip = self.triplet(batch["sketch"], batch["photo"], groups)
            parts["triplet"] = float(trip.detach())
            total = trip if total is None else total + self.weight_triplet * trip
        if self.topology is not None and not self.topology_meta:
            if batch.get("ref_photo_dist") is None:
                raise ValueError(
                    "the topology term needs batch['ref_photo_dist'], the (B, B) pretrained photo distances"
                )
            topo = self.topology(batch["sketch"], batch["photo"], batch["ref_photo_dist"])
            parts["topology"] = float(topo.detach())
            total = total + self.weight_topology * topo
        if self.negative_triplet is not None:
            if batch.get("negative") is None:
                raise ValueError("the negative triplet term needs batch['negative'], the embeddings of negative photos")
            neg = self.negative_triplet(batch["sketch"], batch["photo"], batch["negative"])
            parts["negative_triplet"] = float(neg.detach())
            total = total + self.weight_negative_triplet * neg
        return total, parts


@register_loss("ntxent+triplet", kind="pairs")
def _build_ntxent_triplet(cfg: LossConfig, num_classes=None, embed_dim=None) -> FineGrainedLoss:
    """The NT-Xent total ``+ weight_triplet * triplet``."""
    if cfg.weight_triplet == 0:
        raise ConfigError("loss.weight_triplet is 0 with loss.name='ntxent+triplet': use loss.name='ntxent' instead")
    ntxent = _LOSSES["ntxent"].build(cfg).ntxent
    triplet = _LOSSES["triplet"].build(cfg).triplet
    return FineGrainedLoss(ntxent, triplet, **set_values(cfg, "weight_triplet"))


__all__ = [
    "FineGrainedLoss",
    "LossSpec",
    "build_loss",
    "get_loss_spec",
    "list_losses",
    "register_loss",
    "set_values",
]
