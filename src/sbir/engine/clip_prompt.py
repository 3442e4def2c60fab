"""The clip-prompt method: zero-shot SBIR by prompt learning on a frozen CLIP (Sketch_LVM, CVPR 2023).

``sbir train --task zeroshot --method clip-prompt`` (``cfg.method``; see
:mod:`sbir.engine.tasks`). Registered for:

* ``zeroshot`` (category-level, split policy ``unseen``): train on the seen
  classes, select on held-out seen classes, test on the unseen ones with
  :func:`sbir.engine.evaluate.evaluate_category` (mAP@all, ...; cosine distance).
* ``category`` (split policy ``class``), the same method on seen classes.
* ``finegrained-zeroshot`` (split policy ``unseen`` on data with instance
  pairs and classes, e.g. Sketchy): train on the seen categories' sketch/photo
  pairs, test Acc@K on the unseen categories
  (:func:`sbir.engine.evaluate.evaluate_finegrained`; the gallery is every
  photo of the split, across categories).

Model: :class:`sbir.models.clip_prompt.ClipPromptModel` (frozen CLIP towers,
learnable sketch / photo prompt tokens). Batches: class-balanced
(``optim.batch_size // optim.samples_per_class`` classes) triplets from
:class:`sbir.data.pairs.TripletPairs`: a sketch, a positive photo (its class's;
fine-grained: its own) and a negative photo (another class's; fine-grained:
another photo of its class). Loss: :class:`sbir.losses.clip_prompt.ClipPromptLoss`
(cosine triplet + classification against the frozen text embeddings of the
training class names "a photo of a {class}"; fine-grained also patch shuffle
and the relative-distance regulariser). The image size must be the CLIP
model's (224 for ViT-B-32).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sbir.config import TrainConfig
from sbir.engine.batches import SplitTask
from sbir.engine.category import MAIN_KEYS, class_balanced_sampler
from sbir.engine.evaluate import evaluate_category, evaluate_finegrained
from sbir.engine.tasks import TaskSpec, build_criterion, build_model, register_task
from sbir.errors import ConfigError

METHOD = "clip-prompt"


class ClipPromptTask(SplitTask):
    """The :class:`sbir.engine.trainer.Task` of the clip-prompt method (category-level triplets)."""

    fine_grained = False

    def __init__(
        self, spec: TaskSpec, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: dict | None = None
    ):
        from sbir.data.pairs import TripletPairs

        super().__init__(spec, cfg, run_dir, progress, split_record)
        self.classes = self.training_classes()
        self.model = build_model(cfg)
        if cfg.data.image_size != self.model.image_size:
            raise ConfigError(
                f"data.image_size is {cfg.data.image_size} but CLIP model {self.model.clip_name} takes "
                f"{self.model.image_size} px images: pass --image-size {self.model.image_size}"
            )
        self.pairs = TripletPairs(
            self.train_split,
            self.classes,
            *self.train_transforms(),
            seed=cfg.seed,
            fine_grained=self.fine_grained,
        )
        self.sampler = spec.make_sampler(self)
        self.criterion = build_criterion(cfg, len(self.classes), self.model.embed_dim)
        # The classifier's weights: the frozen text tower's embeddings of the training class names.
        self.class_prompts = self.model.class_prompts(self.classes)
        self.criterion.set_class_embeddings(self.model.class_embeddings(self.classes), self.model.logit_scale())

    def compute_loss(self, batch: dict, device: torch.device):
        model = self.model
        s = batch["sketch"].to(device, non_blocking=True)
        p = batch["photo"].to(device, non_blocking=True)
        n = batch["negative"].to(device, non_blocking=True)
        y = batch["label"].to(device)
        b = s.shape[0]
        zs = model.embed(s, "sketch")
        photos = model.embed(torch.cat([p, n]), "photo")
        embs: dict = {"sketch": zs, "photo": photos[:b], "negative": photos[b:], "labels": y}
        if self.fine_grained:
            from sbir.losses.patch_shuffle import random_permutation_pair, shuffle_patches

            grid = self.criterion.patch_grid
            same, other = random_permutation_pair(grid * grid, b)
            embs["shuffled_sketch"] = model.embed(shuffle_patches(s, grid, same), "sketch")
            shuffled = model.embed(
                torch.cat([shuffle_patches(p, grid, same), shuffle_patches(p, grid, other)]), "photo"
            )
            embs["shuffled_photo"], embs["shuffled_other"] = shuffled[:b], shuffled[b:]
            embs["fine_grained"] = True
        # Under torchrun the terms stay local: the triplet term's negative is each sample's own drawn photo and the
        # text term is a cross-entropy against frozen class embeddings, both means over samples, so DDP's gradient
        # mean over equal shards is the global batch's (tests/engine/test_ddp_tasks.py). Patch shuffle draws its
        # permutations per rank, like the augmentations.
        loss, parts = self.criterion(embs)
        with torch.no_grad():
            parts["acc_sketch"] = float((self.criterion.predict(zs.detach()) == y).float().mean())
            parts["acc_photo"] = float((self.criterion.predict(photos[:b].detach()) == y).float().mean())
        return loss, parts


class FineGrainedClipPromptTask(ClipPromptTask):
    """clip-prompt on instance pairs: its own photo is the positive; patch shuffle and relative distance."""

    fine_grained = True


for _task, _policy in (("zeroshot", "unseen"), ("category", "class")):
    register_task(
        TaskSpec(
            name=_task,
            method=METHOD,
            model="clip-prompt",
            loss_kind="clip",
            default_loss="clip-prompt",
            select_metric="map@all",
            metric_keys=MAIN_KEYS,
            flip_mode="pairings",
            split_policy=_policy,
            task_class=ClipPromptTask,
            evaluate=evaluate_category,
            make_sampler=class_balanced_sampler,
        )
    )

register_task(
    TaskSpec(
        name="finegrained-zeroshot",
        method=METHOD,
        model="clip-prompt",
        loss_kind="clip",
        default_loss="clip-prompt",
        select_metric="acc@1",
        metric_keys=("acc@1", "acc@5", "acc@10"),
        flip_mode="average",
        split_policy="unseen",
        task_class=FineGrainedClipPromptTask,
        evaluate=evaluate_finegrained,
        make_sampler=class_balanced_sampler,
    )
)
