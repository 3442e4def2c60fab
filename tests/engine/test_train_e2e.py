"""End to end: generate data, train 2 epochs, evaluate, kill -9 and resume to the same result."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from sbir.cli import main

TRAIN_ARGS = [
    "--image-size", "64", "--batch-size", "8", "--workers", "0", "--no-progress", "--seed", "3",
    "--set", "model.embed_dim=64", "optim.warmup_epochs=0.5",
]


def _train(data: Path, out: Path, epochs: int) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *TRAIN_ARGS])


def test_train_eval_outputs(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_paired_dataset, run, 2) == 0
    for name in ("config.yaml", "split.json", "metrics.csv", "acc.png", "best.safetensors", "last.json", "summary.json"):
        assert (run / name).is_file(), name
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 3
    split = json.loads((run / "split.json").read_text())
    assert split["val_photo_ids"] and split["seed"] == 0
    assert (run / "val_retrieval.png").is_file()

    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--no-progress"]) == 0
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    for key in ("acc@1", "acc@5", "acc@10", "n_queries", "n_gallery", "ranks"):
        assert key in metrics
    assert metrics["n_queries"] == 16 and metrics["n_gallery"] == 8
    assert len(metrics["ranks"]) == 16 and all(1 <= r <= 8 for r in metrics["ranks"])
    assert metrics["acc@1"] <= metrics["acc@5"] <= metrics["acc@10"] == 100.0
    ranks = np.array(metrics["ranks"])
    assert metrics["acc@1"] == pytest.approx(100.0 * np.mean(ranks <= 1))
    assert (run / "eval-test" / "retrieval.png").is_file()

    # Validation split evaluation reproduces the recorded split: no photo of val is in train.
    assert main(["eval", str(run), "--split", "val", "--no-progress"]) == 0
    val = json.loads((run / "eval-val" / "metrics.json").read_text())
    assert val["n_gallery"] == len(split["val_photo_ids"])


def test_resume_after_kill_matches_uninterrupted(tiny_paired_dataset: Path, tmp_path: Path):
    epochs = 3
    ref = tmp_path / "ref"
    assert _train(tiny_paired_dataset, ref, epochs) == 0

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sbir.cli", "train", "--data", str(tiny_paired_dataset), "--out", str(run),
           "--epochs", str(epochs), *TRAIN_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        # Kill -9 as soon as the first epoch's checkpoint is complete, i.e. mid-way through epoch 2.
        while time.time() < deadline:
            if (run / "last.json").is_file() and json.loads((run / "last.json").read_text())["epoch"] >= 1:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((run / "last.json").read_text())
    assert state["epoch"] < epochs, "the run finished before it could be killed"

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a = load_file(str(ref / f"checkpoints/epoch-{epochs:04d}/model.safetensors"))
    b = load_file(str(run / f"checkpoints/epoch-{epochs:04d}/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert (ref / "metrics.csv").read_text().count("\n") == (run / "metrics.csv").read_text().count("\n")


def test_fresh_train_refuses_existing_run(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "last.json").write_text('{"checkpoint": "checkpoints/epoch-0001", "epoch": 1}')
    assert _train(tiny_paired_dataset, run, 1) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_of_foreign_folder_is_clear_error(tmp_path: Path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an sbir run folder" in err and "Traceback" not in err
