"""Category-level and zero-shot SBIR metrics: mAP@all, mAP@K, P@K and their variants.

A gallery item is *relevant* to a query when it has the query's class label.
All values here are fractions in [0, 1] (as reported by SAKE, ZSE-SBIR, ...).

Ranking and ties
----------------
The ranking of a query sorts the gallery by score **descending, ties broken
by gallery index ascending** (a stable sort of ``-scores``). Every function in
this module uses that order, so results are deterministic -- but with tied
scores (hash codes, quantised or degenerate embeddings) the tie order changes
AP and P@K: a relevant item placed before or after an equally-scored
irrelevant one changes the precision at its rank. Papers' code usually calls
an unstable ``argsort`` and so is not even deterministic on ties.

Notation for one query: ``N`` gallery size, ``rel_i`` in {0, 1} the relevance
of the item at rank ``i`` (1-based), ``R = sum_i rel_i`` the number of
relevant items in the whole gallery, ``P@i = (1/i) sum_{j<=i} rel_j``.
A query with ``R = 0`` has undefined AP: the functions return NaN and
:func:`category_report` leaves such queries out of every mean (it reports how
many there were).

Variants (names as in :func:`category_report`)
----------------------------------------------
* ``map@all``  non-interpolated AP over the full ranking:
  ``AP = (1/R) sum_{i=1..N} rel_i P@i`` (= sklearn ``average_precision_score``
  without ties).
* ``map@K``    AP@K as computed in most SBIR code (SEM-PCYC/Doodle2Search
  ``apsak``: sklearn AP on the top-K list; torchmetrics
  ``RetrievalMAP(top_k=K)``): ``(1/Z) sum_{i<=K} rel_i P@i`` with
  ``Z = sum_{i<=K} rel_i`` the relevant items *retrieved* in the top K
  (AP@K = 0 when none is retrieved). ``normalize="retrieved"``.
* ``map@K_allrel``  same sum divided by ``Z = R`` (``normalize="all_relevant"``).
* ``map@K_minkr``   same sum divided by ``Z = min(K, R)``
  (``normalize="min_k_relevant"``; ZSE-SBIR's ``other_map1``, without its
  ``+1e-5``).
* ``map@all_voc``   VOC all-point interpolated AP (SAKE ``eval_AP_inner`` /
  ``VOCap``, ZSE-SBIR ``voc_eval``): area under the monotone precision
  envelope, ``(1/R) sum_{i: rel_i} max_{j>=i} P@j``.
* ``map@K_voc``     ZSE-SBIR's mAP@200: the same on the top ``K`` items with
  recall normalised by ``min(K, R)``:
  ``(1/min(K,R)) sum_{i<=K: rel_i} max_{i<=j<=K} P@j``.
* ``p@K``           ``(#relevant in top K) / K`` (SAKE ``eval_precision``).
* ``p@K_zse``       ZSE-SBIR ``precision_eval``: the precision at cutoff
  ``k' = min(K, R)``, i.e. ``(#relevant in top k') / k'``. Note the cutoff
  itself shrinks, it is not ``(#relevant in top K) / min(K, R)``.

Every ``K`` is clipped to the gallery size ``N`` (as SAKE and ZSE-SBIR do).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from sbir.errors import ConfigError
from sbir.metrics.retrieval import (
    REPORT_NAMES,
    _check_ks,
    _check_positive_int,
    _Scorer,
    _to_numpy,
    rows_for_budget,
)

AP_NORMALIZATIONS = ("retrieved", "all_relevant", "min_k_relevant")
PRECISION_NORMALIZATIONS = ("k", "min_k_relevant")
VARIANTS = ("voc", "allrel", "minkr", "zse")


# --------------------------------------------------------------------------
# single-query reference functions (straightforward, stable argsort)
# --------------------------------------------------------------------------


def _ranked_relevance(scores_row, relevant_mask) -> np.ndarray:
    """Relevance flags in ranking order (score descending, gallery index ascending)."""
    s = _to_numpy(scores_row, "scores_row")
    m = _to_numpy(relevant_mask, "relevant_mask")
    if s.ndim != 1 or s.size == 0:
        raise ConfigError(f"scores_row must be a non-empty 1-D array, got shape {s.shape}")
    if m.shape != s.shape:
        raise ConfigError(f"relevant_mask has shape {m.shape}, scores_row has shape {s.shape}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
            raise ConfigError("relevant_mask must be boolean (or 0/1)")
        m = m.astype(bool)
    if s.dtype == np.bool_ or np.issubdtype(s.dtype, np.unsignedinteger):
        s = s.astype(np.int64)
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise ConfigError("scores_row contains NaN")
    order = np.argsort(-s, kind="stable")
    return m[order]


def _check_k(k, name: str = "k") -> int | None:
    return None if k is None else _check_positive_int(k, name)


def average_precision(scores_row, relevant_mask, k: int | None = None, normalize: str = "retrieved") -> float:
    """Non-interpolated average precision of one query.

    ``AP@all = (1/R) sum_{i=1..N} rel_i P@i`` (``k=None``; ``normalize`` is
    irrelevant then). With ``k``: ``AP@K = (1/Z) sum_{i=1..min(K,N)} rel_i P@i``
    where ``Z`` depends on ``normalize``:

    * ``"retrieved"`` (default, the usual SBIR mAP@200):
      ``Z = sum_{i<=K} rel_i``; AP@K = 0 if nothing relevant is in the top K;
    * ``"all_relevant"``: ``Z = R``;
    * ``"min_k_relevant"``: ``Z = min(K, R)``.

    ``R`` = number of relevant items in the whole gallery; ``R = 0`` gives NaN.
    Ranking: score descending, ties by gallery index ascending (tie order
    changes AP). Returns a fraction in [0, 1].
    """
    k = _check_k(k)
    if normalize not in AP_NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {AP_NORMALIZATIONS}, got {normalize!r}")
    rel = _ranked_relevance(scores_row, relevant_mask)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    top = rel.size if k is None else min(k, rel.size)
    hits = rel[:top]
    positions = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant items
    sum_prec = float(np.sum(np.arange(1, positions.size + 1) / positions))
    if k is None or normalize == "all_relevant":
        z = n_rel
    elif normalize == "retrieved":
        z = positions.size
        if z == 0:
            return 0.0
    else:
        z = min(top, n_rel)
    return sum_prec / z


def voc_ap_from_pr(recall, precision) -> float:
    """VOC all-point interpolated AP from a recall/precision curve (SAKE's ``VOCap``).

    ``mrec = [0, recall..., 1]``, ``mpre = [0, precision..., 0]``; make the
    precision envelope monotone, ``mpre[i] = max(mpre[i], mpre[i+1])`` from the
    right; then ``AP = sum_{i: mrec[i+1] != mrec[i]} (mrec[i+1] - mrec[i]) * mpre[i+1]``.
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ConfigError(f"recall and precision lengths differ: {rec.size} vs {prec.size}")
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = mrec[1:] != mrec[:-1]
    return float(np.sum((mrec[1:][step] - mrec[:-1][step]) * mpre[1:][step]))


def voc_ap(scores_row, relevant_mask, k: int | None = None) -> float:
    """VOC-interpolated AP of one query, exactly as SAKE / ZSE-SBIR compute it.

    Over the top ``t = min(k, N)`` items (all ``N`` when ``k`` is None):
    ``tp_i, fp_i`` cumulative true/false positives, ``recall_i = tp_i / Z``
    with ``Z = R`` (k None) or ``Z = min(t, R)``, ``precision_i = tp_i / i``,
    then :func:`voc_ap_from_pr`. Equivalently
    ``(1/Z) sum_{i<=t: rel_i} max_{i<=j<=t} P@j``. NaN when ``R = 0``.
    """
    k = _check_k(k)
    rel = _ranked_relevance(scores_row, relevant_mask)
    n_rel = int(rel.sum())
    if n_rel == 0:
        return float("nan")
    top = rel.size if k is None else min(k, rel.size)
    z = n_rel if k is None else min(top, n_rel)
    tp = np.cumsum(rel[:top])
    recall = tp / z
    precision = tp / np.arange(1, top + 1)
    return voc_ap_from_pr(recall, precision)


def precision_at_k(scores_row, relevant_mask, k: int, normalize: str = "k") -> float:
    """Precision at cutoff ``k'`` of one query: ``(#relevant in top k') / k'``.

    * ``normalize="k"`` (default, SAKE): ``k' = min(k, N)``;
    * ``normalize="min_k_relevant"`` (ZSE-SBIR ``precision_eval``):
      ``k' = min(k, R)``; NaN when ``R = 0``.
    """
    k = _check_positive_int(k, "k")
    if normalize not in PRECISION_NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {PRECISION_NORMALIZATIONS}, got {normalize!r}")
    rel = _ranked_relevance(scores_row, relevant_mask)
    if normalize == "k":
        kk = min(k, rel.size)
    else:
        kk = min(k, int(rel.sum()))
        if kk == 0:
            return float("nan")
    return float(rel[:kk].sum()) / kk


# --------------------------------------------------------------------------
# chunked evaluation engine
# --------------------------------------------------------------------------


def _encode_labels(sketch_labels, photo_labels, n_sketch: int, n_photo: int):
    sl = _to_numpy(sketch_labels, "sketch_labels")
    pl = _to_numpy(photo_labels, "photo_labels")
    if sl.ndim != 1 or sl.shape[0] != n_sketch:
        raise ConfigError(f"sketch_labels must be 1-D with one label per sketch ({n_sketch}), got shape {sl.shape}")
    if pl.ndim != 1 or pl.shape[0] != n_photo:
        raise ConfigError(f"photo_labels must be 1-D with one label per photo ({n_photo}), got shape {pl.shape}")
    try:
        _, codes = np.unique(np.concatenate([sl, pl]), return_inverse=True)
    except TypeError as exc:
        raise ConfigError(f"sketch and photo labels cannot be compared: {exc}") from None
    codes = codes.ravel().astype(np.int64)
    return codes[:n_sketch], codes[n_sketch:]


def _reverse_cummax(values: np.ndarray) -> np.ndarray:
    """``out[r, i] = max(values[r, i:])`` (the VOC precision envelope, row by row)."""
    return np.maximum.accumulate(values[:, ::-1], axis=1)[:, ::-1]


def _build_sort_keys(scores: np.ndarray, keys: np.ndarray, low: np.ndarray) -> None:
    """Pack each score and its gallery index into one uint64 whose ascending order is
    (score descending, gallery index ascending).

    High 32 bits: the float32 bit pattern ``b`` mapped to
    ``b ^ 0x7FFFFFFF`` for non-negative floats and ``b`` for negative ones
    (a monotone *decreasing* map of the float value to unsigned ints, -0.0 was
    turned into +0.0 before). Low 32 bits: the gallery index. Sorting these
    keys (a fast SIMD value sort) is an exact stable argsort of ``-scores``.
    """
    n_rows, n = scores.shape
    bits = scores.view(np.int32)
    step = max(1, (1 << 20) // max(n, 1))  # small row blocks keep the temp in cache
    tmp = np.empty((min(step, n_rows), n), dtype=np.int32)
    if sys.byteorder == "little":
        halves = keys.view(np.uint32).reshape(n_rows, n, 2)
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            t = tmp[: r1 - r0]
            b = bits[r0:r1]
            np.right_shift(b, 31, out=t)  # -1 for negative floats, 0 otherwise
            np.invert(t, out=t)
            np.bitwise_and(t, 0x7FFFFFFF, out=t)
            np.bitwise_xor(t, b, out=t)
            halves[r0:r1, :, 1] = t.view(np.uint32)
            halves[r0:r1, :, 0] = low
    else:  # pragma: no cover - big-endian machines
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            t = tmp[: r1 - r0]
            b = bits[r0:r1]
            np.right_shift(b, 31, out=t)
            np.invert(t, out=t)
            np.bitwise_and(t, 0x7FFFFFFF, out=t)
            np.bitwise_xor(t, b, out=t)
            keys[r0:r1] = t.view(np.uint32)
            keys[r0:r1] <<= np.uint64(32)
            keys[r0:r1] |= low


def _relevant_positions(keys: np.ndarray, q_codes: np.ndarray, class_cols: list[np.ndarray], width: int) -> np.ndarray:
    """0-based ranks of each row's relevant gallery items, ascending, in a padded
    ``(rows, width)`` int64 array (padding = ``n_gallery``, i.e. "never retrieved").

    The relevant items' keys are gathered before the rows are sorted; after
    sorting, the rank of each is its ``searchsorted`` position (keys are unique).
    """
    n_rows, n_gallery = keys.shape
    needles = np.empty((n_rows, width), dtype=np.uint64)
    n_rel = np.zeros(n_rows, dtype=np.int64)
    for c in np.unique(q_codes):
        cols = class_cols[c]
        if cols.size == 0:
            continue
        rows = np.flatnonzero(q_codes == c)
        block = keys[rows[:, None], cols[None, :]]
        block.sort(axis=1)
        needles[rows, : cols.size] = block
        n_rel[rows] = cols.size
    keys.sort(axis=1)
    pos = np.full((n_rows, width), n_gallery, dtype=np.int64)
    for i in range(n_rows):
        r = n_rel[i]
        if r:
            pos[i, :r] = np.searchsorted(keys[i], needles[i, :r])
    return pos


def _chunk_metrics(
    pos: np.ndarray,
    n_rel: np.ndarray,
    n_gallery: int,
    ks_map: tuple[int, ...],
    ks_prec: tuple[int, ...],
    variants: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Per-query metrics of one chunk from the padded 0-based ranks of its relevant items.

    Row ``r`` holds ranks ``pos[r, :R_r]`` (ascending) then padding ``n_gallery``.
    The padded width is the same for every chunk, so each row's arithmetic (and
    result) does not depend on the chunking.
    """
    width = pos.shape[1]
    j = np.arange(1, width + 1, dtype=np.float64)[None, :]  # index among relevant items
    valid = pos < n_gallery
    prec = np.where(valid, j / (pos + 1.0), 0.0)  # P@rank at each relevant item, 0 = padding
    r = n_rel.astype(np.float64)
    res: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        res["map@all"] = prec.sum(axis=1) / r
        if "voc" in variants:
            res["map@all_voc"] = _reverse_cummax(prec).sum(axis=1) / r
        for k in ks_map:
            kc = min(k, n_gallery)
            top_prec = np.where(pos < kc, prec, 0.0)
            n_ret = np.count_nonzero(pos < kc, axis=1).astype(np.float64)
            sum_p = top_prec.sum(axis=1)
            z_minkr = np.minimum(kc, r)
            res[f"map@{k}"] = np.where(n_ret > 0, sum_p / np.maximum(n_ret, 1.0), 0.0)
            if "allrel" in variants:
                res[f"map@{k}_allrel"] = sum_p / r
            if "minkr" in variants:
                res[f"map@{k}_minkr"] = sum_p / z_minkr
            if "voc" in variants:
                res[f"map@{k}_voc"] = _reverse_cummax(top_prec).sum(axis=1) / z_minkr
        for k in ks_prec:
            kc = min(k, n_gallery)
            res[f"p@{k}"] = np.count_nonzero(pos < kc, axis=1) / float(kc)
            if "zse" in variants:
                kp = np.minimum(kc, n_rel)
                res[f"p@{k}_zse"] = np.count_nonzero(pos < kp[:, None], axis=1) / kp.astype(np.float64)
    return res


def category_report(
    sketch_emb,
    sketch_labels,
    photo_emb,
    photo_labels,
    distance: str = "cosine",
    chunk_size: int | None = None,
    ks_map: Sequence[int] = (200,),
    ks_prec: Sequence[int] = (100, 200),
    sketch_flip=None,
    photo_flip=None,
    variants: Sequence[str] = VARIANTS,
    memory_budget_mb: float = 512,
) -> dict:
    """Category-level / zero-shot SBIR evaluation (any photo of the sketch's class is relevant).

    Keys of the returned dict (fractions in [0, 1], means over the queries
    that have at least one relevant photo; formulas in the module docstring):

    * always: ``"map@all"``, ``"map@K"`` for K in ``ks_map`` (normalised by the
      relevant items retrieved), ``"p@K"`` for K in ``ks_prec``;
    * variant ``"voc"``: ``"map@all_voc"``, ``"map@K_voc"``;
    * variant ``"allrel"``: ``"map@K_allrel"``;
    * variant ``"minkr"``: ``"map@K_minkr"``;
    * variant ``"zse"``: ``"p@K_zse"``;
    * counts: ``"n_queries"``, ``"n_gallery"``, ``"n_queries_without_relevant"``
      (queries whose class has no photo; excluded from the means).

    ``distance``: ``"cosine"``, ``"euclidean"``, ``"angular"`` or ``"hamming"``
    (then the embeddings are hash codes, see
    :func:`sbir.metrics.retrieval.hamming_scores`). ``sketch_flip`` /
    ``photo_flip``: flip-TTA embeddings (score = max over the pairings).

    Sketches are processed in chunks; each chunk's scores (chunk x gallery)
    are turned into packed sort keys and fully sorted (the exact ranking,
    ties by gallery index), only per-query metric values are kept. The chunk
    height is chosen so the chunk's arrays fit in ``memory_budget_mb``
    (``chunk_size``, if given, is an upper bound).
    """
    ks_map = _check_ks(ks_map, "ks_map")
    ks_prec = _check_ks(ks_prec, "ks_prec")
    if isinstance(variants, str):
        variants = (variants,)
    variants = tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; choose from {VARIANTS}")
    if chunk_size is not None:
        chunk_size = _check_positive_int(chunk_size, "chunk_size")
    scorer = _Scorer(sketch_emb, photo_emb, distance, sketch_flip, photo_flip, REPORT_NAMES)
    nq, ng = scorer.n_queries, scorer.n_gallery
    if ng >= 2**32:
        raise ConfigError(f"gallery too large for the packed sort keys ({ng} >= 2**32 items)")
    q_codes, g_codes = _encode_labels(sketch_labels, photo_labels, nq, ng)
    n_classes = int(max(q_codes.max(), g_codes.max())) + 1
    counts = np.bincount(g_codes, minlength=n_classes)
    by_class = np.argsort(g_codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)))
    class_cols = [by_class[starts[c] : starts[c + 1]] for c in range(n_classes)]
    n_rel_all = counts[q_codes]
    width = max(1, int(counts.max()))  # padded per-row width of the relevant-item arrays

    # per row: scores 4 B + keys 8 B (+ 4 B flip temp) per gallery item, and
    # ~12 padded float64/int64 temporaries of the largest class size
    bytes_per_item = 12 + (4 if scorer.n_pairings > 1 else 0)
    rows = rows_for_budget(ng, memory_budget_mb, bytes_per_item, 96 * width)
    if chunk_size is not None:
        rows = min(rows, chunk_size)
    rows = min(rows, nq)
    scores = np.empty((rows, ng), dtype=np.float32)
    keys = np.empty((rows, ng), dtype=np.uint64)
    tmp = np.empty_like(scores) if scorer.n_pairings > 1 else None
    low = np.arange(ng, dtype=np.uint32 if sys.byteorder == "little" else np.uint64)

    per_query: dict[str, np.ndarray] = {}
    for lo in range(0, nq, rows):
        hi = min(lo + rows, nq)
        c = hi - lo
        out = scores[:c]
        scorer.scores_into(lo, hi, out, None if tmp is None else tmp[:c])
        out += np.float32(0.0)  # -0.0 -> +0.0 so equal scores get equal keys
        _build_sort_keys(out, keys[:c], low)
        pos = _relevant_positions(keys[:c], q_codes[lo:hi], class_cols, width)
        chunk = _chunk_metrics(pos, n_rel_all[lo:hi], ng, ks_map, ks_prec, variants)
        for name, values in chunk.items():
            if name not in per_query:
                per_query[name] = np.empty(nq, dtype=np.float64)
            per_query[name][lo:hi] = values

    valid = n_rel_all > 0
    if not valid.any():
        raise ConfigError(
            "no sketch has a photo of its class in the gallery; check that sketch_labels and "
            "photo_labels use the same class names"
        )
    report: dict = {name: float(values[valid].mean()) for name, values in per_query.items()}
    report.update(
        n_queries=int(nq),
        n_gallery=int(ng),
        n_queries_without_relevant=int((~valid).sum()),
    )
    return report
