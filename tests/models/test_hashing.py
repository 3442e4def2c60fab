"""Hash codes: trained on clustered embeddings they keep the retrieval quality; packing and faiss Hamming search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir.errors import ConfigError
from sbir.models.hashing import (
    HashHead,
    HashLoss,
    hamming_distances,
    hamming_search,
    pack_codes,
    train_hash_head,
    unpack_codes,
)


def mean_average_precision(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    """mAP over queries; ``scores`` higher = more similar. Ties are broken pessimistically (relevant items last)."""
    aps = []
    for s, yq in zip(scores, query_labels, strict=False):
        rel = gallery_labels == yq
        order = np.lexsort((rel, -s))  # by score descending, and within ties irrelevant first
        hits = rel[order]
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def clusters(n_per_class: int, rng: np.random.Generator, centers: np.ndarray, noise: float = 1.2):
    y = np.repeat(np.arange(len(centers)), n_per_class)
    x = centers[y] + rng.normal(size=(len(y), centers.shape[1])) * noise
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 48))
    train = clusters(40, rng, centers)
    query = clusters(8, rng, centers)
    gallery = clusters(20, rng, centers)
    return train, query, gallery


def l2n(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_map_helper_on_a_known_ranking():
    # relevant at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    assert mean_average_precision(scores, np.array([1]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("supervised", [True, False])
def test_64bit_codes_keep_the_float_map(data, supervised):
    (xtr, ytr), (xq, yq), (xg, yg) = data
    float_map = mean_average_precision(l2n(xq) @ l2n(xg).T, yq, yg)
    head = train_hash_head(xtr, ytr if supervised else None, bits=64, epochs=20, seed=0)
    assert not head.training
    d = hamming_distances(head.encode(xq), head.encode(xg))
    hash_map = mean_average_precision(-d.astype(float), yq, yg)
    assert float_map > 0.8  # the task is neither trivial nor hopeless for float embeddings
    assert hash_map >= float_map - (0.02 if supervised else 0.05), (hash_map, float_map)

    codes = unpack_codes(head.encode(xtr)).astype(float)
    assert set(np.unique(codes)) <= {-1.0, 1.0}
    bias = np.abs(codes.mean(axis=0))  # 0 = the bit is +1 for exactly half of the items
    # With 10 clusters a bit can only split whole clusters (3/7 gives 0.4); on average bits are near-balanced.
    assert bias.mean() < 0.2 and bias.max() < 0.6
    corr = np.corrcoef(codes.T)
    assert np.abs(corr[~np.eye(64, dtype=bool)]).mean() < 0.3  # bits are far from redundant copies


def test_untrained_projection_is_worse_than_trained_codes(data):
    """The training objective is doing the work: a random projection of the same width ranks worse."""
    (xtr, ytr), (xq, yq), (xg, yg) = data
    rand = HashHead(xtr.shape[1], 32)
    rand.init_from_data(torch.as_tensor(xtr), seed=3)
    rand.eval()
    trained = train_hash_head(xtr, ytr, bits=32, epochs=20, seed=3)
    m_rand = mean_average_precision(-hamming_distances(rand.encode(xq), rand.encode(xg)).astype(float), yq, yg)
    m_trained = mean_average_precision(-hamming_distances(trained.encode(xq), trained.encode(xg)).astype(float), yq, yg)
    assert m_trained > m_rand + 0.05


def test_hash_head_train_and_eval_modes():
    head = HashHead(8, 32)
    x = torch.randn(5, 8)
    head.train()
    relaxed = head(x)
    assert relaxed.abs().max() < 1 and not set(relaxed.unique().tolist()) <= {-1.0, 1.0}
    head.eval()
    assert set(head(x).unique().tolist()) <= {-1.0, 1.0}
    z = head.linear(x)
    assert torch.equal(head(x), torch.where(z >= 0, 1.0, -1.0))
    with pytest.raises(ConfigError):
        HashHead(8, 48)


def test_hash_loss_terms():
    loss = HashLoss(w_decorrelation=1.0, w_balance=1.0, w_quantization=1.0)
    # Four balanced, decorrelated +-1 codes whose inner products / bits are exactly the target similarity.
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    p = loss.parts(h, h @ h.t() / 2)
    assert float(p["sim"]) == pytest.approx(0.0)
    assert float(p["decorrelation"]) == pytest.approx(0.0)
    assert float(p["balance"]) == pytest.approx(0.0)
    assert float(p["quantization"]) == pytest.approx(0.0)
    same = torch.ones(4, 2)  # all codes identical: unbalanced and fully correlated bits
    q = loss.parts(same, torch.ones(4, 4))
    assert float(q["balance"]) == pytest.approx(1.0) and float(q["decorrelation"]) == pytest.approx(0.5)
    target = HashLoss.target_similarity(torch.randn(3, 4), torch.tensor([0, 0, 1]))
    assert target.tolist() == [[1, 1, -1], [1, 1, -1], [-1, -1, 1]]


def test_pack_codes_round_trip_and_hamming():
    rng = np.random.default_rng(1)
    codes = rng.choice([-1, 1], size=(6, 32))
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (6, 4)
    assert np.array_equal(unpack_codes(packed), codes)
    d = hamming_distances(packed, packed)
    expected = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    assert np.array_equal(d, expected)
    assert np.array_equal(pack_codes(torch.as_tensor(codes > 0)), packed)
    with pytest.raises(ValueError):
        pack_codes(np.ones((2, 12)))


@pytest.mark.parametrize("bits", [32, 64, 128])
def test_faiss_binary_search_equals_brute_force(bits):
    rng = np.random.default_rng(bits)
    q = pack_codes(rng.choice([-1, 1], size=(7, bits)))
    g = pack_codes(rng.choice([-1, 1], size=(50, bits)))
    dist, idx = hamming_search(q, g, k=10)
    brute = hamming_distances(q, g)
    assert dist.shape == idx.shape == (7, 10)
    assert np.array_equal(dist, np.sort(brute, axis=1)[:, :10])  # the k smallest distances, in order
    assert np.array_equal(np.take_along_axis(brute, idx, axis=1), dist)  # each index has its distance
    assert all(len(set(row)) == 10 for row in idx)
    d_all, _ = hamming_search(q, g, k=500)  # k capped at the gallery size
    assert d_all.shape == (7, 50)
