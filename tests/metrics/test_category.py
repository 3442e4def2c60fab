"""Category-level metrics: AP variants, VOC AP, P@K, the chunked category_report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torchmetrics.retrieval import RetrievalMAP, RetrievalPrecision

from sbir.errors import ConfigError
from sbir.metrics import (
    average_precision,
    category_report,
    precision_at_k,
    similarity_matrix,
    voc_ap,
    voc_ap_from_pr,
)
from sbir.metrics.category import _build_sort_keys

# Hand example A: 5 gallery items already in ranking order (scores decreasing),
# relevant at ranks 1, 3, 5 (R = 3).  P@1 = 1, P@3 = 2/3, P@5 = 3/5.
SCORES_A = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
REL_A = np.array([True, False, True, False, True])
# Hand example B: relevant at ranks 2, 3, 5 (R = 3).  P@2 = 1/2, P@3 = 2/3, P@5 = 3/5.
REL_B = np.array([False, True, True, False, True])


def test_average_precision_hand_computed():
    # A, AP@all = (1 + 2/3 + 3/5) / 3
    assert average_precision(SCORES_A, REL_A) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # A, top 2 holds only rank 1 (P@1 = 1); sum = 1
    assert average_precision(SCORES_A, REL_A, k=2) == pytest.approx(1.0)  # / 1 retrieved
    assert average_precision(SCORES_A, REL_A, k=2, normalize="all_relevant") == pytest.approx(1 / 3)
    assert average_precision(SCORES_A, REL_A, k=2, normalize="min_k_relevant") == pytest.approx(1 / 2)
    # A, top 4 holds ranks 1 and 3: sum = 1 + 2/3
    assert average_precision(SCORES_A, REL_A, k=4) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(SCORES_A, REL_A, k=4, normalize="all_relevant") == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision(SCORES_A, REL_A, k=4, normalize="min_k_relevant") == pytest.approx(
        (1 + 2 / 3) / 3  # min(4, 3) = 3
    )
    # K beyond the gallery is clipped: AP@10 == AP@all
    assert average_precision(SCORES_A, REL_A, k=10) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # B, AP@all = (1/2 + 2/3 + 3/5) / 3
    assert average_precision(SCORES_A, REL_B) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    # B, top 1 retrieves nothing relevant -> 0 with every normalisation
    for norm in ("retrieved", "all_relevant", "min_k_relevant"):
        assert average_precision(SCORES_A, REL_B, k=1, normalize=norm) == 0.0


def test_voc_ap_hand_computed():
    # A: precisions at relevant ranks 1, 2/3, 3/5 are already decreasing,
    # so the envelope changes nothing: VOC AP == AP
    assert voc_ap(SCORES_A, REL_A) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # B: precisions 1/2, 2/3, 3/5 -> envelope (max to the right) 2/3, 2/3, 3/5
    assert voc_ap(SCORES_A, REL_B) == pytest.approx((2 / 3 + 2 / 3 + 3 / 5) / 3)
    # B top 4: relevant at 2, 3 -> envelope inside the top 4: 2/3, 2/3; Z = min(4, 3) = 3
    assert voc_ap(SCORES_A, REL_B, k=4) == pytest.approx((2 / 3 + 2 / 3) / 3)
    # B top 2: only rank 2 (P = 1/2), Z = min(2, 3) = 2
    assert voc_ap(SCORES_A, REL_B, k=2) == pytest.approx((1 / 2) / 2)
    # the SAKE curve form: recall steps 1/3 at precisions 2/3, 2/3, 3/5 (after the envelope)
    rec = [0, 1 / 3, 2 / 3, 2 / 3, 1]
    prec = [0, 1 / 2, 2 / 3, 1 / 2, 3 / 5]
    assert voc_ap_from_pr(rec, prec) == pytest.approx((2 / 3 + 2 / 3 + 3 / 5) / 3)


def test_precision_at_k_hand_computed():
    assert precision_at_k(SCORES_A, REL_B, 2) == pytest.approx(1 / 2)  # [F, T]
    assert precision_at_k(SCORES_A, REL_B, 3) == pytest.approx(2 / 3)  # [F, T, T]
    assert precision_at_k(SCORES_A, REL_B, 10) == pytest.approx(3 / 5)  # clipped to N = 5
    # ZSE-SBIR: cutoff min(k, R) = min(4, 3) = 3 -> 2 relevant in top 3 -> 2/3
    assert precision_at_k(SCORES_A, REL_B, 4, normalize="min_k_relevant") == pytest.approx(2 / 3)
    # cutoff min(1, 3) = 1 -> top 1 is irrelevant -> 0
    assert precision_at_k(SCORES_A, REL_B, 1, normalize="min_k_relevant") == 0.0


def test_ties_follow_gallery_index_order():
    tied = np.array([0.5, 0.5, 0.5])
    # stable order 0, 1, 2: the relevant item last -> rank 3 -> AP = 1/3
    assert average_precision(tied, np.array([False, False, True])) == pytest.approx(1 / 3)
    # relevant item first -> AP = 1
    assert average_precision(tied, np.array([True, False, False])) == 1.0
    assert precision_at_k(tied, np.array([False, True, False]), 1) == 0.0
    assert precision_at_k(tied, np.array([True, False, False]), 1) == 1.0


def test_no_relevant_item_gives_nan():
    assert np.isnan(average_precision(SCORES_A, np.zeros(5, bool)))
    assert np.isnan(voc_ap(SCORES_A, np.zeros(5, bool), k=3))
    assert np.isnan(precision_at_k(SCORES_A, np.zeros(5, bool), 3, normalize="min_k_relevant"))
    assert precision_at_k(SCORES_A, np.zeros(5, bool), 3) == 0.0


def test_ap_all_matches_sklearn_on_continuous_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        scores = rng.random(n)  # continuous: no ties (sklearn groups tied scores)
        rel = rng.random(n) < rng.uniform(0.05, 0.6)
        rel[rng.integers(n)] = True
        assert average_precision(scores, rel) == pytest.approx(average_precision_score(rel, scores), abs=1e-12)


def _sake_voc(scores, rel, top=None):
    """Independent transcription of SAKE's eval_AP_inner + VOCap (loops, no vector tricks)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    flags = [bool(rel[i]) for i in order]
    tot_pos = sum(flags)
    if top is not None:
        top = min(top, len(flags))
        flags = flags[:top]
        tot_pos = min(top, tot_pos)
    tp_run, recall, precision = 0, [], []
    for i, f in enumerate(flags):
        tp_run += f
        recall.append(tp_run / tot_pos)
        precision.append(tp_run / (i + 1))
    mrec = [0.0] + recall + [1.0]
    mpre = [0.0] + precision + [0.0]
    for ii in range(len(mpre) - 2, -1, -1):
        mpre[ii] = max(mpre[ii], mpre[ii + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def test_voc_ap_matches_independent_implementation():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(3, 120))
        scores = rng.integers(0, 20, n).astype(float)  # plenty of ties
        rel = rng.random(n) < 0.3
        rel[0] = True
        for k in (None, 1, 5, 50, 500):
            assert voc_ap(scores, rel, k=k) == pytest.approx(_sake_voc(scores, rel, k), abs=1e-12)


def test_sort_keys_equal_stable_argsort():
    rng = np.random.default_rng(2)
    s = rng.choice(
        np.array([0.0, -0.0, 1.5, -1.5, 1e-30, -1e-30, np.inf, -np.inf, 3.0, -3.0], np.float32),
        size=(6, 200),
    )
    s[:, :50] = rng.normal(size=(6, 50)).astype(np.float32)
    s += np.float32(0.0)  # as category_report does: -0.0 -> +0.0
    keys = np.empty(s.shape, np.uint64)
    _build_sort_keys(s, keys, np.arange(200, dtype=np.uint32))
    keys.sort(axis=1)
    order = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    np.testing.assert_array_equal(order, np.argsort(-s, axis=1, kind="stable"))


def _random_problem(seed, nq=60, ng=150, d=12, n_classes=6, integer=False):
    rng = np.random.default_rng(seed)
    if integer:
        q = rng.integers(-3, 4, size=(nq, d)).astype(np.float32)
        g = rng.integers(-3, 4, size=(ng, d)).astype(np.float32)
    else:
        q = rng.normal(size=(nq, d)).astype(np.float32)
        g = rng.normal(size=(ng, d)).astype(np.float32)
    return q, rng.integers(0, n_classes, nq), g, rng.integers(0, n_classes, ng)


def _reference_report(scores, ql, gl, ks_map, ks_prec):
    """Per-query reference functions averaged; the engine must agree exactly."""
    ref = {}
    rows = [(scores[i], gl == ql[i]) for i in range(len(ql)) if (gl == ql[i]).any()]

    def mean(f):
        return float(np.mean([f(s, m) for s, m in rows]))

    ref["map@all"] = mean(lambda s, m: average_precision(s, m))
    ref["map@all_voc"] = mean(lambda s, m: voc_ap(s, m))
    for k in ks_map:
        ref[f"map@{k}"] = mean(lambda s, m, k=k: average_precision(s, m, k))
        ref[f"map@{k}_allrel"] = mean(lambda s, m, k=k: average_precision(s, m, k, "all_relevant"))
        ref[f"map@{k}_minkr"] = mean(lambda s, m, k=k: average_precision(s, m, k, "min_k_relevant"))
        ref[f"map@{k}_voc"] = mean(lambda s, m, k=k: voc_ap(s, m, k))
    for k in ks_prec:
        ref[f"p@{k}"] = mean(lambda s, m, k=k: precision_at_k(s, m, k))
        ref[f"p@{k}_zse"] = mean(lambda s, m, k=k: precision_at_k(s, m, k, "min_k_relevant"))
    return ref


def _assert_report_matches(rep, ref):
    for key, value in ref.items():
        assert rep[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "angular"])
