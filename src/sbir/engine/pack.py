"""Packing a checkpoint for shipping: fp16 weights, unused tensors left out, checked against the original.

``sbir export RUN --format fp16 --out FILE`` writes one safetensors file that
``load_model`` reads like any checkpoint (the config stays in its metadata), at
about half the size: floating-point tensors are stored as float16 (loaded back
into float32 modules), and parameters that no embedding depends on (a timm
backbone's ImageNet classifier) are left out and listed in the metadata. Both
claims are checked here, not assumed: perturbing the left-out tensors must not
change any embedding, and the packed model's embeddings of both domains must
match the original's (cosine >= ``min_cosine`` for every input).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sbir.engine.checkpoint import (
    FORMAT_TAG,
    INT8_SCALE_SUFFIX,
    INT8_WEIGHTS_KEY,
    quantize_int8,
    read_metadata,
    save_safetensors,
    state_dict_for_save,
)
from sbir.engine.embed import embed_tensor
from sbir.engine.inference import (
    PRETRAINED_TENSORS_KEY,
    UNUSED_TENSORS_KEY,
    classifier_tensor_names,
    load_model,
    resolve_weights,
    tensors_digest,
)
from sbir.engine.tasks import build_model
from sbir.errors import SbirError

DOMAINS = ("sketch", "photo")
# With int8_weights: tensors this large (and at least 2-d) are stored as int8; biases and norms stay float16.
INT8_MIN_NUMEL = 4096
# int8 weights move embeddings more than fp16 does (cosine about 0.99 on Lite0): their own, documented floor.
INT8_MIN_COSINE = 0.98


class PackError(SbirError):
    """The packed model would not embed like the original."""


@dataclass
class PackReport:
    out: Path
    model_id: str
    source_model_id: str
    bytes: int
    source_bytes: int
    unused: list[str]
    pretrained: list[str]
    min_cosine: float
    max_abs_diff: float
    seconds: float


def _probe_inputs(image_size: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, image_size, image_size, generator=g)


@torch.no_grad()
def _embed_all(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {d: embed_tensor(model, x, d).float() for d in DOMAINS}


@torch.no_grad()
def _really_unused(model, names: list[str], x: torch.Tensor) -> list[str]:
    """The subset of ``names`` no embedding depends on (each is perturbed; outputs must not move)."""
    if not names:
        return []
    before = _embed_all(model, x)
    state = model.state_dict(keep_vars=True)
    saved = {k: state[k].detach().clone() for k in names}
    for k in names:
        if state[k].is_floating_point():
            state[k].data.add_(1.0)
    after = _embed_all(model, x)
    for k in names:
        state[k].data.copy_(saved[k])
    same = all(torch.equal(before[d], after[d]) for d in DOMAINS)
    return names if same else []


def _pretrained_names(model, cfg) -> list[str]:
    """State-dict names of ``model``'s tensors equal to those of the same model freshly built with the ImageNet
    weights sbir's dependencies install (a frozen backbone): what a checkpoint need not carry."""
    if cfg.model.init_from or cfg.model.weights_path:
        raise PackError(
            "--leave-out-pretrained needs the backbone's weights from the installed ImageNet packages, but this "
            "run starts from model.init_from / model.weights_path (a file the package would not have); pack "
            "without --leave-out-pretrained"
        )
    try:
        fresh = build_model(cfg, pretrained=True).state_dict()
    except (SbirError, ValueError, RuntimeError) as exc:
        raise PackError(f"--leave-out-pretrained: cannot build the model with its ImageNet weights ({exc})") from exc
    return [k for k, v in model.state_dict().items() if v.numel() and k in fresh and torch.equal(v, fresh[k])]


