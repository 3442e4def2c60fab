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
from index_helpers import IMAGE_SIZE, make_photo, write_gallery

from sbir.index import Index, build_index, update_index
from sbir.index.store import KILL_ENV

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
def scenario(tmp_path_factory):
    """An index in the old state A, a gallery changed since, and the new state B (a fresh build)."""
    from sbir.engine.checkpoint import load_model

    pre = load_model("pretrained")
    root = tmp_path_factory.mktemp("atomic")
    gallery = root / "photos"
    rels = write_gallery(gallery, n=6)
    old = root / "old-index"
    build_index(gallery, "pretrained", old, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pre)
    a = state(old)
    (gallery / rels[0]).unlink()
    make_photo(321).save(gallery / rels[1])
    write_gallery(gallery, n=3, start=200)
    fresh = root / "fresh"
    build_index(gallery, "pretrained", fresh, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pre)
    b = state(fresh)
    assert not same(a, b)
    return {"root": root, "gallery": gallery, "old": old, "A": a, "B": b, "pre": pre}


def copy_old(scenario, name: str) -> Path:
    dst = scenario["root"] / name
    shutil.copytree(scenario["old"], dst, symlinks=True)
    return dst


# (after-vectors and after-manifest are like after-faiss: inside the unpublished temporary folder)
STAGES_BEFORE_SWAP = ["after-faiss", "before-rename", "before-pointer"]


@pytest.mark.parametrize("stage", STAGES_BEFORE_SWAP + ["after-pointer"])
def test_kill_at_each_write_stage(scenario, stage):
    idx = copy_old(scenario, f"stage-{stage}")
    proc = sbir(["index", "update", str(idx), "--no-progress", "--workers", "0"], {KILL_ENV: stage})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    expected = scenario["A"] if stage in STAGES_BEFORE_SWAP else scenario["B"]
    assert same(state(idx), expected)
    # The next update completes, ends in state B and removes the leftovers of the killed one.
    update_index(idx, progress=False, num_workers=0, preloaded=scenario["pre"])
    assert same(state(idx), scenario["B"])
    assert not list(idx.glob(".tmp-*")) and not list(idx.glob(".CURRENT.*"))
    assert len(list(idx.glob("gen-*"))) <= 2


def test_kill_after_random_delays(scenario):
    # How long an uninterrupted update takes here, then kills spread over that time.
    idx = copy_old(scenario, "timing")
    t0 = time.perf_counter()
    proc = sbir(["index", "update", str(idx), "--no-progress", "--workers", "0"])
    _, err = proc.communicate(timeout=300)
    duration = time.perf_counter() - t0
    assert proc.returncode == 0, err.decode()[-2000:]
    assert same(state(idx), scenario["B"])
    rng = random.Random(1234)
    outcomes = []
    for i, frac in enumerate([0.75, 0.92, 0.99]):
        idx = copy_old(scenario, f"random-{i}")
        proc = sbir(["index", "update", str(idx), "--no-progress", "--workers", "0"])
        time.sleep(duration * frac * rng.uniform(0.95, 1.02))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        st = state(idx)
        assert same(st, scenario["A"]) or same(st, scenario["B"])
        outcomes.append("A" if same(st, scenario["A"]) else "B")
    assert outcomes  # both outcomes are correct; which one happens depends on timing


def test_killed_first_build_leaves_a_reusable_folder(scenario, tmp_path):
    out = tmp_path / "new-index"
    proc = sbir(
        ["index", "build", str(scenario["gallery"]), "--model", "pretrained", "--out", str(out), "--image-size", str(IMAGE_SIZE), "--no-progress", "--workers", "0"],
        {KILL_ENV: "before-pointer"},
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    with pytest.raises(Exception, match="not an sbir index"):
        Index.open(out)
    build_index(scenario["gallery"], "pretrained", out, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=scenario["pre"])
    assert same(state(out), scenario["B"])
