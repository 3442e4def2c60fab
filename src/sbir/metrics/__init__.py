"""The one retrieval-metrics module of sbir.

Fine-grained SBIR (one true photo per sketch): :func:`finegrained_report`,
:func:`true_match_ranks`, :func:`acc_at_k` (percent), :func:`percent_correct`
(QMUL %corr, percent).

Category-level / zero-shot SBIR (any photo of the class is relevant):
:func:`category_report` (mAP@all, mAP@K, P@K and the SAKE / ZSE-SBIR
variants, fractions), with the single-query functions
:func:`average_precision`, :func:`voc_ap`, :func:`precision_at_k`.

Scores (higher = better) for cosine / euclidean / angular / hamming:
:func:`similarity_matrix`, :func:`hamming_scores`, :func:`iter_score_chunks`,
and flip TTA with :func:`min_over_flip_pairings`.
"""

from sbir.metrics.category import (
    AP_NORMALIZATIONS,
    PRECISION_NORMALIZATIONS,
    VARIANTS,
    average_precision,
    category_report,
    precision_at_k,
    voc_ap,
    voc_ap_from_pr,
)
from sbir.metrics.retrieval import (
    DISTANCES,
    acc_at_k,
    finegrained_report,
    finegrained_report_from_scores,
    hamming_scores,
    iter_score_chunks,
    min_over_flip_pairings,
    multiview_scores,
    percent_correct,
    rows_for_budget,
    similarity_matrix,
    true_match_ranks,
)

__all__ = [
    "AP_NORMALIZATIONS",
    "DISTANCES",
    "PRECISION_NORMALIZATIONS",
    "VARIANTS",
    "acc_at_k",
    "average_precision",
    "category_report",
    "finegrained_report",
    "finegrained_report_from_scores",
    "hamming_scores",
    "iter_score_chunks",
    "min_over_flip_pairings",
    "multiview_scores",
    "percent_correct",
    "precision_at_k",
    "rows_for_budget",
    "similarity_matrix",
    "true_match_ranks",
    "voc_ap",
    "voc_ap_from_pr",
]