def pack_weights(
    spec: str | Path,
    out: str | Path,
    probes: int = 16,
    min_cosine: float | None = None,
    image_size: int | None = None,
    int8_weights: bool = False,
    leave_out_pretrained: bool = False,
) -> PackReport:
    """Write ``spec``'s weights to ``out`` as fp16 without unused tensors; PackError if the check fails.

    ``int8_weights``: store every weight matrix / conv kernel of at least :data:`INT8_MIN_NUMEL` values as
    int8 with a float16 scale per output channel (:func:`sbir.engine.checkpoint.quantize_int8`), about half
    the size again; the embedding check then uses :data:`INT8_MIN_COSINE` (default ``min_cosine``: 0.999).

    ``leave_out_pretrained``: leave out every tensor still equal to the installed ImageNet weights (a frozen
    backbone, as in a ridge-head model), listed in the metadata with their digest; ``load_model`` builds the
    model with those weights and refuses a file whose digest differs from the installed ones. The file then
    holds only what training changed."""
    t0 = time.perf_counter()
    if min_cosine is None:
        min_cosine = INT8_MIN_COSINE if int8_weights else 0.999
    src = resolve_weights(spec)
    out = Path(out)
    if out.resolve() == src.resolve():
        raise PackError(f"--out {out} is the checkpoint itself; write the packed model to another file")
    meta = read_metadata(src)  # the tensors are read once, by load_model
    model, cfg, source_id = load_model(src)
    size = int(image_size or cfg.data.image_size)
    x = _probe_inputs(size, probes)
    unused = _really_unused(model, classifier_tensor_names(model), x)
    pretrained = [k for k in _pretrained_names(model, cfg) if k not in unused] if leave_out_pretrained else []
    tensors = {
        k: (v.to(torch.float16) if v.is_floating_point() else v)
        for k, v in state_dict_for_save(model).items()
        if k not in unused and k not in pretrained
    }
    quantized = []
    if int8_weights:
        for k in [
            k for k, v in tensors.items() if v.is_floating_point() and v.dim() >= 2 and v.numel() >= INT8_MIN_NUMEL
        ]:
            tensors[k], tensors[k + INT8_SCALE_SUFFIX] = quantize_int8(tensors[k])
            quantized.append(k)
    new_meta = {
        k: v for k, v in meta.items() if k not in (UNUSED_TENSORS_KEY, INT8_WEIGHTS_KEY, PRETRAINED_TENSORS_KEY)
    }
    new_meta.update(
        {
            "format": FORMAT_TAG,
            "config": meta["config"],
            UNUSED_TENSORS_KEY: json.dumps(unused),
            "packed_from": json.dumps({"model_id": source_id, "dtype": "int8+float16" if quantized else "float16"}),
        }
    )
    if quantized:
        new_meta[INT8_WEIGHTS_KEY] = json.dumps(quantized)
    if pretrained:
        new_meta[PRETRAINED_TENSORS_KEY] = json.dumps(
            {"names": pretrained, "sha256": tensors_digest(model.state_dict(), pretrained)}
        )
    save_safetensors(tensors, out, new_meta)  # creates out's folder
    packed, _, packed_id = load_model(out)
    ref, got = _embed_all(model, x), _embed_all(packed, x)
    cos = min(float(torch.nn.functional.cosine_similarity(ref[d], got[d], dim=1).min()) for d in DOMAINS)
    diff = max(float((ref[d] - got[d]).abs().max()) for d in DOMAINS)
    if cos < min_cosine:
        out.unlink(missing_ok=True)
        raise PackError(
            f"the packed model's embeddings differ from {src}'s (lowest cosine {cos:.5f} < {min_cosine}); "
            "nothing was written. Keep the fp32 checkpoint for this model."
        )
    return PackReport(
        out=out,
        model_id=packed_id,
        source_model_id=source_id,
        bytes=out.stat().st_size,
        source_bytes=src.stat().st_size,
        unused=unused,
        pretrained=pretrained,
        min_cosine=cos,
        max_abs_diff=diff,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["PackError", "PackReport", "pack_weights"]
