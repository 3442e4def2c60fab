"""Exact and approximate FAISS search over normalised vectors (no model needed)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sbir.index.faiss_ops import ApproxError, Searcher, build_faiss, default_params, resolve_approx


def clustered(n: int, dim: int, seed: int, centers: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    base = clustered(12_000, 64, 0)
    queries = clustered(200, 64, 1)
    exact = base @ queries.T
    truth = np.argsort(-exact, axis=0)[:10].T
    return base, queries, truth


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth, strict=False)]))


def test_exact_search_is_brute_force(data):
    base, queries, truth = data
    index, _ = build_faiss(base, "none")
    scores, ids = Searcher(index, "none").search(queries, 10)
    assert recall(ids, truth) == 1.0
    np.testing.assert_allclose(scores[:, 0], (base @ queries.T).max(axis=0), atol=1e-5)


def test_hnsw_recall(data):
    base, queries, truth = data
    index, params = build_faiss(base, "hnsw")
    assert params == {"M": 32, "ef_construction": 80, "ef_search": 128}
    _, ids = Searcher(index, "hnsw", params).search(queries, 10)
    assert recall(ids, truth) >= 0.9


def test_ivfpq_with_exact_reranking(data):
    base, queries, truth = data
    index, params = build_faiss(base, "ivfpq")
    assert params["m"] == 8 and params["nlist"] == min(round(4 * np.sqrt(12_000)), 12_000 // 39)
    with_rerank = Searcher(index, "ivfpq", params, base)
    scores, ids = with_rerank.search(queries, 10)
    r_rerank = recall(ids, truth)
    no_rerank = Searcher(index, "ivfpq", {**params, "rerank": 0}, base)
    _, ids2 = no_rerank.search(queries, 10)
    assert r_rerank >= 0.9 and r_rerank >= recall(ids2, truth)
    # Re-ranked scores are the exact cosine similarities of the returned ids.
    exact = np.take_along_axis(queries @ base.T, ids, axis=1)
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_padding_when_k_exceeds_n():
    base = clustered(5, 8, 3)
    index, _ = build_faiss(base, "none")
    scores, ids = Searcher(index, "none").search(base[:2], 8)
    assert ids.shape == (2, 8) and (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    empty, _ = build_faiss(np.zeros((0, 8), np.float32), "hnsw")
    s, i = Searcher(empty, "hnsw").search(base[:1], 3)
    assert (i == -1).all()


def test_choices_and_limits():
    assert resolve_approx("auto", 199_999) == "none" and resolve_approx("auto", 200_000) == "hnsw"
    assert resolve_approx("auto", 10, threshold=10) == "hnsw"
    with pytest.raises(ApproxError, match="must be one of"):
        resolve_approx("annoy", 10)
    with pytest.raises(ApproxError, match="at least 10000"):
        build_faiss(clustered(500, 16, 0), "ivfpq")
    assert default_params("ivfpq", 1_000_000, 1280)["m"] == 160
    assert default_params("ivfpq", 1_000_000, 100)["m"] == 10  # a divisor of the dimension
    assert isinstance(build_faiss(clustered(50, 16, 0), "hnsw")[0], faiss.IndexHNSWFlat)


@pytest.mark.parametrize("kind", ["none", "hnsw", "ivfpq"])
def test_euclidean_metric_scores_are_minus_distances(kind):
    rng = np.random.default_rng(5)
    base = (rng.standard_normal((10_000, 16)) * rng.uniform(0.5, 3, (10_000, 1))).astype(np.float32)
    q = base[:5] + 0.01
    index, params = build_faiss(base, kind, metric="l2")
    scores, ids = Searcher(index, kind, params, base, metric="l2").search(q, 5)
    d = np.linalg.norm(base[None] - q[:, None], axis=2)
    assert (ids[:, 0] == np.arange(5)).all()
    np.testing.assert_allclose(scores, -np.take_along_axis(d, ids, axis=1), rtol=1e-3, atol=1e-3)
