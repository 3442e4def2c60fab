"""Model factory: ``create_model(name, cfg, ...)`` over the method models that register here.

A method model (the two-branch fine-grained model, the shared domain-aware
category model, ...) registers a builder under a name with
:func:`register_model` in its own module; ``sbir/models/__init__.py`` imports
that module once. Tasks name the model they train (``sbir.engine.tasks``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sbir.config import ModelConfig
from sbir.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: ``builder(cfg: ModelConfig, pretrained: bool | None = None, **kwargs) -> nn.Module``."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name] is not fn:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, cfg: ModelConfig, pretrained: bool | None = None, **kwargs) -> nn.Module:
    """Build the registered model ``name`` from ``cfg`` (``pretrained`` overrides ``cfg.pretrained``)."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name](cfg, pretrained=pretrained, **kwargs)


__all__ = ["create_model", "list_models", "register_model"]
