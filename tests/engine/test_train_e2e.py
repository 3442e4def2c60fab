"""End to end: generate data, train, evaluate, beat the untrained model on held-out pairs, kill -9 and
resume to the same result."""

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
    "--image-size",
    "64",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--seed",
    "3",
    "--set",
    "model.embed_dim=64",
    "optim.warmup_epochs=0.5",
]


def _train(data: Path, out: Path, epochs: int) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *TRAIN_ARGS])


def test_train_eval_outputs(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_paired_dataset, run, 2) == 0
    outputs = ("config.yaml", "split.json", "metrics.csv", "acc.png", "best.safetensors", "last.json", "summary.json")
    for name in outputs:
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
    # Acc@K is the share of queries whose true photo ranks K or better (here every K is checked,
    # including acc@10 = 100, which an 8-photo gallery makes certain).
    ranks = np.array(metrics["ranks"])
    for k in (1, 5, 10):
        assert metrics[f"acc@{k}"] == pytest.approx(100.0 * np.mean(ranks <= k)), k
    assert (run / "eval-test" / "retrieval.png").is_file()

    # Validation split evaluation reproduces the recorded split: no photo of val is in train.
    assert main(["eval", str(run), "--split", "val", "--no-progress"]) == 0
    val = json.loads((run / "eval-val" / "metrics.json").read_text())
    assert val["n_gallery"] == len(split["val_photo_ids"])


# A gallery of 40 held-out photos (chance: Acc@1 2.5%, Acc@10 25%, mean rank 20.5) and 80 sketch
# queries; 120 training photos (18 carved off for validation). 96 px with the first 3 backbone stages
# frozen keeps the whole test to about 50 s on 2 idle CPU cores.
HELD_OUT_PHOTOS = 40
BEAT_ARGS = [
    "--image-size",
    "96",
    "--batch-size",
    "16",
    "--epochs",
    "6",
    "--workers",
    "0",
    "--no-progress",
    "--seed",
    "0",
    "--set",
    "model.embed_dim=64",
    "model.freeze_stages=3",
    "optim.lr=0.003",
    "optim.warmup_epochs=0.5",
]


def test_training_beats_untrained_model_on_held_out_pairs(tmp_path: Path):
    """Training (best epoch chosen on the validation split) must rank the held-out test photos clearly
    better than the untrained model, i.e. the off-the-shelf ImageNet backbone training starts from
    (what ``sbir demo`` prints as "before training"). Test photos are never seen in training or selection."""
    from sbir.data.synthetic import generate_paired_dataset

    data = generate_paired_dataset(
        tmp_path / "data",
        n_train_photos=120,
        n_test_photos=HELD_OUT_PHOTOS,
        sketches_per_photo=2,
        image_size=96,
        seed=1,
        progress=False,
    )
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *BEAT_ARGS]) == 0
    assert main(["eval", str(run), "--split", "test", "--no-progress"]) == 0
    trained = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert (
        main(
            [
                "eval",
                "pretrained",
                "--data",
                str(data),
                "--split",
                "test",
                "--out",
                str(tmp_path / "base"),
                "--no-progress",
            ]
        )
        == 0
    )
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())

    # Held out: the evaluated photos are the test photos, none of which is in the validation split.
    test_ids = {p.stem for p in (data / "testB").glob("*.png")}
    assert len(test_ids) == HELD_OUT_PHOTOS
    assert not test_ids & set(json.loads((run / "split.json").read_text())["val_photo_ids"])
    for m in (trained, base):
        assert m["n_gallery"] == HELD_OUT_PHOTOS and m["n_queries"] == 2 * HELD_OUT_PHOTOS
    t_ranks, b_ranks = np.array(trained["ranks"]), np.array(base["ranks"])
    summary = (
        f"trained acc@1/5/10 {trained['acc@1']:.1f}/{trained['acc@5']:.1f}/{trained['acc@10']:.1f} "
        f"mean rank {t_ranks.mean():.2f}; untrained {base['acc@1']:.1f}/{base['acc@5']:.1f}/"
        f"{base['acc@10']:.1f} mean rank {b_ranks.mean():.2f}"
    )
    print(summary)
    # Measured on this recipe (mean rank trained / untrained, acc@10 trained vs untrained): 7.8 / 14.3 and
    # 73.8 vs 43.8 with --seed 0; 11.4 / 14.3 and 60.0 vs 43.8 with --seed 1. The margins leave room:
    assert t_ranks.mean() <= 0.85 * b_ranks.mean(), summary
    assert trained["acc@10"] >= base["acc@10"] + 7.5, summary  # 6 more of 80 queries
    assert np.mean(t_ranks < b_ranks) > np.mean(t_ranks > b_ranks), summary  # more queries improve than worsen


def test_resume_after_kill_matches_uninterrupted(tiny_paired_dataset: Path, tmp_path: Path):
    epochs = 3
    ref = tmp_path / "ref"
    assert _train(tiny_paired_dataset, ref, epochs) == 0

    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "sbir.cli",
        "train",
        "--data",
        str(tiny_paired_dataset),
        "--out",
        str(run),
        "--epochs",
        str(epochs),
        *TRAIN_ARGS,
    ]
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
