"""The category-level and zero-shot tasks (SBIR-DASE-MEMS).

Any photo of the sketch's class is a match. One shared encoder with
domain-aware squeeze-and-excitation blocks (:mod:`sbir.models.category`,
:mod:`sbir.models.dase`) embeds sketches and photos; the loss is MEMS
(default; euclidean test distance) or CosFace (angular test distance), whose
class centres / weights are shared by both domains.

``task=category`` and ``task=zeroshot`` differ only in their split policy
(:mod:`sbir.data.policies`): a class-stratified validation split, or unseen
classes removed and whole seen classes held out for validation.

Training batches are class-balanced: ``optim.batch_size // optim.samples_per_class``
classes x ``optim.samples_per_class`` sketches, each sketch with a photo of its
class drawn at random (:class:`sbir.data.pairs.CategoryPairs`). Sketches and
photos go through the encoder as one mixed batch with per-sample domain ids (so
the shared BatchNorm sees both domains, as at test time), and both domains'
embeddings enter the classification loss against the same class centres.
With ``loss.weight_distill``, a frozen copy of the ImageNet backbone scores every
training image too, and the backbone's own ImageNet classifier is trained to keep
agreeing with it (:mod:`sbir.losses.distill`).

Evaluation: :func:`sbir.engine.evaluate.evaluate_category`. Validation selects
the best epoch on ``map@all`` by default. With ``eval.hash_bits``, hash heads
are fitted on the training split's embeddings of each new best epoch
(:mod:`sbir.engine.hashcodes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sbir.config import TrainConfig
from sbir.engine.batches import SplitTask
from sbir.engine.evaluate import evaluate_category
from sbir.engine.tasks import TaskSpec, build_criterion, build_model, register_task
from sbir.errors import ConfigError, DataError

MAIN_KEYS = ("map@all", "map@200", "p@10", "p@100", "p@200")


def class_balanced_sampler(task) -> Any:
    """``batch_size // samples_per_class`` classes x ``samples_per_class`` sketches per batch."""
    from sbir.data.sampler import ClassBalancedBatchSampler

    k, b = task.cfg.optim.samples_per_class, task.cfg.optim.batch_size
    if b % k:
        raise ConfigError(
            f"optim.batch_size ({b}) must be a multiple of optim.samples_per_class ({k}): a batch holds "
            "batch_size / samples_per_class classes with samples_per_class sketches each"
        )
    p = b // k
    if p > len(task.classes):
        raise ConfigError(
            f"a batch of optim.batch_size={b} with optim.samples_per_class={k} needs {p} classes, but the "
            f"training split has {len(task.classes)}; lower optim.batch_size or raise optim.samples_per_class"
        )
    sampler = ClassBalancedBatchSampler(task.pairs.labels, p, k, seed=task.cfg.seed)
    if len(sampler) == 0:
        raise DataError(f"the training split is too small for one batch of {b} sketches; lower optim.batch_size")
    return sampler


def category_model_kwargs(cfg: TrainConfig, loss) -> dict:
    """The shared model records the class count and normalises its embeddings when the loss wants it."""
    return {"num_classes": cfg.model.num_classes, "normalize": loss.normalized}


