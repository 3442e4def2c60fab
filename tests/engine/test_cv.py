"""`sbir cv`: one run per fold, held-out folds disjoint by photo, each tested once, mean and std reported."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from sbir.cli import main
from sbir.config import load_config
from tests.engine.test_category_e2e import SHAPES, make_category_dataset

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
        assert report["per_fold"][fold]["n_gallery"] == len(held[-1])
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

    # Another recipe into the same folder is refused: reading the folds back would report the old recipe's numbers.
    other = [*ARGS, "optim.lr=0.5"]
    assert main(["cv", "--data", str(tiny_paired_dataset), "--folds", "3", "--out", str(out), *other]) == 2
    err = capsys.readouterr().err
    assert "holds a fold of another configuration" in err and "optim.lr" in err
    assert json.loads((out / "cv.json").read_text())["per_fold"] == report["per_fold"]  # nothing lost


def test_cv_refuses_a_category_task(tmp_path: Path, capsys):
    data = make_category_dataset(tmp_path / "cat", ("circle", "square", "star"), n_photos=3, n_sketches=3)
    assert main(["cv", "--task", "category", "--data", str(data), "--folds", "2", "--out", str(tmp_path / "o"),
                 *ARGS]) == 2  # fmt: skip
    assert "use --task zeroshot to cross-validate by class" in capsys.readouterr().err


# Batches of 2 classes x 2 sketches: each fold trains on 2 of its 4 seen classes and selects on the other 2.
ZEROSHOT_ARGS = [a if a != "8" else "4" for a in ARGS] + [
    "optim.samples_per_class=2",
    "data.val_fraction=0.5",
    "loss.name=cosface",
]
assert ZEROSHOT_ARGS[ARGS.index("--batch-size") + 1] == "4"


def test_zeroshot_cv_holds_out_each_class_once(tmp_path: Path, capsys):
    data = make_category_dataset(tmp_path / "cat", SHAPES, n_photos=3, n_sketches=3)
    out = tmp_path / "cv"
    argv = ["cv", "--task", "zeroshot", "--data", str(data), "--folds", "3", "--out", str(out)]
    assert main([*argv, *ZEROSHOT_ARGS]) == 0
    report = json.loads((out / "cv.json").read_text())
    held = []
    for fold in range(3):
        run = out / f"fold-{fold}"
        split = json.loads((run / "split.json").read_text())
        held.append(set(split["cv"]["heldout_classes"]))
        assert set(split["unseen_classes"]) == held[-1] and len(held[-1]) == 2
        # neither training nor model selection saw the fold's classes
        assert not held[-1] & set(split["train_classes"]) and not held[-1] & set(split["val_classes"])
        recorded = load_config(run / "config.yaml").data.unseen  # resume and sbir eval replay it
        assert {c for c in recorded.split(",") if c} == held[-1]
        metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
        assert metrics["n_queries"] == metrics["n_gallery"] == 6  # the 2 unseen classes' 3 sketches and 3 photos
        assert metrics["map@all"] == pytest.approx(report["per_fold"][fold]["map@all"])
        assert "p@10" in report["per_fold"][fold]
    assert set().union(*held) == set(SHAPES) and sum(map(len, held)) == len(SHAPES)
    values = [r["map@all"] for r in report["per_fold"]]
    assert report["map@all_mean"] == pytest.approx(statistics.mean(values))
    assert report["map@all_std"] == pytest.approx(statistics.stdev(values))

    # Rerunning reads the folds back (their recorded unseen classes are no clash with the folds).
    assert main([*argv, *ZEROSHOT_ARGS]) == 0
    assert json.loads((out / "cv.json").read_text())["per_fold"] == report["per_fold"]

    capsys.readouterr()
    clash = ["cv", "--task", "zeroshot", "--data", str(data), "--folds", "3", "--out", str(tmp_path / "o"),
             *ZEROSHOT_ARGS, "data.unseen=circle,square"]  # fmt: skip
    assert main(clash) == 2
    assert "unset data.unseen" in capsys.readouterr().err


def test_epochs_zero_keeps_the_imagenet_grid_features_and_cross_validates(tiny_paired_dataset: Path, tmp_path: Path):
    # optim.epochs=0 (the fine-grained recipe): no step is taken; best.safetensors holds the starting weights.
    from safetensors.torch import load_file

    from sbir.models import create_backbone

    grid = [
        "--image-size", "64", "--batch-size", "8", "--workers", "0", "--no-progress", "--epochs", "0",
        "--set", "model.shared_encoder=true", "model.feature_level=3", "model.pool_grid=2", "model.head=identity",
    ]  # fmt: skip
    out = tmp_path / "cv0"
    assert main(["cv", "--data", str(tiny_paired_dataset), "--folds", "2", "--out", str(out), *grid]) == 0
    summary = json.loads((out / "fold-0" / "summary.json").read_text())
    assert summary["best_epoch"] == 0 and [h["epoch"] for h in summary["history"]] == [0]
    assert "val_acc@1" in summary["history"][0]
    saved = load_file(str(out / "fold-0" / "best.safetensors"))
    imagenet = create_backbone("efficientnet_lite0", pretrained=True).state_dict()
    key = "blocks.4.2.conv_pwl.weight"  # the last layer the grid features keep
    assert (saved[f"sketch_encoder.backbone.model.{key}"].float() == imagenet[f"model.{key}"]).all()
    assert not any(".conv_head." in k or ".blocks.5." in k for k in saved)  # pruned layers are not saved
    report = json.loads((out / "cv.json").read_text())
    assert [r["best_epoch"] for r in report["per_fold"]] == [0, 0]


def test_epochs_zero_refuses_averaging(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    args = ["train", "--data", str(tiny_paired_dataset), "--out", str(tmp_path / "r"), *ARGS, "optim.epochs=0",
            "optim.average_last=2"]  # fmt: skip
    assert main(args) == 2
    assert "optim.epochs=0 trains nothing" in capsys.readouterr().err


def test_cv_tests_the_averaged_weights_of_each_fold_too(tiny_paired_dataset: Path, tmp_path: Path):
    # optim.average_last: the averaged weights face the held-out fold as well, so the option can be cross-validated.
    out = tmp_path / "cv"
    args = [a if a != "1" else "2" for a in ARGS] + ["optim.average_last=2"]
    assert args[args.index("--epochs") + 1] == "2"
    assert main(["cv", "--data", str(tiny_paired_dataset), "--folds", "2", "--out", str(out), *args]) == 0
    report = json.loads((out / "cv.json").read_text())
    for fold, row in enumerate(report["per_fold"]):
        best = json.loads((out / f"fold-{fold}" / "eval-test" / "metrics.json").read_text())
        averaged = json.loads((out / f"fold-{fold}" / "eval-test-averaged" / "metrics.json").read_text())
        assert averaged["model_id"] != best["model_id"]  # another set of weights was tested
        assert averaged["n_gallery"] == best["n_gallery"] == row["n_gallery"]  # on the same held-out fold
        for k in ("acc@1", "acc@5", "acc@10"):
            assert row[f"averaged_{k}"] == pytest.approx(averaged[k])
            assert row[k] == pytest.approx(best[k])
    values = [r["averaged_acc@1"] for r in report["per_fold"]]
    assert report["averaged_acc@1_mean"] == pytest.approx(statistics.mean(values))
    assert report["averaged_acc@1_std"] == pytest.approx(statistics.stdev(values))
