"""The shipped general model's recipe, cross-validated by class: zero-shot mAP@all and P@10 on classes it never saw.

Setting: the general model's training collection (``configs/general``: the Sketchy subset, Quick, Draw!,
QMUL-V1 and Chair-V2 merged by class name) and its config (``configs/general_sketch.yaml``). The 104
Sketchy classes outside ``sketchy_unseen21`` are split into ``--folds`` folds of whole classes (seeded).
For each fold, the ridge head is fitted as ``sbir train`` fits it (:func:`sbir.models.heads.class_centre_ridge`
on the features the config's encoder gives) on every sketch and photo of the *other* classes, never on the
fold's classes nor on ``sketchy_unseen21``; the fold's Sketchy photos are the gallery and its Sketchy
sketches the queries. Scores are the index's (``Hubness`` csls with a sketch statistics set of 256 Sketchy
and 256 Quick, Draw! training sketches, as shipped with the model, then query expansion with
``DEFAULT_EXPAND`` / ``EXPAND_WEIGHT``; ``benchmarks/query_expansion.py``'s ``expanded_scores``), and the
metrics ``sbir.metrics.category``'s. Rows:

* ``imagenet``: the config's encoder without the head (plain ImageNet features), csls and expansion,
  without and with database-side augmentation (``sbir.index.dba``, ``DEFAULT_DBA`` neighbours);
* ``ridge, no correction``, ``ridge, csls``, ``ridge, csls + expansion``, and ``+ dba K`` for each ``K`` of
  ``DBA_GRID``: the folds choose ``DEFAULT_DBA``, and with it the row is how ``sbir index build`` uses the
  model.

The seen-class folds choose between recipes (``--set`` overrides, e.g. ``model.ridge_lambda=3``); the
``sketchy_unseen21`` split (the 21 classes of the standard zero-shot protocol, fitted on all 104 others) is
reported beside them once, and chooses nothing. Features are embedded once per encoder and cached under
``runs/bench-cache``.

    python benchmarks/general_model.py [--folds 5] [--set model.ridge_lambda=10 ...] [--photos-per-class N] [--tag T]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, fold_stats, resolve_overrides, run_main, write_result  # noqa: E402
from query_expansion import expanded_scores, measure  # noqa: E402

from sbir.config import load_config  # noqa: E402
from sbir.data.formats import load_dataset  # noqa: E402
from sbir.data.zeroshot import load_class_list, normalize_class_name  # noqa: E402
from sbir.engine.embed import PooledFeatures, embed_images  # noqa: E402
from sbir.engine.tasks import build_model, with_defaults  # noqa: E402
from sbir.index.dba import DEFAULT_DBA  # noqa: E402
from sbir.index.expansion import DEFAULT_EXPAND, EXPAND_WEIGHT  # noqa: E402
from sbir.index.hubness import Hubness, SketchStats  # noqa: E402
from sbir.models.heads import class_centre_ridge  # noqa: E402

STATS_PER_SOURCE = 256  # as the shipped statistics: benchmarks/hubness.py --write-default --default-size 512
QUERY_SOURCE = "sketchy_mini/"
DBA_GRID = (3, 5, 10)  # database-side augmentation's k, chosen in the seen-class folds (sbir.index.dba)


def encoder_features(cfg, data_dir: Path, cache_dir: Path, progress: bool) -> dict:
    """Raw pooled features (before the head) of every sketch and photo of ``data_dir``, cached per encoder."""
    m = cfg.model
    key = json.dumps([m.backbone, m.extra_backbones, m.pretrained, m.dase, cfg.data.image_size, str(data_dir)])
    path = cache_dir / f"general_model-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    split = load_dataset(str(data_dir), None).splits["train"]
    model = build_model(cfg).eval()
    feats = PooledFeatures(model, normalize=False)
    out: dict = {}
    for dom, items in (("sketch", split.sketches), ("photo", split.photos)):
        r = embed_images(
            feats, [x.image for x in items], dom, cfg.data.image_size, batch_size=cfg.eval.batch_size, progress=progress
        )
        out[dom] = r.embeddings.astype(np.float32)
        out[f"{dom}_id"] = np.array([x.id for x in items])
        out[f"{dom}_label"] = np.array([normalize_class_name(x.label) for x in items])
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def even(idx: np.ndarray, n: int) -> np.ndarray:
    return idx[np.linspace(0, len(idx) - 1, min(n, len(idx))).astype(int)] if len(idx) else idx


def evaluate_split(f: dict, held: list[str], excluded: list[str], cfg, photos_per_class: int | None = None) -> dict:
    """Fit on every class outside ``held`` and ``excluded``; search ``held``'s Sketchy photos (the first
    ``photos_per_class`` of each class, default all) with its sketches."""
    s_lab, p_lab = f["sketch_label"], f["photo_label"]
    s_q = np.char.startswith(f["sketch_id"].astype(str), QUERY_SOURCE)
    p_q = np.char.startswith(f["photo_id"].astype(str), QUERY_SOURCE)
    out_s = np.isin(s_lab, held) | np.isin(s_lab, excluded)
    fit_p = np.where(~(np.isin(p_lab, held) | np.isin(p_lab, excluded)))[0]
    fit_s = np.where(~out_s & np.isin(s_lab, p_lab[fit_p]))[0]
    queries = np.where(np.isin(s_lab, held) & s_q)[0]
    gallery = np.where(np.isin(p_lab, held) & p_q)[0]
    if photos_per_class is not None:
        gallery = np.concatenate([gallery[p_lab[gallery] == c][:photos_per_class] for c in held])
    stat_idx = np.concatenate(
        [
            even(fit_s[np.char.startswith(f["sketch_id"][fit_s].astype(str), src)], STATS_PER_SOURCE)
            for src in (QUERY_SOURCE, "quickdraw_mini/")
        ]
    )
    s_raw, p_raw = torch.from_numpy(f["sketch"]).double(), torch.from_numpy(f["photo"]).double()
    s_mean, left, right, p_mean = class_centre_ridge(
        s_raw[fit_s], list(s_lab[fit_s]), p_raw[fit_p], list(p_lab[fit_p]), cfg.model.ridge_lambda, cfg.model.ridge_rank
    )

    def sketch_embed(rows):
        z = torch.nn.functional.normalize(s_raw[rows] - s_mean, dim=-1)
        return torch.nn.functional.normalize(z + (z @ left) @ right, dim=-1).float().numpy()

    photo_embed = torch.nn.functional.normalize(p_raw[gallery] - p_mean, dim=-1).float().numpy()
    q_lab, g_lab = s_lab[queries], p_lab[gallery]
    rows: dict = {}
    plain_q, plain_g = f["sketch"][queries], f["photo"][gallery]
    plain_stats = SketchStats(f["sketch"][stat_idx], "training sketches")
    for dba in (0, DEFAULT_DBA):
        name = "imagenet, csls + expansion" + (f" + dba {dba}" if dba else "")
        plain_hub = Hubness.fit("csls", plain_g, plain_stats, dba=dba)
        rows[name] = measure(expanded_scores(plain_hub, plain_q, plain_g, DEFAULT_EXPAND, EXPAND_WEIGHT), q_lab, g_lab)
    q = sketch_embed(queries)
    rows["ridge, no correction"] = measure(q @ photo_embed.T, q_lab, g_lab)
    stats = SketchStats(sketch_embed(stat_idx), "training sketches")
    hub = Hubness.fit("csls", photo_embed, stats)
    rows["ridge, csls"] = measure(expanded_scores(hub, q, photo_embed, 0, EXPAND_WEIGHT), q_lab, g_lab)
    rows["ridge, csls + expansion"] = measure(
        expanded_scores(hub, q, photo_embed, DEFAULT_EXPAND, EXPAND_WEIGHT), q_lab, g_lab
    )
    for dba in DBA_GRID:
        hub = Hubness.fit("csls", photo_embed, stats, dba=dba)
        rows[f"ridge, csls + expansion + dba {dba}"] = measure(
            expanded_scores(hub, q, photo_embed, DEFAULT_EXPAND, EXPAND_WEIGHT), q_lab, g_lab
        )
    return {
        "n_queries": int(len(queries)),
        "n_gallery": int(len(gallery)),
        "n_fit_sketches": int(len(fit_s)),
        "n_fit_photos": int(len(fit_p)),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO_ROOT / "configs" / "general_sketch.yaml"))
    ap.add_argument("--data", default=str(REPO_ROOT / "configs" / "general"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument(
        "--photos-per-class",
        type=int,
        default=None,
        help="gallery: only the first N photos of each held class (a small folder; default all 25)",
    )
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.folds < 2:
        ap.error(f"--folds must be >= 2, got {args.folds}")
    if args.photos_per_class is not None and args.photos_per_class < 1:
        ap.error(f"--photos-per-class must be >= 1, got {args.photos_per_class}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = with_defaults(load_config(args.config, resolve_overrides(args.set)))
    t0 = time.time()
    f = encoder_features(cfg, Path(args.data).resolve(), REPO_ROOT / "runs" / "bench-cache", not args.no_progress)
    unseen = sorted(normalize_class_name(c) for c in load_class_list("sketchy_unseen21"))
    seen = sorted(set(f["photo_label"][np.char.startswith(f["photo_id"].astype(str), QUERY_SOURCE)]) - set(unseen))
    perm = np.random.default_rng(args.seed).permutation(seen)
    folds = [sorted(perm[i :: args.folds]) for i in range(args.folds)]
    per_fold = [evaluate_split(f, held, unseen, cfg, args.photos_per_class) for held in folds]
    names = list(per_fold[0]["rows"])
    cv = {name: fold_stats([{k: r["rows"][name][k] for k in ("map@all", "p@10")} for r in per_fold]) for name in names}
    final = evaluate_split(f, unseen, [], cfg, args.photos_per_class)
    lines = [
        "| zero-shot, by class | seen-class CV mAP@all (mean +- std) | CV P@10 | sketchy_unseen21 mAP@all | P@10 |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        c, u = cv[name], final["rows"][name]
        lines.append(
            f"| {name} | {c['map@all_mean']:.3f} +- {c['map@all_std']:.3f} | {c['p@10_mean']:.3f} | "
            f"{u['map@all']:.3f} | {u['p@10']:.3f} |"
        )
    print("\n".join(lines), file=sys.stderr)
    name = "general_model" + (f"-{args.tag}" if args.tag else "")
    write_result(
        name,
        {
            "config": str(Path(args.config).resolve()),
            "overrides": args.set,
            "photos_per_class": args.photos_per_class,
            "model": {
                "backbones": [cfg.model.backbone, *cfg.model.extra_backbones],
                "image_size": cfg.data.image_size,
                "ridge_lambda": cfg.model.ridge_lambda,
                "ridge_rank": cfg.model.ridge_rank,
            },
            "folds": [list(map(str, h)) for h in folds],
            "cv": cv,
            "cv_per_fold": per_fold,
            "sketchy_unseen21": final,
            "markdown": lines,
            "seconds": round(time.time() - t0, 1),
        },
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
