"""Scores, chunking, flip TTA and fine-grained metrics (Acc@K, ranks, %corr)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbir.errors import ConfigError
from sbir.metrics import (
    acc_at_k,
    finegrained_report,
    hamming_scores,
    iter_score_chunks,
    min_over_flip_pairings,
    percent_correct,
    similarity_matrix,
    true_match_ranks,
)

# --------------------------------------------------------------------------- scores


def test_similarity_hand_computed():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    # cosine: same direction 1, orthogonal 0, opposite -1, 45 degrees 1/sqrt(2)
    np.testing.assert_allclose(similarity_matrix(q, g, "cosine"), [[1.0, 0.0, -1.0, 1 / math.sqrt(2)]], atol=1e-6)
    # euclidean: -|q-g|: |(-1,0)|=1, |(1,-3)|=sqrt(10), |(2,0)|=2, |(0,-1)|=1
    np.testing.assert_allclose(similarity_matrix(q, g, "euclidean"), [[-1.0, -math.sqrt(10), -2.0, -1.0]], atol=1e-6)
    # angular: -angle: 0, -pi/2, -pi, -pi/4
    np.testing.assert_allclose(
        similarity_matrix(q, g, "angular"), [[0.0, -math.pi / 2, -math.pi, -math.pi / 4]], atol=1e-3
    )


def test_similarity_accepts_torch_and_float64():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    ref = similarity_matrix(q.astype(np.float32), g.astype(np.float32), "euclidean")
    got = similarity_matrix(torch.from_numpy(q), torch.from_numpy(g).float(), "euclidean")
    assert got.dtype == np.float32 and got.shape == (5, 7)
    np.testing.assert_array_equal(got, ref)
    # exact euclidean distances for comparison
    d = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(-got, d, rtol=1e-4)


def test_hamming_hand_computed_all_code_formats():
    # 8-bit codes; query 11110000
    q01 = np.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    g01 = np.array(
        [
            [1, 1, 1, 1, 0, 0, 0, 0],  # identical -> distance 0
            [1, 1, 0, 0, 0, 0, 1, 1],  # bits 2,3,6,7 differ -> 4
            [0, 0, 0, 0, 1, 1, 1, 1],  # all differ -> 8
            [1, 1, 1, 0, 0, 0, 0, 0],  # bit 3 differs -> 1
        ]
    )
    expected = np.array([[0.0, -4.0, -8.0, -1.0]])
    np.testing.assert_array_equal(hamming_scores(q01, g01), expected)
    np.testing.assert_array_equal(hamming_scores(2 * q01 - 1, 2 * g01 - 1), expected)  # +-1
    np.testing.assert_array_equal(hamming_scores(q01.astype(bool), g01.astype(bool)), expected)
    packed_q = np.packbits(q01.astype(np.uint8), axis=1)
    packed_g = np.packbits(g01.astype(np.uint8), axis=1)
    np.testing.assert_array_equal(hamming_scores(packed_q, packed_g), expected)
    np.testing.assert_array_equal(similarity_matrix(packed_q, packed_g, "hamming"), expected)


def test_hamming_rejects_bad_codes():
    with pytest.raises(ConfigError, match="hash codes"):
        hamming_scores(np.array([[0, 2]]), np.array([[0, 1]]))
    with pytest.raises(ConfigError, match="hash codes"):  # mixes -1 and 0
        hamming_scores(np.array([[-1, 0, 1]]), np.array([[1, 1, 1]]))
    with pytest.raises(ConfigError, match="bits"):
        hamming_scores(np.packbits(np.ones((1, 16), np.uint8), axis=1), np.ones((1, 8)))


def test_iter_score_chunks_covers_all_rows_exactly():
    # integer-valued embeddings: euclidean scores are exact, so chunking cannot change a bit
    rng = np.random.default_rng(1)
    q = rng.integers(-3, 4, size=(23, 6)).astype(np.float32)
    g = rng.integers(-3, 4, size=(11, 6)).astype(np.float32)
    full = similarity_matrix(q, g, "euclidean")
    starts, blocks = zip(*iter_score_chunks(q, g, "euclidean", chunk_size=5), strict=False)
    assert starts == (0, 5, 10, 15, 20)
    assert [b.shape for b in blocks] == [(5, 11)] * 4 + [(3, 11)]
    np.testing.assert_array_equal(np.concatenate(blocks), full)


def test_flip_tta_min_over_four_pairings_explicit():
    rng = np.random.default_rng(2)
    q, qf = rng.integers(-3, 4, size=(2, 9, 4)).astype(np.float32)
    g, gf = rng.integers(-3, 4, size=(2, 6, 4)).astype(np.float32)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    got = min_over_flip_pairings(dist, q, qf, g, gf)
    for i in range(9):
        for j in range(6):
            explicit = min(
                dist(q[i : i + 1], g[j : j + 1])[0, 0],
                dist(q[i : i + 1], gf[j : j + 1])[0, 0],
                dist(qf[i : i + 1], g[j : j + 1])[0, 0],
                dist(qf[i : i + 1], gf[j : j + 1])[0, 0],
            )
            assert got[i, j] == explicit
    # torch in -> torch out
    t = min_over_flip_pairings(torch.cdist, *(torch.from_numpy(x) for x in (q, qf, g, gf)))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), got, rtol=1e-5)
    # the chunked scores with flips are the negated min distance (max score)
    blocks = [b for _, b in iter_score_chunks(q, g, "euclidean", 4, queries_flip=qf, gallery_flip=gf)]
    np.testing.assert_allclose(np.concatenate(blocks), -got, rtol=1e-6)
    # only one side flipped: max over the two pairings
    blocks = [b for _, b in iter_score_chunks(q, g, "euclidean", 4, gallery_flip=gf)]
    np.testing.assert_allclose(np.concatenate(blocks), -np.minimum(dist(q, g), dist(q, gf)), rtol=1e-6)


# --------------------------------------------------------------------------- ranks / Acc@K


def test_ties_count_against_the_query():
    scores = np.array(
        [
            [0.9, 0.5, 0.9, 0.9, 0.1],
            [0.9, 0.5, 0.9, 0.9, 0.1],
            [0.9, 0.5, 0.9, 0.9, 0.1],
            [0.2, 0.2, 0.2, 0.2, 0.2],
        ]
    )
    true_index = np.array([0, 1, 4, 3])
    # row 0: true photo scores 0.9, tied with photos 2 and 3 -> 3 items >= 0.9 -> rank 3
    # row 1: true 0.5; 0.9 x3 and itself -> rank 4
    # row 2: true 0.1 is the worst -> rank 5
    # row 3: everything ties -> rank = gallery size 5 (a constant model never gets rank 1)
    np.testing.assert_array_equal(true_match_ranks(scores, true_index), [3, 4, 5, 5])
    np.testing.assert_array_equal(true_match_ranks(torch.tensor(scores), torch.tensor(true_index)), [3, 4, 5, 5])


def test_acc_at_k_percent_hand_computed():
    ranks = np.array([1, 3, 6, 12])
    # rank<=1: 1 of 4 = 25 %, rank<=5: 2 of 4 = 50 %, rank<=10: 3 of 4 = 75 %
    assert acc_at_k(ranks) == {"acc@1": 25.0, "acc@5": 50.0, "acc@10": 75.0}
    assert acc_at_k(ranks, ks=(3,)) == {"acc@3": 50.0}


def _fg_data():
    # 1-D "directions" on the unit circle: sketch i at angle a_i, photo j at angle b_j
    sk = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    ph = np.array([[1.0, 0.1], [0.1, 1.0], [0.0, -1.0], [0.9, 0.5]], dtype=np.float32)
    return sk, ph


def test_finegrained_report_hand_computed():
    sk, ph = _fg_data()
    # cosine similarities (photos normalised):
    # sketch 0 [1,0]:  p0 .995, p1 .0995, p2 0, p3 .874  -> order p0, p3, p1, p2
    # sketch 1 [0,1]:  p0 .0995, p1 .995, p2 -1, p3 .486 -> order p1, p3, p0, p2
    # sketch 2 [-1,0]: p0 -.995, p1 -.0995, p2 0, p3 -.874 -> order p2, p1, p3, p0
    true_index = np.array([3, 1, 0])  # true photos: ranks 2, 1, 4
    rep = finegrained_report(sk, ph, true_index, ks=(1, 2, 10))
    assert rep["ranks"] == [2, 1, 4]
    assert rep["acc@1"] == pytest.approx(100 / 3)
    assert rep["acc@2"] == pytest.approx(200 / 3)
    assert rep["acc@10"] == 100.0
    assert rep["n_queries"] == 3 and rep["n_gallery"] == 4
    assert rep["mean_rank"] == pytest.approx(7 / 3)
    assert rep["median_rank"] == 2.0
    # chunking (1 row at a time) changes nothing
    assert finegrained_report(sk, ph, true_index, ks=(1, 2, 10), chunk_size=1) == rep
    assert finegrained_report(sk, ph, true_index, ks=(1, 2, 10), memory_budget_mb=1e-6) == rep


def test_finegrained_report_default_keys_and_random_consistency():
    rng = np.random.default_rng(3)
    sk = rng.normal(size=(40, 16)).astype(np.float32)
    ph = rng.normal(size=(30, 16)).astype(np.float32)
    t = rng.integers(0, 30, size=40)
    rep = finegrained_report(sk, ph, t, distance="euclidean", chunk_size=40)
    assert set(rep) == {"acc@1", "acc@5", "acc@10", "n_queries", "n_gallery", "ranks", "mean_rank", "median_rank"}
    ranks = true_match_ranks(similarity_matrix(sk, ph, "euclidean"), t)
    assert rep["ranks"] == ranks.tolist()
    assert rep["acc@5"] == pytest.approx(100 * np.mean(ranks <= 5))


def test_finegrained_flip_tta_equals_explicit_max_of_four():
    rng = np.random.default_rng(4)
    sk, skf = rng.integers(-4, 5, size=(2, 25, 5)).astype(np.float32)
    ph, phf = rng.integers(-4, 5, size=(2, 20, 5)).astype(np.float32)
    t = rng.integers(0, 20, size=25)
    s = np.maximum.reduce([similarity_matrix(a, b, "euclidean") for a in (sk, skf) for b in (ph, phf)])
    rep = finegrained_report(sk, ph, t, distance="euclidean", sketch_flip=skf, photo_flip=phf, chunk_size=7)
    assert rep["ranks"] == true_match_ranks(s, t).tolist()
    no_flip = finegrained_report(sk, ph, t, distance="euclidean")
    assert no_flip["ranks"] != rep["ranks"]  # the option actually changes something here


# --------------------------------------------------------------------------- %corr


def test_percent_correct_hand_computed():
    sk = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ph = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    # cosine: sketch0 -> p0 1, p1 0, p2 1 ; sketch1 -> p0 0, p1 1, p2 0
    triplets = np.array(
        [
            [0, 0, 1],  # 1 > 0 correct
            [0, 1, 0],  # 0 > 1 wrong
            [0, 0, 2],  # 1 vs 1 tie -> wrong
            [1, 1, 2],  # 1 > 0 correct
        ]
    )
    assert percent_correct(sk, ph, triplets) == 50.0
    # euclidean: sketch0 -> p0 0, p2 -1: now p0 strictly better -> 3 of 4 correct
    assert percent_correct(sk, ph, triplets, distance="euclidean") == 75.0
    assert percent_correct(sk, ph, triplets, distance="euclidean", memory_budget_mb=1e-6) == 75.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distance": "manhattan"}, "distance must be one of"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"ks": (0, 5)}, "positive integer"),
        ({"ks": ()}, "must not be empty"),
        ({"memory_budget_mb": -1}, "memory_budget_mb must be a positive number"),
        ({"true_index": np.array([0, 1, 9])}, r"true_index values must be in \[0, 3\]"),
        ({"true_index": np.array([0, 1])}, "has 2 entries but there are 3 queries"),
        ({"true_index": np.array([0.0, 1.0, 2.0])}, "integer gallery indices"),
        ({"photo_emb": np.ones((4, 3), np.float32)}, "sketch_emb and photo_emb have different embedding sizes: 2 vs 3"),
        ({"sketch_flip": np.ones((2, 2), np.float32)}, "sketch_flip must have the shape of sketch_emb"),
        ({"sketch_emb": np.full((3, 2), np.nan, np.float32)}, "sketch_emb contains NaN or infinite"),
        ({"sketch_emb": np.ones(3, np.float32)}, "must be 2-D"),
    ],
)
def test_finegrained_invalid_parameters(kwargs, message):
    sk, ph = _fg_data()
    args = {"sketch_emb": sk, "photo_emb": ph, "true_index": np.array([0, 1, 2])}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        finegrained_report(**args)


def test_other_invalid_parameters():
    sk, ph = _fg_data()
    with pytest.raises(ConfigError, match="shape"):
        percent_correct(sk, ph, np.array([[0, 1]]))
    with pytest.raises(ConfigError, match="photo indices"):
        percent_correct(sk, ph, np.array([[0, 1, 7]]))
    with pytest.raises(ConfigError, match="1-based"):
        acc_at_k(np.array([0, 1]))
    with pytest.raises(ConfigError, match="NaN"):
        true_match_ranks(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ConfigError, match="chunk_size"):
        list(iter_score_chunks(sk, ph, chunk_size=-2))
    with pytest.raises(ConfigError, match="callable"):
        min_over_flip_pairings(None, sk, sk, ph, ph)