def test_category_report_matches_reference_functions(distance):
    q, ql, g, gl = _random_problem(3)
    ks_map, ks_prec = (5, 40, 1000), (1, 10, 200)
    rep = category_report(
        q, ql, g, gl, distance=distance, ks_map=ks_map, ks_prec=ks_prec, chunk_size=len(q)
    )  # one chunk: scores identical to similarity_matrix
    scores = similarity_matrix(q, g, distance)
    _assert_report_matches(rep, _reference_report(scores, ql, gl, ks_map, ks_prec))
    assert rep["n_queries"] == 60 and rep["n_gallery"] == 150
    assert rep["n_queries_without_relevant"] == 0


def test_category_report_hamming_with_heavy_ties():
    # 6-bit codes over 200 photos: only 7 distinct scores, ties everywhere;
    # the engine's packed-key sort must reproduce the stable tie order exactly
    rng = np.random.default_rng(4)
    q = rng.integers(0, 2, size=(50, 6))
    g = rng.integers(0, 2, size=(200, 6))
    ql, gl = rng.integers(0, 4, 50), rng.integers(0, 4, 200)
    ks_map, ks_prec = (10, 100), (10, 50)
    rep = category_report(q, ql, g, gl, distance="hamming", ks_map=ks_map, ks_prec=ks_prec, chunk_size=9)
    _assert_report_matches(rep, _reference_report(similarity_matrix(q, g, "hamming"), ql, gl, ks_map, ks_prec))
    # packed bits (padded to 8 bits with zeros: same distances) and +-1 codes give the same report
    packed = category_report(
        np.packbits(q.astype(np.uint8), axis=1),
        ql,
        np.packbits(g.astype(np.uint8), axis=1),
        gl,
        distance="hamming",
        ks_map=ks_map,
        ks_prec=ks_prec,
    )
    signed = category_report(2 * q - 1, ql, 2 * g - 1, gl, distance="hamming", ks_map=ks_map, ks_prec=ks_prec)
    assert packed == rep and signed == rep


