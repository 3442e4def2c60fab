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
