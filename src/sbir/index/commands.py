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
from sbir.errors import SbirError
from sbir.index.dba import DEFAULT_DBA
from sbir.index.expansion import DEFAULT_EXPAND, check_expand
from sbir.index.faiss_ops import APPROX_CHOICES, AUTO_THRESHOLD
from sbir.index.hubness import DEFAULT_HUBNESS, HUBNESS_CHOICES

_FMT = argparse.RawDescriptionHelpFormatter
DEFAULT_K = 10


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _kind(kind: str) -> str:
    return "exact search" if kind == "none" else f"index {kind}"


def _print_report(report, as_json: bool, verb: str) -> None:
    for path, reason in report.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if report.runtime_note:
        print(f"runtime: {report.runtime_note}", file=sys.stderr)
    if report.hubness_note:
        print(f"hubness: {report.hubness_note}", file=sys.stderr)
        expansion = f"{_plural(report.expand, 'photo')} per query" if report.expand else "none"
        print(f"query expansion: {expansion} (recorded in the index)", file=sys.stderr)
        augmentation = f"each photo averaged with its {_plural(report.dba, 'nearest photo')}" if report.dba else "none"
        print(f"database-side augmentation: {augmentation} (recorded in the index)", file=sys.stderr)
    if report.ray is not None and report.embedded:
        print(f"embedded on Ray ({report.ray or 'local cluster'})", file=sys.stderr)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    if not report.written:
        print(f"index {report.index_dir} is up to date ({_plural(report.images, 'image')}, nothing changed)")
        return
    rate = f", {report.images_per_s:.1f} images/s" if report.embedded else ""
    # files with the same content are embedded once: say so, or the counts do not add up
    dupes = report.added + report.changed - report.embedded - report.reused - len(report.skipped)
    dup = f", {dupes} duplicate{'s' if dupes != 1 else ''} of another file" if dupes > 0 else ""
    print(
        f"{verb} {report.index_dir} ({report.generation}): {_plural(report.images, 'image')} "
        f"[added {report.added}, changed {report.changed}, removed {report.removed}, unchanged {report.unchanged}; "
        f"embedded {report.embedded}, reused {report.reused}{dup}, skipped {len(report.skipped)}], "
        f"{_kind(report.kind)}, {report.seconds:.1f} s{rate}"
    )


