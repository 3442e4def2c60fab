"""Database-side augmentation (DBA): each gallery photo is searched as the mean of itself and its neighbours.

Arandjelović and Zisserman (CVPR 2012), Gordo et al. (IJCV 2017): at index time every photo ``g`` (as
searched: centred when the index corrects hubness) is replaced by::

    g' = normalise(g + w * mean(n_1, ..., n_k))

where ``n_1 .. n_k`` are its ``k`` nearest *other* gallery photos (the average is query expansion's,
:func:`sbir.index.expansion.expand_queries`). Each photo moves toward the photos like it, so the photos of
one kind gather and a sketch that reaches some of them reaches the rest. It needs only the indexed photos,
no queries, and is computed once per index generation: the neighbour ids are stored in ``hubness.npz``
and every update finds them again. CSLS's ``r_g`` and query expansion then work on the augmented photos.

Like query expansion it helps category-level search (the shipped and ImageNet models) and is off for
trained runs that score as ``sbir eval`` does (an instance-level model wants the one true photo, not its
neighbours). ``k`` (``--dba``) and ``w`` were chosen by ``benchmarks/general_model.py`` in the seen-class
folds, never on the classes it reports; ``benchmarks/query_expansion.py`` measures them on
``sketchy_unseen21``.
"""

from __future__ import annotations

import faiss
import numpy as np

from sbir.errors import SbirError
from sbir.index.faiss_ops import build_faiss

# Neighbours each gallery photo is averaged with, when an index corrects hubness and --dba is not given.
DEFAULT_DBA = 5
DBA_WEIGHT = 1.0
# Up to this many photos the neighbours are found by exact search (quadratic in the gallery), above it in
# an HNSW graph with the index's defaults (benchmarks/dba_neighbours.py times both).
EXACT_NEIGHBOURS_UP_TO = 50_000


def check_dba(dba: object) -> int:
    """``dba`` as a validated count of neighbours (0 = no augmentation)."""
    if isinstance(dba, bool) or not isinstance(dba, int) or dba < 0:
        raise SbirError(
            f"--dba must be a whole number of neighbouring photos >= 0 (0: no database-side augmentation), got {dba!r}"
        )
    return dba


def gallery_neighbours(vectors: np.ndarray, k: int, exact_up_to: int = EXACT_NEIGHBOURS_UP_TO) -> np.ndarray:
    """(N, k) int64 ids of each row's ``k`` nearest other rows by inner product; -1 pads galleries of <= k rows.

    ``vectors`` (N, D) are normalised. A row is never its own neighbour (a duplicate file can be). Exact up
    to ``exact_up_to`` rows, approximate (HNSW) above."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    out = np.full((n, k), -1, np.int64)
    if n < 2 or k < 1:
        return out
    if n <= exact_up_to:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
    else:
        index, _ = build_faiss(x, "hnsw")
    fetch = min(k + 1, n)
    for s in range(0, n, 4096):
        _, ids = index.search(x[s : s + 4096], fetch)
        for r, row in enumerate(ids):
            others = row[(row >= 0) & (row != s + r)][:k]
            out[s + r, : len(others)] = others
    return out


__all__ = ["DBA_WEIGHT", "DEFAULT_DBA", "check_dba", "gallery_neighbours"]
