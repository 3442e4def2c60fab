"""CLI commands ``sbir index build|update|info`` and ``sbir search``.

``add_index_commands(subparsers)`` registers them on the ``sbir`` parser; each
sets ``func(args) -> int``. Problems the user can fix raise
:class:`~sbir.errors.SbirError`, which ``sbir``'s main prints as ``error: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sbir.engine.runtime import RUNTIME_CHOICES
from sbir.errors import DataError, SbirError
from sbir.index.faiss_ops import APPROX_CHOICES, AUTO_THRESHOLD

_FMT = argparse.RawDescriptionHelpFormatter


def _print_report(report, as_json: bool, verb: str) -> None:
    for path, reason in report.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    if not report.written:
        print(f"index {report.index_dir} is up to date ({report.images} images, nothing changed)")
        return
    rate = f", {report.images_per_s:.1f} images/s" if report.embedded else ""
    print(
        f"{verb} {report.index_dir} ({report.generation}): {report.images} images "
        f"[added {report.added}, changed {report.changed}, removed {report.removed}, unchanged {report.unchanged}; "
        f"embedded {report.embedded}, reused {report.reused}, skipped {len(report.skipped)}], "
        f"index {report.kind}, {report.seconds:.1f} s{rate}"
    )


def cmd_build(args: argparse.Namespace) -> int:
    from sbir.index.builder import build_index

    report = build_index(
        args.photos,
        args.model,
        args.out,
        approx=args.approx,
        approx_threshold=args.approx_threshold,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        runtime=args.runtime,
        jpeg_draft=args.jpeg_draft,
    )
    _print_report(report, args.json, "built")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from sbir.index.builder import update_index

    report = update_index(
        args.index,
        photos_dir=args.photos,
        model_override=args.model,
        approx=args.approx,
        approx_threshold=args.approx_threshold,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        progress=not args.no_progress,
        runtime=args.runtime,
    )
    _print_report(report, args.json, "updated")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from sbir.index.store import Index

    info = Index.open(args.index).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def load_query_image(path: str | Path, size: int = 256):
    """A sketch query from an image file, or from a ``.json`` file of strokes (``[[x...],[y...]]`` per stroke)."""
    from sbir.data.image_io import load_image
    from sbir.data.strokes import rasterize_strokes

    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise DataError(f"sketch {p} does not exist; pass a sketch image or a strokes .json file") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{p} is not valid JSON ({exc}); a strokes file holds [[[x...],[y...]], ...]") from exc
        strokes = data.get("strokes", data.get("drawing")) if isinstance(data, dict) else data
        return rasterize_strokes(strokes, size=size, source=str(p))
    return load_image(p)


def cmd_search(args: argparse.Namespace) -> int:
    from sbir.index.model import QueryEncoder
    from sbir.index.store import Index

    if args.k < 1:
        raise SbirError(f"-k must be >= 1, got {args.k}")
    t0 = time.perf_counter()
    index = Index.open(args.index, ef_search=args.ef_search, nprobe=args.nprobe)
    img = load_query_image(args.sketch)
    encoder = QueryEncoder.for_index(index, override=args.model, device=args.device, runtime=args.runtime)
    t1 = time.perf_counter()
    q = encoder.encode([img])[0]
    t2 = time.perf_counter()
    hits = index.search(q, args.k, model_id=encoder.model_id)
    t3 = time.perf_counter()
    if args.json:
        out = {
            "query": str(args.sketch),
            "index": str(args.index),
            "model_id": encoder.model_id,
            "k": args.k,
            "results": [
                {"rank": h.rank, "id": h.id, "score": round(h.score, 6), "path": h.path, "abs_path": str(index.gallery / h.path)}
                for h in hits
            ],
            "timings_ms": {"load": round((t1 - t0) * 1e3, 2), "embed": round((t2 - t1) * 1e3, 2), "search": round((t3 - t2) * 1e3, 2)},
        }
        print(json.dumps(out, indent=2))
    else:
        print(f"# {len(hits)} results for {args.sketch} in {index.gallery} ({len(index)} images, {index.kind})")
        for h in hits:
            print(f"{h.rank:>3}  {h.score:.4f}  {index.gallery / h.path}")
    return 0


def _common_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--workers", type=int, default=None, help="parallel image-decoding processes (default: min(4, CPU cores))"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def add_index_commands(subparsers) -> None:
    """Register ``index`` (build, update, info) and ``search`` on the ``sbir`` sub-command parser."""
    p_index = subparsers.add_parser(
        "index",
        help="build and maintain a persistent photo index",
        description="Build, update and inspect a persistent FAISS index of photo embeddings.",
    )
    sub = p_index.add_subparsers(dest="index_command", metavar="{build,update,info}")
    sub.required = True

    b = sub.add_parser(
        "build",
        help="embed every photo under a folder into a new index",
        formatter_class=_FMT,
        description=(
            "Embed every image under PHOTOS_DIR (recursively: jpg, png, webp, bmp, ...) and store the vectors\n"
            "in a FAISS index with a manifest (relative path, size, mtime, SHA-256) and the model's id and config.\n"
            "Unreadable images are reported and skipped. Writes are atomic: a killed build leaves no broken index."
        ),
        epilog=(
            "examples:\n"
            "  sbir index build photos/ --model runs/shoes --out shoes.idx\n"
            "  sbir index build photos/ --model pretrained --out demo.idx --approx hnsw"
        ),
    )
    b.add_argument("photos", metavar="PHOTOS_DIR", help="folder of gallery photos (searched recursively)")
    b.add_argument(
        "--model", required=True, help="run folder or .safetensors written by 'sbir train', or 'pretrained' (ImageNet features)"
    )
    b.add_argument("--out", required=True, metavar="INDEX_DIR", help="folder to write the index to (new or empty)")
    b.add_argument(
        "--approx",
        choices=APPROX_CHOICES,
        default="auto",
        help="nearest-neighbour index: none (exact), hnsw, ivfpq, or auto = hnsw from --approx-threshold vectors, "
        "exact below (default auto)",
    )
    b.add_argument(
        "--approx-threshold", type=int, default=AUTO_THRESHOLD, help=f"gallery size where auto switches to HNSW (default {AUTO_THRESHOLD})"
    )
    b.add_argument("--image-size", type=int, default=None, help="input size for the model (default: the model's config)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    b.add_argument(
        "--runtime", choices=RUNTIME_CHOICES, default="auto",
        help="encoder runtime (recorded in the index): auto = the fastest one 'sbir export' wrote and checked, "
        "else torch (default auto)",
    )
    b.add_argument("--jpeg-draft", action="store_true", help="decode JPEGs at reduced scale (faster; recorded)")
    _common_embed_args(b)
    b.set_defaults(func=cmd_build)

    u = sub.add_parser(
        "update",
        help="embed new or changed photos, drop deleted ones",
        description=(
            "Re-scan the index's gallery: embed only new or changed files (by size, mtime and content hash), "
            "reuse vectors of unchanged or moved files, drop deleted ones. Uses the model recorded in the index."
        ),
    )
    u.add_argument("index", metavar="INDEX_DIR", help="index folder made by 'sbir index build'")
    u.add_argument("--photos", default=None, metavar="DIR", help="the gallery moved: its new folder")
    u.add_argument("--model", default=None, help="where the index's model is now (must have the same model id)")
    u.add_argument("--approx", choices=APPROX_CHOICES, default=None, help="change the index kind (default: keep)")
    u.add_argument("--approx-threshold", type=int, default=None, help="change the auto threshold (default: keep)")
    u.add_argument("--runtime", choices=RUNTIME_CHOICES, default=None, help="must be the index's runtime (default: it)")
    _common_embed_args(u)
    u.set_defaults(func=cmd_update)

    i = sub.add_parser("info", help="show an index's gallery, size, model and kind", description="Describe an index.")
    i.add_argument("index", metavar="INDEX_DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    s = subparsers.add_parser(
        "search",
        help="find the photos matching a sketch",
        formatter_class=_FMT,
        description=(
            "Embed SKETCH with the index's model and print the top-k photos with scores (cosine similarity; minus\n"
            "the euclidean distance for models tested with euclidean distance; higher is better).\n"
            "SKETCH is an image, or a .json file of strokes ([[[x...],[y...]], ...] as Quick, Draw!'s drawing)."
        ),
        epilog="example:\n  sbir search shoes.idx my_sketch.png -k 10 --json",
    )
    s.add_argument("index", metavar="INDEX_DIR", help="index folder made by 'sbir index build'")
    s.add_argument("sketch", metavar="SKETCH", help="sketch image (png, jpg, ...) or strokes .json")
    s.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    s.add_argument("--json", action="store_true", help="print results as JSON")
    s.add_argument("--model", default=None, help="load the index's model from here (must have the same model id)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--runtime", choices=RUNTIME_CHOICES, default=None, help="must be the index's runtime (default: it)")
    s.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (higher = better recall, slower)")
    s.add_argument("--nprobe", type=int, default=None, help="IVF-PQ lists to visit (higher = better recall, slower)")
    s.set_defaults(func=cmd_search)
