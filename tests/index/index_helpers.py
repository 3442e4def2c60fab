"""Helpers for index tests: small generated galleries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sbir.index.faiss_ops import build_faiss
from sbir.index.hubness import Hubness, SketchStats
from sbir.index.store import Entry, Index, ModelInfo, write_generation, write_lock

# Small inputs keep the tests fast; the pretrained EfficientNet-Lite0 runs at any size.
IMAGE_SIZE = 64


def make_photo(seed: int, size: int = 48) -> Image.Image:
    """A distinct little picture per seed: coloured background and a few shapes."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, size // 2, 2)
        w, h = rng.integers(8, size // 2, 2)
        x1, y1 = x0 + w, y0 + h
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=colour)
        else:
            d.rectangle((int(x0), int(y0), int(x1), int(y1)), fill=colour)
    return img


def write_gallery(root: Path, n: int = 6, start: int = 0) -> list[str]:
    """Write ``n`` photos in nested folders with several formats; return their relative paths."""
    exts = [".png", ".jpg", ".webp", ".bmp"]
    rels = []
    for i in range(start, start + n):
        rel = f"{'ab'[i % 2]}/sub{i % 3}/p{i:03d}{exts[i % len(exts)]}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        make_photo(i).save(p)
        rels.append(rel)
    return sorted(rels)


def synthetic_index(
    tmp_path: Path,
    photos: np.ndarray,
    sketches: np.ndarray | None,
    method: str,
    kind: str = "none",
    expand: int = 0,
    dba: int = 0,
) -> Index:
    """An index over given photo vectors (no model), with the hubness ``method`` (sketch statistics
    ``sketches``, k = 3), query expansion ``expand`` and database-side augmentation ``dba`` recorded; its
    model id is ``synthetic``."""
    stats = SketchStats(sketches, "synthetic") if method != "none" else None
    hub = Hubness.fit(method, photos, stats, k=3, dba=dba)
    info = ModelInfo(
        "synthetic",
        "synthetic",
        None,
        {},
        photos.shape[1],
        32,
        False,
        hubness=method,
        hubness_k=3,
        expand=expand,
        dba=dba,
    )
    entries = [Entry(f"p{i}.png", 1, 1, f"{i:064x}") for i in range(len(photos))]
    findex, used = build_faiss(hub.faiss_vectors(photos), kind)
    out = tmp_path / f"idx-{method}-{kind}-{expand}-{dba}"
    with write_lock(out):
        write_generation(out, tmp_path, entries, photos, info, findex, kind, used, requested=kind, hubness=hub)
    return Index.open(out)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def write_sketches(root: Path, n: int = 8, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(100 + start)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        img = Image.new("RGB", (48, 48), "white")
        d = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, 48, 4))
            d.line((x0, y0, x1, y1), fill="black", width=2)
        p = root / f"s{i:03d}.png"
        img.save(p)
        out.append(p)
    return out


# ---------------------------------------------------------------- the maths, by hand


def two_domain_vectors(seed: int, n_photos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photos, sketches, queries): unit vectors in 8-d, photos on one side (+0.7), 20 statistics sketches
    on the other (-0.7) and 5 sketch queries near them (-0.5), float32."""
    rng = np.random.default_rng(seed)
    photos = unit(rng.normal(size=(n_photos, 8)) + 0.7).astype(np.float32)
    sketches = unit(rng.normal(size=(20, 8)) - 0.7).astype(np.float32)
    queries = unit(rng.normal(size=(5, 8)) - 0.5).astype(np.float32)
    return photos, sketches, queries


def class_clusters(seed: int, photo_noise: float, queries_per_class: int, n_cls: int = 20, dim: int = 16):
    """(photos, photo labels, queries, query labels, class prototypes): 10 photos per class near its
    prototype (``photo_noise``), sketch queries further off (0.5), unit float32 vectors."""
    rng = np.random.default_rng(seed)
    protos = unit(rng.normal(size=(n_cls, dim)))
    labels = np.repeat(np.arange(n_cls), 10)
    photos = unit(protos[labels] + photo_noise * rng.normal(size=(len(labels), dim))).astype(np.float32)
    q_labels = np.repeat(np.arange(n_cls), queries_per_class)
    queries = unit(protos[q_labels] + 0.5 * rng.normal(size=(len(q_labels), dim))).astype(np.float32)
    return photos, labels, queries, q_labels, protos


def precision_at(index: Index, queries: np.ndarray, labels: np.ndarray, q_labels: np.ndarray, k: int, **kw) -> float:
    """Mean share of each query's top ``k`` (``Index.search_many(..., **kw)``) that has the query's label."""
    hits = index.search_many(queries, k, model_id="synthetic", **kw)
    return float(np.mean([[labels[h.id] == q_labels[i] for h in row] for i, row in enumerate(hits)]))
