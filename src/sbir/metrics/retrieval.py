"""Similarity scores, chunked scoring, flip TTA and fine-grained SBIR metrics.

Conventions used by the whole :mod:`sbir.metrics` package
----------------------------------------------------------
* **Scores, higher = better.** Every distance is turned into a score so that
  the best gallery item has the largest score:

  - ``"cosine"``:    ``s(q, g) = <q/|q|, g/|g|>`` (vectors are L2-normalised
    with ``max(|x|, 1e-12)``, so an all-zero vector scores 0 against anything);
  - ``"euclidean"``: ``s(q, g) = -|q - g|_2``, computed as
    ``-sqrt(max(|q|^2 + |g|^2 - 2<q, g>, 0))`` in float32 (same ranking as
    ``-|q - g|^2``; the negated *distance* is kept so the numbers read like the
    ``-cdist`` of SAKE);
  - ``"angular"``:   ``s(q, g) = -arccos(clip(<q/|q|, g/|g|>, -1, 1))``, the
    negated angle in radians between the L2-normalised vectors (DASE-MEMS'
    angular test distance). It ranks exactly like ``"cosine"`` (arccos is
    decreasing) but the values are angles;
  - ``"hamming"``:   ``s(q, g) = -hamming(q, g)`` on binary hash codes, see
    :func:`hamming_scores`.
* Scores are numpy ``float32`` arrays, whatever the input type (numpy arrays
  or torch tensors, any float dtype; torch tensors are detached and moved to
  the CPU).
* **Fine-grained metrics are percentages** (0-100), as in the FG-SBIR
  literature (Acc@K, %corr). Category-level metrics in
  :mod:`sbir.metrics.category` are fractions in [0, 1], as in SAKE/ZSE-SBIR.
* Big query sets are never scored all at once: :func:`iter_score_chunks`
  yields blocks of query rows, and the reports choose the number of rows per
  block from a memory budget (``memory_budget_mb``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sbir.errors import ConfigError

DISTANCES = ("cosine", "euclidean", "angular", "hamming")

_EPS = 1e-12
REPORT_NAMES = ("sketch_emb", "photo_emb", "sketch_flip", "photo_flip")


# --------------------------------------------------------------------------
# input conversion and validation
# --------------------------------------------------------------------------


def _to_numpy(x, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__ or ""
    if mod.split(".")[0] == "torch":
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise ConfigError(f"{name} must be an array or tensor, got {type(x).__name__}") from exc


def _check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ConfigError(f"distance must be one of {', '.join(repr(d) for d in DISTANCES)}, got {distance!r}")
    return distance


def _check_finite(x: np.ndarray, name: str) -> None:
    step = max(1, (1 << 22) // max(1, x.shape[1]))  # ~4M values at a time
    for start in range(0, x.shape[0], step):
        if not np.isfinite(x[start : start + step]).all():
            raise ConfigError(
                f"{name} contains NaN or infinite values (first bad row block starts at "
                f"row {start}); check the model outputs"
            )


def _as_embeddings(x, name: str) -> np.ndarray:
    """2-D float32, finite, C-contiguous (copy only when needed)."""
    a = _to_numpy(x, name)
    if a.ndim != 2:
        raise ConfigError(f"{name} must be 2-D (items x dim), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ConfigError(f"{name} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ConfigError(f"{name} must be numeric, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    _check_finite(a, name)
    return a


def _as_codes(x, name: str) -> np.ndarray:
    """Binary hash codes -> float32 matrix of {-1, +1} (bit 1 -> +1, bit 0 -> -1).

    Accepted formats: ``uint8`` arrays are *packed* bits (``np.packbits``,
    big-endian bit order, 8 bits per byte); ``bool`` arrays; numeric arrays
    whose values are all in {-1, +1} or all in {0, 1}.
    """
    a = _to_numpy(x, name)
    if a.ndim != 2:
        raise ConfigError(f"{name} must be 2-D (items x bits), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ConfigError(f"{name} is empty (shape {a.shape})")
    if a.dtype == np.uint8:
        bits = np.unpackbits(a, axis=1).astype(bool)
    elif a.dtype == np.bool_:
        bits = a
    elif np.issubdtype(a.dtype, np.number):
        has_neg = bool((a == -1).any())
        has_zero = bool((a == 0).any())
        if not bool(((a == 1) | (a == -1) | (a == 0)).all()) or (has_neg and has_zero):
            raise ConfigError(
                f"{name}: hash codes must take values in {{-1, +1}} or in {{0, 1}} "
                "(or be packed uint8 bits); got other values"
            )
        bits = a > 0
    else:
        raise ConfigError(f"{name}: hash codes must be numeric, bool or packed uint8, got {a.dtype}")
    codes = np.where(bits, np.float32(1.0), np.float32(-1.0))
    return np.ascontiguousarray(codes, dtype=np.float32)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_ks(ks, name: str = "ks") -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        ks = tuple(ks)
    except TypeError:
        raise ConfigError(f"{name} must be a sequence of positive integers, got {ks!r}") from None
    if not ks:
        raise ConfigError(f"{name} must not be empty")
    out = tuple(_check_positive_int(k, f"each value of {name}") for k in ks)
    if len(set(out)) != len(out):
        raise ConfigError(f"{name} contains duplicates: {out}")
    return out


# --------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------


@dataclass
class _Side:
    """One prepared side (queries or gallery) for a given distance."""

    mat: np.ndarray  # (n, d) float32; normalised for cosine/angular, +-1 for hamming
    sq: np.ndarray | None = None  # squared norms for euclidean
    norms: np.ndarray | None = None  # set when ``mat`` still has to be divided by its norms

    def rows(self, lo: int, hi: int) -> np.ndarray:
        block = self.mat[lo:hi]
        return block if self.norms is None else block / self.norms[lo:hi, None]


def _prepare(x, distance: str, name: str, lazy: bool = False) -> _Side:
    """Convert and validate one side. ``lazy``: keep the raw rows and divide them by
    their norms block by block (used for queries, which are read only once, so no
    normalised copy of the whole query set is made)."""
    if distance == "hamming":
        return _Side(_as_codes(x, name))
    a = _as_embeddings(x, name)
    if distance in ("cosine", "angular"):
        norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float32))
        np.maximum(norms, np.float32(_EPS), out=norms)
        if lazy:
            return _Side(a, norms=norms)
        return _Side(a / norms[:, None])
    sq = np.einsum("ij,ij->i", a, a, dtype=np.float32)
    return _Side(a, sq)


def _scores_into(q: _Side, lo: int, hi: int, g: _Side, distance: str, out: np.ndarray) -> None:
    """Write the scores of query rows ``lo:hi`` against the whole gallery into ``out``."""
    np.matmul(q.rows(lo, hi), g.mat.T, out=out)
    if distance == "cosine":
        return
    if distance == "angular":
        np.clip(out, -1.0, 1.0, out=out)
        np.arccos(out, out=out)
        np.negative(out, out=out)
    elif distance == "euclidean":
        out *= np.float32(-2.0)
        out += g.sq[None, :]
        out += q.sq[lo:hi, None]
        np.maximum(out, np.float32(0.0), out=out)
        np.sqrt(out, out=out)
        np.negative(out, out=out)
    else:  # hamming on +-1 codes: <q, g> = B - 2 * hamming
        out -= np.float32(g.mat.shape[1])
        out *= np.float32(0.5)


class _Scorer:
    """Scores blocks of query rows against a gallery, with optional flip TTA.

    With flipped embeddings the score is the maximum over every available
    (query variant, gallery variant) pairing, i.e. the minimum distance
    (see :func:`min_over_flip_pairings`).
    """

    def __init__(
        self,
        queries,
        gallery,
        distance: str,
        queries_flip=None,
        gallery_flip=None,
        names: Sequence[str] = ("queries", "gallery", "queries_flip", "gallery_flip"),
    ):
        nq_name, ng_name, nqf_name, ngf_name = names
        self.distance = _check_distance(distance)
        self.q = [_prepare(queries, distance, nq_name, lazy=True)]
        self.g = [_prepare(gallery, distance, ng_name)]
        if queries_flip is not None:
            self.q.append(_prepare(queries_flip, distance, nqf_name, lazy=True))
        if gallery_flip is not None:
            self.g.append(_prepare(gallery_flip, distance, ngf_name))
        nq, ng = self.q[0].mat.shape[0], self.g[0].mat.shape[0]
        dq, dg = self.q[0].mat.shape[1], self.g[0].mat.shape[1]
        if dq != dg:
            what = "code lengths (bits)" if distance == "hamming" else "embedding sizes"
            raise ConfigError(f"{nq_name} and {ng_name} have different {what}: {dq} vs {dg}")
        if self.q[-1].mat.shape != (nq, dq):
            raise ConfigError(f"{nqf_name} must have the shape of {nq_name} {(nq, dq)}, got {self.q[-1].mat.shape}")
        if self.g[-1].mat.shape != (ng, dg):
            raise ConfigError(f"{ngf_name} must have the shape of {ng_name} {(ng, dg)}, got {self.g[-1].mat.shape}")
        self.n_queries, self.n_gallery = nq, ng

    @property
    def n_pairings(self) -> int:
        return len(self.q) * len(self.g)

    def scores_into(self, lo: int, hi: int, out: np.ndarray, tmp: np.ndarray | None = None) -> None:
        """Fill ``out`` (shape ``(hi-lo, n_gallery)``) with scores of rows ``lo:hi``."""
        first = True
        for qs in self.q:
            for gs in self.g:
                if first:
                    _scores_into(qs, lo, hi, gs, self.distance, out)
                    first = False
                else:
                    _scores_into(qs, lo, hi, gs, self.distance, tmp)
                    np.maximum(out, tmp, out=out)


def rows_for_budget(
    n_gallery: int, memory_budget_mb: float, bytes_per_gallery_item: float, extra_bytes_per_row: float = 0.0
) -> int:
    """Number of query rows per chunk so a chunk's working arrays fit the budget.

    ``rows = floor(budget_bytes / (n_gallery * bytes_per_gallery_item + extra))``,
    at least 1 (a single row is always processed, even over budget).
    """
    if (
        isinstance(memory_budget_mb, bool)
        or not isinstance(memory_budget_mb, (int, float))
        or not memory_budget_mb > 0
        or not math.isfinite(memory_budget_mb)
    ):
        raise ConfigError(f"memory_budget_mb must be a positive number, got {memory_budget_mb!r}")
    per_row = n_gallery * bytes_per_gallery_item + extra_bytes_per_row
    return max(1, int(memory_budget_mb * 2**20 // per_row))


def similarity_matrix(queries, gallery, distance: str = "cosine") -> np.ndarray:
    """Full ``(n_queries, n_gallery)`` float32 score matrix, higher = better.

    See the module docstring for the formula of each ``distance``
    (``"cosine"``, ``"euclidean"``, ``"angular"``, ``"hamming"``). Use
    :func:`iter_score_chunks` when the matrix would not fit in memory.
    """
    scorer = _Scorer(queries, gallery, distance)
    out = np.empty((scorer.n_queries, scorer.n_gallery), dtype=np.float32)
    scorer.scores_into(0, scorer.n_queries, out)
    return out


def hamming_scores(query_codes, gallery_codes) -> np.ndarray:
    """Scores ``-hamming(q, g)`` (float32, exact integers) between binary hash codes.

    Codes may be ``{-1, +1}`` or ``{0, 1}`` numeric/bool matrices (one bit per
    column) or packed ``uint8`` bits (``np.packbits`` layout, 8 bits per
    byte). The distance is computed exactly as
    ``hamming(q, g) = (B - <q', g'>) / 2`` with ``q', g'`` the ``{-1, +1}``
    versions and ``B`` the number of bits.

    Ties are very common with hash codes (only ``B + 1`` distinct values).
    Ranking metrics break them by gallery index (see
    :mod:`sbir.metrics.category`); fine-grained ranks count ties against the
    query (:func:`true_match_ranks`).
    """
    return similarity_matrix(query_codes, gallery_codes, distance="hamming")


def iter_score_chunks(
    queries, gallery, distance: str = "cosine", chunk_size: int = 1024, queries_flip=None, gallery_flip=None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, scores)`` for consecutive blocks of at most ``chunk_size`` query rows.

    ``scores`` is a new float32 array of shape ``(rows, n_gallery)`` holding
    the scores of query rows ``start:start + rows`` (so the full matrix is
    never materialised). With ``queries_flip`` and/or ``gallery_flip``
    (embeddings of the horizontally flipped images, same shapes) each score is
    the maximum over all available pairings, e.g. with both:
    ``max(s(q,g), s(q,g_f), s(q_f,g), s(q_f,g_f))`` -- the DASE-MEMS
    minimum-over-four-pairings distance expressed as a score.

    Float scores may differ from :func:`similarity_matrix` in the last bit:
    BLAS may sum in a different order for a different number of rows.
    """
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    scorer = _Scorer(queries, gallery, distance, queries_flip, gallery_flip)
    for lo in range(0, scorer.n_queries, chunk_size):
        hi = min(lo + chunk_size, scorer.n_queries)
        out = np.empty((hi - lo, scorer.n_gallery), dtype=np.float32)
        tmp = np.empty_like(out) if scorer.n_pairings > 1 else None
        scorer.scores_into(lo, hi, out, tmp)
        yield lo, out


