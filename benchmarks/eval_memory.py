"""Peak memory and wall time of sbir.metrics.category_report at benchmark scale.

Random L2-normalised float32 embeddings with a class signal
(``x = normalise(signal * centre[label] + noise)``) for ``--sketches`` queries
and ``--photos`` gallery items; runs the full category report (mAP@all,
mAP@200, P@100, P@200 and every variant) and records:

* ``peak_rss_mb``: the process's peak resident set size (``ru_maxrss``),
  everything included (interpreter, numpy, embeddings, evaluation);
* ``rss_before_eval_mb``: resident size just before the evaluation;
* ``tracemalloc_peak_eval_mb`` (with ``--tracemalloc``): peak of traced
  (numpy) allocations during the evaluation alone;
* ``eval_seconds``: wall time of ``category_report``.

Prints JSON and writes it to ``benchmarks/results/eval_memory.json`` (or
``--out``). Usage::

    python benchmarks/eval_memory.py                      # 100k x 50k, D=512
    python benchmarks/eval_memory.py --sketches 10000 --photos 5000
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, portable, resolve_path, run_main  # noqa: E402

from sbir.metrics import category_report  # noqa: E402


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB else


def _embeddings(rng, n: int, labels: np.ndarray, centres: np.ndarray, signal: float) -> np.ndarray:
    """Generate in blocks so no float64 / full-size temporaries inflate the peak."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 8192
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        block = rng.standard_normal((hi - lo, centres.shape[1]), dtype=np.float32)
        block += np.float32(signal) * centres[labels[lo:hi]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:hi] = block
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sketches", type=int, default=100_000)
    p.add_argument("--photos", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--distance", default="cosine", choices=("cosine", "euclidean", "angular"))
    p.add_argument(
        "--signal",
        type=float,
        default=0.3,
        help="class-centre weight relative to the noise (0 = pure noise, 1 = trivial)",
    )
    p.add_argument("--memory-budget-mb", type=float, default=512)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace numpy allocations during the evaluation (slightly slower)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=resolve_path, default=Path(__file__).resolve().parent / "results" / "eval_memory.json")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres *= np.float32(np.sqrt(args.dim))  # same scale as the noise vectors
    sketch_labels = rng.integers(0, args.classes, args.sketches)
    photo_labels = rng.integers(0, args.classes, args.photos)
    t0 = time.perf_counter()
    sketches = _embeddings(rng, args.sketches, sketch_labels, centres, args.signal)
    photos = _embeddings(rng, args.photos, photo_labels, centres, args.signal)
    gen_seconds = time.perf_counter() - t0

    rss_before = _rss_mb()
    if args.tracemalloc:
        tracemalloc.start()
    t0 = time.perf_counter()
    report = category_report(
        sketches,
        sketch_labels,
        photos,
        photo_labels,
        distance=args.distance,
        chunk_size=args.chunk_size,
        memory_budget_mb=args.memory_budget_mb,
    )
    eval_seconds = time.perf_counter() - t0
    traced_peak = None
    if args.tracemalloc:
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    result = {
        "benchmark": "eval_memory",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(__file__, argv),
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "embeddings_mb": round((sketches.nbytes + photos.nbytes) / 2**20, 1),
        "generate_seconds": round(gen_seconds, 2),
        "rss_before_eval_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "tracemalloc_peak_eval_mb": None if traced_peak is None else round(traced_peak, 1),
        "eval_seconds": round(eval_seconds, 2),
        "queries_per_second": round(args.sketches / eval_seconds, 1),
        "metrics": report,
    }
    result = portable(result)  # no absolute paths in results files (see benchmarks/_common.py)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
