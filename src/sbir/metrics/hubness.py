"""Hubness correction scores: domain centring and CSLS (cross-domain similarity local scaling).

The math of ``--hubness center|csls`` (:mod:`sbir.index.hubness`, which stores the statistics in an
index) and of ``eval.hubness`` (fine-grained evaluation), in one place so ``sbir eval`` and ``sbir search``
rank alike:

* ``center``: ``cos(normalise(q - mean_sketch), normalise(g - mean_photo))``, where ``mean_photo`` is the
  gallery's mean and ``mean_sketch`` that of a *sketch statistics set* (sketches like the queries: never
  the queries themselves).
* ``csls`` (Lample et al. 2018): ``2 cos(q, g) - r_g`` on the centred vectors, with ``r_g`` the mean cosine
  of photo ``g`` to its ``k`` nearest sketches of the statistics set: a photo near many sketches (a hub)
  is pushed down. (The query's own ``r_q`` is the same for all photos and is left out.)
"""

from __future__ import annotations

import numpy as np

CSLS_K = 10
HUBNESS_METHODS = ("none", "center", "csls")


def normalize_rows(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1:
        return v / max(float(np.linalg.norm(v)), 1e-12)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def center(v: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``normalise(v - mean)`` row by row."""
    return normalize_rows(np.asarray(v, dtype=np.float32) - np.asarray(mean, dtype=np.float32))


def knn_mean_cosine(a: np.ndarray, b: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """For each row of ``a`` the mean of its ``k`` largest inner products with the rows of ``b`` (both normalised)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    k = max(1, min(int(k), len(b)))
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), chunk):
        sims = a[s : s + chunk] @ b.T
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        out[s : s + chunk] = top.mean(axis=1)
    return out


def hubness_scores(
    method: str, queries: np.ndarray, photos: np.ndarray, stat_sketches: np.ndarray | None, k: int = CSLS_K
) -> np.ndarray:
    """``(Q, N)`` scores (higher = better) of raw query embeddings against raw photo embeddings under
    ``method`` (``none``: the plain inner product). ``stat_sketches`` ``(M, D)``: the sketch statistics set,
    rounded to float16 as an index stores it. Same values as ``sbir.index.hubness.Hubness.scores``."""
    if method not in HUBNESS_METHODS:
        raise ValueError(f"hubness method must be one of {', '.join(HUBNESS_METHODS)}, got {method!r}")
    q, g = np.asarray(queries, dtype=np.float32), np.asarray(photos, dtype=np.float32)
    if method == "none":
        return q @ g.T
    if stat_sketches is None or not len(stat_sketches):
        raise ValueError(f"hubness method {method!r} needs a sketch statistics set")
    sk = np.asarray(stat_sketches, dtype=np.float16).astype(np.float32)
    photo_mean, sketch_mean = g.mean(axis=0), sk.mean(axis=0)
    gc = center(g, photo_mean)
    s = center(q, sketch_mean) @ gc.T
    if method == "center":
        return s
    return 2 * s - knn_mean_cosine(gc, center(sk, sketch_mean), k)[None, :]


__all__ = ["CSLS_K", "HUBNESS_METHODS", "center", "hubness_scores", "knn_mean_cosine", "normalize_rows"]
