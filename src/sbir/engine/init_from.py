"""``model.init_from``: start a model's backbone(s) from another run's, e.g. a sketch-domain pretraining run.

The source is a run folder (its ``best.safetensors``) or an sbir ``.safetensors``
checkpoint. Only backbones move: every model names its backbones by state-dict
prefix (``backbone_encoders()``: ``encoder`` for the pretraining classifier,
``sketch_encoder`` / ``photo_encoder`` for the fine-grained model, ``backbone`` for
the category model); heads, classifiers and re-rankers keep their fresh
initialisation. A target backbone takes the source backbone of the same name,
else the source's only backbone (so a pretraining run's one encoder starts both
fine-grained branches). The load is strict: the source must hold exactly the
backbone's tensors with the same shapes, so a different ``model.backbone`` is a
one-line :class:`~sbir.errors.CheckpointError` naming the first mismatch rather
than a silently half-loaded network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sbir.engine.checkpoint import read_weights
from sbir.errors import CheckpointError
from sbir.models.registry import state_dict_mismatch

# State-dict prefixes of backbones in sbir checkpoints (see each model's backbone_encoders()).
SOURCE_PREFIXES = ("encoder", "sketch_encoder", "photo_encoder", "backbone")


def init_weights_file(spec: str | Path) -> Path:
    """The checkpoint ``model.init_from`` names: a .safetensors file, or a run folder's best.safetensors."""
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / "best.safetensors").is_file():
            return p / "best.safetensors"
        raise CheckpointError(
            f"model.init_from {p} has no best.safetensors: not a run folder, or no epoch finished yet"
        )
    if p.is_file():
        return p
    raise CheckpointError(
        f"model.init_from {p} does not exist: pass a run folder (e.g. of 'sbir train --task pretrain') "
        "or a .safetensors checkpoint"
    )


def _source_backbones(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for prefix in SOURCE_PREFIXES:
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if sub:
            out[prefix] = sub
    return out


def _backbone_names(model_cfg: dict) -> str:
    """``model.backbone``, with ``model.extra_backbones`` after it (``a+b+c``, as ConcatFeatures names itself)."""
    return "+".join([model_cfg["backbone"], *(model_cfg.get("extra_backbones") or [])])


def load_backbone_weights(model: nn.Module, spec: str | Path) -> dict[str, str]:
    """Load the backbone(s) of checkpoint ``spec`` into ``model``'s; returns ``{target prefix: source prefix}``."""
    path = init_weights_file(spec)
    tensors, meta = read_weights(path)
    try:
        src_backbone = _backbone_names(json.loads(meta["config"])["model"])
    except (ValueError, KeyError, TypeError):
        src_backbone = "?"
    targets = getattr(model, "backbone_encoders", None)
    if targets is None:
        raise CheckpointError(f"model.init_from is not supported by {type(model).__name__} (it names no backbones)")
    sources = _source_backbones(tensors)
    if not sources:
        raise CheckpointError(
            f"model.init_from {path}: the checkpoint holds no backbone ({', '.join(SOURCE_PREFIXES)})"
        )
    mapping: dict[str, str] = {}
    loaded: set[int] = set()
    for name, module in targets().items():
        if name in sources:
            src_name = name
        elif len(sources) == 1:
            src_name = next(iter(sources))
        else:
            raise CheckpointError(
                f"model.init_from {path} holds backbones {sorted(sources)}; none is named {name!r} and there is "
                "more than one to choose from"
            )
        mapping[name] = src_name
        if id(module) in loaded:  # a shared encoder appears under two names
            continue
        # A backbone holding only part of its source (GridFeatures, cut at model.feature_level) says which part.
        loadable_part = getattr(module, "loadable_part", None)
        try:
            target, source = loadable_part(sources[src_name]) if loadable_part else (module, sources[src_name])
        except CheckpointError as exc:  # the part says what does not fit; the file and its backbone are named here
            raise CheckpointError(f"model.init_from {path} ({src_backbone}): {exc}") from None
        own = target.state_dict()
        problem = state_dict_mismatch(own, source)
        if problem is not None:
            cfg = getattr(model, "cfg", None)
            mine = _backbone_names(vars(cfg)) if cfg is not None and hasattr(cfg, "backbone") else "?"
            raise CheckpointError(
                f"model.init_from {path}: its {src_name} ({src_backbone}) does not fit this model's {name} "
                f"({mine}): {problem}; start from a run with the same model.backbone (and model.extra_backbones)"
            )
        target.load_state_dict({k: v.to(own[k].dtype) for k, v in source.items()}, strict=True)
        loaded.add(id(module))
    return mapping


__all__ = ["init_weights_file", "load_backbone_weights"]
