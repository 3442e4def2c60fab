"""ARNet's token module as a trained re-ranker: scores a (sketch tokens, photo tokens) pair.

ARNet's "+" stage takes the two encoders' token sequences through intra-modal
self-attention, then sketch <-> photo cross-attention, fuses the result and
scores the pair. :class:`TokenReranker` does that on any backbone's tokens
(a ViT's patch tokens or a CNN's last feature-map positions, ``(B, N, D)``):

1. project each modality's tokens to ``dim`` (own linear map + layer norm),
2. one transformer encoder layer per modality (intra-modal self-attention),
3. cross-attention both ways: sketch tokens attend to photo tokens and photo
   tokens to sketch tokens (residual + layer norm + feed-forward),
4. fuse: mean-pool both cross-attended sequences into ``s`` and ``p`` and score
   ``MLP([s, p, s * p, |s - p|])`` -> one logit per pair (higher = better match).

It is trained beside the embedding (:mod:`sbir.losses.rerank`: the true photo
against hard negatives drawn from the embedding's top-K) and used to re-order
only the embedding top-K of each query (:func:`rerank_order`).
"""

from __future__ import annotations

import torch
from torch import nn


class _CrossBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, context, context, need_weights=False)[0])
        return self.norm2(x + self.ff(x))


class TokenReranker(nn.Module):
    """Pair scorer over token sequences; ``forward(sketch_tokens, photo_tokens) -> (B,)`` logits."""

    def __init__(self, sketch_dim: int, photo_dim: int, dim: int = 256, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.sketch_in = nn.Sequential(nn.Linear(sketch_dim, dim), nn.LayerNorm(dim))
        self.photo_in = nn.Sequential(nn.Linear(photo_dim, dim), nn.LayerNorm(dim))

        def self_attn() -> nn.Module:
            return nn.TransformerEncoderLayer(
                dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=False
            )

        self.sketch_self = self_attn()
        self.photo_self = self_attn()
        self.sketch_cross = _CrossBlock(dim, heads, dropout)  # sketch queries, photo keys/values
        self.photo_cross = _CrossBlock(dim, heads, dropout)  # photo queries, sketch keys/values
        self.score = nn.Sequential(nn.Linear(4 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor:
        if sketch_tokens.ndim != 3 or photo_tokens.ndim != 3 or sketch_tokens.shape[0] != photo_tokens.shape[0]:
            raise ValueError(
                f"TokenReranker takes (B, N, D) sketch and photo tokens with the same B, got "
                f"{tuple(sketch_tokens.shape)} and {tuple(photo_tokens.shape)}"
            )
        s = self.sketch_self(self.sketch_in(sketch_tokens.float()))
        p = self.photo_self(self.photo_in(photo_tokens.float()))
        s2 = self.sketch_cross(s, p).mean(dim=1)
        p2 = self.photo_cross(p, s).mean(dim=1)
        return self.score(torch.cat([s2, p2, s2 * p2, (s2 - p2).abs()], dim=-1)).squeeze(-1)

    def score_candidates(self, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor:
        """Scores of one sketch against K candidates: ``(N, D)`` (or ``(1, N, D)``) and ``(K, M, D)`` -> ``(K,)``."""
        if sketch_tokens.ndim == 2:
            sketch_tokens = sketch_tokens[None]
        k = photo_tokens.shape[0]
        return self(sketch_tokens.expand(k, -1, -1), photo_tokens)


def rerank_order(candidates: list[int] | torch.Tensor, scores: torch.Tensor) -> list[int]:
    """The candidates (embedding order) sorted by re-ranker score, best first; ties keep embedding order."""
    cand = [int(c) for c in (candidates.tolist() if isinstance(candidates, torch.Tensor) else candidates)]
    if len(cand) != len(scores):
        raise ValueError(f"{len(cand)} candidates but {len(scores)} scores")
    order = sorted(range(len(cand)), key=lambda i: (-float(scores[i]), i))
    return [cand[i] for i in order]


__all__ = ["TokenReranker", "rerank_order"]
