"""Binary hash codes for fast retrieval (SBIR-DASE-MEMS reports 32/64/128-bit codes).

A :class:`HashHead` maps fixed (already trained) embeddings to ``bits`` signs.
It is trained after the embedding network, on the embeddings alone
(:func:`train_hash_head`, a few seconds on CPU), with :class:`HashLoss`:
similarity preservation (code inner products follow label or cosine
similarity), bit decorrelation, bit balance and quantisation. Codes are packed
8 per byte (:func:`pack_codes`) and searched by Hamming distance with
``faiss.IndexBinaryFlat`` (:func:`hamming_search`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbir.errors import ConfigError

HASH_BITS = (32, 64, 128)
ArrayLike = np.ndarray | torch.Tensor


class HashHead(nn.Module):
    """``linear -> tanh`` in training mode (continuous relaxation), ``linear -> sign`` in eval mode.

    Eval-mode codes are in {-1, +1} (``sign(0)`` counts as +1).
    """

    def __init__(self, embed_dim: int, bits: int = 64):
        super().__init__()
        if bits not in HASH_BITS:
            raise ConfigError(f"hash code length must be one of {HASH_BITS} bits, got {bits}")
        self.embed_dim = int(embed_dim)
        self.bits = int(bits)
        self.linear = nn.Linear(embed_dim, bits)

    def relaxed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relaxed(x) if self.training else self.codes(x)

    @torch.no_grad()
    def encode(self, embeddings: ArrayLike, batch_size: int = 8192) -> np.ndarray:
        """Packed uint8 codes ``(n, bits // 8)`` of an ``(n, embed_dim)`` array, ready for :func:`hamming_search`."""
        x = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
        p = self.linear.weight
        out = [self.codes(x[i : i + batch_size].to(p.device, p.dtype)).cpu() for i in range(0, len(x), batch_size)]
        codes = torch.cat(out) if out else torch.zeros(0, self.bits)
        return pack_codes(codes)

    @torch.no_grad()
    def init_from_data(self, embeddings: torch.Tensor, seed: int = 0) -> None:
        """Start from a random orthogonal projection of the centred data (balanced, decorrelated bits)."""
        g = torch.Generator().manual_seed(seed)
        d, b = self.embed_dim, self.bits
        q, _ = torch.linalg.qr(torch.randn(max(d, b), max(d, b), generator=g, dtype=torch.float64))
        w = q[:b, :d].to(embeddings.dtype)
        std = embeddings.std(dim=0).mean().clamp_min(1e-8)
        w = w / std
        self.linear.weight.copy_(w)
        self.linear.bias.copy_(-(w @ embeddings.mean(dim=0)))


class HashLoss(nn.Module):
    """Similarity-preserving hashing loss on relaxed codes ``H`` (``(n, bits)``, values in (-1, 1)).

    ::

        S     = 2 * [y_i == y_j] - 1          (labels given), else cos(e_i, e_j) of the embeddings
        L_sim = mean_ij (H_i . H_j / bits - S_ij)^2
        L_dec = || H^T H / n - I ||_F^2 / bits^2        (bit decorrelation)
        L_bal = || mean_i H_i ||^2 / bits                (each bit +1 on half the items)
        L_q   = mean (|H| - 1)^2                         (codes close to +-1, so sign() changes little)
        loss  = L_sim + w_dec * L_dec + w_bal * L_bal + w_q * L_q
    """

    def __init__(self, w_decorrelation: float = 0.1, w_balance: float = 0.1, w_quantization: float = 0.1):
        super().__init__()
        self.w_dec = float(w_decorrelation)
        self.w_bal = float(w_balance)
        self.w_q = float(w_quantization)

    @staticmethod
    def target_similarity(embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            return 2.0 * (labels[:, None] == labels[None, :]).to(embeddings.dtype) - 1.0
        e = F.normalize(embeddings, dim=1)
        return e @ e.t()

    def parts(self, h: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        n, bits = h.shape
        sim = (h @ h.t()) / bits
        eye = torch.eye(bits, dtype=h.dtype, device=h.device)
        return {
            "sim": (sim - target).pow(2).mean(),
            "decorrelation": ((h.t() @ h) / n - eye).pow(2).sum() / bits**2,
            "balance": h.mean(dim=0).pow(2).sum() / bits,
            "quantization": (h.abs() - 1).pow(2).mean(),
        }

    def forward(self, h: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        p = self.parts(h, self.target_similarity(embeddings, labels))
        return p["sim"] + self.w_dec * p["decorrelation"] + self.w_bal * p["balance"] + self.w_q * p["quantization"]


def train_hash_head(
    embeddings: ArrayLike,
    labels: ArrayLike | None = None,
    bits: int = 64,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    loss: HashLoss | None = None,
    seed: int = 0,
) -> HashHead:
    """Train a :class:`HashHead` on fixed embeddings (CPU, mini-batch Adam); returned in eval mode.

    With ``labels`` the target similarity is label agreement (supervised
    hashing, e.g. the training sketches and photos with their classes);
    without, the cosine similarity of the embeddings (unsupervised, keeps the
    float ranking).
    """
    x = torch.as_tensor(
        np.asarray(embeddings, dtype=np.float32) if not isinstance(embeddings, torch.Tensor) else embeddings
    ).float()
    if x.dim() != 2 or len(x) < 2:
        raise ConfigError(f"train_hash_head needs an (n >= 2, d) array of embeddings, got shape {tuple(x.shape)}")
    y = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape[0] != x.shape[0]:
            raise ConfigError(f"train_hash_head: {lab.shape[0]} labels for {x.shape[0]} embeddings")
        _, inv = np.unique(lab, return_inverse=True)
        y = torch.as_tensor(inv.reshape(-1), dtype=torch.long)
    torch.manual_seed(seed)
    head = HashHead(x.shape[1], bits)
    head.init_from_data(x, seed=seed)
    crit = loss or HashLoss()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    bs = max(2, min(batch_size, n))
    head.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - 1, bs):
            idx = perm[i : i + bs]
            if len(idx) < 2:
                continue
            xb = x[idx]
            lossv = crit(head(xb), xb, None if y is None else y[idx])
            opt.zero_grad(set_to_none=True)
            lossv.backward()
            opt.step()
    return head.eval()


# ---------------------------------------------------------------- packing and search


def pack_codes(codes: ArrayLike) -> np.ndarray:
    """``(n, bits)`` codes in {-1, +1} (or {0, 1} / bool; > 0 is a 1 bit) -> uint8 ``(n, bits // 8)``.

    Bit order is numpy's ``packbits`` (big-endian within a byte); any fixed order
    gives the same Hamming distances.
    """
    arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"codes must be (n, bits), got shape {arr.shape}")
    if arr.shape[1] % 8:
        raise ValueError(f"the number of bits must be a multiple of 8, got {arr.shape[1]}")
    return np.ascontiguousarray(np.packbits(arr > 0, axis=1))


def unpack_codes(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_codes`: int8 codes in {-1, +1}."""
    b = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1)
    if bits is not None:
        b = b[:, :bits]
    return (b.astype(np.int8) * 2 - 1).astype(np.int8)


def hamming_distances(query_packed: np.ndarray, gallery_packed: np.ndarray) -> np.ndarray:
    """Brute-force ``(nq, ng)`` Hamming distances between packed codes (numpy; for checks and small sets)."""
    q = np.asarray(query_packed, dtype=np.uint8)
    g = np.asarray(gallery_packed, dtype=np.uint8)
    x = np.bitwise_xor(q[:, None, :], g[None, :, :])
    return np.unpackbits(x, axis=2).sum(axis=2).astype(np.int32)


def hamming_search(query_packed: np.ndarray, gallery_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest gallery codes by Hamming distance (exact, ``faiss.IndexBinaryFlat``).

    Returns ``(distances int32 (nq, k), indices int64 (nq, k))``, nearest first;
    ``k`` is capped at the gallery size.
    """
    import faiss

    q = np.ascontiguousarray(query_packed, dtype=np.uint8)
    g = np.ascontiguousarray(gallery_packed, dtype=np.uint8)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery codes must be (n, bytes) with equal widths, got {q.shape} and {g.shape}")
    if len(g) == 0:
        raise ValueError("the gallery has no codes")
    index = faiss.IndexBinaryFlat(g.shape[1] * 8)
    index.add(g)
    kk = max(1, min(int(k), len(g)))
    dist, idx = index.search(q, kk)
    return dist.astype(np.int32), idx.astype(np.int64)


__all__ = [
    "HASH_BITS",
    "HashHead",
    "HashLoss",
    "hamming_distances",
    "hamming_search",
    "pack_codes",
    "train_hash_head",
    "unpack_codes",
]
