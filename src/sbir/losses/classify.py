"""Plain classification: softmax cross-entropy on a model's class logits.

Sketch-domain pretraining (:mod:`sbir.engine.pretrain`, the Sketch-a-Net recipe)
trains an encoder and its linear classifier on sketch classes. With logits
``z`` (B, C) and labels ``y``::

    loss = -1/B  sum_i  log( exp(z_{i, y_i}) / sum_c exp(z_{i, c}) )

The classifier lives in the model (so the run's checkpoint can be evaluated on
its own); this module only scores its logits. Kind ``logits``:
``forward(logits, labels) -> loss``, ``predict(logits) -> class``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import LossConfig
from sbir.losses.factory import register_loss


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy (mean over the batch) on (B, C) logits."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    @staticmethod
    def predict(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def current_margin(self) -> float:
        return 0.0


@register_loss("cross_entropy", kind="logits", distance="cosine", normalized=True)
def _build(cfg: LossConfig, num_classes=None, embed_dim=None) -> CrossEntropyLoss:
    return CrossEntropyLoss()


__all__ = ["CrossEntropyLoss"]
