"""Index build throughput: ``sbir index build`` on ../shared/data/sketchy_mini/photo.

Builds a fresh index of the 3,125 Sketchy photos (128x128 JPEGs) with the
given model (default: the pretrained ImageNet EfficientNet-Lite0 at its
224 px input) through :func:`sbir.index.build_index`, i.e. scanning, hashing,
parallel decoding in DataLoader workers, embedding and the atomic write, and
reports images/s for the embedding stage and end to end (model loading
excluded and reported separately). Then times ``sbir index update`` with
nothing changed (stat-only check of every file) and after touching 1% of the
files (re-hash, reuse vectors, rewrite).

``--ray-workers N ...`` also builds the same gallery with ``--ray`` (Ray Data
actors on a local cluster of N CPUs, :mod:`sbir.index.ray_embed`) and reports
its photos/s next to the local build's, the cluster start separately, and the
largest difference between the Ray and the local vectors.

Prints JSON and writes ``benchmarks/results/index_build.json``. Usage::

    python benchmarks/index_build.py                    # all 3,125 photos, workers 2
    python benchmarks/index_build.py --limit 500 --workers 0 2
    python benchmarks/index_build.py --limit 600 --workers 2 --ray-workers 2 --out index_build-ray
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import SHARED_DATA, resolve_path, run_main, write_result  # noqa: E402

from sbir.engine.inference import load_model  # noqa: E402
from sbir.index import Index, build_index, update_index  # noqa: E402


def run_record(rep, **fields) -> dict:
    """One build's throughput: embedding stage and end to end (model loading in the driver excluded)."""
    return {
        **fields,
        "images": rep.images,
        "embedded": rep.embedded,
        "skipped": len(rep.skipped),
        "total_s": round(rep.seconds, 2),
        "embed_s": round(rep.embed_seconds, 2),
        "embed_images_per_s": round(rep.images_per_s, 1),
        "end_to_end_images_per_s": round(rep.images / rep.seconds, 1),
    }


def build(gallery: Path, out: Path, args, **options):
    """One timed ``build_index`` of ``gallery`` into ``out`` with the benchmark's model and sizes."""
    return build_index(
        gallery, args.model, out, image_size=args.image_size, batch_size=args.batch_size, progress=False, **options
    )


def ray_run(gallery: Path, out: Path, args, n: int, pre, reference: Index) -> dict:
    """Build with Ray Data on a fresh local cluster of ``n`` CPUs (``n`` actors, one model load each)."""
    from sbir.index.ray_embed import ray_session

    t0 = time.perf_counter()
    with ray_session("", num_cpus=n):
        start_s = time.perf_counter() - t0
        rep = build(gallery, out, args, preloaded=pre, ray="", ray_workers=n)
    diff = float(np.max(np.abs(np.asarray(Index.open(out).vectors) - np.asarray(reference.vectors))))
    record = run_record(rep, executor="ray", ray_workers=n)
    # embed_s includes starting the actors and loading the model in each; the cluster start is apart
    record["ray_cluster_start_s"] = round(start_s, 2)
    record["end_to_end_with_cluster_start_images_per_s"] = round(rep.images / (rep.seconds + start_s), 1)
    record["max_abs_diff_vs_local"] = diff
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=resolve_path, default=SHARED_DATA / "sketchy_mini" / "photo")
    ap.add_argument("--model", default="pretrained")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N photos (sorted paths)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2], help="decoding worker processes to compare")
    ap.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch"],
        help="embedding runtimes to compare (torch, onnx, onnx-int8, openvino: exported ones need "
        "`sbir export RUN` first); each builds its own index, the first one is also timed for updates",
    )
    ap.add_argument(
        "--ray-workers", type=int, nargs="*", default=[], help="also build with --ray on a local cluster of N CPUs"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument(
        "--keep", type=resolve_path, default=None, help="also copy the built index here (for other benchmarks)"
    )
    ap.add_argument("--out", default="index_build")
    args = ap.parse_args()

    photos = Path(args.photos)
    if not photos.is_dir():
        sys.exit(f"error: {photos} not found (../shared/data/sketchy_mini/photo)")
    work = Path(tempfile.mkdtemp(prefix="sbir-bench-build-"))
    try:
        gallery = photos
        if args.limit:
            files = sorted(p for p in photos.rglob("*") if p.is_file())[: args.limit]
            gallery = work / "photos"
            for p in files:
                dst = gallery / p.relative_to(photos)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dst)
        t0 = time.perf_counter()
        pre = load_model(args.model)
        load_s = time.perf_counter() - t0
        runs = []
        for runtime in args.runtimes:
            for workers in args.workers:
                out = work / f"index-{runtime}-w{workers}"
                preloaded = pre if runtime == "torch" else None
                rep = build(gallery, out, args, num_workers=workers, preloaded=preloaded, runtime=runtime)
                record = run_record(rep, executor="local", workers=workers)
                runs.append({"runtime": Index.open(out).info().get("runtime"), **record})
                print(runs[-1], file=sys.stderr, flush=True)
        last = work / f"index-{args.runtimes[0]}-w{args.workers[-1]}"
        index = Index.open(last)
        for n in args.ray_workers:
            runs.append(ray_run(gallery, work / f"index-ray{n}", args, n, pre, index))
            print(runs[-1], file=sys.stderr, flush=True)
        # update with nothing changed: stat every file, no new generation
        t0 = time.perf_counter()
        noop = update_index(last, progress=False, preloaded=pre if args.runtimes[0] == "torch" else None)
        noop_s = time.perf_counter() - t0
        assert not noop.written
        update = None
        if gallery != photos:  # touch 1% of the files (only in our own copy)
            touched = sorted(p for p in gallery.rglob("*") if p.is_file())[::100]
            for p in touched:
                os.utime(p)
            t0 = time.perf_counter()
            rep = update_index(last, progress=False, preloaded=pre if args.runtimes[0] == "torch" else None)
            update = {
                "touched": len(touched),
                "seconds": round(time.perf_counter() - t0, 2),
                "embedded": rep.embedded,
                "reused": rep.reused,
            }
        if args.keep:
            shutil.copytree(last, args.keep, dirs_exist_ok=True)
        write_result(
            args.out,
            {
                "args": vars(args),
                "model_id": index.model_id,
                "image_size": index.model.image_size,
                "dim": index.dim,
                "model_load_s": round(load_s, 2),
                "torch_threads": torch.get_num_threads(),
                "runs": runs,
                "update_nothing_changed_s": round(noop_s, 2),
                "update_after_touching_1pct": update,
                "index_disk_mb": round(sum(p.stat().st_size for p in (last / index.generation).iterdir()) / 1e6, 1),
                "load_average_at_end": os.getloadavg(),
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
