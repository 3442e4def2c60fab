"""Shared helpers for benchmark scripts: machine description and JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data by default; SBIR_SHARED_DATA points elsewhere (e.g. a copy on a GPU machine).
SHARED_DATA = Path(os.environ.get("SBIR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_result(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    text = json.dumps(payload, indent=1)
    print(text)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(text + "\n")
    return path


def add_training_arguments(ap, runs_name: str, set_help: str = "config overrides") -> None:
    """The options every training benchmark shares: overrides, where runs go, result tag, baseline, progress."""
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=set_help)
    ap.add_argument("--runs", default=str(REPO_ROOT / "runs" / runs_name), help="where run folders go")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-progress", action="store_true")