def test_category_report_matches_torchmetrics():
    q, ql, g, gl = _random_problem(5, nq=40, ng=120)
    scores = similarity_matrix(q, g, "cosine")
    rep = category_report(q, ql, g, gl, ks_map=(10,), ks_prec=(5, 20), chunk_size=40)
    # torchmetrics ignores targets whose score is <= 0, so shift the cosine scores
    # into (1, 3) in float64 (exact, no new ties)
    preds = torch.from_numpy(scores.astype(np.float64) + 2.0).flatten()
    target = torch.from_numpy(gl[None, :] == ql[:, None]).flatten()
    indexes = torch.arange(len(q)).repeat_interleave(len(g))
    assert float(RetrievalMAP()(preds, target, indexes=indexes)) == pytest.approx(rep["map@all"], abs=1e-6)
    assert float(RetrievalMAP(top_k=10)(preds, target, indexes=indexes)) == pytest.approx(rep["map@10"], abs=1e-6)
    for k in (5, 20):
        assert float(RetrievalPrecision(top_k=k)(preds, target, indexes=indexes)) == pytest.approx(
            rep[f"p@{k}"], abs=1e-6
        )


def test_chunked_equals_unchunked():
    # integer embeddings + euclidean: every score is exact whatever the chunk shape
    q, ql, g, gl = _random_problem(6, nq=70, integer=True)
    full = category_report(q, ql, g, gl, distance="euclidean", chunk_size=70)
    for kwargs in ({"chunk_size": 1}, {"chunk_size": 13}, {}, {"memory_budget_mb": 1e-6}):
        assert category_report(q, ql, g, gl, distance="euclidean", **kwargs) == full
    _assert_report_matches(full, _reference_report(similarity_matrix(q, g, "euclidean"), ql, gl, (200,), (100, 200)))


