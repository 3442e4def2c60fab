"""The token re-ranker: pair scoring on any backbone's tokens, its loss, and re-ordering the top-K only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir.engine.rerank import rerank_scores, reranked_ranks, top_k_candidates
from sbir.losses.rerank import hard_negatives, rerank_loss
from sbir.models.rerank import TokenReranker, rerank_order


@pytest.mark.parametrize("n_s, n_p, dim", [(16, 16, 1280), (4, 9, 192)])  # CNN 4x4 positions / ViT patches
def test_scores_one_logit_per_pair_of_any_token_counts(n_s, n_p, dim):
    torch.manual_seed(0)
    r = TokenReranker(dim, dim, dim=32, heads=4).eval()
    s, p = torch.randn(3, n_s, dim), torch.randn(3, n_p, dim)
    out = r(s, p)
    assert out.shape == (3,)
    assert torch.allclose(r.score_candidates(s[0], p), r(s[:1].expand(3, -1, -1), p), atol=1e-6)
    # A pair's score depends on both sides (cross-attention), not on the rest of the batch.
    assert torch.allclose(r(s[:1], p[:1]), out[:1], atol=1e-6)
    assert not torch.allclose(r(s[:1], p[1:2]), out[:1])
    with pytest.raises(ValueError, match="same B"):
        r(s, p[:2])


def test_rerank_order_is_stable_on_ties():
    assert rerank_order([7, 3, 5], torch.tensor([0.1, 0.9, 0.1])) == [3, 7, 5]


def test_reranking_changes_the_order_of_the_top_k_only():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 30))
    true_index = rng.integers(0, 30, size=20)
    plain = (scores >= scores[np.arange(20), true_index][:, None]).sum(1)
    cand = top_k_candidates(scores, 5)
    rr = rng.normal(size=cand.shape)
    ranks = reranked_ranks(cand, rr, true_index, plain)
    inside = plain <= 5
    assert inside.any() and (~inside).any()
    assert np.array_equal(ranks[~inside], plain[~inside])  # outside the top-K nothing moves
    assert (ranks[inside] <= 5).all()  # inside, the true photo stays inside
    for i in np.flatnonzero(inside):  # at the position the re-ranker's score gives it
        expected = 1 + int((rr[i] > rr[i][list(cand[i]).index(true_index[i])]).sum())
        assert ranks[i] == expected
    # Real re-ranker scores through rerank_scores: one per (query, candidate).
    torch.manual_seed(0)
    r = TokenReranker(8, 8, dim=16, heads=2)
    got = rerank_scores(r, torch.randn(20, 4, 8), torch.randn(30, 6, 8), cand, batch_pairs=7)
    assert got.shape == (20, 5) and np.isfinite(got).all()


def test_hard_negatives_are_the_most_similar_other_photos():
    s = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    p = s.clone()
    p[3] = s[0] * 0.99 + 0.01 * p[3]  # photo 3 is the closest other photo to sketch 0
    neg = hard_negatives(s, torch.nn.functional.normalize(p, dim=1), torch.arange(6), 2)
    assert neg.shape == (6, 2) and (neg != torch.arange(6)[:, None]).all()
    assert int(neg[0, 0]) == 3


def test_rerank_loss_trains_the_reranker():
    # Each sketch's tokens are a noisy copy of its photo's: a learnable pairing.
    torch.manual_seed(0)
    b, n, d = 6, 3, 16
    photo = torch.randn(b, n, d)
    sketch = photo + 0.3 * torch.randn(b, n, d)
    emb = torch.nn.functional.normalize(torch.randn(b, 8), dim=1)
    r = TokenReranker(d, d, dim=32, heads=4)
    opt = torch.optim.Adam(r.parameters(), lr=5e-3)
    first = None
    for _ in range(40):
        loss, parts = rerank_loss(r, sketch, photo, emb, emb, torch.arange(b), num_negatives=5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert set(parts) == {"rerank", "rerank_top1"}
    assert float(loss) < 0.3 * first and parts["rerank_top1"] == 1.0
