"""The clip-prompt training loss (Sketch_LVM): a weighted sum of the method's terms.

On a batch of prompted-encoder embeddings (:mod:`sbir.engine.clip_prompt`)::

    loss = w_triplet · triplet(sketch, photo, negative)                 sbir.losses.cosine_triplet
         + w_text    · (CE_text(sketch, y) + CE_text(photo, y)) / 2     sbir.losses.text_classifier
         + w_shuffle · patch_shuffle(ψ(s), ψ(p), ψ'(p))                  sbir.losses.patch_shuffle   (fine-grained)
         + w_reldist · relative_distance(sketch, photo, negative, y)    sbir.losses.relative_distance (fine-grained)

Category-level: ``photo`` is a photo of the sketch's class, ``negative`` one of another
class. Fine-grained: ``photo`` is the sketch's own photo and ``negative`` another photo of
its class. The fine-grained terms are computed when the batch holds their keys
(``shuffled_sketch``, ``shuffled_photo``, ``shuffled_other`` / ``fine_grained``). Every
weight defaults to 1 and the margins to 0.2 (``loss.weight_*``, ``loss.triplet_margin``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses.cosine_triplet import CosineTripletLoss
from sbir.losses.factory import register_loss, set_values
from sbir.losses.patch_shuffle import PatchShuffleLoss
from sbir.losses.relative_distance import RelativeDistanceLoss
from sbir.losses.text_classifier import TextClassifierLoss


class ClipPromptLoss(nn.Module):
    """``forward(batch) -> (loss, parts)``; ``batch``: ``sketch``, ``photo``, ``negative`` (B, D), ``labels`` (B,),
    optional ``shuffled_sketch`` / ``shuffled_photo`` / ``shuffled_other`` and ``fine_grained`` (bool)."""

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        triplet_margin: float = 0.2,
        weight_triplet: float = 1.0,
        weight_text: float = 1.0,
        weight_patch_shuffle: float = 1.0,
        weight_rel_distance: float = 1.0,
        patch_grid: int = 2,
    ):
        super().__init__()
        self.triplet = CosineTripletLoss(triplet_margin)
        self.text = TextClassifierLoss(num_classes, embed_dim)
        self.patch_shuffle = PatchShuffleLoss(triplet_margin)
        self.rel_distance = RelativeDistanceLoss()
        self.weights = {
            "triplet": float(weight_triplet),
            "text": float(weight_text),
            "patch_shuffle": float(weight_patch_shuffle),
            "rel_distance": float(weight_rel_distance),
        }
        if self.weights["triplet"] == 0 and self.weights["text"] == 0:
            raise ConfigError("clip-prompt needs loss.weight_triplet or loss.weight_text above 0")
        self.patch_grid = int(patch_grid)

    def set_class_embeddings(self, text_embeddings: torch.Tensor, scale: float) -> None:
        self.text.set_class_embeddings(text_embeddings, scale)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.text.predict(features)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        s, p, n, y = batch["sketch"], batch["photo"], batch["negative"], batch["labels"]
        terms: dict[str, torch.Tensor] = {"triplet": self.triplet(s, p, n)}
        if self.weights["text"] > 0:
            terms["text"] = 0.5 * (self.text(s, y) + self.text(p, y))
        if batch.get("shuffled_sketch") is not None and self.weights["patch_shuffle"] > 0:
            terms["patch_shuffle"] = self.patch_shuffle(
                batch["shuffled_sketch"], batch["shuffled_photo"], batch["shuffled_other"]
            )
        if batch.get("fine_grained", False) and self.weights["rel_distance"] > 0:
            terms["rel_distance"] = self.rel_distance(s, p, n, y)
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}


@register_loss("clip-prompt", kind="clip", distance="cosine", normalized=True)
def _build(cfg: LossConfig, num_classes: int, embed_dim: int) -> ClipPromptLoss:
    return ClipPromptLoss(
        num_classes,
        embed_dim,
        **set_values(
            cfg,
            "triplet_margin",
            "weight_triplet",
            "weight_text",
            "weight_patch_shuffle",
            "weight_rel_distance",
            "patch_grid",
        ),
    )


__all__ = ["ClipPromptLoss"]