def test_category_flip_tta_equals_explicit_max_of_four():
    q, ql, g, gl = _random_problem(7, integer=True)
    rng = np.random.default_rng(8)
    qf = rng.integers(-3, 4, size=q.shape).astype(np.float32)
    gf = rng.integers(-3, 4, size=g.shape).astype(np.float32)
    scores = np.maximum.reduce([similarity_matrix(a, b, "euclidean") for a in (q, qf) for b in (g, gf)])
    rep = category_report(
        q, ql, g, gl, distance="euclidean", sketch_flip=qf, photo_flip=gf, ks_map=(20,), ks_prec=(10,), chunk_size=11
    )
    _assert_report_matches(rep, _reference_report(scores, ql, gl, (20,), (10,)))
    plain = category_report(q, ql, g, gl, distance="euclidean", ks_map=(20,), ks_prec=(10,))
    assert plain["map@all"] != rep["map@all"]


def test_category_report_hand_computed_and_missing_classes():
    # gallery on a line; euclidean; query 0 at x=0 (class "a"), query 1 class "z" (no photo)
    g = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    gl = np.array(["a", "b", "a", "b"])
    q = np.array([[0.1], [5.0]], dtype=np.float32)
    ql = np.array(["a", "z"])
    rep = category_report(q, ql, g, gl, distance="euclidean", ks_map=(2,), ks_prec=(1, 2))
    # query 0 ranking: x=0 (a), 1 (b), 2 (a), 3 (b): relevant at ranks 1, 3
    # AP@all = (1 + 2/3)/2 ; AP@2 = 1/1 ; P@1 = 1 ; P@2 = 1/2 ; voc = AP (decreasing)
    assert rep["map@all"] == pytest.approx((1 + 2 / 3) / 2)
    assert rep["map@all_voc"] == pytest.approx((1 + 2 / 3) / 2)
    assert rep["map@2"] == 1.0
    assert rep["map@2_allrel"] == pytest.approx(1 / 2)
    assert rep["map@2_minkr"] == pytest.approx(1 / 2)
    assert rep["map@2_voc"] == pytest.approx(1 / 2)
    assert rep["p@1"] == 1.0 and rep["p@2"] == 0.5
    assert rep["p@2_zse"] == 0.5  # cutoff min(2, R=2) = 2
    assert rep["n_queries"] == 2 and rep["n_queries_without_relevant"] == 1
    # variants can be switched off
    small = category_report(q, ql, g, gl, distance="euclidean", ks_map=(2,), ks_prec=(1,), variants=())
    assert set(small) == {"map@all", "map@2", "p@1", "n_queries", "n_gallery", "n_queries_without_relevant"}


def test_default_keys():
    q, ql, g, gl = _random_problem(9)
    rep = category_report(q, ql, g, gl)
    assert set(rep) == {
        "map@all",
        "map@all_voc",
        "map@200",
        "map@200_allrel",
        "map@200_minkr",
        "map@200_voc",
        "p@100",
        "p@100_zse",
        "p@200",
        "p@200_zse",
        "n_queries",
        "n_gallery",
        "n_queries_without_relevant",
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variants": ("voc", "bogus")}, "unknown variants"),
        ({"ks_map": (0,)}, "positive integer"),
        ({"ks_prec": (5, 5)}, "duplicates"),
        ({"distance": "l1"}, "distance must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"memory_budget_mb": 0}, "memory_budget_mb must be a positive number"),
        ({"sketch_labels": np.zeros(3)}, "one label per sketch"),
        ({"photo_labels": np.zeros((150, 2))}, "one label per photo"),
        ({"photo_labels": np.full(150, 99)}, "no sketch has a photo of its class"),
    ],
)
def test_category_invalid_parameters(kwargs, message):
    q, ql, g, gl = _random_problem(10)
    args = {"sketch_emb": q, "sketch_labels": ql, "photo_emb": g, "photo_labels": gl}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        category_report(**args)


def test_single_query_invalid_parameters():
    with pytest.raises(ConfigError, match="normalize must be one of"):
        average_precision(SCORES_A, REL_A, k=2, normalize="R")
    with pytest.raises(ConfigError, match="normalize must be one of"):
        precision_at_k(SCORES_A, REL_A, 2, normalize="retrieved")
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        voc_ap(SCORES_A, REL_A, k=0)
    with pytest.raises(ConfigError, match="relevant_mask has shape"):
        average_precision(SCORES_A, REL_A[:3])
    with pytest.raises(ConfigError, match="boolean"):
        average_precision(SCORES_A, np.array([0, 2, 1, 0, 0]))
