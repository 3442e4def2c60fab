"""The fine-grained task (EffNet/ARNet double-siamese training).

Training pairs each sketch with its photo; every item yields two augmented
views of the sketch and two of the photo for the double-siamese NT-Xent. The
batch sampler keeps sketches of the same photo out of one batch, so they are
never each other's negatives. Validation = Acc@K with the split's unique
photos as the gallery (:func:`sbir.engine.evaluate.evaluate_finegrained`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sbir.config import TrainConfig
from sbir.data.transforms import train_transform
from sbir.engine.batches import SplitTask
from sbir.engine.evaluate import evaluate_finegrained
from sbir.engine.tasks import TaskSpec, build_criterion, build_model, register_task
from sbir.losses.rerank import rerank_loss

# Training sets up to this many images are decoded into memory once.
PRELOAD_MAX_IMAGES = 20_000


def unique_photo_sampler(task) -> Any:
    """Batches in which no two sketches share a photo (they would be each other's false negatives)."""
    from sbir.data.sampler import UniquePhotoBatchSampler

    groups = task.pairs.photo_ids_for_sampler()
    return UniquePhotoBatchSampler(groups, task.cfg.optim.batch_size, seed=task.cfg.seed, drop_last=True)


class FineGrainedTask(SplitTask):
    """The :class:`sbir.engine.trainer.Task` of ``task=finegrained``."""

    def __init__(
        self, spec: TaskSpec, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: dict | None = None
    ):
        from sbir.data.pairs import FineGrainedPairs

        super().__init__(spec, cfg, run_dir, progress, split_record)
        self.model = build_model(cfg)
        size = cfg.data.image_size
        mean, std = self.model.mean, self.model.std
        self.pairs = FineGrainedPairs(
            self.train_split,
            train_transform(size, mean, std, cfg.augment, "sketch"),
            train_transform(size, mean, std, cfg.augment, "photo"),
            two_views=True,
        )
        # Decode once up front for small datasets, so forked loader workers share the images
        # instead of each decoding (and caching) its own copy every epoch.
        if len(self.train_split.sketches) + len(self.train_split.photos) <= PRELOAD_MAX_IMAGES:
            self.pairs.preload()
        self.sampler = spec.make_sampler(self)
        self.criterion = build_criterion(cfg)

    def compute_loss(self, batch: dict, device: torch.device):
        model = self.model
        b = batch["sketch"].shape[0]
        # One forward per encoder over both views keeps BatchNorm statistics per domain.
        x_sketch = torch.cat([batch["sketch"], batch["sketch_aug"]]).to(device, non_blocking=True)
        x_photo = torch.cat([batch["photo"], batch["photo_aug"]]).to(device, non_blocking=True)
        reranker = getattr(model, "reranker", None)
        if reranker is not None:
            sketches, s_tok = model.embed_with_tokens(x_sketch, "sketch")
            photos, p_tok = model.embed_with_tokens(x_photo, "photo")
        else:
            sketches, photos = model.embed(x_sketch, "sketch"), model.embed(x_photo, "photo")
        embs = {
            "sketch": sketches[:b],
            "sketch_aug": sketches[b:],
            "photo": photos[:b],
            "photo_aug": photos[b:],
            "groups": batch["group"].to(device),
        }
        loss, parts = self.criterion(embs)
        if reranker is not None:  # the re-ranker learns on the first views: true photo vs hard negatives
            r_loss, r_parts = rerank_loss(
                reranker, s_tok[:b], p_tok[:b], sketches[:b], photos[:b], embs["groups"],
                self.cfg.model.rerank_negatives,
            )
            loss = loss + self.cfg.loss.weight_rerank * r_loss
            parts = {**parts, **r_parts}
        return loss, parts


register_task(
    TaskSpec(
        name="finegrained",
        model="fgsbir",
        loss_kind="pairs",
        default_loss="ntxent",
        select_metric="acc@1",
        metric_keys=("acc@1", "acc@5", "acc@10", "%corr"),
        flip_mode="average",
        split_policy="photo",
        task_class=FineGrainedTask,
        evaluate=evaluate_finegrained,
        make_sampler=unique_photo_sampler,
        rerank=True,
    )
)
