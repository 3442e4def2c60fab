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