def min_over_flip_pairings(dist_fn: Callable, q, q_flip, g, g_flip):
    """Flip test-time augmentation: element-wise minimum distance over four pairings.

    ``D = min(d(q, g), d(q, g_flip), d(q_flip, g), d(q_flip, g_flip))`` where
    ``d = dist_fn`` returns a ``(n_queries, n_gallery)`` distance matrix
    (numpy array or torch tensor; the result has the same type). For scores
    (higher = better) the equivalent is the maximum over the same pairings,
    which is what ``sketch_flip``/``photo_flip`` do in the reports.
    """
    if not callable(dist_fn):
        raise ConfigError("dist_fn must be a callable returning a distance matrix")
    mats = [dist_fn(q, g), dist_fn(q, g_flip), dist_fn(q_flip, g), dist_fn(q_flip, g_flip)]
    shape = tuple(mats[0].shape)
    for m in mats[1:]:
        if tuple(m.shape) != shape:
            raise ConfigError(
                f"dist_fn returned matrices of different shapes for the four pairings: {[tuple(x.shape) for x in mats]}"
            )
    if isinstance(mats[0], np.ndarray):
        return np.minimum(np.minimum(mats[0], mats[1]), np.minimum(mats[2], mats[3]))
    import torch  # only reached with torch outputs

    return torch.minimum(torch.minimum(mats[0], mats[1]), torch.minimum(mats[2], mats[3]))


