"""Training loss of the token re-ranker (:class:`sbir.models.rerank.TokenReranker`).

For each sketch ``i`` of a batch the candidates are its own photo and the
``n`` in-batch photos its embedding ranks highest among the others (hard
negatives, as the re-ranker will see them in the embedding's top-K at test
time; photos of the same group are never negatives). The loss is the softmax
cross-entropy of the re-ranker's scores with the true photo as the target:

    L = mean_i  -log( exp(r(s_i, p_i)) / sum_{j in {i} u N_i} exp(r(s_i, p_j)) )

The negatives are chosen on detached embeddings; the gradient reaches the
re-ranker and, through the tokens, the encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hard_negatives(sketch_emb: torch.Tensor, photo_emb: torch.Tensor, groups: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, n)`` indices of each sketch's ``n`` most similar other-group photos (cosine of the embeddings)."""
    b = sketch_emb.shape[0]
    n = min(int(n), b - 1)
    if n < 1:
        raise ValueError("the re-ranker loss needs batches of at least 2 pairs")
    sim = sketch_emb.detach().float() @ photo_emb.detach().float().T
    same = groups.view(-1, 1) == groups.view(1, -1)
    sim = sim.masked_fill(same, float("-inf"))
    return sim.topk(n, dim=1).indices


def rerank_loss(
    reranker: nn.Module,
    sketch_tokens: torch.Tensor,
    photo_tokens: torch.Tensor,
    sketch_emb: torch.Tensor,
    photo_emb: torch.Tensor,
    groups: torch.Tensor,
    num_negatives: int = 7,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Listwise loss of the true photo against hard negatives; parts: ``rerank`` and ``rerank_top1``
    (fraction of sketches whose own photo the re-ranker scores highest among the candidates)."""
    b = sketch_tokens.shape[0]
    neg = hard_negatives(sketch_emb, photo_emb, groups, num_negatives)
    cand = torch.cat([torch.arange(b, device=neg.device).view(-1, 1), neg], dim=1)  # (B, 1 + n)
    c = cand.shape[1]
    s_tok = sketch_tokens.unsqueeze(1).expand(-1, c, -1, -1).reshape(b * c, *sketch_tokens.shape[1:])
    p_tok = photo_tokens[cand.reshape(-1)]
    logits = reranker(s_tok, p_tok).view(b, c)
    target = torch.zeros(b, dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits.float(), target)
    top1 = float((logits.detach().argmax(dim=1) == 0).float().mean())
    return loss, {"rerank": float(loss.detach()), "rerank_top1": top1}


__all__ = ["hard_negatives", "rerank_loss"]
