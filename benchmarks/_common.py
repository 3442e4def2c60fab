"""Shared helpers for benchmark scripts: machine description, JSON results and portable paths.

Paths in results files
----------------------
A results file under ``benchmarks/results/`` must read the same on every
machine, so it holds no absolute path. Every path a script records (run
folders, configs, data folders, output files, the paths in ``command``) goes
through :func:`portable_path`, which writes it

* relative to the **repository root** for anything inside the repository,
  POSIX style: ``runs/bench_fg_qmul_v1/shoes-20261203-074845``,
  ``configs/fg_qmul_v1.yaml``, ``benchmarks/results/eval_memory.json``;
* as ``data:<path relative to the data root>`` for anything under the shared
  data folder (``$SBIR_SHARED_DATA``, default ``../shared/data`` beside the
  repository): ``data:qmul_v1/shoes``, ``data:sketchy_mini/photo``;
* as ``tmp:<path relative to the temporary folder>`` for scratch space
  (``tempfile.gettempdir()``, i.e. ``$TMPDIR`` or ``/tmp``):
  ``tmp:sbir-serve-load``;
* otherwise relative to the repository root (``../elsewhere/photos``).

Commands are recorded as run from the repository root
(``python benchmarks/<script>.py ...``). The scripts' path options accept the
same spellings (:func:`resolve_path`), so a recorded command can be run again
as written, e.g. ``--photos data:sketchy_mini/photo``. :func:`write_result`
applies :func:`portable` to the whole payload as a last safety net.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data by default; SBIR_SHARED_DATA points elsewhere (e.g. a copy on a GPU machine).
SHARED_DATA = Path(os.environ.get("SBIR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()

DATA_PREFIX = "data:"
TMP_PREFIX = "tmp:"


def _roots(repo_root=None, data_root=None, tmp_root=None) -> list[tuple[str, str]]:
    """(absolute root, prefix) pairs; the prefix "" means repository-relative."""
    roots = [
        (repo_root or REPO_ROOT, ""),
        (data_root or SHARED_DATA, DATA_PREFIX),
        (tmp_root or tempfile.gettempdir(), TMP_PREFIX),
    ]
    out = []
    for root, prefix in roots:
        for form in {os.path.abspath(root), os.path.realpath(root)}:
            out.append((form, prefix))
    return out


def portable_path(path: str | os.PathLike, repo_root=None, data_root=None, tmp_root=None) -> str:
    """``path`` written by the convention of this module (see the module docstring).

    A relative ``path`` is taken relative to the current directory. The ``*_root``
    arguments override the roots (for rewriting files written on another machine).
    """
    p = os.path.abspath(os.fspath(path))
    roots = _roots(repo_root, data_root, tmp_root)
    for candidate in (p, os.path.realpath(p)):
        # The deepest root containing the path wins (e.g. a data root inside the repository).
        best = None
        for root, prefix in roots:
            if candidate == root or candidate.startswith(root.rstrip(os.sep) + os.sep):
                if best is None or len(root) > len(best[0]):
                    best = (root, prefix)
        if best is not None:
            rel = Path(os.path.relpath(candidate, best[0])).as_posix()
            if best[1]:
                return best[1] + ("" if rel == "." else rel)
            return rel
    return Path(os.path.relpath(p, os.path.abspath(repo_root or REPO_ROOT))).as_posix()


def resolve_path(text: str | os.PathLike) -> Path:
    """Inverse of :func:`portable_path` for command-line options: ``data:X`` -> data root / X,
    ``tmp:X`` -> temporary folder / X, anything else as given (relative to the current directory)."""
    s = os.fspath(text)
    if s.startswith(DATA_PREFIX):
        return SHARED_DATA / s[len(DATA_PREFIX) :]
    if s.startswith(TMP_PREFIX):
        return Path(tempfile.gettempdir()) / s[len(TMP_PREFIX) :]
    return Path(s)


# An absolute path at the start of a string, after whitespace or after "=" (``--set data.path=/x``).
_ABS_IN_TEXT = re.compile(r"(?<![^\s=])/[^\s]+")


def portable_text(text: str, **roots) -> str:
    """Every absolute path inside ``text`` (a command line, an override) made portable."""
    return _ABS_IN_TEXT.sub(lambda m: portable_path(m.group(0), **roots), text)


def portable(obj: Any, **roots) -> Any:
    """A copy of a JSON-like ``obj`` with every path (``Path`` objects, absolute paths inside strings) portable."""
    if isinstance(obj, dict):
        return {k: portable(v, **roots) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, **roots) for v in obj]
    if isinstance(obj, os.PathLike):
        return portable_path(obj, **roots)
    if isinstance(obj, str):
        return portable_text(obj, **roots)
    return obj


def command_line(script: str | os.PathLike, argv: Iterable[str] | None = None) -> str:
    """``python benchmarks/<script>.py ARGS`` as run from the repository root, paths portable."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", portable_path(script), *(shlex.quote(portable_text(str(a))) for a in args)])


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
    """Print ``payload`` as JSON and write it to ``benchmarks/results/<name>.json`` with the benchmark name,
    date, machine and (unless ``payload`` has one) the command of this process; every path made portable."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(sys.argv[0], sys.argv[1:]),
        "machine": machine(),
        **payload,
    }
    text = json.dumps(portable(payload), indent=1)
    print(text)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(text + "\n")
    return path


def fold_stats(per_fold: list[dict]) -> dict:
    """Per-fold metrics with their mean and (sample) standard deviation over folds."""
    import statistics

    out: dict = {"per_fold": per_fold}
    for k in per_fold[0]:
        values = [r[k] for r in per_fold]
        out[f"{k}_mean"], out[f"{k}_std"] = statistics.mean(values), statistics.stdev(values)
    return out


def add_training_arguments(ap, runs_name: str, set_help: str = "config overrides") -> None:
    """The options every training benchmark shares: overrides, where runs go, result tag, baseline, progress."""
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=set_help)
    ap.add_argument("--runs", type=resolve_path, default=REPO_ROOT / "runs" / runs_name, help="where run folders go")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-progress", action="store_true")


def resolve_overrides(overrides: Iterable[str]) -> list[str]:
    """``--set key=value`` items with ``data:``/``tmp:`` values turned into real paths."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and (value.startswith(DATA_PREFIX) or value.startswith(TMP_PREFIX)):
            item = f"{key}={resolve_path(value)}"
        out.append(item)
    return out


def run_main(main) -> int:
    """Run a benchmark's ``main()`` as ``sbir`` runs a command: an :class:`~sbir.errors.SbirError` (a data folder
    that is not there, a bad option value) is one line on stderr and exit code 2, not a traceback; otherwise the
    exit code ``main()`` returns (0 when it returns something else, e.g. its result)."""
    from sbir.cli import EXIT_USER_ERROR
    from sbir.errors import SbirError

    try:
        status = main()
    except SbirError as exc:
        hint = (
            ""
            if SHARED_DATA.is_dir()
            else f" (the shared data folder {SHARED_DATA} does not exist: set SBIR_SHARED_DATA to it)"
        )
        print(f"error: {exc}{hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    return status if isinstance(status, int) else 0  # some mains return their result for callers
