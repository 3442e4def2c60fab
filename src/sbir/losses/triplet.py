"""Cross-modal batch-hard triplet loss (sketch anchors, photo positives/negatives).

With cosine distance ``d(x, y) = 1 - x·y / (|x||y|)`` and group ids ``g``
(the photo index of each row; ``arange(B)`` when not given)::

    pos_i = max_{j : g_j = g_i}  d(s_i, p_j)     hardest photo of the anchor's own group
    neg_i = min_{j : g_j ≠ g_i}  d(s_i, p_j)     hardest photo of another group
    loss  = mean_i  max(0, pos_i - neg_i + margin)

The mean runs over anchors that have a negative (all of them unless the whole
batch is one group; then the loss is 0). When every group occurs once in the
batch (what :class:`~sbir.data.sampler.UniquePhotoBatchSampler` guarantees),
``pos_i = d(s_i, p_i)``, the anchor's own photo. Cosine distance on unit
vectors is half the squared euclidean distance, so ``margin`` is in units of
``1 - cos`` (0.2 ≈ an 11.5° wider angle to the negative than to the positive
for a matching pair at 0°).

Implemented with pytorch-metric-learning: ``BatchHardMiner`` and
``TripletMarginLoss`` on ``CosineSimilarity`` with ``ref_emb`` = photos (so
anchors come only from sketches, positives/negatives only from photos) and a
``MeanReducer`` (pml's default ``AvgNonZeroReducer`` would average only over
violating triplets, making the scale jump as the batch gets easier). Tested
against an explicit implementation.
"""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer
from torch import nn

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses.factory import FineGrainedLoss, register_loss
from sbir.losses.ntxent import check_pair


class HardTripletLoss(nn.Module):
    """Batch-hard cross-modal triplet loss on cosine distance ``d = 1 - cos``::

        loss = mean_i max(0, max_{g_j = g_i} d(s_i, p_j) - min_{g_j ≠ g_i} d(s_i, p_j) + margin)

    ``forward(sketch, photo, groups=None) -> scalar``; row ``i`` of ``photo`` is
    the photo of sketch ``i``.
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        try:
            m = float(margin)
        except (TypeError, ValueError):
            raise ConfigError(f"loss.triplet_margin must be a number >= 0, got {margin!r}") from None
        if not math.isfinite(m) or m < 0:
            raise ConfigError(
                f"loss.triplet_margin must be a finite number >= 0 (cosine-distance units, e.g. 0.2), got {margin!r}"
            )
        self.margin = m
        self.miner = BatchHardMiner(distance=CosineSimilarity())
        self.loss = TripletMarginLoss(margin=m, distance=CosineSimilarity(), reducer=MeanReducer())

    def forward(self, sketch: torch.Tensor, photo: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        g = check_pair(sketch, photo, groups)
        with torch.autocast(device_type=sketch.device.type, enabled=False):
            s, p = sketch.float(), photo.float()
            # pml drops the diagonal of the label-match matrix when ``ref_labels is labels``
            # (it assumes self-comparison); cross-modal, the diagonal is each sketch's own
            # photo, so the reference labels must be a distinct tensor.
            ref_g = g.clone()
            triplets = self.miner(s, g, p, ref_g)
            if len(triplets[0]) == 0:
                # One group only: no negatives. A zero that keeps the graph connected.
                return (s.sum() + p.sum()) * 0.0
            return self.loss(s, g, triplets, p, ref_g)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance='cosine'"


class NegativeTripletLoss(nn.Module):
    """Triplet loss with given negatives (e.g. photos human annotators ranked near the sketch), cosine distance::

        loss = mean_i max(0, d(s_i, p_i) - d(s_i, n_i) + margin),   d(x, y) = 1 - cos(x, y)

    ``forward(sketch, photo, negative) -> scalar``; row ``i`` of ``negative`` is sketch ``i``'s negative photo.
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        if margin < 0:
            raise ConfigError(f"the negative triplet margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def forward(self, sketch: torch.Tensor, photo: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        check_pair(sketch, photo, None)
        check_pair(sketch, negative, None)
        with torch.autocast(device_type=sketch.device.type, enabled=False):
            s = torch.nn.functional.normalize(sketch.float(), dim=1)
            d_pos = 1.0 - (s * torch.nn.functional.normalize(photo.float(), dim=1)).sum(1)
            d_neg = 1.0 - (s * torch.nn.functional.normalize(negative.float(), dim=1)).sum(1)
            return torch.relu(d_pos - d_neg + self.margin).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance='cosine'"


@register_loss("triplet", kind="pairs")
def _build_triplet(cfg: LossConfig, num_classes=None, embed_dim=None) -> FineGrainedLoss:
    """Batch-hard cross-modal triplet on cosine distance (``loss.triplet_margin`` as ``margin``)."""
    margin = {"margin": cfg.triplet_margin} if cfg.triplet_margin is not None else {}
    return FineGrainedLoss(None, HardTripletLoss(**margin))
