"""Data-parallel training throughput: samples/s of `sbir train` with 1 and 2 processes (torchrun, gloo on CPU).

Generates a small paired dataset (``--photos`` photos, 2 sketches each, ``--image-size`` px), trains one
epoch of ``--steps`` optimizer steps at global batch ``--batch`` for each process count in ``--nproc``,
and reads the per-step timestamps rank 0 logs (``SBIR_STEP_LOG``): samples/s = batch x (steps - 1) /
(time of the last step - time of the first), so start-up, data generation and validation are excluded.
Every process gets ``--threads`` intra-op threads; on a machine with fewer cores than processes x threads
this measures the overhead of the distributed machinery (gathers, gradient all-reduce), not a speed-up.

Writes ``benchmarks/results/ddp_scaling[-TAG].json`` (``--dry-run``: print only)::

    python benchmarks/ddp_scaling.py                                  # the full run (quiet machine)
    python benchmarks/ddp_scaling.py --steps 4 --batch 8 --tag smoke  # smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine, run_main, write_result  # noqa: E402


def _train(nproc: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    log = out.parent / f"steps-{nproc}.jsonl"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "sbir.cli", "train", "--data", str(data)]
    cmd += ["--out", str(out), "--epochs", "1", "--batch-size", str(args.batch), "--image-size", str(args.image_size)]
    cmd += ["--backbone", args.backbone, "--workers", "0", "--no-progress", "--device", "cpu"]
    cmd += ["--set", "model.pretrained=false", f"optim.max_steps_per_epoch={args.steps}", *args.set]
    env = {
        **os.environ,
        "SBIR_STEP_LOG": str(log),
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(REPO_ROOT / "src"),
    }
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"training with {nproc} process(es) failed:\n{res.stderr[-3000:]}")
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    span = steps[-1]["time"] - steps[0]["time"]
    return {
        "nproc": nproc,
        "steps": len(steps),
        "samples_per_s": round(args.batch * (len(steps) - 1) / span, 2) if len(steps) > 1 and span > 0 else None,
        "seconds_per_step": round(span / max(len(steps) - 1, 1), 3),
        "wall_s_with_startup_and_validation": round(time.time() - t0, 1),
        "first_loss": steps[0]["train_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--photos", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32, help="global batch size")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--tag", default="")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()

    from sbir.data.synthetic import generate_paired_dataset

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate_paired_dataset(
            data, n_train_photos=args.photos, n_test_photos=8, sketches_per_photo=2, image_size=args.image_size,
            seed=0, progress=False,
        )  # fmt: skip
        for n in args.nproc:
            results.append(_train(n, data, Path(tmp) / f"run-{n}", args))
    base = next((r["samples_per_s"] for r in results if r["nproc"] == 1), None)
    for r in results:
        r["speedup_vs_1"] = round(r["samples_per_s"] / base, 3) if base and r["samples_per_s"] else None
    payload = {
        "command": "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:]),
        "data": f"generated paired dataset: {args.photos} photos x 2 sketches, {args.image_size} px",
        "settings": {k: v for k, v in vars(args).items() if k not in ("dry_run", "tag")},
        "results": results,
    }
    if args.dry_run:
        payload["machine"] = machine()
        print(json.dumps(payload, indent=1))
    else:
        write_result("ddp_scaling" + (f"-{args.tag}" if args.tag else ""), payload)


if __name__ == "__main__":
    sys.exit(run_main(main))
