"""Query expansion (``sbir.index.expansion``): choose its setting on some classes, measure it on others.

1. **Choose** ``k`` (photos) and ``w`` (their weight) on *tuning classes*: every other one of the Sketchy
   classes outside ``sketchy_unseen21`` (``../shared/data/sketchy_mini``; all their photos are the gallery,
   the first ``--tune-queries`` sketches of each class the queries), with the sketch statistics (centring,
   CSLS) from the first 5 sketches of the remaining outside classes, and the ImageNet features
   (``--tune-model``, default ``pretrained``), which never trained on any of these classes. ``k`` is kept at
   most 10, since a user's folder may hold few photos of a kind. The setting with the best mAP@all is the
   choice; ``DEFAULT_EXPAND`` / ``EXPAND_WEIGHT`` in ``sbir.index.expansion`` must be it (the script says
   so when they differ).
2. **Measure** the chosen setting on the 21 ``sketchy_unseen21`` classes (525 photos, 525 sketches), as
   ``sbir index build`` sets an index up for each ``--models`` entry: csls with the statistics shipped for
   the model, without and with expansion, and with database-side augmentation (``sbir.index.dba``, its
   ``DEFAULT_DBA`` as chosen by ``benchmarks/general_model.py``) before expanding: mAP@all, P@10 and the
   top-10 hub share (as in ``benchmarks/hubness.py``).

The scores are computed with the index's own functions (``Hubness``, ``expand_queries``);
``tests/index/test_expansion.py`` checks that ``Index.search_many`` ranks exactly so.

    python benchmarks/query_expansion.py [--models pretrained general]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, run_main, write_result  # noqa: E402
from hubness import accuracy, class_files, hub_stats, rel  # noqa: E402

from sbir.data.records import FileRef  # noqa: E402
from sbir.data.zeroshot import load_class_list, normalize_class_name  # noqa: E402
from sbir.engine.embed import embed_images  # noqa: E402
from sbir.engine.inference import load_model  # noqa: E402
from sbir.index.dba import DEFAULT_DBA  # noqa: E402
from sbir.index.expansion import DEFAULT_EXPAND, EXPAND_WEIGHT, expand_queries  # noqa: E402
from sbir.index.hubness import Hubness, SketchStats, load_default_stats  # noqa: E402

K_GRID = (3, 5, 10)
W_GRID = (1.0, 2.0, 4.0, 8.0, 16.0)


def expanded_scores(hub: Hubness, q: np.ndarray, g: np.ndarray, k: int, w: float) -> np.ndarray:
    """(Q, N) scores of raw queries against raw photos after expansion with the ``k`` best photos."""
    qs, gs = hub.queries(q), hub.gallery(g)

    def score(queries):
        s = queries @ gs.T
        return 2 * s - hub.r_g[None, :] if hub.csls else s

    if k == 0:
        return score(qs)
    top = np.argsort(-score(qs), axis=1, kind="stable")[:, :k]
    return score(expand_queries(qs, gs[top], np.ones(top.shape, bool), w))


def measure(scores: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray) -> dict:
    hubs = hub_stats(scores)
    return {**accuracy(scores, q_labels, g_labels), "top10_hub_share": hubs["top10_hub_share"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED_DATA / "sketchy_mini"))
    ap.add_argument("--tune-model", default="pretrained")
    ap.add_argument("--tune-queries", type=int, default=10, help="query sketches per tuning class")
    ap.add_argument("--models", nargs="+", default=["pretrained", "general"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = Path(args.data)
    unseen = {normalize_class_name(c) for c in load_class_list("sketchy_unseen21")}
    photos, sketches = class_files(data / "photo"), class_files(data / "sketch")
    test_classes = [c for c in photos if normalize_class_name(c) in unseen]
    outside = [c for c in photos if normalize_class_name(c) not in unseen]
    tune_classes, stat_classes = outside[0::2], outside[1::2]

    def embed(model, cfg, paths, domain, size):
        res = embed_images(
            model, [FileRef(p) for p in paths], domain, size, batch_size=args.batch_size,
            flip_tta=bool(cfg.eval.flip_tta), progress=True, desc=f"{domain}s",
        )  # fmt: skip
        assert len(res.indices) == len(paths), res.errors
        return res.embeddings.astype(np.float32)

    # 1. choose on the tuning classes
    model, cfg, model_id = load_model(args.tune_model)
    size = int(cfg.data.image_size)
    g = embed(model, cfg, [p for c in tune_classes for p in photos[c]], "photo", size)
    q = embed(model, cfg, [p for c in tune_classes for p in sketches[c][: args.tune_queries]], "sketch", size)
    s = embed(model, cfg, [p for c in stat_classes for p in sketches[c][:5]], "sketch", size)
    g_labels = np.array([c for c in tune_classes for _ in photos[c]])
    q_labels = np.array([c for c in tune_classes for _ in sketches[c][: args.tune_queries]])
    hub = Hubness.fit("csls", g, SketchStats(s, "tuning statistics"))
    grid = {"none": measure(expanded_scores(hub, q, g, 0, 0.0), q_labels, g_labels)}
    for k in K_GRID:
        for w in W_GRID:
            grid[f"k={k},w={w:g}"] = measure(expanded_scores(hub, q, g, k, w), q_labels, g_labels)
    best = max((key for key in grid if key != "none"), key=lambda key: grid[key]["map@all"])
    chosen = {"k": int(best.split(",")[0][2:]), "w": float(best.split("w=")[1])}
    shipped = {"k": DEFAULT_EXPAND, "w": EXPAND_WEIGHT}
    if chosen != shipped:
        print(f"warning: the tuning classes choose {chosen}, sbir.index.expansion ships {shipped}", file=sys.stderr)

    # 2. measure on the unseen classes, as 'sbir index build' sets an index up
    results = {}
    g_labels = np.array([c for c in test_classes for _ in photos[c]])
    q_labels = np.array([c for c in test_classes for _ in sketches[c]])
    for spec in args.models:
        model, cfg, model_id = load_model(spec)
        size = int(cfg.data.image_size)
        stats = load_default_stats(model_id, size)
        if stats is None:
            raise SystemExit(f"sbir ships no sketch statistics for {model_id} at {size} px")
        g = embed(model, cfg, [p for c in test_classes for p in photos[c]], "photo", size)
        q = embed(model, cfg, [p for c in test_classes for p in sketches[c]], "sketch", size)
        hub = Hubness.fit("csls", g, stats)
        results[spec] = {
            "model": model_id,
            "image_size": size,
            "csls": measure(expanded_scores(hub, q, g, 0, 0.0), q_labels, g_labels),
            f"csls+expand(k={DEFAULT_EXPAND},w={EXPAND_WEIGHT:g})": measure(
                expanded_scores(hub, q, g, DEFAULT_EXPAND, EXPAND_WEIGHT), q_labels, g_labels
            ),
            f"csls+dba({DEFAULT_DBA})+expand(k={DEFAULT_EXPAND},w={EXPAND_WEIGHT:g})": measure(
                expanded_scores(Hubness.fit("csls", g, stats, dba=DEFAULT_DBA), q, g, DEFAULT_EXPAND, EXPAND_WEIGHT),
                q_labels,
                g_labels,
            ),
        }
    write_result(
        "query_expansion" + (f"-{args.tag}" if args.tag else ""),
        {
            "tuning": {
                "model": args.tune_model,
                "gallery": f"{rel(data / 'photo')}: {len(tune_classes)} classes outside sketchy_unseen21 "
                "(every other one)",
                "queries": f"first {args.tune_queries} sketches of each tuning class",
                "sketch_statistics": f"first 5 sketches of the other {len(stat_classes)} outside classes",
                "grid": grid,
                "chosen": chosen,
                "shipped": shipped,
            },
            "unseen21": results,
            "total_seconds": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
