"""Training batches drawn with a batch sampler over a map-style dataset, and the tasks' shared set-up."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sbir.data.policies import prepare_splits
from sbir.data.transforms import train_transform
from sbir.errors import DataError


class SampledBatchesMixin:
    """``steps_per_epoch`` / ``train_batches`` of the :class:`sbir.engine.trainer.Task` protocol.

    The task sets ``self.cfg``, ``self.pairs`` (a dataset; ``set_epoch(epoch)`` is called when it has one,
    so per-epoch random choices are reproducible on resume) and ``self.sampler`` (a batch sampler with
    ``set_epoch``). ``optim.max_steps_per_epoch`` caps an epoch.
    """

    def steps_per_epoch(self) -> int:
        n = len(self.sampler)
        cap = self.cfg.optim.max_steps_per_epoch
        return min(n, cap) if cap else n

    def train_batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        if hasattr(self.pairs, "set_epoch"):
            self.pairs.set_epoch(epoch)
        loader = DataLoader(
            self.pairs,
            batch_sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            persistent_workers=False,
        )
        steps = self.steps_per_epoch()
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            yield batch


class SplitTask(SampledBatchesMixin):
    """Shared set-up of the registered tasks: the spec, the config, the splits of the task's split policy,
    and validation through the spec's evaluation. Subclasses add the model, pairs, sampler and loss."""

    def __init__(self, spec, cfg, run_dir: Path, progress: bool = True, split_record: dict | None = None):
        self.spec = spec
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dataset, self.train_split, self.val_split = prepare_splits(
            cfg, self.run_dir, split_record, progress, spec.split_policy
        )
        self.last_evaluation = None

    def train_transforms(self) -> tuple:
        """The training augmentation of sketches and of photos, normalised for ``self.model``."""
        size, aug = self.cfg.data.image_size, self.cfg.augment
        mean, std = self.model.mean, self.model.std
        return train_transform(size, mean, std, aug, "sketch"), train_transform(size, mean, std, aug, "photo")

    def training_classes(self) -> list[str]:
        """The sorted classes of the training sketches; DataError when there are fewer than 2."""
        classes = sorted({s.label for s in self.train_split.sketches})
        if len(classes) < 2:
            raise DataError(
                f"the training split of {self.cfg.data.path} has sketches of {len(classes)} class(es); "
                f"task {self.spec.name!r} trains on classes and needs at least 2"
            )
        return classes

    def features_for_fit(self, features, sketches: list, photos: list) -> tuple:
        """``(sketch, photo)`` float64 tensors of ``features.embed`` (a head's inputs) over the given training
        records, embedded in eval mode with eval transforms: what a closed-form head (``model.head=ridge``)
        is fitted on, so the map sees what search sees."""
        from sbir.engine.embed import embed_images

        was_training = self.model.training
        self.model.eval()
        kw = dict(image_size=self.cfg.data.image_size, batch_size=self.cfg.eval.batch_size, progress=self.progress)
        try:
            out = tuple(
                torch.from_numpy(
                    embed_images(features, [r.image for r in recs], dom, desc=f"ridge head: {label}", **kw).embeddings
                ).double()
                for dom, label, recs in (("sketch", "sketches", sketches), ("photo", "photos", photos))
            )
        finally:
            self.model.train(was_training)
        return out

    def evaluate(self):
        """The validation split's :class:`~sbir.engine.evaluate.Evaluation` (metrics beside the embeddings)."""
        # eval.hubness: the training sketches are the statistics set (never the validation queries).
        stats = (
            {"stat_sketches": [s.image for s in self.train_split.sketches]} if self.cfg.eval.hubness != "none" else {}
        )
        self.last_evaluation = self.spec.evaluate(
            self.model, self.cfg, self.val_split, flip_tta=self.cfg.eval.flip_tta, progress=self.progress, **stats
        )
        return self.last_evaluation

    def on_best(self, run_dir: Path) -> None:
        """Called after a new best.safetensors is written (the trainer draws the validation grid)."""
