"""`sbir cv`: one run per fold, held-out folds disjoint by photo, each tested once, mean and std reported."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from sbir.cli import main

ARGS = [
    "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress",
    "--set", "model.pretrained=false", "model.backbone=resnet18", "model.embed_dim=16", "optim.max_steps_per_epoch=2",
]  # fmt: skip


def test_cv_trains_and_tests_each_fold_once(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(tiny_paired_dataset), "--folds", "3", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "cv.json").read_text())
    assert report["folds"] == 3 and [r["fold"] for r in report["per_fold"]] == [0, 1, 2]

    held, selection = [], []
    for fold in range(3):
        split = json.loads((out / f"fold-{fold}" / "split.json").read_text())
        held.append(set(split["cv"]["heldout_photo_ids"]))
        selection.append(set(split["val_photo_ids"]))
        assert not held[-1] & selection[-1]  # the tested fold never chose the epoch
        metrics = json.loads((out / f"fold-{fold}" / "eval-test" / "metrics.json").read_text())
        assert metrics["n_gallery"] == len(held[-1]) == len(split["cv"]["heldout_photo_ids"])
        assert metrics["acc@1"] == pytest.approx(report["per_fold"][fold]["acc@1"])
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    assert len(set().union(*held)) == 24  # every training photo (24, all with sketches) tested once

    values = [r["acc@1"] for r in report["per_fold"]]
    assert report["acc@1_mean"] == pytest.approx(statistics.mean(values))
    assert report["acc@1_std"] == pytest.approx(statistics.stdev(values))
    assert "acc@1" in printed and "+-" in printed

    # Rerunning reads the finished folds back instead of training again.
    before = (out / "fold-1" / "metrics.csv").read_text()
    assert main(["cv", "--data", str(tiny_paired_dataset), "--folds", "3", "--out", str(out), *ARGS]) == 0
    assert (out / "fold-1" / "metrics.csv").read_text() == before
    assert json.loads((out / "cv.json").read_text())["per_fold"] == report["per_fold"]


def test_cv_refuses_a_category_task(tmp_path: Path, capsys):
    from tests.engine.test_category_e2e import make_category_dataset

    data = make_category_dataset(tmp_path / "cat", ("circle", "square", "star"), n_photos=3, n_sketches=3)
    assert main(["cv", "--task", "category", "--data", str(data), "--folds", "2", "--out", str(tmp_path / "o"),
                 *ARGS]) == 2  # fmt: skip
    assert "splits by photo" in capsys.readouterr().err
