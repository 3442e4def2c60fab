"""Killing ``sbir index update`` / ``build`` at any moment leaves a loadable, correct index.

Real subprocesses are SIGKILLed, either at each named write stage (the
``SBIR_INDEX_KILL_AT`` hook in :mod:`sbir.index.store`) or after random delays.
After every kill the index must load and equal either the old or the new state,
and the next update must succeed and clean up.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sbir.index import Index, build_index, update_index
from sbir.index.store import KILL_ENV

from .index_helpers import make_photo, write_gallery

pytestmark = pytest.mark.slow

RUNNER = """
import argparse, sys
from sbir.errors import SbirError
from sbir.index.commands import add_index_commands
parser = argparse.ArgumentParser(prog="sbir")
add_index_commands(parser.add_subparsers(dest="command"))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except SbirError as exc:
    print("error:", exc, file=sys.stderr)
    sys.exit(2)
"""


def sbir(argv, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def state(index_dir: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    idx = Index.open(index_dir)
    return [(e.path, e.sha256) for e in idx.entries], np.asarray(idx.vectors)


def same(a, b) -> bool:
    return a[0] == b[0] and a[1].shape == b[1].shape and np.allclose(a[1], b[1], atol=1e-5)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_checkpoint):
    """An index in the old state A, a gallery changed since, and the new state B (a fresh build).

    The model is a real sbir checkpoint of a tiny network, so each subprocess loads fast.
    """
    from sbir.engine.inference import load_model

    ckpt = str(tiny_checkpoint)
    pre = load_model(ckpt)
    root = tmp_path_factory.mktemp("atomic")
    gallery = root / "photos"
    rels = write_gallery(gallery, n=6)
    old = root / "old-index"
    build_index(gallery, ckpt, old, progress=False, num_workers=0, preloaded=pre)
    a = state(old)
    (gallery / rels[0]).unlink()
    make_photo(321).save(gallery / rels[1])
    write_gallery(gallery, n=3, start=200)
    fresh = root / "fresh"
    build_index(gallery, ckpt, fresh, progress=False, num_workers=0, preloaded=pre)
    b = state(fresh)
    assert not same(a, b)
    return {"root": root, "gallery": gallery, "old": old, "A": a, "B": b, "pre": pre, "ckpt": ckpt}


def copy_old(scenario, name: str) -> Path:
    dst = scenario["root"] / name
    shutil.copytree(scenario["old"], dst, symlinks=True)
    return dst


# after-vectors / after-faiss / after-manifest are like before-rename: inside the unpublished temporary folder.
STAGES_BEFORE_SWAP = ["after-faiss", "before-rename", "before-pointer"]


def run_update(idx: Path, env=None) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    proc = sbir(["index", "update", str(idx), "--no-progress", "--workers", "0"], env)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()[-2000:], time.perf_counter() - t0


def check_recovers(scenario, idx: Path) -> None:
    """The next update completes, ends in state B and removes the leftovers of the killed one."""
    update_index(idx, progress=False, num_workers=0, preloaded=scenario["pre"])
    assert same(state(idx), scenario["B"])
    assert not list(idx.glob(".tmp-*")) and not list(idx.glob(".CURRENT.*"))
    assert len(list(idx.glob("gen-*"))) <= 2


def test_kill_at_write_stages_and_random_moments(scenario):
    durations = []
    for stage in STAGES_BEFORE_SWAP + ["after-pointer"]:
        idx = copy_old(scenario, f"stage-{stage}")
        rc, err, dt = run_update(idx, {KILL_ENV: stage})
        assert rc == -signal.SIGKILL, f"{stage}: {err}"
        expected = scenario["A"] if stage in STAGES_BEFORE_SWAP else scenario["B"]
        assert same(state(idx), expected), stage
        check_recovers(scenario, idx)
        durations.append(dt)
    # SIGKILL after delays spread over the time an update takes (it is killed at after-pointer,
    # i.e. practically at its end): whatever moment it dies, the index is the old or the new one.
    full = max(durations)
    rng = random.Random(1234)
    for i, frac in enumerate([0.85, 0.97]):
        idx = copy_old(scenario, f"random-{i}")
        proc = sbir(["index", "update", str(idx), "--no-progress", "--workers", "0"])
        time.sleep(full * frac * rng.uniform(0.97, 1.03))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        st = state(idx)
        assert same(st, scenario["A"]) or same(st, scenario["B"])
        check_recovers(scenario, idx)


def test_killed_first_build_leaves_a_reusable_folder(scenario, tmp_path):
    out = tmp_path / "new-index"
    proc = sbir(
        [
            "index",
            "build",
            str(scenario["gallery"]),
            "--model",
            scenario["ckpt"],
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            "0",
        ],
        {KILL_ENV: "before-pointer"},
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert (out / "gen-000001" / "manifest.json").is_file()  # written, but never published
    with pytest.raises(Exception, match="not an sbir index"):
        Index.open(out)
    build_index(scenario["gallery"], scenario["ckpt"], out, progress=False, num_workers=0, preloaded=scenario["pre"])
    assert same(state(out), scenario["B"])
