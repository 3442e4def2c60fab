"""FAISS index construction and search over L2-normalised embeddings.

Two metrics: ``ip`` (the default: L2-normalised vectors, inner product = cosine
similarity) and ``l2`` (euclidean distance, for models trained with a
euclidean loss whose embeddings are not normalised, e.g. MEMS category
models). Scores are always "higher is better": cosine similarity, or minus
the euclidean distance. Three kinds:

* ``none`` (exact): ``IndexFlatIP``, brute force. The default.
* ``hnsw``: ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT`` (graph search over
  the full vectors; scores are exact, the candidate set is approximate).
* ``ivfpq``: ``IndexIVFPQ`` (inverted lists over product-quantised codes; small
  memory). Its candidates are re-ranked with the exact vectors, so returned
  scores are exact cosine similarities.

``auto`` picks ``hnsw`` at or above :data:`AUTO_THRESHOLD` vectors and exact
search below. The recall cost of each approximate kind is measured by
``benchmarks/index_search.py`` (recall@10 against exact search, D=512,
embedding-like synthetic vectors, one thread on a 2-core CPU, 2026-12-03):
exact search takes ~1.3 / 17 / 136 ms per query at 10k / 100k / 1M vectors;
HNSW with the defaults below has recall@10 1.00 / 0.99 at 10k / 100k in ~0.6
/ 1.6 ms and takes ~1 min to build at 100k (1M was not built on 2 cores);
IVF-PQ with re-ranking and nprobe 256 has recall@10 0.96 / 0.87 at 100k / 1M
in ~2.2 / 5.3 ms and builds 1M vectors in ~1.6 min. Every ``sbir index update`` rebuilds
the FAISS index from the stored vectors (no re-embedding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from sbir.errors import SbirError

APPROX_KINDS = ("none", "hnsw", "ivfpq")
APPROX_CHOICES = APPROX_KINDS + ("auto",)
AUTO_THRESHOLD = 200_000
# PQ codebooks have 256 centroids per sub-quantiser; FAISS wants ~39 training points per centroid.
IVFPQ_MIN_VECTORS = 10_000

HNSW_DEFAULTS = {"M": 32, "ef_construction": 80, "ef_search": 128}
IVFPQ_DEFAULTS = {"nprobe": 256, "rerank": 20, "nbits": 8}


class ApproxError(SbirError):
    """An approximate index cannot be built with these vectors or parameters."""


def resolve_approx(approx: str, n: int, threshold: int = AUTO_THRESHOLD) -> str:
    """Turn ``auto`` into a concrete kind for ``n`` vectors; validate the name."""
    if approx not in APPROX_CHOICES:
        raise ApproxError(f"--approx must be one of {', '.join(APPROX_CHOICES)}, got {approx!r}")
    if approx == "auto":
        return "hnsw" if n >= threshold else "none"
    return approx


def _pq_subquantizers(dim: int) -> int:
    """Largest number of sub-quantisers <= dim / 8 (about 8 dims each) that divides ``dim``."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def default_params(kind: str, n: int, dim: int) -> dict[str, Any]:
    if kind == "hnsw":
        return dict(HNSW_DEFAULTS)
    if kind == "ivfpq":
        nlist = int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39)))
        return {
            **IVFPQ_DEFAULTS,
            "nlist": nlist,
            "m": _pq_subquantizers(dim),
            "nprobe": min(IVFPQ_DEFAULTS["nprobe"], nlist),
        }
    return {}


METRICS = ("ip", "l2")


def _faiss_metric(metric: str) -> int:
    if metric not in METRICS:
        raise ApproxError(f"metric must be one of {METRICS}, got {metric!r}")
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def build_faiss(
    vectors: np.ndarray, kind: str, params: dict[str, Any] | None = None, seed: int = 0, metric: str = "ip"
) -> tuple[faiss.Index, dict[str, Any]]:
    """Build a FAISS index of ``kind`` over ``vectors`` (N, D) float32; returns (index, params used)."""
    fm = _faiss_metric(metric)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ApproxError(f"vectors must be (N, D), got shape {vectors.shape}")
    n, dim = vectors.shape
    p = {**default_params(kind, n, dim), **(params or {})}
    if kind == "none":
        index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        index.add(vectors)
        return index, p
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(p["M"]), fm)
        index.hnsw.efConstruction = int(p["ef_construction"])
        index.hnsw.efSearch = int(p["ef_search"])
        if n:
            index.add(vectors)
        return index, p
    if kind == "ivfpq":
        if n < IVFPQ_MIN_VECTORS:
            raise ApproxError(
                f"IVF-PQ needs at least {IVFPQ_MIN_VECTORS} vectors to train its codebooks, the gallery has {n}; "
                "use --approx none (exact, fast at this size) or --approx hnsw"
            )
        m = int(p["m"])
        if dim % m:
            raise ApproxError(
                f"IVF-PQ: the embedding dimension {dim} is not divisible by m={m}; choose a divisor of {dim}"
            )
        quantizer = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, int(p["nlist"]), m, int(p["nbits"]), fm)
        rng = np.random.default_rng(seed)
        train = vectors if n <= 100_000 else vectors[np.sort(rng.choice(n, 100_000, replace=False))]
        index.train(train)
        index.add(vectors)
        index.nprobe = int(p["nprobe"])
        return index, p
    raise ApproxError(f"unknown index kind {kind!r}; choose one of {', '.join(APPROX_KINDS)}")


