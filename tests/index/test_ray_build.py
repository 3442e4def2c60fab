"""``sbir index build|update --ray``: Ray Data embedding gives the local build's index, survives a killed worker.

One local Ray cluster (2 CPUs, started by :func:`sbir.index.ray_embed.ray_session` as ``--ray`` does) is
shared by the tests of this module: starting Ray costs seconds. The build commands find it running and
reuse it, exactly as they would reuse a notebook's Ray.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbir.index import Index, build_index, update_index
from sbir.index.ray_embed import FAULT_ENV, RayUnavailableError

from .index_helpers import IMAGE_SIZE, write_gallery

RAY_ARGS = ["--ray", "--ray-workers", "2", "--batch-size", "3", "--no-progress"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster for the whole module (skipped when Ray Data is not installed)."""
    pytest.importorskip("ray.data")
    from sbir.index.ray_embed import ray_session

    with ray_session("", num_cpus=2) as ray:
        yield ray
    assert not ray.is_initialized()  # the session shut down the cluster it started


@pytest.fixture(scope="module")
def ray_gallery(tmp_path_factory) -> Path:
    """12 photos in nested folders plus one unreadable file (so batches of 3 span several actors)."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    write_gallery(root, n=12)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def local_index(ray_gallery, pretrained, tmp_path_factory) -> Index:
    """The plain single-process build of the gallery: what every Ray build must reproduce."""
    out = tmp_path_factory.mktemp("local") / "idx"
    build_index(
        ray_gallery, "pretrained", out, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pretrained
    )
    return Index.open(out)


def ray_build(cli, gallery: Path, out: Path, *extra: str) -> Index:
    argv = ["index", "build", str(gallery), "--model", "pretrained", "--out", str(out)]
    assert cli([*argv, "--image-size", str(IMAGE_SIZE), *RAY_ARGS, *extra]) == 0
    return Index.open(out)


def assert_same_index(got: Index, want: Index) -> None:
    assert got.entries == want.entries
    assert got.model == want.model
    assert got.meta["skipped"] == want.meta["skipped"]
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(want.vectors), atol=1e-5, rtol=0)


# first in the module: the shared cluster below is not started yet
def test_no_cluster_at_the_address_is_one_clear_error(gallery, tmp_path, monkeypatch):
    """``--ray auto`` with no running cluster: an SbirError naming 'ray start', not a Ray traceback."""
    pytest.importorskip("ray.data")
    import ray

    from sbir.errors import SbirError
    from sbir.index.ray_embed import ray_session

    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SbirError, match="ray start --head"), ray_session("auto"):
        pass
    assert not ray.is_initialized()


@pytest.mark.slow
def test_ray_build_equals_local_build(ray_cluster, ray_gallery, local_index, cli, tmp_path, capsys):
    index = ray_build(cli, ray_gallery, tmp_path / "idx")
    assert len(index) == 12
    assert_same_index(index, local_index)
    err = capsys.readouterr().err
    assert "skipped a/broken.png" in err and "embedded on Ray (local cluster)" in err


@pytest.mark.slow
def test_killed_worker_is_retried_and_the_index_is_complete(
    ray_cluster, ray_gallery, local_index, cli, tmp_path, monkeypatch
):
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, str(marker))  # the first batch's actor SIGKILLs itself once
    index = ray_build(cli, ray_gallery, tmp_path / "idx")
    assert marker.is_file(), "no worker was killed: the fault hook did not run"
    assert len(index) == 12
    assert_same_index(index, local_index)


@pytest.mark.slow
def test_ray_update_embeds_only_new_photos(ray_cluster, ray_gallery, local_index, pretrained, tmp_path):
    gallery = tmp_path / "photos"
    shutil.copytree(ray_gallery, gallery)
    out = tmp_path / "idx"
    build_index(gallery, "pretrained", out, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pretrained)
    write_gallery(gallery, n=3, start=40)
    report = update_index(out, progress=False, ray="", ray_workers=2, batch_size=2)
    assert report.written and report.ray == ""
    assert (report.added, report.embedded, report.unchanged) == (3, 3, 12)
    # the reference: a plain update of the same change
    ref_dir = tmp_path / "ref"
    shutil.copytree(ray_gallery, ref_dir / "photos")
    build_index(
        ref_dir / "photos", "pretrained", ref_dir / "idx", image_size=IMAGE_SIZE, progress=False, num_workers=0,
        preloaded=pretrained,
    )  # fmt: skip
    write_gallery(ref_dir / "photos", n=3, start=40)
    update_index(ref_dir / "idx", progress=False, num_workers=0, preloaded=pretrained)
    got, want = Index.open(out), Index.open(ref_dir / "idx")
    assert [e.path for e in got.entries] == [e.path for e in want.entries]
    assert [e.sha256 for e in got.entries] == [e.sha256 for e in want.entries]
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(want.vectors), atol=1e-5, rtol=0)


def test_update_with_nothing_new_starts_no_cluster(gallery, pretrained, tmp_path, monkeypatch):
    """Ray is imported (a missing extra fails early) but never connected to when nothing needs embedding."""
    pytest.importorskip("ray.data")
    from sbir.index import ray_embed

    def refuse(*_a, **_k):
        raise AssertionError("a Ray session was opened for an update with nothing to embed")

    monkeypatch.setattr(ray_embed, "ray_session", refuse)
    out = tmp_path / "idx"
    build_index(gallery, "pretrained", out, image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=pretrained)
    report = update_index(out, progress=False, preloaded=pretrained, ray="")
    assert not report.written and report.embedded == 0


def test_missing_ray_is_one_clear_error(gallery, tmp_path, monkeypatch, capsys):
    from sbir.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(RayUnavailableError, match=r"sbir\[scale\]"):
        build_index(gallery, "pretrained", tmp_path / "idx", image_size=IMAGE_SIZE, progress=False, ray="")
    argv = ["index", "build", str(gallery), "--model", "pretrained", "--out", str(tmp_path / "cli"), "--ray"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ray needs Ray Data") and "sbir[scale]" in err[0]
    assert not (tmp_path / "idx").exists() and not (tmp_path / "cli").exists()  # refused before any work


def test_ray_workers_needs_ray(cli, gallery, tmp_path):
    from sbir.errors import SbirError

    with pytest.raises(SbirError, match="--ray-workers"):
        cli(
            [
                "index",
                "build",
                str(gallery),
                "--model",
                "pretrained",
                "--out",
                str(tmp_path / "i"),
                "--ray-workers",
                "2",
            ]
        )


def test_cli_does_not_import_ray():
    """``sbir --help`` and local builds stay as fast as before: Ray is imported only for --ray."""
    code = "import sys, sbir.cli; sbir.cli.build_parser(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
