"""Sketch-domain pretraining (``sbir train --task pretrain``), the way Sketch-a-Net was pretrained.

Before the fine-grained stage, one encoder (the fine-grained model's backbone,
ImageNet-initialised) learns what sketches and photo edge maps look like by
classifying them: a linear classifier over the union of the sketch classes,
softmax cross-entropy (:mod:`sbir.losses.classify`). Fine-grained runs start
from it with ``model.init_from=RUN`` (:mod:`sbir.engine.init_from`), which loads
the encoder into both branches and leaves the classifier behind. It is a
one-time cost shared by every category of a fine-grained benchmark.

Data (``data.path``): one folder holding the training sources, either the
folder itself or its immediate sub-folders (so ``--data ../shared/data`` finds
``quickdraw_mini`` and ``sketchy_mini`` and ignores folders of other layouts):

* Quick, Draw! ``<class>.ndjson`` folders: strokes rasterised at ``data.image_size``;
* Sketchy-style (``photo/`` + ``sketch/``) or category-style (``photos/`` +
  ``sketches/``) folders: their sketches, and their photos as HED edge maps
  (:func:`sbir.data.edges.hed_edge_maps`, black lines on white like QMUL-V1's
  gallery; computed once at ``data.image_size`` and cached).

Classes with the same normalised name (case, ``_``/``-``/space) are one class
across sources. The validation split is ``data.val_fraction`` of every (class,
domain) group, seeded by ``data.split_seed`` and recorded in ``split.json``.
Validation reports top-1 / top-5 accuracy in percent (``acc@1``, ``acc@5``; the
best epoch is chosen on ``acc@1``), overall and per domain (``acc@1_sketch``,
``acc@1_edge``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset
from torch.utils.data import Dataset as TorchDataset

from sbir.config import TrainConfig
from sbir.data.records import FileRef
from sbir.engine import distributed
from sbir.engine.batches import SampledBatchesMixin
from sbir.engine.evaluate import Evaluation
from sbir.engine.tasks import TaskSpec, build_criterion, build_model, register_task
from sbir.errors import ConfigError, DataError
from sbir.fileio import atomic_write_text

MAIN_KEYS = ("acc@1", "acc@5")
DOMAINS = ("sketch", "edge")  # item domains: a drawn sketch, or a photo's HED edge map
SPLIT_KIND = "pretrain"


@dataclass(frozen=True)
class PretrainItem:
    """One training image: ``image.load()`` gives it, ``label`` indexes the class list, ``domain`` DOMAINS."""

    id: str  # "<source>/<domain>/<record id>", unique over all sources
    image: Any  # FileRef / StrokeRef: anything with load() -> PIL image
    label: int
    domain: int


@dataclass(frozen=True)
class Source:
    name: str  # folder name
    path: Path
    kind: str  # "quickdraw" | "sketchy" | "category"


def discover_sources(root: str | Path) -> list[Source]:
    """The pretraining sources in ``root``: the folder itself when it is one, else its sub-folders that are."""
    from sbir.data.formats import category, check_root, list_subdirs, quickdraw, sketchy

    root = check_root(root)

    def kind(d: Path) -> str | None:
        if sketchy.detect(d):
            return "sketchy"
        if category.detect(d):
            return "category"
        if quickdraw.detect(d):
            return "quickdraw"
        return None

    if kind(root) is not None:
        return [Source(root.name, root, kind(root))]  # type: ignore[arg-type]
    found = [Source(d.name, d, k) for d in list_subdirs(root) if (k := kind(d)) is not None]
    if not found:
        raise DataError(
            f"data.path {root} holds no pretraining data: expected Quick, Draw! <class>.ndjson files and/or "
            "Sketchy-style (photo/ + sketch/) or category-style (photos/ + sketches/) folders, in it or in its "
            "sub-folders"
        )
    return found


def load_items(
    sources: list[Source], image_size: int, progress: bool = True
) -> tuple[list[str], list[PretrainItem], dict[str, dict[str, int]]]:
    """``(classes, items, counts)``: the sorted normalised class names, every item, and per-source counts."""
    from sbir.data.edges import hed_edge_maps
    from sbir.data.formats import get_format
    from sbir.data.formats.quickdraw import load_quickdraw
    from sbir.data.zeroshot import normalize_class_name

    raw: list[tuple[str, Any, str, int]] = []  # (id, image, class name, domain)
    counts: dict[str, dict[str, int]] = {}
    for src in sources:
        if src.kind == "quickdraw":
            # Rasterised at the training size, strokes as wide as Quick, Draw!'s 3 px in its 256 px box.
            recs = load_quickdraw(src.path, size=image_size, stroke_width=max(1.0, 3.0 * image_size / 256))
            sketches = [(r.id, r.image, r.label) for r in recs]
            photos: list = []
        else:
            ds = get_format(src.kind).load(src.path)
            sketches = [(r.id, r.image, r.label) for s in ds.splits.values() for r in s.sketches]
            photos = [p for s in ds.splits.values() for p in s.photos]
        unlabelled = [i for i, _, label in sketches if label is None] + [p.id for p in photos if p.label is None]
        if unlabelled:
            raise DataError(f"{src.path}: {len(unlabelled)} images have no class (e.g. {unlabelled[0]})")
        not_files = [p.id for p in photos if not isinstance(p.image, FileRef)]
        if not_files:
            raise DataError(f"{src.path}: photo {not_files[0]} is not an image file; HED edge maps need photo files")
        raw.extend((f"{src.name}/sketch/{i}", im, label, 0) for i, im, label in sketches)
        if photos:
            edges = hed_edge_maps([p.image.path for p in photos], image_size, progress=progress)
            raw.extend((f"{src.name}/edge/{p.id}", FileRef(e), p.label, 1) for p, e in zip(photos, edges, strict=True))
        counts[src.name] = {"kind": src.kind, "sketch": len(sketches), "edge": len(photos)}  # type: ignore[dict-item]
    classes = sorted({normalize_class_name(c) for _, _, c, _ in raw})
    index = {c: i for i, c in enumerate(classes)}
    items = [PretrainItem(i, im, index[normalize_class_name(c)], d) for i, im, c, d in raw]
    items.sort(key=lambda it: it.id)
    return classes, items, counts


def carve_validation(items: list[PretrainItem], fraction: float, seed: int) -> set[str]:
    """Ids of ``fraction`` of every (class, domain) group (rounded; at least 1 of a group of 2+), seeded."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for it in items:
        groups[(it.label, it.domain)].append(it.id)
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for key in sorted(groups):
        ids = sorted(groups[key])
        n = int(round(fraction * len(ids)))
        if fraction > 0 and len(ids) >= 2:
            n = min(max(n, 1), len(ids) - 1)
        val.update(ids[i] for i in rng.permutation(len(ids))[:n])
    return val


