"""Mid-level spatial features: a backbone cut at an intermediate feature level, pooled to a grid.

Fine-grained matching of a sketch to its photo's edge map depends on where the
strokes are, and the layers that see it are the middle ones: a globally pooled
last layer keeps "what" (a shoe) and drops "where" (the strap across the
instep). Cross-validated on QMUL-V1 (README "Fine-grained benchmark"), the
untrained ImageNet EfficientNet-Lite0 cut after block 4 (timm feature level 3,
stride 16) and average-pooled to a 4 x 4 grid beat the globally pooled last
layer by far in all three categories.

``GridFeatures(backbone, level, grid)`` wraps a :class:`~sbir.models.registry.TimmBackbone`:

* the trunk is pruned after feature level ``level`` (timm's
  ``prune_intermediate_layers``: later blocks and the head are dropped, so they
  cost nothing and hold no weights);
* ``forward_features`` gives that level's feature map ``(B, C, H, W)``
  (timm's ``forward_intermediates``);
* ``forward_head`` average-pools it to ``grid x grid`` cells and flattens them
  row-major, channels within a cell together: ``num_features = C * grid**2``.
  ``grid = 1`` is global average pooling.

``ConcatFeatures([GridFeatures, ...])`` runs several such backbones on the
same input and concatenates their grids (category models: their pooled last
layers) (``model.extra_backbones``): an ensemble of backbones in one
embedding, so one index and one ridge head serve it. Their input
normalisation must agree (EfficientNet-Lite0/1/2 share it).

``GridFeatures`` keeps the interface the models use (``mean``, ``std``, ``stages()``,
``tokens``, ``forward_with_tokens``), so heads, freezing, the re-ranker and
export work unchanged.
"""

from __future__ import annotations

from itertools import zip_longest

import torch
import torch.nn.functional as F
from torch import nn

from sbir.errors import CheckpointError, ConfigError
from sbir.models.registry import TimmBackbone, state_dict_mismatch


def feature_levels(backbone: nn.Module) -> list[dict]:
    """timm's ``feature_info`` of the wrapped model: one dict per level (``num_chs``, ``reduction``, ``module``)."""
    info = getattr(getattr(backbone, "model", None), "feature_info", None)
    if info is None:
        return []
    return list(info.get_dicts() if hasattr(info, "get_dicts") else info)


class GridFeatures(nn.Module):
    """``backbone`` cut after feature level ``level``, average-pooled to a ``grid x grid`` grid."""

    def __init__(self, backbone: nn.Module, level: int, grid: int = 1):
        super().__init__()
        name = getattr(backbone, "name", type(backbone).__name__)
        model = getattr(backbone, "model", None)
        levels = feature_levels(backbone)
        if model is None or not hasattr(model, "forward_intermediates") or not levels:
            raise ConfigError(
                f"model.feature_level needs a timm backbone with intermediate features; {name} has none "
                "(unset model.feature_level)"
            )
        if not 0 <= level < len(levels):
            raise ConfigError(
                f"model.feature_level must be in 0..{len(levels) - 1} for {name} (levels at strides "
                f"{[lv['reduction'] for lv in levels]}), got {level}"
            )
        if grid < 1:
            raise ConfigError(f"model.pool_grid must be >= 1, got {grid}")
        model.prune_intermediate_layers([level], prune_norm=True, prune_head=True)
        self.backbone = backbone
        self.level = int(level)
        self.grid = int(grid)
        self.name = name
        self.channels = int(levels[level]["num_chs"])
        self.num_features = self.channels * self.grid * self.grid
        self.mean = tuple(backbone.mean)
        self.std = tuple(backbone.std)

    @property
    def model(self) -> nn.Module:
        return self.backbone.model

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(x, indices=[self.level], intermediates_only=True)[0]

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        g = self.grid
        b, c, h, w = feats.shape
        if h % g == 0 and w % g == 0:
            # Equal cells as a reshape and a mean: ONNX exports it with dynamic sizes, adaptive pooling not.
            pooled = feats.reshape(b, c, g, h // g, g, w // g).mean(dim=(3, 5))
        else:
            pooled = F.adaptive_avg_pool2d(feats, g)  # (B, C, G, G), overlapping cells
        return pooled.permute(0, 2, 3, 1).flatten(1)  # cell-major: a cell's C channels stay together

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def loadable_part(self, source: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """``(module, tensors)`` that ``model.init_from`` loads from a source backbone's state dict: the wrapped
        backbone, from the source's layers up to the cut. The source may be whole (a pretraining run) or cut
        the same way (its keys then start with ``backbone.``); layers past the cut are left behind."""
        source = {k.removeprefix("backbone."): v for k, v in source.items()}
        own = set(self.backbone.state_dict())
        return self.backbone, {k: v for k, v in source.items() if k in own}

    # The token interface is TimmBackbone's, run on this class's cut feature map (its positions are the tokens).
    tokens_from_features = TimmBackbone.tokens_from_features
    tokens = TimmBackbone.tokens
    forward_with_tokens = TimmBackbone.forward_with_tokens

    @property
    def token_dim(self) -> int:
        return self.channels

    def stages(self) -> list[nn.Module]:
        return self.backbone.stages() if hasattr(self.backbone, "stages") else []


class ConcatFeatures(nn.Module):
    """Several backbones on one input, their features concatenated in order (``model.extra_backbones``).

    Members are :class:`GridFeatures` (fine-grained grids) or plain backbones with globally pooled features
    (category / zero-shot models): anything with ``name``, ``mean``, ``std``, ``num_features`` and ``stages()``.
    No token interface: the members' channels differ, so the token re-ranker refuses it (config check).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"ConcatFeatures needs at least 2 backbones, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            if (tuple(m.mean), tuple(m.std)) != (tuple(first.mean), tuple(first.std)):
                raise ConfigError(
                    f"model.extra_backbones: {m.name} normalises its input with mean {m.mean} / std {m.std} but "
                    f"{first.name} with {first.mean} / {first.std}; one input tensor feeds them all, so choose "
                    "backbones with the same normalisation"
                )
        self.members = nn.ModuleList(members)
        self.name = "+".join(m.name for m in members)
        self.num_features = sum(m.num_features for m in members)
        self.mean, self.std = tuple(first.mean), tuple(first.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1)

    def loadable_part(self, source: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """``(module, tensors)`` that ``model.init_from`` loads. From a run with the same backbones in the same
        order (keys ``members.N...``): the whole concatenation (``init_from`` checks the fit). From one backbone
        (a pretraining run): the first member it fits exactly, e.g. ``model.backbone``'s; the others keep their
        initial (ImageNet) weights."""
        if any(k.startswith("members.") for k in source):
            return self, source
        for member in self.members:
            part = getattr(member, "loadable_part", None)
            target, tensors = part(source) if part else (member, source)
            own = target.state_dict()
            if own and state_dict_mismatch(own, tensors) is None:
                return target, tensors
        raise CheckpointError(
            f"its one backbone fits none of {self.name} (model.backbone and model.extra_backbones): start from a "
            "run of one of them"
        )

    def stages(self) -> list[nn.Module]:
        """Stage ``i`` is every member's stage ``i``: freezing the first N stages freezes N in each backbone."""
        groups = zip_longest(*(m.stages() for m in self.members))
        return [nn.ModuleList([s for s in group if s is not None]) for group in groups]


__all__ = ["ConcatFeatures", "GridFeatures", "feature_levels"]
