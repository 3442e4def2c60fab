"""Training batches for tasks that draw them with a batch sampler over a map-style dataset."""

from __future__ import annotations

from torch.utils.data import DataLoader


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