def configure(index: faiss.Index, kind: str, params: dict[str, Any]) -> faiss.Index:
    """Apply search-time parameters (efSearch, nprobe) to a loaded index.

    (``faiss.read_index`` already returns the concrete class; ``downcast_index``
    is avoided because the downcast wrapper does not own the C++ object.)
    """
    if kind == "hnsw" and "ef_search" in params:
        index.hnsw.efSearch = int(params["ef_search"])
    if kind == "ivfpq" and "nprobe" in params:
        index.nprobe = int(params["nprobe"])
    return index


@dataclass
class Searcher:
    """Search one FAISS index; re-rank IVF-PQ candidates with exact vectors."""

    index: faiss.Index
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    vectors: np.ndarray | None = None  # raw (N, D) vectors, needed for IVF-PQ re-ranking
    # OpenMP threads per search. A query batch of a server is small: one thread avoids
    # OpenMP's start-up and barrier cost, which on a busy 2-core machine made an exact
    # 10k x 512 search 15x slower (15 ms instead of 1 ms, benchmarks/index_search.py).
    threads: int | None = 1
    metric: str = "ip"
    # Hubness correction (sbir.index.hubness): ``gallery_rows(ids)`` gives the photos ``ids`` as searched
    # (centred, augmented) for re-ranking instead of the raw ``vectors``; ``bias`` (N,) is added to
    # ``scale * q.v``; the FAISS index then holds ``[v, bias]`` and queries are searched as ``[scale * q, 1]``.
    gallery_rows: Callable[[np.ndarray], np.ndarray] | None = None
    bias: np.ndarray | None = None
    scale: float = 1.0

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) for (Q, D) queries; rows are padded with (-inf, -1) when k > N."""
        if self.threads is None:
            return self._search(queries, k)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(int(self.threads))
        try:
            return self._search(queries, k)
        finally:
            faiss.omp_set_num_threads(before)

    def _faiss_queries(self, q: np.ndarray) -> np.ndarray:
        if self.bias is None:
            return q
        return np.ascontiguousarray(np.hstack([self.scale * q, np.ones((len(q), 1), np.float32)]), dtype=np.float32)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        n = self.ntotal
        kk = min(k, n)
        if kk <= 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.kind == "ivfpq" and self.vectors is not None and int(self.params.get("rerank", 0)) > 1:
            fetch = min(n, max(kk * int(self.params["rerank"]), kk))
            _, cand = self.index.search(self._faiss_queries(q), fetch)
            scores = np.full((len(q), kk), -np.inf, np.float32)
            ids = np.full((len(q), kk), -1, np.int64)
            for i in range(len(q)):
                c = cand[i][cand[i] >= 0]
                if not len(c):
                    continue
                c = np.sort(c)
                if self.gallery_rows is not None:
                    cand_vecs = self.gallery_rows(c)
                else:
                    cand_vecs = np.asarray(self.vectors[c], dtype=np.float32)
                if self.metric == "ip":
                    s = self.scale * (cand_vecs @ q[i])
                    if self.bias is not None:
                        s = s + self.bias[c]
                else:
                    s = -np.linalg.norm(cand_vecs - q[i], axis=1)
                order = np.argsort(-s, kind="stable")[:kk]
                scores[i, : len(order)] = s[order]
                ids[i, : len(order)] = c[order]
        else:
            scores, ids = self.index.search(self._faiss_queries(q), kk)
            if self.metric == "l2":  # FAISS returns squared distances, smallest first
                scores = -np.sqrt(np.maximum(scores, 0))
        if kk < k:
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        return scores, ids
