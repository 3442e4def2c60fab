"""Distributed training of the class-level tasks: 2 CPU processes (gloo) against one process on the same global
batches, for ``task=category`` (MEMS and CosFace), ``task=zeroshot --method clip-prompt`` and ``task=pretrain``.

As in ``test_ddp.py`` (the fine-grained task): augmentations are off (their random draws differ per rank) and
the trained backbones have no batch statistics (timm's GroupNorm ``test_efficientnet_gn``; the tiny CLIP is
LayerNorm only), so every step of the 2-process run must compute the loss of one process on the global batch.
The losses of these tasks are means over samples (MEMS, CosFace, cross-entropy, the CLIP-prompt triplet and
text terms), so DDP's gradient mean over equal shards is the single-process gradient: the matching losses of
*later* steps (after updates) and the matching final weights check that, not only the first forward.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.engine.test_category_e2e import SHAPES, make_category_dataset
from tests.engine.test_ddp import ENV, TORCHRUN, assert_same_validation

try:
    from tests.clip_fixtures import tiny_clip  # noqa: F401  (fixture; skips its test without open_clip)
except pytest.skip.Exception:
    pass

EPOCHS = 2
STEPS = 2  # optim.max_steps_per_epoch
# fmt: off
NO_AUGMENT = [
    "augment.hflip=false", "augment.crop=fixed", "augment.fixed_crop_scale=1.0", "augment.rotation_deg=0",
    "augment.color_jitter=0", "augment.erase_prob=0",
]
COMMON = [
    "--epochs", str(EPOCHS), "--workers", "0", "--no-progress", "--seed", "3",
    "--set", f"optim.max_steps_per_epoch={STEPS}", "optim.warmup_epochs=0", *NO_AUGMENT,
]
# fmt: on


def _train(nproc: int, args: list[str], out: Path, step_log: Path, env: dict | None = None) -> None:
    launcher = TORCHRUN if nproc == 2 else [sys.executable]
    cmd = [*launcher, "-m", "sbir.cli", "train", "--out", str(out), *args]
    res = subprocess.run(
        cmd, env={**ENV, **(env or {}), "SBIR_STEP_LOG": str(step_log)}, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]


def _steps(path: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in path.read_text().splitlines()]


def _two_match_one(args: list[str], tmp_path: Path, val_key: str, env: dict | None = None) -> Path:
    """Train ``args`` with 2 processes and with 1; check the losses, the weights and rank 0's files."""
    runs = {}
    for n in (2, 1):
        runs[n] = tmp_path / f"run{n}"
        _train(n, args, runs[n], tmp_path / f"steps{n}.jsonl", env)
    one, two = _steps(tmp_path / "steps1.jsonl"), _steps(tmp_path / "steps2.jsonl")
    assert len(one) == len(two) == STEPS * EPOCHS  # rank 0 alone writes the step log
    np.testing.assert_allclose(two, one, rtol=1e-4)
    ckpt = f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"
    a, b = load_file(str(runs[1] / ckpt)), load_file(str(runs[2] / ckpt))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
    # Rank 0 alone wrote the run's files, once per epoch; evaluation ran and selected a best epoch.
    rows = list(csv.DictReader((runs[2] / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert all(np.isfinite(float(r[f"val_{val_key}"])) for r in rows)
    assert_same_validation(runs[2], runs[1])
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["epochs_run"] == EPOCHS and (runs[2] / "best.safetensors").is_file()
    assert not list(runs[2].rglob("*.tmp*")), "a half-written file was left behind"
    return runs[2]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    """Six drawn shape classes, 6 sketches and 3 photos each (64 px, trained at 32)."""
    return make_category_dataset(tmp_path_factory.mktemp("ddp_shapes"), SHAPES, n_photos=3, n_sketches=6, seed=2)


# ------------------------------------------------------------- task=category


def _category_args(data: Path, loss: str) -> list[str]:
    # fmt: off
    return [
        "--task", "category", "--data", str(data), "--image-size", "32", "--batch-size", "8",
        "--backbone", "test_efficientnet_gn", *COMMON,
        "model.pretrained=false", "model.embed_dim=16", "optim.samples_per_class=2", f"loss.name={loss}",
        "loss.anneal_steps=5",  # the margin grows every step (over 3 epochs): each rank and a resume must count alike
    ]
    # fmt: on


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["mems", "cosface"])
def test_category_two_processes_match_one(loss: str, shapes_data: Path, tmp_path: Path):
    _two_match_one(_category_args(shapes_data, loss), tmp_path, "map@all")


@pytest.mark.slow
def test_killed_two_process_category_run_resumes_to_the_uninterrupted_result(shapes_data: Path, tmp_path: Path):
    """kill -9 after epoch 1 of 3, resume with 2 processes: the MEMS step counter (its margin), the optimizer and
    every rank's random state continue, so the weights and metrics end as those of one uninterrupted process."""
    epochs = 3  # two epochs left after the kill: time for it to land before the run ends
    args = _category_args(shapes_data, "mems")
    args[args.index("--epochs") + 1] = str(epochs)
    ref = tmp_path / "ref"
    _train(1, args, ref, tmp_path / "ref-steps.jsonl")
    run = tmp_path / "killed"
    cmd = [*TORCHRUN, "-m", "sbir.cli", "train", "--out", str(run), *args]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill the whole process group once epoch 1's checkpoint is complete
            if (run / "last.json").is_file() and json.loads((run / "last.json").read_text())["epoch"] >= 1:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert json.loads((run / "last.json").read_text())["epoch"] < epochs, "the run finished before it was killed"
    res = subprocess.run(
        [*TORCHRUN, "-m", "sbir.cli", "train", "--resume", str(run), "--no-progress"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = f"checkpoints/epoch-{epochs:04d}/model.safetensors"
    a, b = load_file(str(ref / ckpt)), load_file(str(run / ckpt))
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
    rows, ref_rows = (list(csv.DictReader((r / "metrics.csv").open())) for r in (run, ref))
    assert len(rows) == len(ref_rows) == epochs
    for row, want in zip(rows, ref_rows, strict=True):
        for k in ("train_loss", "train_margin", "val_map@all"):
            assert float(row[k]) == pytest.approx(float(want[k]), rel=1e-3, abs=1e-6), k


# ------------------------------------------------------------- task=zeroshot, method=clip-prompt


@pytest.mark.slow
def test_clip_prompt_two_processes_match_one(tiny_clip, shapes_data: Path, tmp_path: Path):  # noqa: F811
    config, weights = tiny_clip
    # fmt: off
    args = [
        "--task", "zeroshot", "--method", "clip-prompt", "--data", str(shapes_data), "--unseen", "star,bar",
        "--image-size", "32", "--batch-size", "4", *COMMON,
        f"model.clip_model={config}", f"model.weights_path={weights}", "optim.samples_per_class=2",
        "data.val_fraction=0.5", "model.prompt_lr=0.01",  # prompts that move visibly in 4 steps
    ]
    # fmt: on
    run = _two_match_one(args, tmp_path, "map@all")
    assert set(load_file(str(run / "best.safetensors"))) == {"sketch_prompt", "photo_prompt"}


# ------------------------------------------------------------- task=pretrain


@pytest.mark.slow
def test_pretrain_two_processes_match_one(tmp_path: Path):
    from tests.engine.test_pretrain import _polygon

    qd = tmp_path / "data" / "qd"  # Quick, Draw! strokes only: no HED edge maps to compute
    qd.mkdir(parents=True)
    for kind in ("triangle", "circle", "square"):
        lines = []
        for i in range(8):
            pts = _polygon(kind, i / 8)
            stroke = [[round(x) for x, _ in pts], [round(y) for _, y in pts]]
            lines.append(json.dumps({"word": kind, "key_id": str(i), "drawing": [stroke]}))
        (qd / f"{kind}.ndjson").write_text("\n".join(lines) + "\n")
    # fmt: off
    args = [
        "--task", "pretrain", "--data", str(qd.parent), "--image-size", "32", "--batch-size", "4",
        "--backbone", "test_efficientnet_gn", *COMMON, "model.pretrained=false", "data.val_fraction=0.25",
    ]
    # fmt: on
    _two_match_one(args, tmp_path, "acc@1", env={"SBIR_CACHE_DIR": str(tmp_path / "cache")})


# ------------------------------------------------------------- class-balanced sampler, sharded


@pytest.mark.parametrize(("p", "k"), [(4, 2), (3, 2), (2, 3)])
def test_sharded_class_balanced_sampler_keeps_the_global_balance(p: int, k: int):
    """Rank slices of P x K batches concatenate to the global batch, which still holds P classes x K sketches.

    With P·K/2 not a multiple of K (e.g. 3 x 2) a class is split across the two ranks: each rank's slice is not
    balanced, the global batch is, and the per-sample losses only need the global batch to be.
    """
    from collections import Counter

    from sbir.data.sampler import ClassBalancedBatchSampler
    from sbir.engine.distributed import ShardedBatchSampler

    labels = [c for c in range(7) for _ in range(5 + c % 3)]  # 7 classes of 5-7 items
    inner = ClassBalancedBatchSampler(labels, p, k, seed=4)
    inner.set_epoch(2)
    shards = [ShardedBatchSampler(ClassBalancedBatchSampler(labels, p, k, seed=4), r, 2) for r in range(2)]
    for s in shards:
        s.set_epoch(2)
    assert len(shards[0]) == len(inner) > 0
    for glob, a, b in zip(inner, *shards, strict=True):
        assert a + b == glob and len(a) == len(b) == p * k // 2
        counts = Counter(labels[i] for i in a + b)
        assert len(counts) == p and set(counts.values()) == {k}
