"""Averaged weights of the last epochs, and ensembles of models at evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sbir.cli import main
from sbir.engine.checkpoint import average_state_dicts, read_weights
from sbir.errors import CheckpointError

ARGS = [
    "--image-size", "64", "--batch-size", "8", "--workers", "0", "--no-progress", "--set",
    "model.pretrained=false", "model.backbone=resnet18", "model.embed_dim=16", "optim.max_steps_per_epoch=2",
]  # fmt: skip


def test_average_state_dicts_by_hand():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["n"]) == 5
    with pytest.raises(CheckpointError, match="different"):
        average_state_dicts([a, {"w": a["w"]}])


@pytest.fixture(scope="module")
def averaged_run(tiny_paired_dataset: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("avg") / "run"
    assert main(["train", "--data", str(tiny_paired_dataset), "--out", str(run), "--epochs", "3", *ARGS,
                 "optim.average_last=2"]) == 0  # fmt: skip
    return run


def test_last_epochs_are_averaged(averaged_run: Path, capsys):
    summary = json.loads((averaged_run / "summary.json").read_text())
    assert summary["averaged"]["epochs"] == [2, 3]
    kept = sorted(p.name for p in (averaged_run / "checkpoints").glob("epoch-*"))
    assert kept == ["epoch-0002", "epoch-0003"]
    two, three = (read_weights(averaged_run / "checkpoints" / k / "model.safetensors")[0] for k in kept)
    avg, meta = read_weights(averaged_run / "averaged.safetensors")
    for k, v in avg.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (two[k] + three[k]) / 2)
    assert json.loads(meta["epochs"]) == [2, 3]
    capsys.readouterr()
    assert main(["eval", str(averaged_run / "averaged.safetensors"), "--split", "val", "--json", "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["acc@1"] == pytest.approx(summary["averaged"]["val_acc@1"])


def test_ensemble_averages_the_scores(averaged_run: Path, capsys):
    from sbir.data.formats import load_dataset
    from sbir.engine.evaluate import evaluate_finegrained
    from sbir.engine.inference import load_model
    from sbir.metrics import finegrained_report_from_scores, similarity_matrix

    capsys.readouterr()
    assert main(["eval", str(averaged_run), "--json", "--no-progress"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["eval", str(averaged_run), "--ensemble", str(averaged_run), "--json", "--no-progress"]) == 0
    twice = json.loads(capsys.readouterr().out)
    assert twice["acc@1"] == single["acc@1"] and len(twice["ensemble"]) == 2  # a model with itself changes nothing

    other = averaged_run / "averaged.safetensors"
    assert main(["eval", str(averaged_run), "--ensemble", str(other), "--json", "--no-progress"]) == 0
    pair = json.loads((averaged_run / "eval-test" / "metrics.json").read_text())
    test = load_dataset(str(load_model(averaged_run)[1].data.path)).split("test")
    evs = [evaluate_finegrained(*load_model(m)[:2], test, progress=False) for m in (averaged_run, other)]
    scores = np.mean([similarity_matrix(e.query_emb, e.gallery_emb, e.distance) for e in evs], axis=0)
    want = finegrained_report_from_scores(scores, evs[0].query_keys, (1, 5, 10))
    assert pair["ranks"] == want["ranks"] and pair["acc@1"] == want["acc@1"]


def test_ensemble_of_a_category_run_is_refused(tmp_path: Path, capsys):
    from tests.engine.test_category_e2e import TRAIN_ARGS, make_category_dataset

    data = make_category_dataset(
        tmp_path / "c", ("circle", "square", "star", "bar"), n_photos=3, n_sketches=3, split="train"
    )
    make_category_dataset(tmp_path / "c", ("circle", "square", "star", "bar"), n_photos=2, n_sketches=2, split="test")
    run = tmp_path / "run"
    assert main(["train", "--task", "category", "--data", str(data), "--out", str(run), "--epochs", "1", *TRAIN_ARGS,
                 "optim.samples_per_class=2", "optim.max_steps_per_epoch=1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--ensemble", str(run), "--no-progress"]) == 2
    assert "fine-grained" in capsys.readouterr().err
