"""The benchmark scripts as a user runs them: bad input is one line and exit code 2, as with ``sbir``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_benchmark_without_its_data_says_so_in_one_line(tmp_path):
    missing = tmp_path / "no-shared-data"
    env = {**os.environ, "SBIR_SHARED_DATA": str(missing)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/fg_qmul_v1.py", "--cv", "2", "--categories", "shoes", "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: dataset folder ") and str(missing / "qmul_v1" / "shoes") in lines[0], lines[0]
    assert f"the shared data folder {missing} does not exist: set SBIR_SHARED_DATA" in lines[0], lines[0]


def test_fg_benchmark_keeps_earlier_categories_of_the_same_recipe(tmp_path, monkeypatch):
    # A results file written before a config key existed holds the same recipe (the key at its default): its
    # other categories are kept beside a new one; a file of another recipe is replaced.
    import json

    from sbir.config import load_config, to_dict

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _common
    import fg_qmul_v1

    monkeypatch.setattr(_common, "RESULTS_DIR", tmp_path)
    config = to_dict(load_config(REPO / "configs" / "fg_qmul_v1.yaml"))
    older = json.loads(json.dumps(config))
    del older["model"]["ridge_crossfit"], older["optim"]["keep_epoch"]  # keys added since, at their defaults
    older["data"]["path"] = "data:qmul_v1/chairs"
    (tmp_path / "fg.json").write_text(json.dumps({"config": older, "results": {"chairs": 1, "shoes": 2}}))
    assert fg_qmul_v1.merge_previous("fg", {"shoes": 3}, config) == {"chairs": 1, "shoes": 3}

    other = json.loads(json.dumps(config))
    other["model"]["ridge_lambda"] = 3.0
    assert fg_qmul_v1.merge_previous("fg", {"shoes": 3}, other) == {"shoes": 3}


def _probes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import fg_ridge_probes

    return fg_ridge_probes


def test_jittered_images_are_seeded_per_image_and_white_outside(monkeypatch):
    import torch

    probes = _probes(monkeypatch)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    images = torch.rand(3, 3, 32, 32)
    x = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    # Magnitude 0 is the identity; the same seed moves an image the same way in any batch; seeds differ.
    assert torch.allclose(probes.jitter_images(x, mean, std, [1, 2, 3], 0.0), x, atol=1e-5)
    batch = probes.jitter_images(x, mean, std, [7, 8, 9], 1.0)
    alone = probes.jitter_images(x[1:2], mean, std, [8], 1.0)
    assert torch.allclose(batch[1:2], alone, atol=1e-6)
    assert not torch.allclose(batch[0], probes.jitter_images(x[:1], mean, std, [10], 1.0)[0], atol=1e-3)
    assert not torch.allclose(batch, x, atol=1e-3)
    # A white image stays white: what the shift or rotation brings in is white paper, not black.
    white = ((1 - mean) / std).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    assert torch.allclose(probes.jitter_images(white, mean, std, [1, 2], 1.0), white, atol=1e-5)


def test_drawer_directions_are_where_sketches_of_one_photo_differ(monkeypatch):
    import pytest
    import torch

    from sbir.errors import DataError

    probes = _probes(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    photos = torch.randn(6, 8, generator=gen, dtype=torch.float64) * 3.0
    photos[:, 2] = 0.0  # what tells the photos apart (larger) lies outside axis 2 ...
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    rows, groups = [], []
    for i, p in enumerate(photos):
        for o in offsets:  # ... and three drawers of each photo differ along axis 2 only
            rows.append(p + o * torch.eye(8, dtype=torch.float64)[2])
            groups.append(f"photo{i}")
    rows.append(photos[0] * 2)
    groups.append("lonely")  # a group of one adds nothing
    directions = probes.drawer_directions(torch.stack(rows), groups, 3)
    assert directions.shape == (3, 8)
    assert torch.allclose(directions @ directions.T, torch.eye(3, dtype=torch.float64), atol=1e-8)
    assert abs(directions[0, 2]) > 0.9  # the first direction is (mostly) the drawers' axis
    z = torch.nn.functional.normalize(torch.stack(rows) - torch.stack(rows).mean(0), dim=-1)
    assert abs(torch.linalg.svd(z - z.mean(0))[2][0, 2]) < 0.5  # where all sketches differ most is elsewhere
    with pytest.raises(DataError, match="no group has two sketches"):
        probes.drawer_directions(torch.stack(rows[:2]), ["a", "b"], 1)


def test_ridge_probes_name_a_bad_flag_in_one_line():
    proc = subprocess.run(
        [sys.executable, "benchmarks/fg_ridge_probes.py", "--folds", "1", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: --folds needs a whole number >= 2, got 1", proc.stderr