class ShuffledBatchSampler(Sampler[list[int]]):
    """Full batches of a fresh permutation every epoch (seeded by seed and epoch, so resumes replay it)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        super().__init__()
        self.n, self.batch_size, self.seed, self.epoch = int(n), int(batch_size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for b in range(len(self)):
            yield perm[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def shuffled_sampler(task) -> ShuffledBatchSampler:
    b = task.cfg.optim.batch_size
    if len(task.train_items) < b:
        raise DataError(
            f"the pretraining split has {len(task.train_items)} images, fewer than one batch of "
            f"optim.batch_size={b}; lower optim.batch_size"
        )
    return ShuffledBatchSampler(len(task.train_items), b, seed=task.cfg.seed)


class ItemDataset(TorchDataset):
    """``{"image", "label", "domain"}`` of each item through ``transform``."""

    def __init__(self, items: list[PretrainItem], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        return {"image": self.transform(it.image.load()), "label": it.label, "domain": it.domain}


def pretrain_model_kwargs(cfg: TrainConfig, loss) -> dict:
    return {"num_classes": cfg.model.num_classes}


def no_retrieval_evaluation(*args, **kwargs):
    """``sbir eval`` of a pretraining run: there is no retrieval to evaluate."""
    raise ConfigError(
        "a pretrain run classifies sketches and has no retrieval evaluation: its validation accuracy is in "
        "RUN/metrics.csv; start a fine-grained run from it with model.init_from=RUN"
    )


class PretrainTask(SampledBatchesMixin):
    """The :class:`sbir.engine.trainer.Task` of ``task=pretrain``."""

    def __init__(
        self, spec: TaskSpec, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: dict | None = None
    ):
        from sbir.data.transforms import eval_transform, train_transform

        if not cfg.data.path:
            raise ConfigError(
                "task pretrain needs data.path (--data): a folder of sketch datasets, e.g. ../shared/data"
            )
        if cfg.data.val_fraction <= 0:
            raise ConfigError("task pretrain needs data.val_fraction > 0: the best epoch is chosen on held-out images")
        self.spec, self.cfg, self.run_dir, self.progress = spec, cfg, Path(run_dir), progress
        self.last_evaluation = None
        self.sources = discover_sources(cfg.data.path)
        classes, items, counts = load_items(self.sources, cfg.data.image_size, progress)
        if len(classes) < 2:
            raise DataError(f"{cfg.data.path} holds images of {len(classes)} class(es); classification needs 2+")
        if split_record is None:
            val_ids = carve_validation(items, cfg.data.val_fraction, cfg.data.split_seed)
            record = {
                "by": SPLIT_KIND,
                "data": str(cfg.data.path),
                "val_fraction": cfg.data.val_fraction,
                "split_seed": cfg.data.split_seed,
                "sources": counts,
                "classes": classes,
                "val_ids": sorted(val_ids),
            }
            atomic_write_text(self.run_dir / "split.json", json.dumps(record, indent=1))
            if progress:
                desc = ", ".join(
                    f"{n} ({c['kind']}: {c['sketch']} sketches, {c['edge']} edge maps)" for n, c in counts.items()
                )
                print(f"pretraining on {len(classes)} classes from {desc}", file=sys.stderr)
        else:
            if split_record.get("by") != SPLIT_KIND or split_record.get("classes") != classes:
                raise DataError(
                    f"{self.run_dir / 'split.json'} does not describe the pretraining data now in {cfg.data.path} "
                    "(other classes); the dataset changed since the run started. Restore it or start a new run."
                )
            val_ids = set(split_record["val_ids"])
        if cfg.model.num_classes not in (None, len(classes)):
            raise DataError(
                f"the run was trained on {cfg.model.num_classes} classes but its data now gives {len(classes)}; "
                "restore the dataset or start a new run"
            )
        cfg.model.num_classes = len(classes)  # recorded in config.yaml and every checkpoint
        self.classes = classes
        self.train_items = [it for it in items if it.id not in val_ids]
        self.val_items = [it for it in items if it.id in val_ids]
        self.model = build_model(cfg)
        self.criterion = build_criterion(cfg)
        mean, std = self.model.mean, self.model.std
        # Edge maps are line drawings like the sketches: the same (colourless) augmentation for both.
        self.pairs = ItemDataset(
            self.train_items, train_transform(cfg.data.image_size, mean, std, cfg.augment, "sketch")
        )
        self.val_dataset = ItemDataset(self.val_items, eval_transform(cfg.data.image_size, mean, std))
        self.sampler = spec.make_sampler(self)

    def compute_loss(self, batch: dict, device: torch.device):
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = batch["label"].to(device)
        logits = self.model(x)
        # A mean over samples: under torchrun DDP's gradient mean over equal shards is the global batch's
        # (tests/engine/test_ddp_tasks.py); rank 0 alone carves the split and computes edge maps.
        loss = self.criterion(logits, y)
        with torch.no_grad():
            correct = (self.criterion.predict(logits.detach()) == y).float()
        return loss, {"acc": float(100.0 * correct.mean())}

    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Top-1 / top-5 accuracy (percent) of the validation items, overall and per domain.

        Inside :func:`sbir.engine.distributed.sharded_evaluation` under torchrun each rank classifies its
        contiguous slice and the predictions are gathered in order, so every rank gets one process's metrics.
        """
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        data: TorchDataset = self.val_dataset
        shard = distributed.eval_shard(len(data))
        if shard is not None:
            data = Subset(data, range(*shard))
        loader = DataLoader(data, batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.data.num_workers)
        top5, labels, domains = [], [], []
        for batch in loader:
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            logits = self.model(x).float()
            top5.append(logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu())
            labels.append(batch["label"])
            domains.append(batch["domain"])
        self.model.train(was_training)
        part = (torch.cat(top5), torch.cat(labels), torch.cat(domains)) if top5 else None
        if shard is not None:  # rank order is item order; a rank with no items sends None
            parts = [q for q in distributed.all_gather_object(part) if q is not None]
        else:
            parts = [part] if part is not None else []
        if not parts:
            raise DataError("pretrain: the validation split is empty")
        top, y, dom = (torch.cat(cols) for cols in zip(*parts, strict=True))
        hit1 = (top[:, 0] == y).float()
        hit5 = (top == y[:, None]).any(1).float()
        metrics: dict[str, Any] = {
            "acc@1": float(100.0 * hit1.mean()),
            "acc@5": float(100.0 * hit5.mean()),
            "n_val": int(y.numel()),
            "n_classes": len(self.classes),
        }
        for d, name in enumerate(DOMAINS):
            mask = dom == d
            if mask.any():
                metrics[f"acc@1_{name}"] = float(100.0 * hit1[mask].mean())
        empty = np.zeros((0, 1), dtype=np.float32)
        self.last_evaluation = Evaluation(
            metrics=metrics,
            queries=[],
            gallery=[],
            query_emb=empty,
            gallery_emb=empty,
            query_keys=np.zeros(0),
            gallery_keys=np.zeros(0),
            distance="cosine",
        )
        return self.last_evaluation

    def on_best(self, run_dir: Path) -> None:
        """Nothing beyond best.safetensors: the classifier's class names are in split.json."""


register_task(
    TaskSpec(
        name="pretrain",
        model="sketch_classifier",
        loss_kind="logits",
        default_loss="cross_entropy",
        select_metric="acc@1",
        metric_keys=MAIN_KEYS,
        flip_mode="average",
        split_policy="class",
        task_class=PretrainTask,
        evaluate=no_retrieval_evaluation,
        make_sampler=shuffled_sampler,
        model_kwargs=pretrain_model_kwargs,
    )
)
