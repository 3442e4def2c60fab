"""Hubness of cross-domain search with generic features, and what centring / CSLS do about it.

Setting (``../shared/data/sketchy_mini``): gallery = the photos of the 21 unseen
classes of ``sketchy_unseen21`` (525), queries = their sketches (525); the
sketch statistics (sketch mean, CSLS's ``r_g``) come from sketches of the
*other* 104 classes only (``--stat-per-class`` per class), so the queries never
inform the statistics. Model: ``--model pretrained`` (ImageNet
EfficientNet-Lite0, cosine), at ``--image-size`` (default 224, the model's own).

For ``none`` / ``center`` / ``csls`` (:mod:`sbir.index.hubness`, the code the
index uses: ``Hubness.fit`` + ``Hubness.scores``) it reports

* hubness: ``top10_hub_share`` = the most frequent top-10 photo's share of all
  queries (in how many queries' top 10 it is), ``top1_hub_share`` likewise
  for the first hit, ``max_k_occurrence`` = that photo's count, and the
  skewness of the 10-occurrence distribution ``N_10`` over the gallery;
* accuracy: ``p@10`` and ``map@all`` (class-level relevance;
  ``sbir.metrics.category``).

With the statistics shipped for the model (see below) it also reports
``center+shipped_stats`` and ``csls+shipped_stats``: what ``sbir index build``
does without ``--sketch-stats``.

``--write-default`` also writes the sketch statistics shipped with sbir for the
model and size (``src/sbir/index/stats/<model>@<size>.npz``): sketches of the
Sketchy classes outside ``sketchy_unseen21`` and Quick, Draw! drawings of
classes outside it, evenly subsampled to ``--default-size``.

    python benchmarks/hubness.py [--image-size 224] [--write-default]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SHARED_DATA, run_main, write_result  # noqa: E402

from sbir.data.image_io import is_image_file  # noqa: E402
from sbir.data.records import FileRef  # noqa: E402
from sbir.data.zeroshot import load_class_list, normalize_class_name  # noqa: E402
from sbir.engine.embed import embed_images  # noqa: E402
from sbir.engine.inference import load_model  # noqa: E402
from sbir.index.hubness import (  # noqa: E402
    HUBNESS_CHOICES,
    Hubness,
    SketchStats,
    default_stats_path,
    load_default_stats,
    save_default_stats,
)
from sbir.metrics.category import average_precision, precision_at_k  # noqa: E402


def rel(path: Path) -> str:
    """A path relative to the repository or the shared data root (results never hold absolute paths)."""
    path = Path(path).resolve()
    for root, tag in ((SHARED_DATA, "$SHARED_DATA"), (REPO_ROOT, ".")):
        try:
            return f"{tag}/{path.relative_to(root).as_posix()}"
        except ValueError:
            continue
    return path.name


def class_files(folder: Path) -> dict[str, list[Path]]:
    return {
        d.name: sorted(p for p in d.iterdir() if is_image_file(p.name))
        for d in sorted(folder.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def hub_stats(scores: np.ndarray, k: int = 10) -> dict:
    order = np.argsort(-scores, axis=1, kind="stable")
    n_q, n_g = scores.shape
    nk = np.bincount(order[:, :k].ravel(), minlength=n_g).astype(np.float64)
    n1 = np.bincount(order[:, 0], minlength=n_g)
    sd = nk.std()
    return {
        "top10_hub_share": round(float(nk.max() / n_q), 4),
        "top1_hub_share": round(float(n1.max() / n_q), 4),
        "max_k_occurrence": int(nk.max()),
        "n10_skewness": round(float(((nk - nk.mean()) ** 3).mean() / sd**3), 3) if sd > 0 else 0.0,
        "photos_never_in_top10": int((nk == 0).sum()),
    }


def accuracy(scores: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> dict:
    aps, p10 = [], []
    for i in range(len(scores)):
        relevant = g_labels == q_labels[i]
        aps.append(average_precision(scores[i], relevant))
        p10.append(precision_at_k(scores[i], relevant, 10))
    return {"map@all": round(float(np.mean(aps)), 4), "p@10": round(float(np.mean(p10)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "sketchy_mini"))
    ap.add_argument("--quickdraw", default=str(SHARED_DATA / "quickdraw_mini"))
    ap.add_argument("--model", default="pretrained")
    ap.add_argument("--image-size", type=int, default=None, help="default: the model's (224 for pretrained)")
    ap.add_argument("--stat-per-class", type=int, default=5, help="statistics sketches per non-query class")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--write-default", action="store_true", help="also write the shipped default statistics")
    ap.add_argument("--default-size", type=int, default=512, help="sketches in the shipped default")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model, cfg, model_id = load_model(args.model)
    size = int(args.image_size or cfg.data.image_size)
    flip = bool(cfg.eval.flip_tta)
    data = Path(args.data)
    unseen = {normalize_class_name(c) for c in load_class_list("sketchy_unseen21")}
    photos, sketches = class_files(data / "photo"), class_files(data / "sketch")
    test_classes = [c for c in photos if normalize_class_name(c) in unseen]
    other = [c for c in sketches if normalize_class_name(c) not in unseen]
    if len(test_classes) != 21:
        raise SystemExit(f"expected the 21 sketchy_unseen21 classes in {data}, found {len(test_classes)}")
    g_paths = [p for c in test_classes for p in photos[c]]
    g_labels = np.array([c for c in test_classes for _ in photos[c]])
    q_paths = [p for c in test_classes for p in sketches[c]]
    q_labels = np.array([c for c in test_classes for _ in sketches[c]])
    s_paths = [p for c in other for p in sketches[c][: args.stat_per_class]]

    def embed(refs, domain, desc):
        res = embed_images(
            model,
            refs,
            domain,
            size,
            batch_size=args.batch_size,
            flip_tta=flip,
            progress=not args.no_progress,
            desc=desc,
        )
        assert len(res.indices) == len(refs), res.errors
        return res.embeddings.astype(np.float32)

    t_embed = time.perf_counter()
    g = embed([FileRef(p) for p in g_paths], "photo", "photos")
    q = embed([FileRef(p) for p in q_paths], "sketch", "query sketches")
    s = embed([FileRef(p) for p in s_paths], "sketch", "statistics sketches")
    embed_s = time.perf_counter() - t_embed
    stats = SketchStats(s, "sketchy_mini other classes")

    methods = {}
    for method in HUBNESS_CHOICES:
        hub = Hubness.fit(method, g, stats)
        scores = hub.scores(q, g)
        methods[method] = {**hub_stats(scores), **accuracy(scores, q_labels, g_labels)}
        if hub.csls:
            methods[method]["r_g_mean"] = round(float(hub.r_g.mean()), 4)
    shipped = load_default_stats(model_id, size)
    if shipped is not None and not args.write_default:  # what `sbir index build` uses without --sketch-stats
        for method in ("center", "csls"):
            hub = Hubness.fit(method, g, shipped)
            scores = hub.scores(q, g)
            methods[f"{method}+shipped_stats"] = {**hub_stats(scores), **accuracy(scores, q_labels, g_labels)}
        payload_shipped = {"path": rel(default_stats_path(model_id, size)), "source": shipped.source}
    else:
        payload_shipped = None
    best = max(methods, key=lambda m: (methods[m]["map@all"], -methods[m]["top10_hub_share"]))
    payload = {
        "command": "python benchmarks/hubness.py " + " ".join(sys.argv[1:]),
        "model": model_id,
        "image_size": size,
        "flip_tta": flip,
        "gallery": f"{rel(data / 'photo')} (sketchy_unseen21: {len(test_classes)} classes, {len(g_paths)} photos)",
        "queries": f"{rel(data / 'sketch')} (the same classes: {len(q_paths)} sketches)",
        "sketch_statistics": f"{rel(data / 'sketch')}: first {args.stat_per_class} sketches of each of the other "
        f"{len(other)} classes ({len(s_paths)})",
        "csls_k": Hubness().k,
        "methods": methods,
        "best_by_map": best,
        "shipped_stats": payload_shipped,
        "embed_seconds": round(embed_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    if args.write_default:
        from sbir.data.formats.quickdraw import load_quickdraw, ndjson_files

        qd_root = Path(args.quickdraw)
        qd_classes = [f.stem for f in ndjson_files(qd_root) if normalize_class_name(f.stem) not in unseen]
        qd = load_quickdraw(qd_root, size=256, max_per_class=1, classes=qd_classes)
        half = args.default_size // 2
        pick = np.linspace(0, len(qd) - 1, min(half, len(qd))).round().astype(int)
        qd_emb = embed([qd[i].image for i in pick], "sketch", "quickdraw sketches")
        sk_pick = np.linspace(0, len(s) - 1, min(args.default_size - len(pick), len(s))).round().astype(int)
        vecs = np.concatenate([s[sk_pick], qd_emb])
        src = (
            f"{len(sk_pick)} sketchy_mini sketches of the classes outside sketchy_unseen21 + {len(pick)} "
            f"quickdraw_mini drawings of classes outside it (benchmarks/hubness.py --write-default)"
        )
        path = save_default_stats(model_id, size, vecs, src)
        payload["default_stats"] = {"path": rel(path), "sketches": len(vecs), "source": src}
    write_result("hubness" + (f"-{args.tag}" if args.tag else ""), payload)


if __name__ == "__main__":
    sys.exit(run_main(main))
