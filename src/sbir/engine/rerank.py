"""Re-ranking the embedding top-K with a model's trained token re-ranker (``model.rerank``).

Shared by ``sbir eval`` (:func:`sbir.engine.evaluate.evaluate_finegrained`) and
the index search path (:class:`sbir.index.model.QueryEncoder`): the embedding
decides which K photos are candidates, the re-ranker
(:class:`sbir.models.rerank.TokenReranker`) only re-orders those K; every photo
below the top K keeps its place.
"""

from __future__ import annotations

import numpy as np
import torch

from sbir.models.rerank import rerank_order


def get_reranker(model):
    """The model's trained re-ranker, or None."""
    return getattr(model, "reranker", None)


@torch.no_grad()
def rerank_scores(
    reranker, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor, candidates: np.ndarray, batch_pairs: int = 256
) -> np.ndarray:
    """``(Q, K)`` re-ranker scores of sketch ``q`` with photo ``candidates[q, j]``.

    ``sketch_tokens``: ``(Q, N, D)``; ``photo_tokens``: ``(G, M, D)`` indexed by the candidates.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    q, k = cand.shape
    device = next(reranker.parameters()).device
    reranker.eval()
    flat_q = np.repeat(np.arange(q), k)
    flat_p = cand.reshape(-1)
    out = np.empty(q * k, dtype=np.float32)
    for lo in range(0, q * k, batch_pairs):
        hi = min(lo + batch_pairs, q * k)
        s = sketch_tokens[torch.from_numpy(flat_q[lo:hi])].to(device)
        p = photo_tokens[torch.from_numpy(flat_p[lo:hi])].to(device)
        out[lo:hi] = reranker(s, p).float().cpu().numpy()
    return out.reshape(q, k)


def top_k_candidates(scores: np.ndarray, k: int) -> np.ndarray:
    """``(Q, min(k, G))`` gallery indices of each row's best scores, best first (stable on ties)."""
    k = min(int(k), scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def reranked_ranks(candidates: np.ndarray, rr_scores: np.ndarray, true_index, plain_ranks) -> np.ndarray:
    """1-based rank of each query's true photo after re-ordering its top-K candidates.

    A true photo among the candidates takes its position in the re-ranked order; one outside them keeps
    its plain rank (which is then > K: K photos score at least as well).
    """
    out = np.asarray(plain_ranks, dtype=np.int64).copy()
    for i, (cand, sc) in enumerate(zip(candidates, rr_scores, strict=True)):
        order = rerank_order(cand.tolist(), torch.from_numpy(np.asarray(sc)))
        t = int(true_index[i])
        if t in order:
            out[i] = order.index(t) + 1
    return out


__all__ = ["get_reranker", "rerank_scores", "reranked_ranks", "top_k_candidates"]
