"""optim.epochs_from_budget: the schedule is fitted to the time budget after the first epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sbir.config import load_config
from sbir.engine import trainer as trainer_mod
from sbir.errors import ConfigError


def _train(data: Path, run: Path, monkeypatch, epoch_seconds: float, extra=()):
    clock = [1000.0]
    monkeypatch.setattr(trainer_mod, "time", SimpleNamespace(time=lambda: clock[0]))
    real_epoch = trainer_mod.Trainer.train_epoch

    def timed_epoch(self, epoch):
        clock[0] += epoch_seconds  # every epoch "takes" epoch_seconds
        return real_epoch(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", timed_epoch)
    cfg = load_config(
        None,
        [
            f"data.path={data}", "data.image_size=64", "data.num_workers=0", "optim.batch_size=8", "optim.epochs=40",
            "optim.max_steps_per_epoch=1", "optim.lr=0.001", "optim.warmup_epochs=0", "model.pretrained=false",
            "model.backbone=resnet18", "model.embed_dim=8", "optim.time_budget_minutes=0.5", *extra,
        ],
    )  # fmt: skip
    return trainer_mod.Trainer(cfg, run, progress=False).fit()


def test_schedule_fits_the_budget(tiny_paired_dataset: Path, tmp_path: Path, monkeypatch):
    summary = _train(tiny_paired_dataset, tmp_path / "fit", monkeypatch, 10.0, ["optim.epochs_from_budget=true"])
    # 30 s budget, 10 s epochs, 3% slack: 2 epochs planned and run, and the cosine reaches its floor at the end.
    assert summary["planned_epochs"] == 2 and summary["epochs_run"] == 2 and not summary["stopped_by_time_budget"]
    with open(tmp_path / "fit" / "metrics.csv") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert lrs[-1] == pytest.approx(0.001 * 0.01)
    state = json.loads((tmp_path / "fit" / "last.json").read_text())
    assert state["epoch"] == 2

    # Without it, the 40-epoch cosine is cut off by the budget while the learning rate is still high.
    cut = _train(tiny_paired_dataset, tmp_path / "cut", monkeypatch, 10.0)
    assert cut["stopped_by_time_budget"] and cut["epochs_run"] == 3
    with open(tmp_path / "cut" / "metrics.csv") as fh:
        assert float(list(csv.DictReader(fh))[-1]["lr"]) > 0.0009


def test_epochs_from_budget_needs_a_budget():
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        load_config(None, ["optim.epochs_from_budget=true"])


def test_schedule_is_replanned_when_epochs_slow_down(tiny_paired_dataset: Path, tmp_path: Path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(trainer_mod, "time", SimpleNamespace(time=lambda: clock[0]))
    real_epoch = trainer_mod.Trainer.train_epoch
    durations = iter([5.0, 10.0, 10.0, 10.0, 10.0])

    def slowing_epoch(self, epoch):
        clock[0] += next(durations)  # a fast first epoch, then twice as slow (another job took a core)
        return real_epoch(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", slowing_epoch)
    cfg = load_config(
        None,
        [
            f"data.path={tiny_paired_dataset}", "data.image_size=64", "data.num_workers=0", "optim.batch_size=8",
            "optim.epochs=40", "optim.max_steps_per_epoch=1", "optim.lr=0.001", "optim.warmup_epochs=0",
            "model.pretrained=false", "model.backbone=resnet18", "model.embed_dim=8", "optim.time_budget_minutes=0.5",
            "optim.epochs_from_budget=true",
        ],
    )  # fmt: skip
    summary = trainer_mod.Trainer(cfg, tmp_path / "run", progress=False).fit()
    # Planned from the first epoch alone, 5 epochs (29.1 s / 5 s) would have run 45 s and been cut off by the
    # 30 s budget with the learning rate still high. Re-planned after epoch 2 (mean 7.5 s), 3 epochs end at
    # 25 s, inside the budget, with the cosine at its floor.
    assert summary["planned_epochs"] == 3 and summary["epochs_run"] == 3 and not summary["stopped_by_time_budget"]
    with open(tmp_path / "run" / "metrics.csv") as fh:
        assert float(list(csv.DictReader(fh))[-1]["lr"]) == pytest.approx(0.001 * 0.01)