# --------------------------------------------------------------------------
# fine-grained metrics
# --------------------------------------------------------------------------


def _as_index_vector(x, n_rows: int, n_gallery: int, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise ConfigError(f"{name} must be 1-D (one gallery index per query), got shape {a.shape}")
    if a.shape[0] != n_rows:
        raise ConfigError(f"{name} has {a.shape[0]} entries but there are {n_rows} queries")
    if not np.issubdtype(a.dtype, np.integer):
        raise ConfigError(f"{name} must hold integer gallery indices, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n_gallery):
        raise ConfigError(f"{name} values must be in [0, {n_gallery - 1}] (gallery size {n_gallery})")
    return a.astype(np.int64)


def _ranks_of_block(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    true_scores = scores[np.arange(scores.shape[0]), true_index]
    return np.count_nonzero(scores >= true_scores[:, None], axis=1).astype(np.int64)


def true_match_ranks(scores, true_index) -> np.ndarray:
    """1-based rank of each query's true gallery item; ties count AGAINST the query.

    ``rank_i = #{ j : scores[i, j] >= scores[i, true_index[i]] }`` -- the
    number of gallery items scoring at least as well as the true photo,
    the true photo included. A query whose true photo ties with 2 other photos
    (and nothing scores higher) gets rank 3, never 1: a degenerate model that
    gives every photo the same score gets rank ``n_gallery`` for every query.

    ``scores``: ``(n_queries, n_gallery)`` higher-is-better matrix (numpy or
    torch); ``true_index``: ``(n_queries,)`` integer gallery indices.
    Returns an int64 array of shape ``(n_queries,)``.
    """
    s = _to_numpy(scores, "scores")
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ConfigError(f"scores must be a non-empty 2-D matrix, got shape {s.shape}")
    if np.isnan(s).any():
        raise ConfigError("scores contain NaN; ranks would be undefined")
    t = _as_index_vector(true_index, s.shape[0], s.shape[1], "true_index")
    return _ranks_of_block(s, t)


def acc_at_k(ranks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Acc@K in PERCENT: ``acc@K = 100 * mean(rank_i <= K)``.

    ``ranks`` are 1-based (see :func:`true_match_ranks`). Returns
    ``{"acc@1": ..., "acc@5": ..., ...}`` with values in [0, 100].
    """
    ks = _check_ks(ks)
    r = _to_numpy(ranks, "ranks")
    if r.ndim != 1 or r.size == 0:
        raise ConfigError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    if not np.issubdtype(r.dtype, np.integer) or r.min() < 1:
        raise ConfigError("ranks must be integers >= 1 (1-based ranks)")
    return {f"acc@{k}": float(100.0 * np.count_nonzero(r <= k) / r.size) for k in ks}


def finegrained_report(
    sketch_emb,
    photo_emb,
    true_index,
    ks: Sequence[int] = (1, 5, 10),
    distance: str = "cosine",
    chunk_size: int = 4096,
    sketch_flip=None,
    photo_flip=None,
    memory_budget_mb: float = 512,
) -> dict:
    """Fine-grained SBIR evaluation: each sketch has exactly one true photo.

    Scores are computed in blocks of at most ``chunk_size`` sketches, further
    limited so a block's score arrays stay within ``memory_budget_mb``.
    ``sketch_flip``/``photo_flip`` enable flip TTA (max score over pairings,
    see :func:`iter_score_chunks`).

    Returns ``{"acc@K" (percent, for each K in ks), "n_queries", "n_gallery",
    "ranks" (list of 1-based ints, ties counted against the query),
    "mean_rank", "median_rank"}``.
    """
    ks = _check_ks(ks)
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    scorer = _Scorer(sketch_emb, photo_emb, distance, sketch_flip, photo_flip, REPORT_NAMES)
    t = _as_index_vector(true_index, scorer.n_queries, scorer.n_gallery, "true_index")
    # per row: scores 4 B + flip temp 4 B + comparison mask 1 B per gallery item
    bytes_per_item = 4 + 1 + (4 if scorer.n_pairings > 1 else 0)
    rows = min(chunk_size, rows_for_budget(scorer.n_gallery, memory_budget_mb, bytes_per_item))
    rows = min(rows, scorer.n_queries)
    buf = np.empty((rows, scorer.n_gallery), dtype=np.float32)
    tmp = np.empty_like(buf) if scorer.n_pairings > 1 else None
    ranks = np.empty(scorer.n_queries, dtype=np.int64)
    for lo in range(0, scorer.n_queries, rows):
        hi = min(lo + rows, scorer.n_queries)
        out = buf[: hi - lo]
        scorer.scores_into(lo, hi, out, None if tmp is None else tmp[: hi - lo])
        ranks[lo:hi] = _ranks_of_block(out, t[lo:hi])
    report = acc_at_k(ranks, ks)
    report.update(
        n_queries=int(scorer.n_queries),
        n_gallery=int(scorer.n_gallery),
        ranks=[int(r) for r in ranks],
        mean_rank=float(ranks.mean()),
        median_rank=float(np.median(ranks)),
    )
    return report


def multiview_scores(query_views, gallery_views, distance: str = "cosine", mirror=None) -> np.ndarray:
    """Multi-view score matrix ``(n_queries, n_gallery)``, higher = better.

    ``query_views`` ``(Nq, V, D)`` and ``gallery_views`` ``(Ng, V, D)`` hold V views
    of every image (e.g. 4 corner and a centre crop, each also mirrored). The
    score averages the V scores of corresponding views (as Triplet-SN and DSSA
    average the 10 view distances)::

        S(q, g) = 1/V  sum_v s(q_v, g_v)

    With ``mirror`` (a permutation of the views: ``mirror[v]`` is the view of an
    image that equals view ``v`` of its mirror image), the mirrored
    correspondence is averaged in as well, which makes the score of a mirrored
    query exactly that of the query::

        S(q, g) = 1/(2V)  sum_v [ s(q_v, g_v) + s(q_v, g_mirror(v)) ]

    ``s`` is :func:`similarity_matrix`'s score (cosine similarity, minus the
    euclidean distance, ...), so averaging scores averages the distances.
    """
    q = _to_numpy(query_views, "query_views")
    g = _to_numpy(gallery_views, "gallery_views")
    if q.ndim != 3 or g.ndim != 3 or q.shape[1:] != g.shape[1:]:
        raise ConfigError(f"multi-view embeddings must be (N, V, D) with equal V and D, got {q.shape} and {g.shape}")
    n_views = q.shape[1]
    pairings = [(v, v) for v in range(n_views)]
    if mirror is not None:
        perm = [int(m) for m in mirror]
        if sorted(perm) != list(range(n_views)):
            raise ConfigError(f"mirror must be a permutation of the {n_views} views, got {mirror!r}")
        pairings += [(v, perm[v]) for v in range(n_views)]
    out = np.zeros((q.shape[0], g.shape[0]), dtype=np.float64)
    for qv, gv in pairings:
        out += similarity_matrix(q[:, qv], g[:, gv], distance)
    return (out / len(pairings)).astype(np.float32)


def finegrained_report_from_scores(scores, true_index, ks: Sequence[int] = (1, 5, 10), triplets=None) -> dict:
    """:func:`finegrained_report` (and ``%corr`` with ``triplets``) from a precomputed score matrix,
    e.g. :func:`multiview_scores` or the mean scores of an ensemble. Ties count against the query."""
    ks = _check_ks(ks)
    s = _to_numpy(scores, "scores")
    ranks = true_match_ranks(s, true_index)
    report = acc_at_k(ranks, ks)
    report.update(
        n_queries=int(s.shape[0]),
        n_gallery=int(s.shape[1]),
        ranks=[int(r) for r in ranks],
        mean_rank=float(ranks.mean()),
        median_rank=float(np.median(ranks)),
    )
    if triplets is not None and len(triplets):
        tri = _to_numpy(triplets, "triplets").astype(np.int64)
        more, less = s[tri[:, 0], tri[:, 1]], s[tri[:, 0], tri[:, 2]]
        report["%corr"] = float(100.0 * np.count_nonzero(more > less) / tri.shape[0])
    return report


def percent_correct(
    sketch_emb,
    photo_emb,
    triplets,
    distance: str = "cosine",
    sketch_flip=None,
    photo_flip=None,
    memory_budget_mb: float = 512,
) -> float:
    """%corr of the QMUL shoe/chair benchmarks, in PERCENT.

    ``triplets``: integer array ``(T, 3)`` of rows
    ``(sketch_idx, more_similar_photo_idx, less_similar_photo_idx)`` (human
    relative-similarity annotations).
    ``%corr = 100 * (1/T) * sum_t [ s(sketch_t, more_t) > s(sketch_t, less_t) ]``.
    Ties (equal scores) count as WRONG: the model must strictly prefer the
    photo the annotators judged more similar.
    """
    tri = _to_numpy(triplets, "triplets")
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.shape[0] == 0:
        raise ConfigError(
            f"triplets must have shape (T, 3) with rows (sketch, more_similar, less_similar), got {tri.shape}"
        )
    if not np.issubdtype(tri.dtype, np.integer):
        raise ConfigError(f"triplets must hold integer indices, got dtype {tri.dtype}")
    sk = _to_numpy(sketch_emb, "sketch_emb")
    ph = _to_numpy(photo_emb, "photo_emb")
    if sk.ndim != 2 or ph.ndim != 2:
        raise ConfigError("sketch_emb and photo_emb must be 2-D (items x dim)")
    n_sk, n_ph = sk.shape[0], ph.shape[0]
    if tri[:, 0].min() < 0 or tri[:, 0].max() >= n_sk:
        raise ConfigError(f"triplet sketch indices must be in [0, {n_sk - 1}]")
    if tri[:, 1:].min() < 0 or tri[:, 1:].max() >= n_ph:
        raise ConfigError(f"triplet photo indices must be in [0, {n_ph - 1}]")
    used, inverse = np.unique(tri[:, 0], return_inverse=True)
    sk_flip = None if sketch_flip is None else _to_numpy(sketch_flip, "sketch_flip")
    if sk_flip is not None and sk_flip.shape != sk.shape:
        raise ConfigError(f"sketch_flip must have shape {sk.shape}, got {sk_flip.shape}")
    scorer = _Scorer(sk[used], ph, distance, None if sk_flip is None else sk_flip[used], photo_flip, REPORT_NAMES)
    rows = min(scorer.n_queries, rows_for_budget(scorer.n_gallery, memory_budget_mb, 8 if scorer.n_pairings > 1 else 4))
    buf = np.empty((rows, scorer.n_gallery), dtype=np.float32)
    tmp = np.empty_like(buf) if scorer.n_pairings > 1 else None
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(0, scorer.n_queries + rows, rows))
    more = np.empty(tri.shape[0], dtype=np.float32)
    less = np.empty(tri.shape[0], dtype=np.float32)
    for b, lo in enumerate(range(0, scorer.n_queries, rows)):
        hi = min(lo + rows, scorer.n_queries)
        out = buf[: hi - lo]
        scorer.scores_into(lo, hi, out, None if tmp is None else tmp[: hi - lo])
        sel = order[bounds[b] : bounds[b + 1]]
        more[sel] = out[inverse[sel] - lo, tri[sel, 1]]
        less[sel] = out[inverse[sel] - lo, tri[sel, 2]]
    return float(100.0 * np.count_nonzero(more > less) / tri.shape[0])
