"""Query expansion: search again with the query moved toward its first photos.

Average query expansion (Chum et al., ICCV 2007; weighted as in Radenović et al., TPAMI 2018), used
across domains: a sketch query ``q`` (as searched: centred when the index corrects hubness) is searched
once, and its ``k`` best photos ``p_1 .. p_k`` (as searched) give the query that is searched again::

    q' = normalise(q + w * mean(p_1, ..., p_k))

A sketch and a photo of one class are further apart than two photos of that class, so ``q'``, mostly made
of photos, lands among the query's class in the photo domain. It helps when the first hits are mostly
right (category-level search, the shipped and ImageNet models); for an instance-level model it can
pull the one true photo down, so trained runs do not expand unless asked.

``k`` (``--expand``) and ``w`` were chosen by ``benchmarks/query_expansion.py`` on Sketchy classes
outside ``sketchy_unseen21``, never on the classes it reports.
"""

from __future__ import annotations

import numpy as np

from sbir.errors import SbirError

# Photos the query is expanded with, when an index corrects hubness and --expand is not given.
DEFAULT_EXPAND = 10
EXPAND_WEIGHT = 16.0


def check_expand(expand: object) -> int:
    """``expand`` as a validated count of photos (0 = no expansion)."""
    if isinstance(expand, bool) or not isinstance(expand, int) or expand < 0:
        raise SbirError(f"--expand must be a whole number of photos >= 0 (0: no query expansion), got {expand!r}")
    return expand


def expand_queries(queries: np.ndarray, neighbours: np.ndarray, valid: np.ndarray, weight: float) -> np.ndarray:
    """``normalise(q + weight * mean of the valid neighbours)`` row by row.

    ``queries`` (Q, D) and ``neighbours`` (Q, k, D) as searched; ``valid`` (Q, k) masks out padding (a
    gallery with fewer than k photos). A query without valid neighbours stays as it is."""
    q = np.asarray(queries, dtype=np.float32)
    m = np.asarray(valid, dtype=np.float32)[:, :, None]
    mean = (np.asarray(neighbours, dtype=np.float32) * m).sum(1) / np.maximum(m.sum(1), 1.0)
    out = q + np.float32(weight) * mean
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


__all__ = ["DEFAULT_EXPAND", "EXPAND_WEIGHT", "check_expand", "expand_queries"]