class CategoryTask(SplitTask):
    """The :class:`sbir.engine.trainer.Task` of ``task=category`` and ``task=zeroshot``."""

    def __init__(
        self, spec: TaskSpec, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: dict | None = None
    ):
        from sbir.data.pairs import CategoryPairs

        super().__init__(spec, cfg, run_dir, progress, split_record)
        self.classes = self.training_classes()
        if split_record is not None and cfg.model.num_classes not in (None, len(self.classes)):
            raise DataError(
                f"the run was trained on {cfg.model.num_classes} classes but its data now gives {len(self.classes)}; "
                "the dataset changed since the run started. Restore it or start a new run."
            )
        cfg.model.num_classes = len(self.classes)  # recorded in config.yaml and every checkpoint
        self.model = build_model(cfg)
        self.pairs = CategoryPairs(
            self.train_split,
            self.classes,
            *self.train_transforms(),
            seed=cfg.seed,
        )
        self.sampler = spec.make_sampler(self)
        self.criterion = build_criterion(cfg, len(self.classes), self.model.embed_dim)
        self.teacher, self.distill = self._knowledge_preservation() if cfg.loss.weight_distill else (None, None)
        # model.head=ridge: the trainer calls fit_closed_form before every validation.
        self.fit_closed_form = self._fit_ridge_head if cfg.model.head == "ridge" else None

    @torch.no_grad()
    def _fit_ridge_head(self) -> None:
        """Fit the ridge head (:class:`sbir.models.heads.DomainCentredMaps`) on the training split as the encoder
        is now: each domain's mean, and the sketch map ``W`` nearest the identity (``model.ridge_lambda``) that
        takes a centred sketch to the mean of its class's centred photos, renormalised
        (:func:`sbir.models.heads.class_centre_ridge`, kept to ``model.ridge_rank`` directions). Photos are only
        centred. Sketches of a class without photos have no target and are left out. Eval transforms, no
        augmentation: the map sees what search sees."""
        from sbir.engine.embed import PooledFeatures
        from sbir.models.heads import class_centre_ridge

        split, cfg = self.train_split, self.cfg
        photo_classes = sorted({p.label for p in split.photos})
        sketches = [s for s in split.sketches if s.label in set(photo_classes)]
        if not sketches:
            raise DataError(
                f"model.head=ridge maps sketches to their class's photos, but no training sketch of {cfg.data.path} "
                "has a class with photos; add photos of the sketches' classes"
            )
        s_raw, p_raw = self.features_for_fit(PooledFeatures(self.model, normalize=False), sketches, split.photos)
        s_mean, left, right, p_mean = class_centre_ridge(
            s_raw,
            [s.label for s in sketches],
            p_raw,
            [p.label for p in split.photos],
            cfg.model.ridge_lambda,
            cfg.model.ridge_rank,
        )
        self.model.head.sketch.set_map(s_mean, left, right)
        self.model.head.photo.set_map(p_mean)  # photos: centring only

    def _knowledge_preservation(self):
        """The frozen ImageNet backbone and the distillation term of ``loss.weight_distill``."""
        from sbir.losses.distill import KnowledgePreservationLoss
        from sbir.losses.factory import set_values
        from sbir.models.registry import create_backbone

        m = self.cfg.model
        if not getattr(self.model.backbone, "has_classifier", False):
            raise ConfigError(
                f"loss.weight_distill needs a backbone that keeps its ImageNet classifier, and {m.backbone} has "
                "none; use an efficientnet_lite backbone or unset loss.weight_distill"
            )
        teacher = create_backbone(m.backbone, pretrained=m.pretrained, weights_path=m.weights_path, **m.backbone_kwargs)
        teacher.requires_grad_(False)
        teacher.eval()  # its BatchNorm keeps the ImageNet statistics
        loss = KnowledgePreservationLoss(**set_values(self.cfg.loss, "distill_temperature", prefix="distill_"))
        return teacher.to(memory_format=torch.channels_last), loss

    def compute_loss(self, batch: dict, device: torch.device):
        s = batch["sketch"].to(device, non_blocking=True)
        p = batch["photo"].to(device, non_blocking=True)
        b = s.shape[0]
        x = torch.cat([s, p]).contiguous(memory_format=torch.channels_last)
        domain = torch.cat([torch.zeros(b, dtype=torch.long), torch.ones(b, dtype=torch.long)]).to(device)
        y = batch["label"].to(device)
        labels = torch.cat([y, y])
        feats = self.model.features(x, domain)
        z = self.model.project(feats, domain).float()
        # Under torchrun the loss stays local: MEMS and CosFace are means over samples of a cross-entropy against
        # shared class centres, with no statistic over the batch, so DDP's mean of the equal-sized ranks'
        # gradients is the global batch's gradient (tested against one process in tests/engine/test_ddp_tasks.py).
        # Their margin counter advances once per forward on every rank alike (and DDP broadcasts rank 0's buffers).
        loss = self.criterion(z, labels)
        with torch.no_grad():
            correct = (self.criterion.predict(z.detach()) == labels).float()
        parts = {
            "acc_sketch": float(correct[:b].mean()),
            "acc_photo": float(correct[b:].mean()),
            "margin": float(self.criterion.current_margin()),
        }
        if self.distill is not None:
            with torch.no_grad():
                target = self.teacher.to(device).classify(self.teacher(x)).float()
            kd = self.distill(self.model.imagenet_logits(feats).float(), target)
            parts["distill"] = float(kd.detach())
            loss = loss + float(self.cfg.loss.weight_distill) * kd
        return loss, parts

    def on_best(self, run_dir: Path) -> None:
        if self.cfg.eval.hash_bits:
            self._train_hash_codes(Path(run_dir))

    def _train_hash_codes(self, run_dir: Path) -> None:
        """Fit the hash heads on the training split's embeddings of the new best weights; save them."""
        from sbir.engine.checkpoint import file_digest
        from sbir.engine.hashcodes import hash_file_name, save_hash_head, train_hash_heads

        digest = file_digest(run_dir / "best.safetensors")
        heads = train_hash_heads(
            self.model,
            self.train_split,
            self.cfg.eval.hash_bits,
            self.cfg.data.image_size,
            batch_size=self.cfg.eval.batch_size,
            num_workers=self.cfg.data.num_workers,
            seed=self.cfg.seed,
            progress=self.progress,
        )
        for bits, head in heads.items():
            save_hash_head(head, run_dir / hash_file_name(bits), digest, {"trained_on": "train split"})


for _name, _policy in (("category", "class"), ("zeroshot", "unseen")):
    register_task(
        TaskSpec(
            name=_name,
            model="category",
            loss_kind="classes",
            default_loss="mems",
            select_metric="map@all",
            metric_keys=MAIN_KEYS,
            flip_mode="pairings",
            split_policy=_policy,
            task_class=CategoryTask,
            evaluate=evaluate_category,
            make_sampler=class_balanced_sampler,
            model_kwargs=category_model_kwargs,
            hash_codes=True,
            ridge_head=True,
        )
    )
