"""Checkpoints and run folders.

A run folder holds::

    config.yaml          the full TrainConfig of the run
    split.json           the seeded validation split (photo ids on each side)
    metrics.csv          one row per epoch; acc.png the training curves
    best.safetensors     weights of the best validation epoch (+ config in metadata)
    last.json            pointer to the newest complete checkpoint directory
    checkpoints/epoch-NNNN/
        model.safetensors   weights (+ config, epoch in metadata)
        train_state.pt      optimizer, scheduler, epoch, RNG states, best score

Every write goes to a temporary name first and is moved into place with
``os.replace``, so a kill at any moment leaves the previous checkpoint intact.
Weights are safetensors; the training state is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from safetensors import SafetensorError as SafetensorsError
except ImportError:  # older safetensors
    SafetensorsError = Exception
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes

from sbir.config import TrainConfig, config_from_dict, to_dict
from sbir.errors import CheckpointError
from sbir.fileio import atomic_write_text, atomic_write_with, fsync_dir, sha256_file

FORMAT_TAG = "sbir-checkpoint-v1"


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (e.g. a shared encoder); clone to contiguous copies.
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``tensors`` as safetensors atomically, byte for byte the same for the same tensors and metadata.

    safetensors writes its JSON header from a Rust hash map, whose order changes from process to process, so
    the same weights saved twice would get two different file digests (the model id). The header is rewritten
    with sorted keys, padded with spaces to 8 bytes as the format asks; tensor offsets are relative to the data
    that follows it, so they stay valid."""
    raw = safetensors_bytes(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + raw[8 + n :]
    atomic_write_with(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def save_weights(model: torch.nn.Module, path: Path, cfg: TrainConfig, extra: dict | None = None) -> None:
    """Write weights with the config in the safetensors metadata, atomically."""
    path = Path(path)
    meta = {"format": FORMAT_TAG, "config": json.dumps(to_dict(cfg))}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    save_safetensors(state_dict_for_save(model), path, meta)


_READ_ERRORS = (SafetensorsError, OSError, ValueError, RuntimeError)


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file ({exc}). Pass a run folder or a .safetensors written by "
        "'sbir train'."
    )


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of an sbir ``.safetensors`` (its header only, no tensors); a file not made by sbir is a
    CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    if meta.get("format") != FORMAT_TAG or "config" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not an sbir checkpoint (no sbir config in its metadata). "
            "Pass a run folder or a checkpoint written by 'sbir train'; for plain backbone weights use "
            "model.weights_path."
        )
    return meta


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an sbir ``.safetensors``; a file not made by sbir is a CheckpointError."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    if INT8_WEIGHTS_KEY in meta:
        tensors = dequantize_int8(tensors, json.loads(meta[INT8_WEIGHTS_KEY]), path)
    return tensors, meta


# Packed checkpoints may store large weight matrices as int8 with one float16 scale per output channel
# (sbir.engine.pack); the metadata lists them, and read_weights restores float32 tensors.
INT8_WEIGHTS_KEY = "int8_weights"
INT8_SCALE_SUFFIX = ".int8_scale"


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``w ~= q * scale`` with ``scale = max|w_c| / 127`` (float16)."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12).to(torch.float16)
    q = torch.round(flat / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantize_int8(tensors: dict[str, torch.Tensor], names: list[str], path: Path) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    for name in names:
        q, scale = out.get(name), out.pop(name + INT8_SCALE_SUFFIX, None)
        if q is None or scale is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            raise CheckpointError(f"{path}: int8 tensor {name} or its scale is missing or malformed; pack it again")
        out[name] = (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)
    return out


def file_digest(path: Path, length: int = 16) -> str:
    return sha256_file(path)[:length]


# ---------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    gauss = py[-1]
    random.setstate((state["python_version"], tuple(py[:-1]), None if gauss == -1 else gauss))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- run folder checkpoints


def save_training_checkpoint(
    run_dir: Path, model: torch.nn.Module, cfg: TrainConfig, train_state: dict[str, Any], keep: int = 1
) -> Path:
    """Write ``checkpoints/epoch-NNNN`` and then point ``last.json`` at it."""
    run_dir = Path(run_dir)
    epoch = int(train_state["epoch"])
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"epoch-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".epoch-{epoch:04d}."))
    try:
        save_weights(model, tmp / "model.safetensors", cfg, {"epoch": epoch})
        buf_path = tmp / "train_state.pt"
        torch.save(train_state, buf_path)
        with open(buf_path, "rb") as fh:
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(ckpt_root)
    atomic_write_text(run_dir / "last.json", json.dumps({"checkpoint": f"checkpoints/{final.name}", "epoch": epoch}))
    # Prune older complete checkpoints (never the one just written).
    olds = sorted(p for p in ckpt_root.glob("epoch-*") if p != final)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob(".epoch-*"):  # leftovers of killed writes
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_training_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], TrainConfig]:
    run_dir = Path(run_dir)
    pointer = run_dir / "last.json"
    if not pointer.is_file():
        raise CheckpointError(
            f"{run_dir} has no last.json: it is not an sbir run folder or no epoch finished yet. "
            "Start a new run with 'sbir train' instead of --resume."
        )
    try:
        rel = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{pointer} is corrupt ({exc}); delete the run folder and train again") from exc
    ckpt = run_dir / rel
    tensors, meta = read_weights(ckpt / "model.safetensors")
    try:
        state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read training state {ckpt / 'train_state.pt'}: {exc}") from exc
    cfg = config_from_dict(json.loads(meta["config"]))
    return tensors, state, cfg


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors over ``states`` (same keys and shapes); integer tensors
    (e.g. BatchNorm's ``num_batches_tracked``) come from the last state."""
    if not states:
        raise CheckpointError("nothing to average: no checkpoints")
    keys = set(states[0])
    for st in states[1:]:
        if set(st) != keys:
            raise CheckpointError("the checkpoints to average hold different tensors; they come from different models")
    out = {}
    for k, last in states[-1].items():
        if last.is_floating_point():
            out[k] = torch.stack([st[k].float() for st in states]).mean(0).to(last.dtype)
        else:
            out[k] = last.clone()
    return out
