"""Hash codes of a trained category / zero-shot run (SBIR-DASE-MEMS's 32/64/128-bit codes).

After the embedding network is trained, a :class:`~sbir.models.hashing.HashHead`
(a linear layer, ``sign`` at test time) is fitted per code length on the
**training split's** embeddings (sketches and photos with their classes;
never test data) with :class:`~sbir.models.hashing.HashLoss`: code inner
products follow class agreement, bits are decorrelated and balanced. The
category task does this whenever the best epoch improves (``eval.hash_bits``),
so the heads always belong to ``best.safetensors``.

Each head is saved in the run folder as ``hash<bits>.safetensors`` whose
metadata records the digest of the weights it was trained for;
:func:`load_hash_heads` (called by :func:`sbir.engine.inference.load_model`)
attaches only heads whose digest matches, so a head is never used with other
weights. Evaluation (:func:`hash_metrics`) reports Hamming-distance metrics
with the suffix ``_hash<bits>`` (``map@all_hash64``, ...). For search, the
packed codes (:meth:`HashHead.encode`) go into a FAISS binary index
(:func:`sbir.models.hashing.hamming_search`, ``faiss.IndexBinaryFlat``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, safe_open

from sbir.engine.checkpoint import save_safetensors
from sbir.errors import CheckpointError
from sbir.models.hashing import HASH_BITS, HashHead, hamming_search, train_hash_head

HASH_FORMAT_TAG = "sbir-hash-head-v1"
HASH_FILE_RE = re.compile(r"^hash(\d+)\.safetensors$")
# Hash heads train on at most this many training embeddings (half sketches, half photos; seeded).
HASH_TRAIN_MAX_ITEMS = 2000


def hash_file_name(bits: int) -> str:
    return f"hash{int(bits)}.safetensors"


def save_hash_head(head: HashHead, path: Path, weights_digest: str, extra: dict | None = None) -> Path:
    """Write ``head`` atomically as safetensors, recording the digest of the weights it belongs to."""
    path = Path(path)
    meta = {
        "format": HASH_FORMAT_TAG,
        "bits": str(head.bits),
        "embed_dim": str(head.embed_dim),
        "weights_digest": weights_digest,
    }
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
    save_safetensors(tensors, path, meta)
    return path


def read_hash_head(path: Path, device: str = "cpu") -> tuple[HashHead, dict[str, str]]:
    """Load one ``hash<bits>.safetensors``; CheckpointError naming the file when it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise CheckpointError(
            f"{path} is not a readable hash-head file ({exc}); delete it and retrain the hash codes"
        ) from exc
    if meta.get("format") != HASH_FORMAT_TAG:
        raise CheckpointError(f"{path} is not an sbir hash head (no '{HASH_FORMAT_TAG}' tag); delete or rename it")
    try:
        bits, dim = int(meta["bits"]), int(meta["embed_dim"])
        head = HashHead(dim, bits)
        head.load_state_dict(tensors)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{path} holds a malformed hash head ({exc}); delete it and retrain the hash codes"
        ) from exc
    return head.to(device).eval(), meta


def load_hash_heads(folder: Path, weights_digest: str, device: str = "cpu") -> dict[int, HashHead]:
    """``{bits: HashHead}`` of the ``hash<bits>.safetensors`` in ``folder`` made for ``weights_digest``.

    Heads trained for other weights (e.g. left from an earlier best epoch by an
    interrupted run) are skipped with a note on stderr.
    """
    heads: dict[int, HashHead] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return heads
    for p in sorted(folder.iterdir()):
        m = HASH_FILE_RE.match(p.name)
        if not m or not p.is_file():
            continue
        head, meta = read_hash_head(p, device)
        if meta.get("weights_digest") != weights_digest:
            print(f"note: ignoring {p}: it was trained for other weights than {folder}", file=sys.stderr)
            continue
        heads[head.bits] = head
    return dict(sorted(heads.items()))


def _subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def train_hash_heads(
    model,
    split,
    bits: Sequence[int],
    image_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    max_items: int = HASH_TRAIN_MAX_ITEMS,
    progress: bool = False,
) -> dict[int, HashHead]:
    """Fit one head per code length on ``split``'s sketch and photo embeddings, supervised by class.

    ``split`` must be training data. Up to ``max_items`` embeddings are used
    (half sketches, half photos, a seeded random subset when there are more).
    """
    from sbir.engine.embed import embed_images

    rng = np.random.default_rng(seed)
    s_idx = _subsample(len(split.sketches), max_items // 2, rng)
    p_idx = _subsample(len(split.photos), max_items - len(s_idx), rng)
    kw = dict(image_size=image_size, batch_size=batch_size, num_workers=num_workers, progress=progress)
    s = embed_images(model, [split.sketches[i].image for i in s_idx], "sketch", desc="hash: embed sketches", **kw)
    p = embed_images(model, [split.photos[i].image for i in p_idx], "photo", desc="hash: embed photos", **kw)
    emb = np.concatenate([s.embeddings, p.embeddings])
    labels = [split.sketches[i].label for i in s_idx] + [split.photos[i].label for i in p_idx]
    return {int(b): train_hash_head(emb, labels, bits=int(b), seed=seed) for b in bits}


def hash_metrics(
    heads: dict[int, HashHead],
    sketch_emb: np.ndarray,
    sketch_labels,
    photo_emb: np.ndarray,
    photo_labels,
    sketch_flip: np.ndarray | None = None,
    photo_flip: np.ndarray | None = None,
) -> dict[str, float]:
    """Hamming-distance category metrics per head, keys suffixed ``_hash<bits>``.

    With flipped embeddings, the codes of the mirrored images take part in the
    same minimum-distance-over-pairings as the float embeddings.
    """
    from sbir.metrics import category_report

    out: dict[str, float] = {}
    for bits, head in sorted(heads.items()):
        enc = head.encode
        rep = category_report(
            enc(sketch_emb),
            sketch_labels,
            enc(photo_emb),
            photo_labels,
            distance="hamming",
            sketch_flip=None if sketch_flip is None else enc(sketch_flip),
            photo_flip=None if photo_flip is None else enc(photo_flip),
        )
        for k, v in rep.items():
            if not k.startswith("n_"):
                out[f"{k}_hash{bits}"] = v
    return out


def search_codes(
    head: HashHead, query_emb: np.ndarray, gallery_emb: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery items per query by Hamming distance of their codes (FAISS binary index)."""
    return hamming_search(head.encode(query_emb), head.encode(gallery_emb), k)


__all__ = [
    "HASH_BITS",
    "HASH_TRAIN_MAX_ITEMS",
    "hash_file_name",
    "hash_metrics",
    "load_hash_heads",
    "read_hash_head",
    "save_hash_head",
    "search_codes",
    "train_hash_heads",
]
