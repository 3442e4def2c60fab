"""Distributed training: 2 CPU processes (gloo) against one process on the same global batches.

Augmentations are off in the end-to-end runs (random draws differ per rank, as in any data-parallel run)
and the backbone is timm's tiny ``test_efficientnet_gn`` (GroupNorm: no per-rank batch statistics), so
a 2-process step must compute the same loss as one process.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sbir.engine.distributed import ShardedBatchSampler
from sbir.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
EPOCHS = 2
# fmt: off
ARGS = [
    "--epochs", str(EPOCHS), "--image-size", "64", "--batch-size", "8", "--workers", "0", "--no-progress",
    "--seed", "3", "--backbone", "test_efficientnet_gn",
    "--set", "model.pretrained=false", "model.embed_dim=32", "optim.max_steps_per_epoch=3",
    "augment.hflip=false", "augment.crop=fixed", "augment.fixed_crop_scale=1.0", "augment.rotation_deg=0",
    "augment.color_jitter=0", "augment.erase_prob=0",
]
# fmt: on
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _cmd(nproc: int, *args: str) -> list[str]:
    return (TORCHRUN if nproc == 2 else [sys.executable]) + ["-m", "sbir.cli", "train", *args]


def _run(cmd: list[str], step_log: Path | None = None) -> None:
    env = {**ENV, "SBIR_STEP_LOG": str(step_log)} if step_log else ENV
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _steps(path: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in path.read_text().splitlines()]


def assert_same_validation(run2: Path, run1: Path) -> None:
    """The 2-process run's validation metrics (sharded, then gathered) per epoch are the 1-process run's."""
    rows2, rows1 = (list(csv.DictReader((r / "metrics.csv").open())) for r in (run2, run1))
    assert len(rows2) == len(rows1)
    keys = [k for k in rows1[0] if k.startswith("val_")]
    assert keys and keys == [k for k in rows2[0] if k.startswith("val_")]
    for r2, r1 in zip(rows2, rows1, strict=True):
        got, want = [float(r2[k]) for k in keys], [float(r1[k]) for k in keys]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"epoch {r1['epoch']}: {keys}")


@pytest.fixture(scope="module")
def two_process_run(tiny_paired_dataset: Path, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 2-process run and its per-step loss log."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    log = out.parent / "steps.jsonl"
    _run(_cmd(2, "--data", str(tiny_paired_dataset), "--out", str(out), *ARGS), log)
    return out, log


def test_two_processes_match_one_on_the_global_batch(two_process_run, tiny_paired_dataset: Path, tmp_path: Path):
    run2, log2 = two_process_run
    log1 = tmp_path / "steps.jsonl"
    _run(_cmd(1, "--data", str(tiny_paired_dataset), "--out", str(tmp_path / "run"), *ARGS), log1)
    one, two = _steps(log1), _steps(log2)
    assert len(one) == len(two) == 3 * EPOCHS  # rank 0 alone writes the log
    np.testing.assert_allclose(two, one, rtol=1e-4)  # every step: the same loss, so the same updates
    a = load_file(str(tmp_path / "run" / f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"))
    b = load_file(str(run2 / f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"))
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
    # Only rank 0 wrote the run's files, once.
    assert (run2 / "metrics.csv").read_text().count("\n") == EPOCHS + 1
    assert_same_validation(run2, tmp_path / "run")
    assert json.loads((run2 / "summary.json").read_text())["epochs_run"] == EPOCHS


def test_killed_two_process_run_resumes_to_the_same_result(two_process_run, tiny_paired_dataset: Path, tmp_path):
    ref, _ = two_process_run
    run = tmp_path / "killed"
    cmd = _cmd(2, "--data", str(tiny_paired_dataset), "--out", str(run), *ARGS)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill -9 the whole process group once epoch 1's checkpoint is complete
            if (run / "last.json").is_file() and json.loads((run / "last.json").read_text())["epoch"] >= 1:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert json.loads((run / "last.json").read_text())["epoch"] < EPOCHS, "the run finished before it was killed"
    _run(TORCHRUN + ["-m", "sbir.cli", "train", "--resume", str(run), "--no-progress"])
    a = load_file(str(ref / f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"))
    b = load_file(str(run / f"checkpoints/epoch-{EPOCHS:04d}/model.safetensors"))
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    ref_rows = (ref / "metrics.csv").read_text().splitlines()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(ref_rows) == EPOCHS + 1
    drop_seconds = [[v for i, v in enumerate(r.split(",")) if ref_rows[0].split(",")[i] != "seconds"] for r in rows]
    ref_drop = [[v for i, v in enumerate(r.split(",")) if ref_rows[0].split(",")[i] != "seconds"] for r in ref_rows]
    assert drop_seconds == ref_drop


# ------------------------------------------------------------- gathered NT-Xent, in-process


def _leave_without_finalisation() -> None:
    """End a successful mp.spawn worker (its results are on disk, its process group destroyed) without
    interpreter finalisation: gloo's threads may still hold tensors whose release during finalisation
    aborts the process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291),
    which failed this test about once in ten runs. A worker that raised never gets here: mp.spawn
    reports its traceback."""
    gc.collect()
    os._exit(0)


def _gathered_ntxent_worker(rank: int, world: int, port: int, inputs: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from sbir.engine.distributed import gather_batch
        from sbir.losses.ntxent import DoubleSiameseNTXent
        from sbir.losses.triplet import HardTripletLoss

        n = inputs["s1"].shape[0] // world
        mine = {k: v[rank * n : (rank + 1) * n].clone().requires_grad_(v.dtype.is_floating_point)
                for k, v in inputs.items()}  # fmt: skip
        g = gather_batch(mine)
        loss, _ = DoubleSiameseNTXent(temperature=0.1)(g["s1"], g["s2"], g["p1"], g["p2"], g["groups"])
        loss = loss + HardTripletLoss(0.2)(g["s1"], g["p1"], g["groups"])
        loss.backward()
        torch.save(
            {"loss": loss.detach(), **{k: v.grad for k, v in mine.items() if v.grad is not None}},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.barrier()  # both ranks are done communicating before either tears down
        dist.destroy_process_group()
    _leave_without_finalisation()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_losses_equal_one_rank_on_the_concatenated_batch(tmp_path: Path):
    from sbir.losses.ntxent import DoubleSiameseNTXent
    from sbir.losses.triplet import HardTripletLoss

    torch.manual_seed(0)
    b, d, world = 6, 5, 2
    inputs = {k: torch.randn(b, d) for k in ("s1", "s2", "p1", "p2")}
    inputs["groups"] = torch.tensor([0, 1, 2, 3, 1, 5])  # rows 1 and 4 (on different ranks) share a photo
    mp.spawn(_gathered_ntxent_worker, args=(world, _free_port(), inputs, str(tmp_path)), nprocs=world, join=True)

    full = {k: v.clone().requires_grad_(k != "groups") for k, v in inputs.items()}
    ref, _ = DoubleSiameseNTXent(temperature=0.1)(full["s1"], full["s2"], full["p1"], full["p2"], full["groups"])
    ref = ref + HardTripletLoss(0.2)(full["s1"], full["p1"], full["groups"])
    ref.backward()
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for r in range(world):
        torch.testing.assert_close(got[r]["loss"], ref.detach())
    for k in ("s1", "s2", "p1", "p2"):
        # Each rank's rows get W x the single-process gradient; DDP's mean over W ranks restores it.
        grad = torch.cat([got[r][k] for r in range(world)]) / world
        torch.testing.assert_close(grad, full[k].grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- sharded evaluation embedding, in-process


class _TinyEmbedder(torch.nn.Module):
    """A conv embedder with a token sequence: enough of the model interface for ``embed_images``."""

    mean, std, embed_dim = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, self.embed_dim, 3, stride=4)

    def embed_with_tokens(self, x: torch.Tensor, domain: str):
        tok = self.conv(x if domain == "sketch" else -x).flatten(2).transpose(1, 2)  # (B, N, D)
        return torch.nn.functional.normalize(tok.mean(1), dim=-1), tok

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.embed_with_tokens(x, domain)[0]


# (number of images, embed_images options): uneven over 2 ranks, fewer images than ranks, none,
# a skipped unreadable image (position 4 lands on rank 1), and every variant evaluation uses.
EMBED_CASES = [
    (7, {}),
    (1, {}),
    (0, {}),
    (7, {"skip_errors": True}),
    (5, {"return_flipped": True}),
    (5, {"flip_tta": True, "return_tokens": True}),
    (3, {"multiview_scale": 1.25}),
]


def _embed_refs(arr: np.ndarray, n: int, missing: Path, skip: bool) -> list:
    from sbir.data.records import ArrayRef, FileRef

    refs = [ArrayRef(arr, i, "test") for i in range(n)]
    if skip:
        refs[4] = FileRef(missing)
    return refs


def _embed_all(model, arr: np.ndarray, missing: Path) -> list:
    from sbir.engine.embed import embed_images

    kw = dict(image_size=16, batch_size=3, progress=False)
    return [
        embed_images(model, _embed_refs(arr, n, missing, bool(o.get("skip_errors"))), "sketch", **kw, **o)
        for n, o in EMBED_CASES
    ]


def _sharded_embed_worker(rank: int, world: int, port: int, model, arr, missing: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from sbir.engine import distributed
        from sbir.engine.embed import embed_images

        with distributed.sharded_evaluation():
            results = _embed_all(model, arr, Path(missing))
        # Outside the block the process group is ignored: rank-0-only callers still embed everything.
        outside = embed_images(model, _embed_refs(arr, 3, Path(missing), False), "photo", 16, progress=False)
        torch.save({"results": results, "outside": outside.indices}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.barrier()
        dist.destroy_process_group()
    _leave_without_finalisation()


def test_sharded_embedding_gathers_the_single_process_embeddings_in_order(tmp_path: Path):
    """Every rank gets the one-process result: same rows, order, positions and skipped-input errors."""
    torch.manual_seed(0)
    model = _TinyEmbedder()
    arr = np.random.default_rng(0).integers(0, 256, (7, 20, 20, 3), dtype=np.uint8)
    missing = tmp_path / "missing.png"
    world = 2
    mp.spawn(
        _sharded_embed_worker,
        args=(world, _free_port(), model, arr, str(missing), str(tmp_path)),
        nprocs=world,
        join=True,
    )
    ref = _embed_all(model, arr, missing)
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        assert got["outside"] == [0, 1, 2]
        for (n, opts), a, b in zip(EMBED_CASES, ref, got["results"], strict=True):
            msg = f"rank {r}, {n} images, {opts}"
            assert b.indices == a.indices, msg
            assert [i for i, _ in b.errors] == [i for i, _ in a.errors], msg
            assert b.embeddings.shape == a.embeddings.shape, msg
            np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=1e-5, atol=1e-6, err_msg=msg)
            assert (b.flipped is None) == (a.flipped is None), msg
            if a.flipped is not None:
                np.testing.assert_allclose(b.flipped, a.flipped, rtol=1e-5, atol=1e-6, err_msg=msg)
            assert (b.tokens is None) == (a.tokens is None), msg
            if a.tokens is not None:
                torch.testing.assert_close(b.tokens, a.tokens, rtol=1e-5, atol=1e-6, msg=msg)
    assert ref[3].indices == [0, 1, 2, 3, 5, 6] and [i for i, _ in ref[3].errors] == [4]


# ------------------------------------------------------------- sharded sampler


def test_sharded_sampler_slices_the_global_batches():
    from sbir.data.sampler import UniquePhotoBatchSampler

    photos = [i // 2 for i in range(40)]  # 20 photos, 2 sketches each
    inner = UniquePhotoBatchSampler(photos, batch_size=8, seed=5)
    inner.set_epoch(3)
    shards = [ShardedBatchSampler(UniquePhotoBatchSampler(photos, 8, seed=5), r, 2) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    assert len(shards[0]) == len(inner)
    for glob, a, b in zip(inner, *shards, strict=True):
        assert a + b == glob and len(a) == len(b) == 4
        assert len({photos[i] for i in a + b}) == 8  # no photo twice in the global batch
    with pytest.raises(ConfigError, match="divide by the number of processes"):
        ShardedBatchSampler(inner, 0, 3)


# ------------------------------------------------------------- bad combinations


def test_bad_combinations_are_one_line_errors(monkeypatch, capsys):
    from sbir.cli import main
    from sbir.engine.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="cuda:LOCAL_RANK"):
        setup("cuda:1")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            setup("cuda")
    assert main(["train", "--nproc", "2", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "already runs under torchrun" in err and "Traceback" not in err
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["train", "--nproc", "0", "--data", "x"]) == 2