def _embed_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of build_index / update_index shared by ``index build`` and ``index update``."""
    return {
        "approx": args.approx,
        "approx_threshold": args.approx_threshold,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "device": args.device,
        "progress": not args.no_progress,
        "ray": args.ray,
        "ray_workers": args.ray_workers,
    }


def _store_arg(text: str) -> str:
    """``--store`` checked while parsing (a bad URI is a one-line usage error, exit 2)."""
    from sbir.index.milvus_store import store_arg

    return store_arg(text)


def cmd_build(args: argparse.Namespace) -> int:
    from sbir.index.builder import build_index

    out = args.out if args.out is not None else f"{Path(args.photos).expanduser().resolve().name}-index"
    if args.model is None:
        from sbir.engine.inference import default_model_spec

        spec = default_model_spec()
        why = "the sketch model shipped with sbir" if spec != "pretrained" else "the shipped model is not installed"
        print(f"model: {spec} ({why}; --model RUN to use your own)", file=sys.stderr)
    report = build_index(
        args.photos,
        args.model,
        out,
        image_size=args.image_size,
        overwrite=args.overwrite,
        runtime=args.runtime,
        export_dir=args.export,
        jpeg_draft=args.jpeg_draft,
        hubness=args.hubness,
        sketch_stats=args.sketch_stats,
        store=args.store,
        expand=args.expand,
        dba=args.dba,
        **_embed_kwargs(args),
    )
    _print_report(report, args.json, "built")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from sbir.index.builder import update_index

    report = update_index(
        args.index, photos_dir=args.photos, model_override=args.model, runtime=args.runtime, **_embed_kwargs(args)
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
    """A sketch query from an image file or a strokes ``.json`` file (see :mod:`sbir.data.query`)."""
    from sbir.data.query import load_query

    return load_query(path, size=size)[0]


def _hit_dicts(hits, index) -> list[dict]:
    return [
        {
            "rank": h.rank,
            "id": h.id,
            "score": round(h.score, 6),
            "path": h.path,
            "abs_path": str(index.gallery / h.path),
        }
        for h in hits
    ]


def cmd_search(args: argparse.Namespace) -> int:
    from sbir.data.query import load_query
    from sbir.index.model import QueryEncoder
    from sbir.index.store import Index

    if args.k is not None and args.k < 1:
        raise SbirError(f"-k must be >= 1, got {args.k}")
    if args.expand is not None:
        check_expand(args.expand)  # before the model is loaded
    t0 = time.perf_counter()
    index = Index.open(args.index, ef_search=args.ef_search, nprobe=args.nprobe)
    queries = [load_query(path) for path in args.sketch]  # (image, k from a strokes file or None)
    ks = [args.k or k_file or DEFAULT_K for _, k_file in queries]
    encoder = QueryEncoder.for_index(index, override=args.model, device=args.device, runtime=args.runtime)
    t1 = time.perf_counter()
    q = encoder.encode([img for img, _ in queries])  # one batch for all sketches
    t2 = time.perf_counter()
    rerank_k = 0 if args.no_rerank else encoder.rerank_k  # a checkpoint with a trained re-ranker (model.rerank)
    all_hits = index.search_many(q, max(max(ks), rerank_k), model_id=encoder.model_id, expand=args.expand)
    results = []
    for (img, _), k, hits in zip(queries, ks, all_hits, strict=True):
        if rerank_k:
            hits = encoder.rerank(img, hits, index)
        results.append(hits[:k])
    t3 = time.perf_counter()
    timings = {
        "load": round((t1 - t0) * 1e3, 2),
        "embed": round((t2 - t1) * 1e3, 2),
        "search": round((t3 - t2) * 1e3, 2),
    }
    if args.json:
        head = {
            "index": str(args.index),
            "model_id": encoder.model_id,
            "hubness": index.hubness.method,
            "expand": index.model.expand if args.expand is None else args.expand,
        }
        if len(args.sketch) == 1:  # the single-sketch shape scripts already parse
            out = {"query": str(args.sketch[0]), **head, "k": ks[0], "results": _hit_dicts(results[0], index)}
        else:
            out = {
                **head,
                "queries": [
                    {"query": str(path), "k": k, "results": _hit_dicts(hits, index)}
                    for path, k, hits in zip(args.sketch, ks, results, strict=True)
                ],
            }
        out["timings_ms"] = timings
        print(json.dumps(out, indent=2))
    else:
        for path, hits in zip(args.sketch, results, strict=True):
            print(
                f"# {_plural(len(hits), 'result')} for {path} in {index.gallery} "
                f"({_plural(len(index), 'image')}, {_kind(index.kind)})"
            )
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
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="decode and embed on Ray Data actors that each load the model once (pip install 'sbir[scale]'): "
        "alone, on a local cluster started for this command; with ADDRESS (auto, ray://head:10001), on that "
        "cluster, whose nodes must see the photos under the same path. Put --ray after PHOTOS_DIR/INDEX_DIR",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="with --ray: number of embedding actors, one CPU each (default: one per CPU of the cluster)",
    )


def add_query_model_args(p: argparse.ArgumentParser) -> None:
    """``--model --device --ef-search --nprobe``: how ``sbir search`` and ``sbir serve`` load and query an index."""
    p.add_argument("--model", default=None, help="load the index's model from here (must have the same model id)")
    p.add_argument("--device", default="cpu", help="torch device for the query encoder: cpu, cuda, cuda:N")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (higher = better recall, slower)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF-PQ lists to visit (higher = better recall, slower)")


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
            "  sbir index build photos/              # the shipped general model, into ./photos-index\n"
            "  sbir index build photos/ --model runs/shoes --out shoes.idx\n"
            "  sbir index build photos/ --model pretrained --out demo.idx --approx hnsw\n"
            "  sbir index build photos/ --model runs/zs --out zs.idx --hubness csls --sketch-stats my_sketches/\n"
            "  sbir index build photos/ --model runs/shoes --out shoes.idx --ray --ray-workers 8\n"
            "  sbir index build /shared/photos --model /shared/runs/shoes --out /shared/shoes.idx --ray auto"
        ),
    )
    b.add_argument("photos", metavar="PHOTOS_DIR", help="folder of gallery photos (searched recursively)")
    b.add_argument(
        "--model",
        default=None,
        help="'general' (the sketch model shipped with sbir; the default), a run folder or .safetensors written by "
        "'sbir train', or 'pretrained' (ImageNet features)",
    )
    b.add_argument(
        "--out",
        default=None,
        metavar="INDEX_DIR",
        help="folder to write the index to, new or empty (default: ./<PHOTOS_DIR name>-index)",
    )
    b.add_argument(
        "--approx",
        choices=APPROX_CHOICES,
        default="auto",
        help="nearest-neighbour index: none (exact), hnsw, ivfpq, or auto = hnsw from --approx-threshold vectors, "
        "exact below (default auto)",
    )
    b.add_argument(
        "--approx-threshold",
        type=int,
        default=AUTO_THRESHOLD,
        help=f"gallery size where auto switches to HNSW (default {AUTO_THRESHOLD})",
    )
    b.add_argument("--image-size", type=int, default=None, help="input size for the model (default: its config)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    b.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help="encoder runtime (recorded in the index): auto = the fastest one 'sbir export' wrote and checked, "
        "else torch (default auto)",
    )
    b.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="the folder 'sbir export MODEL --format onnx --out DIR' wrote, when it is not MODEL/export: needed for "
        "--model general and pretrained (e.g. sbir export general --format onnx --out general-onnx --images PHOTOS)",
    )
    b.add_argument("--jpeg-draft", action="store_true", help="decode JPEGs at reduced scale (faster; recorded)")
    b.add_argument(
        "--hubness",
        choices=HUBNESS_CHOICES,
        default=None,
        help="hubness correction (recorded; updates keep it): center = subtract the mean photo / mean sketch "
        "embedding, csls = center + cross-domain local scaling, none. Default: "
        f"{DEFAULT_HUBNESS} when sketch statistics exist (--sketch-stats, or shipped for the model), else none",
    )
    b.add_argument(
        "--expand",
        type=int,
        default=None,
        metavar="K",
        help="query expansion (recorded): search again with each query moved toward its K best photos; 0 = none. "
        f"Default: {DEFAULT_EXPAND} when the index corrects hubness, else 0",
    )
    b.add_argument(
        "--dba",
        type=int,
        default=None,
        metavar="K",
        help="database-side augmentation (recorded; updates recompute it): each photo is searched as the mean of "
        f"itself and its K nearest gallery photos; 0 = none. Default: {DEFAULT_DBA} when the index corrects "
        "hubness, else 0",
    )
    b.add_argument(
        "--sketch-stats",
        default=None,
        metavar="DIR",
        help="folder of sketch images (like the queries) to estimate the sketch statistics from",
    )
    b.add_argument(
        "--store",
        type=_store_arg,
        default=None,
        metavar="STORE",
        help="where the vectors are searched (recorded; updates keep it): faiss = index.faiss in INDEX_DIR "
        "(default), milvus://HOST:PORT/COLLECTION[?shards=N&replicas=N] = a Milvus server, PATH.db = a Milvus "
        "Lite file (pip install 'sbir[milvus]')",
    )
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
            'SKETCH is an image, or a .json file of strokes: {"strokes": [[[x...],[y...]], ...], "k": 10,\n'
            '"canvas": {"width": W, "height": H}, "stroke_width": 3} (only strokes is required), a bare\n'
            "list of strokes, or a Quick, Draw! record; the same format and limits as the REST API."
        ),
        epilog=(
            "examples:\n  sbir search shoes.idx my_sketch.png -k 10 --json\n"
            "  sbir search shoes.idx a.png b.png --json   # one result list per sketch"
        ),
    )
    s.add_argument("index", metavar="INDEX_DIR", help="index folder made by 'sbir index build'")
    s.add_argument(
        "sketch",
        metavar="SKETCH",
        nargs="+",
        help="sketch image (png, jpg, ...) or strokes .json; several are embedded in one batch, and --json "
        "then prints {'queries': [{'query', 'k', 'results'}, ...]}",
    )
    s.add_argument("-k", type=int, default=None, help=f"number of results (default: the file's k, else {DEFAULT_K})")
    s.add_argument("--json", action="store_true", help="print results as JSON")
    add_query_model_args(s)
    s.add_argument(
        "--expand",
        type=int,
        default=None,
        metavar="K",
        help="query expansion with the K best photos, 0 = none (default: the index's recorded setting)",
    )
    s.add_argument(
        "--no-rerank", action="store_true", help="skip the checkpoint's token re-ranker (model.rerank) if it has one"
    )
    s.add_argument("--runtime", choices=RUNTIME_CHOICES, default=None, help="must be the index's runtime (default: it)")
    s.set_defaults(func=cmd_search)
