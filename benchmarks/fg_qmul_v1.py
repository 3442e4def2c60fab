"""Fine-grained SBIR on QMUL-V1 shoes / chairs / handbags (training splits in ../shared/data).

For each category: carve the seeded validation split from the training split,
train with the recipe in ``configs/fg_qmul_v1.yaml`` (best epoch chosen on
validation), and report validation Acc@1/5/10 and wall time beside the
off-the-shelf ImageNet EfficientNet-Lite0 features on the same split
(``fg_qmul_v1.json``). Then cross-validate the same recipe (5 folds, as ``--cv 5
--multiview``; ``fg_qmul_v1-cv.json``) and rebuild the ablation table
(``--table``; ``fg_qmul_v1-ablation.json``). ``--no-cv`` stops after the
validation-split runs.

    python benchmarks/fg_qmul_v1.py                       # all three categories, validation split + 5-fold CV + table
    python benchmarks/fg_qmul_v1.py --categories shoes --set optim.epochs=5 --no-cv
    python benchmarks/fg_qmul_v1.py --rerank              # + the trained token re-ranker (model.rerank)

``--rerank`` trains the same recipe with ARNet's token module as a re-ranker
(``model.rerank=true``, on the Lite0 4x4 feature-map positions at 128 px) and
reports, for the same checkpoint, the embedding's Acc@K beside the re-ranked
Acc@K (``rerank_acc@K``: the top ``model.rerank_top_k`` photos re-ordered);
results go to ``fg_qmul_v1-rerank.json`` unless ``--tag`` says otherwise.

``--cv K`` cross-validates instead (``sbir cv``: K folds by photo of each category's
training split; every fold selects its epoch on a validation split carved from the
other folds and is tested once on its held-out fold) and reports the mean and
standard deviation of Acc@1/5/10 (and %corr) over folds, with the training time,
in ``fg_qmul_v1-cv[-<tag>].json``. This is how recipes are compared: adopt a change
only when it wins by more than the spread, pooled over the categories.

    python benchmarks/fg_qmul_v1.py --cv 5                # the recipe, cross-validated

Writes ``benchmarks/results/fg_qmul_v1[-<tag>].json``. The test splits are not
used here (they are not in ../shared/data); evaluate them with ``sbir eval``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    SHARED_DATA,
    add_training_arguments,
    command_line,
    fold_stats,
    portable,
    portable_path,
    resolve_overrides,
    resolve_path,
    run_main,
    write_result,
)

CATEGORIES = ("shoes", "chairs", "handbags")
DEFAULT_CV_FOLDS = 5  # what the command without --cv cross-validates with, after its validation-split runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    ap.add_argument("--config", type=resolve_path, default=REPO_ROOT / "configs" / "fg_qmul_v1.yaml")
    add_training_arguments(ap, "bench_fg_qmul_v1")
    ap.add_argument(
        "--rerank",
        action="store_true",
        help="train with the token re-ranker (model.rerank=true) and report re-ranked Acc@K too",
    )
    ap.add_argument(
        "--from-runs",
        nargs="+",
        type=resolve_path,
        metavar="RUN_DIR",
        help="do not train: evaluate these finished or interrupted run folders (best validation epoch "
        "so far) on their recorded validation split, beside the ImageNet baseline",
    )
    ap.add_argument("--cv", type=int, metavar="K", help="only cross-validate, with K folds by photo")
    ap.add_argument(
        "--no-cv",
        action="store_true",
        help=f"only the validation-split runs: skip the {DEFAULT_CV_FOLDS}-fold cross-validation and the table",
    )
    ap.add_argument(
        "--table",
        action="store_true",
        help="do not train: build the ablation table from the --cv results files (fg_qmul_v1-ablation.json)",
    )
    ap.add_argument(
        "--multiview",
        action="store_true",
        help="with --cv: also test every fold's checkpoint with 10-view testing (eval.multiview; no retraining)",
    )
    ap.add_argument(
        "--ensemble-with",
        metavar="TAG",
        help="with --cv: also test every fold's checkpoint in an ensemble (sbir eval --ensemble) with the same "
        "fold of the --cv run tagged TAG (no retraining; both members were trained without the held-out fold)",
    )
    ap.add_argument(
        "--untrained",
        action="store_true",
        help="with --cv: do not train; test the configured backbone's untrained features (its ImageNet weights, "
        "model.feature_level and model.pool_grid, no head) on the same held-out folds",
    )
    args = ap.parse_args(argv)
    if args.untrained and not args.cv:
        ap.error("--untrained goes with --cv K (it tests untrained features on the cross-validation folds)")
    if args.no_cv and (args.cv or args.table or args.from_runs):
        ap.error("--no-cv goes with the default validation-split runs, not with --cv, --table or --from-runs")
    if args.untrained and (args.multiview or args.rerank or args.ensemble_with):
        ap.error("--untrained tests untrained features: --multiview, --rerank and --ensemble-with need trained folds")
    if args.ensemble_with and not args.cv:
        ap.error("--ensemble-with goes with --cv K (it tests the folds of two cross-validated runs together)")
    if args.table:
        return ablation_table()
    if args.cv:
        return cross_validate_categories(args, argv)
    if args.rerank:
        args.set = ["model.rerank=true", *args.set]
        args.tag = args.tag or "rerank"

    import torch

    from sbir.config import load_config
    from sbir.engine.evaluate import evaluate_finegrained
    from sbir.engine.inference import load_model
    from sbir.engine.trainer import Trainer

    results = {}
    if args.from_runs:
        return summarize_runs(args)
    for cat in args.categories:
        data = SHARED_DATA / "qmul_v1" / cat
        cfg = load_config(args.config, [f"data.path={data}", *resolve_overrides(args.set)])
        run_dir = Path(args.runs) / f"{cat}{('-' + args.tag) if args.tag else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
        t0 = time.time()
        trainer = Trainer(cfg, run_dir, progress=not args.no_progress)
        summary = trainer.fit()
        train_s = time.time() - t0
        best, best_cfg, _ = load_model(run_dir, device=str(trainer.device))
        val_split = trainer.task.val_split
        # eval.hubness: the run's training sketches are the statistics set, as in its own validation
        stats = [s.image for s in trainer.task.train_split.sketches] if best_cfg.eval.hubness != "none" else None
        trained = evaluate_finegrained(
            best, best_cfg, val_split, flip_tta=cfg.eval.flip_tta, progress=False, stat_sketches=stats
        ).metrics
        keys = (
            "acc@1",
            "acc@5",
            "acc@10",
            "n_queries",
            "n_gallery",
            "rerank_acc@1",
            "rerank_acc@5",
            "rerank_acc@10",
            "rerank_top_k",
        )
        entry = {
            "run_dir": portable_path(run_dir),
            "best_epoch": summary["best_epoch"],
            "train_wall_s": round(train_s, 1),
            "val": {k: trained[k] for k in keys if k in trained},
        }
        if "%corr" in trained:
            entry["val"]["%corr"] = trained["%corr"]
        if not args.no_baseline:
            base, base_cfg, _ = load_model("pretrained", device=str(trainer.device))
            base_cfg.data.image_size = cfg.data.image_size
            b = evaluate_finegrained(base, base_cfg, val_split, progress=False).metrics
            entry["imagenet_baseline_val"] = {k: b[k] for k in ("acc@1", "acc@5", "acc@10")}
            if "%corr" in b:
                entry["imagenet_baseline_val"]["%corr"] = b["%corr"]
        results[cat] = entry
        base_acc1 = entry.get("imagenet_baseline_val", {}).get("acc@1", float("nan"))
        rerank = f"  re-ranked {entry['val']['rerank_acc@1']:.1f}" if "rerank_acc@1" in entry["val"] else ""
        print(
            f"{cat}: val acc@1 {entry['val']['acc@1']:.1f}{rerank}  (baseline {base_acc1:.1f})  {train_s:.0f}s",
            file=sys.stderr,
        )
        del trainer, best
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    from sbir.config import to_dict

    name = "fg_qmul_v1" + (f"-{args.tag}" if args.tag else "")
    for entry in results.values():  # each category keeps its own command and date when files are merged
        entry.update(command=command_line(__file__, argv), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_result(
        name,
        {
            "config": to_dict(cfg),
            "overrides": args.set,
            "results": merge_previous(name, results, to_dict(cfg)),
            "split": "validation carved from the training split (data.val_fraction, data.split_seed)",
        },
    )
    if args.no_cv:
        return 0
    # The whole benchmark in one command: the same recipe cross-validated (with multi-view testing of every
    # fold's checkpoint unless the recipe corrects hubness, which is defined on one view; finished folds are
    # read back), then the ablation table rebuilt from the results files.
    args.cv, args.multiview = DEFAULT_CV_FOLDS, cfg.eval.hubness == "none"
    cross_validate_categories(args, argv)
    return ablation_table()


FOLD_KEYS = ("acc@1", "acc@5", "acc@10", "%corr")  # what the evaluation-only results keep of each fold


def _retest_folds(cv_dir: Path, folds: int, out_name: str, fold_kwargs) -> dict:
    """Each fold's best checkpoint tested again on its held-out fold with ``evaluate_run(**fold_kwargs(fold))``."""
    from sbir.engine.evaluate import evaluate_run

    per_fold = []
    for fold in range(folds):
        run = cv_dir / f"fold-{fold}"
        m, _ = evaluate_run(run, split="test", progress=False, out_dir=run / out_name, **fold_kwargs(fold))
        per_fold.append({k: m[k] for k in FOLD_KEYS if k in m})
    return fold_stats(per_fold)


def _multiview_on_folds(cv_dir: Path, folds: int) -> dict:
    """Each fold's best checkpoint tested again on its held-out fold with 10-view testing."""
    return _retest_folds(cv_dir, folds, "eval-multiview", lambda fold: {"multiview": True})


def _ensemble_on_folds(cv_dir: Path, other_dir: Path, folds: int) -> dict:
    """Each fold's best checkpoint tested again on its held-out fold, its scores averaged with those of the
    same fold of ``other_dir`` (``sbir eval --ensemble``)."""
    import json

    members = []
    for fold in range(folds):
        run, member = cv_dir / f"fold-{fold}", other_dir / f"fold-{fold}"
        if not (member / "best.safetensors").is_file():
            raise SystemExit(f"error: {member} holds no finished fold; run --cv {folds} with that tag first")
        held = [json.loads((d / "split.json").read_text())["cv"]["heldout_photo_ids"] for d in (run, member)]
        if sorted(held[0]) != sorted(held[1]):  # another fold seed or data: the member saw this fold's photos
            raise SystemExit(f"error: {member} held out other photos than {run}; use runs of the same folds")
        members.append(member)
    stats = _retest_folds(cv_dir, folds, "eval-ensemble", lambda fold: {"ensemble": [members[fold]]})
    return {"with": portable_path(other_dir), **stats}


def _baseline_on_folds(cfg, folds: int) -> dict:
    """The untrained features of ``cfg``'s backbone (ImageNet weights, its model.feature_level and
    model.pool_grid, no projection head) on the same held-out folds: mean and std of Acc@K."""
    import copy

    from sbir.data.formats import load_dataset
    from sbir.data.splits import hold_out_fold
    from sbir.engine.evaluate import evaluate_finegrained
    from sbir.engine.tasks import build_model

    base_cfg = copy.deepcopy(cfg)
    base_cfg.model.head, base_cfg.model.shared_encoder = "identity", True
    base_cfg.model.init_from, base_cfg.model.rerank = None, False
    base_cfg.eval.hubness = "none"  # the features as they are
    base = build_model(base_cfg).eval()
    train = load_dataset(cfg.data.path, cfg.data.format).split("train")
    per_fold = []
    for fold in range(folds):
        _, held_out, _ = hold_out_fold(train, folds, fold, cfg.data.split_seed)
        m = evaluate_finegrained(base, base_cfg, held_out, progress=False).metrics
        per_fold.append({k: m[k] for k in FOLD_KEYS if k in m})
    return fold_stats(per_fold)


def cross_validate_categories(args, argv) -> int:
    """``--cv K``: :func:`sbir.engine.cv.cross_validate` per category; mean and std of the fold test metrics."""
    from sbir.config import load_config, to_dict
    from sbir.engine.cv import cross_validate

    if args.rerank:
        args.set = ["model.rerank=true", *args.set]
        args.tag = args.tag or "rerank"
    results = {}
    for cat in args.categories:
        data = SHARED_DATA / "qmul_v1" / cat
        cfg = load_config(args.config, [f"data.path={data}", *resolve_overrides(args.set)])
        out = Path(args.runs) / f"cv{args.cv}-{cat}{('-' + args.tag) if args.tag else ''}"
        t0 = time.time()
        if args.untrained:  # the configured backbone's features as they are: nothing trains, nothing is chosen
            entry = {"untrained": True, **_baseline_on_folds(cfg, args.cv)}
            report = entry
        else:
            report = cross_validate(cfg, out, folds=args.cv, progress=not args.no_progress)
            entry = {k: v for k, v in report.items() if k != "task"}
            entry["cv_dir"] = portable_path(out)
        entry["wall_s"] = round(time.time() - t0, 1)
        if args.multiview:
            entry["multiview"] = _multiview_on_folds(out, args.cv)
        if args.ensemble_with:
            other = Path(args.runs) / f"cv{args.cv}-{cat}-{args.ensemble_with}"
            entry["ensemble"] = _ensemble_on_folds(out, other, args.cv)
        if not (args.no_baseline or args.untrained):
            entry["imagenet_baseline"] = _baseline_on_folds(cfg, args.cv)
        entry.update(command=command_line(__file__, argv), date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        results[cat] = entry
        base = entry.get("imagenet_baseline", {})
        print(
            f"{cat}: {args.cv}-fold acc@1 {report['acc@1_mean']:.1f} +- {report['acc@1_std']:.1f}  "
            f"acc@10 {report['acc@10_mean']:.1f} +- {report['acc@10_std']:.1f}"
            + (f"  (ImageNet features acc@1 {base['acc@1_mean']:.1f})" if base else ""),
            file=sys.stderr,
        )
        for prefix, what in (("rerank_", "re-ranked"), ("averaged_", "averaged weights")):
            if f"{prefix}acc@1_mean" in report:
                print(f"{cat}: {what} acc@1 {report[f'{prefix}acc@1_mean']:.1f} +- {report[f'{prefix}acc@1_std']:.1f}")
        for sub, what in (("multiview", "10-view testing"), ("ensemble", f"ensemble with {args.ensemble_with}")):
            if sub in entry:
                print(f"{cat}: {what} acc@1 {entry[sub]['acc@1_mean']:.1f} +- {entry[sub]['acc@1_std']:.1f}")
    name = "fg_qmul_v1-cv" + (f"-{args.tag}" if args.tag else "")
    results = merge_previous(name, results, to_dict(cfg))  # categories run earlier with the same recipe
    write_result(name, {"config": to_dict(cfg), "overrides": args.set, "folds": args.cv, "results": results})
    return 0


# The ablation table's rows: (option, results file(s) of its --cv runs, where its metrics are in each category's
# entry: "" = the entry itself, "multiview" / "imagenet_baseline" / "ensemble" = that sub-dict, "rerank_" = the
# re-ranked keys, "averaged_" = the averaged weights' keys, optim.average_last).
# With several files, a category is taken from the first file that holds it. A fourth element names the row an
# option is compared with when it is not the recipe (options measured on top of another option), None for none.
GRID = "mid-level grid features, untrained (model.feature_level=3, model.pool_grid=4; --untrained)"
RIDGE = "grid + ridge head, no gradient training (model.head=ridge; the recipe before extra backbones and CSLS)"
RECIPE = "recipe: ridge head on Lite0 + Lite1 + Lite2 grids, CSLS with the training sketches (configs/fg_qmul_v1.yaml)"
ABLATION_ROWS = (
    (
        "ImageNet Lite0 features, untrained (last layer, globally pooled)",
        "fg_qmul_v1-cv-lastlayer",
        "imagenet_baseline",
    ),
    ("previous recipe (last layer, 15 epochs, 4 stages frozen)", "fg_qmul_v1-cv-lastlayer", ""),
    ("+ multi-view testing (eval.multiview)", "fg_qmul_v1-cv-lastlayer", "multiview"),
    ("+ token re-ranker (model.rerank), embedding only", "fg_qmul_v1-cv-rerank", ""),
    ("+ token re-ranker (model.rerank), re-ranked", "fg_qmul_v1-cv-rerank", "rerank_"),
    ("+ topology term (loss.weight_topology=1)", "fg_qmul_v1-cv-topology", ""),
    ("+ annotated negatives (loss.weight_negative_triplet=1)", "fg_qmul_v1-cv-negtriplet", ""),
    (
        "long unfrozen schedule, ~70 epochs (chairs: 65-72 epochs fitted to 18 min)",
        ("fg_qmul_v1-cv-recipe", "fg_qmul_v1-cv-long"),
        "",
    ),
    (GRID, "fg_qmul_v1-cv-grid-untrained", ""),
    ("grid features, no head, through sbir cv (the recipe before the ridge head)", "fg_qmul_v1-cv-nohead", "", None),
    ("grid, no head + multi-view testing (eval.multiview)", "fg_qmul_v1-cv-nohead", "multiview", GRID),
    ("grid, no head + flip averaging (eval.flip_tta=true)", "fg_qmul_v1-cv-flip", "", GRID),
    ("grid 8 x 8 (model.pool_grid=8), untrained", "fg_qmul_v1-cv-grid8-untrained", "", GRID),
    ("grid at 192 px (data.image_size=192), untrained", "fg_qmul_v1-cv-grid-untrained-192", "", GRID),
    ("grid at 256 px (data.image_size=256), untrained", "fg_qmul_v1-cv-grid-untrained-256", "", GRID),
    ("block 2 (model.feature_level=2, stride 8), 4 x 4, untrained", "fg_qmul_v1-cv-level2-untrained", "", GRID),
    ("grid features, EfficientNet-Lite1, untrained", "fg_qmul_v1-cv-grid-untrained-lite1", "", GRID),
    ("grid features, EfficientNet-Lite2, untrained", "fg_qmul_v1-cv-grid-untrained-lite2", "", GRID),
    ("grid features + the previous recipe's training (15 epochs, linear head)", "fg_qmul_v1-cv-grid", "", GRID),
    ("grid features + the previous recipe's training, multi-view testing", "fg_qmul_v1-cv-grid", "multiview", GRID),
    (
        "grid features + the previous recipe's training, no head (model.head=identity)",
        "fg_qmul_v1-cv-grid-identity",
        "",
        GRID,
    ),
    (
        "grid + domain centring alone (ridge head with model.ridge_lambda=1e9: no map)",
        "fg_qmul_v1-cv-centring",
        "",
        GRID,
    ),
    (RIDGE, "fg_qmul_v1-cv-ridge", "", GRID),
    ("ridge head + multi-view testing (eval.multiview)", "fg_qmul_v1-cv-ridge", "multiview", RIDGE),
    ("ridge head with model.ridge_lambda=3", "fg_qmul_v1-cv-ridge3", "", RIDGE),
    (
        "ridge head from sketch-domain pretraining (model.init_from; 4 epochs, 50 min of configs/pretrain_sketch.yaml)",
        "fg_qmul_v1-cv-pretrain",
        "",
        RIDGE,
    ),
    ("ridge head + CSLS with the training sketches (eval.hubness=csls)", "fg_qmul_v1-cv-csls", "", RIDGE),
    (
        "ridge head on Lite0 + Lite1 + Lite2 grids (model.extra_backbones=[efficientnet_lite1,efficientnet_lite2])",
        "fg_qmul_v1-cv-lite012",
        "",
        RIDGE,
    ),
    (RECIPE, "fg_qmul_v1-cv", "", RIDGE),
    (
        "recipe + 10 epochs of training through cross-fitted ridge maps (model.ridge_crossfit; --set in the README)",
        "fg_qmul_v1-cv-crossfit",
        "",
        RECIPE,
    ),
    ("recipe at 144 px (data.image_size=144)", "fg_qmul_v1-cv-size144", "", RECIPE),
    (
        "recipe at 144 px + 10 epochs through cross-fitted ridge maps, last epoch kept (optim.keep_epoch=last)",
        "fg_qmul_v1-cv-size144-crossfit",
        "",
        RECIPE,
    ),
    (
        "recipe at 144 px + cross-fit (the row above), ensembled with the recipe at 144 px (sbir eval --ensemble)",
        "fg_qmul_v1-cv-size144-crossfit",
        "ensemble",
        RECIPE,
    ),
    (
        "recipe at 144 px + cross-fit, its last 5 epochs' weights averaged (optim.average_last=5)",
        "fg_qmul_v1-cv-size144-crossfit-avg5",
        "averaged_",
        RECIPE,
    ),
    (
        "recipe at 144 px + cross-fit, with annotated negatives (loss.weight_negative_triplet=5)",
        "fg_qmul_v1-cv-size144-crossfit-neg",
        "",
        RECIPE,
    ),
    (
        "recipe at 144 px + cross-fit, with the topology term (loss.weight_topology=10)",
        "fg_qmul_v1-cv-size144-crossfit-topology",
        "",
        RECIPE,
    ),
    (
        "recipe at 144 px + cross-fit, the topology term as the paper's first-order meta update (loss.topology_meta)",
        "fg_qmul_v1-cv-size144-crossfit-topology-meta",
        "",
        RECIPE,
    ),
    (
        "recipe at 144 px, images cropped to their ink (model.content_crop=0.1)",
        "fg_qmul_v1-cv-size144-crop",
        "",
        RECIPE,
    ),
    (
        "recipe at 144 px, cropped to the ink, + 10 epochs through cross-fitted ridge maps, last epoch kept",
        "fg_qmul_v1-cv-size144-crop-crossfit",
        "",
        RECIPE,
    ),
)
REFERENCE_ROW = 1  # the recipe the options above the grid rows were measured against


SUB_RESULTS = ("multiview", "imagenet_baseline", "ensemble")  # evaluation-only results kept beside a --cv entry
# Of those, the ones that re-test no training of their own (an ensemble row shows its entry's training).
UNTRAINED_SUB_RESULTS = ("multiview", "imagenet_baseline")


def _row_stats(entry: dict, where: str) -> dict | None:
    """Acc@1 mean/std/variance over folds and mean training seconds per fold of one category's entry."""
    if where in SUB_RESULTS:
        sub = entry.get(where)
        key = "acc@1"
    else:
        sub, key = entry, f"{where}acc@1"
    if not sub or f"{key}_mean" not in sub:
        return None
    folds = [f for f in entry.get("per_fold", []) if "train_seconds" in f]
    # An ensemble row shows its entry's training only (its other member's is not counted).
    trains = folds and where not in UNTRAINED_SUB_RESULTS
    train_s = sum(f["train_seconds"] for f in folds) / len(folds) if trains else 0.0
    per_fold = [f[key] for f in sub.get("per_fold", []) if key in f]
    out = {"mean": sub[f"{key}_mean"], "std": sub[f"{key}_std"], "train_s_per_fold": round(train_s, 1)}
    return {**out, "per_fold": per_fold} if per_fold else out


def ablation_table() -> int:
    """``--table``: one row per option with its cross-validated Acc@1 per category and training time, the
    difference to the recipe pooled over the categories both have, and whether it beats the pooled spread."""
    import json
    import math
    import statistics

    from _common import RESULTS_DIR

    rows = []
    for label, names, where, *versus in ABLATION_ROWS:
        names = (names,) if isinstance(names, str) else names
        sources, cats = {}, {}
        for name in reversed(names):  # the first file that holds a category wins
            path = RESULTS_DIR / f"{name}.json"
            results = json.loads(path.read_text())["results"] if path.exists() else {}
            for c in CATEGORIES:
                if c in results:
                    cats[c] = _row_stats(results[c], where)
                    sources[c] = f"benchmarks/results/{name}.json"
        rows.append(
            {
                "option": label,
                "source": {c: sources[c] for c in CATEGORIES if c in sources},
                "where": where or "acc@1",
                "categories": {c: v for c, v in cats.items() if v},
                "versus": versus[0] if versus else ABLATION_ROWS[REFERENCE_ROW][0],
            }
        )
    by_label = {row["option"]: row for row in rows}
    for row in rows:
        if row["versus"] is None:  # shown for reference, compared with nothing
            continue
        ref = by_label[row["versus"]]["categories"]
        common = [c for c in CATEGORIES if c in row["categories"] and c in ref]
        if not common or row is rows[REFERENCE_ROW] or row is rows[0]:  # rows[0]: the untrained reference
            continue
        delta = sum(row["categories"][c]["mean"] - ref[c]["mean"] for c in common) / len(common)
        # The recipe's spread over folds, pooled over the same categories (root of the mean variance).
        spread = math.sqrt(sum(ref[c]["std"] ** 2 for c in common) / len(common))
        row.update(delta_acc1=round(delta, 2), pooled_std=round(spread, 2), pooled_over=common, wins=delta > spread)
        # Both measured on the same folds: the spread of the fold-by-fold differences, pooled the same way.
        pairs = [(row["categories"][c].get("per_fold", []), ref[c].get("per_fold", [])) for c in common]
        if all(len(x) == len(y) > 1 for x, y in pairs):
            diffs = [[a - b for a, b in zip(x, y, strict=True)] for x, y in pairs]
            var = [statistics.variance(d) for d in diffs]
            row["paired_fold_delta_std"] = round(math.sqrt(sum(var) / len(var)), 2)
    lines = [
        "| 5-fold CV, Acc@1 (mean +- std) | shoes | chairs | handbags | train min/fold | vs reference (pooled) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for c in CATEGORIES:
            v = row["categories"].get(c)
            cells.append(f"{v['mean']:.1f} +- {v['std']:.1f}" if v else "not run")
        times = [v["train_s_per_fold"] for v in row["categories"].values() if v["train_s_per_fold"]]
        minutes = f"{sum(times) / len(times) / 60:.1f}" if times else "-"  # no training of its own
        verdict = ""
        if "delta_acc1" in row:
            names = {
                ABLATION_ROWS[REFERENCE_ROW][0]: "",
                GRID: " vs untrained grid",
                RIDGE: " vs ridge head",
                RECIPE: " vs recipe",
            }
            versus = names[row["versus"]]
            verdict = f"{row['delta_acc1']:+.1f}{versus} (spread {row['pooled_std']:.1f}): " + (
                "adopt" if row["wins"] else "not adopted"
            )
        lines.append(f"| {row['option']} | {' | '.join(cells)} | {minutes} | {verdict} |")
    print("\n".join(lines))
    write_result("fg_qmul_v1-ablation", {"rows": rows, "markdown": lines})
    return 0


def merge_previous(name: str, results: dict, config: dict) -> dict:
    """Categories from an earlier run of the same recipe (same config but the data path) kept beside new ones."""
    import json

    from _common import RESULTS_DIR

    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return results
    old = json.loads(path.read_text())

    from sbir.config import config_from_dict, to_dict
    from sbir.errors import ConfigError

    def recipe(c: dict) -> dict | None:
        # Results files hold portable paths (see _common); read through TrainConfig, a file written before a
        # config key existed has that key at its default, which is the recipe it ran.
        try:
            c = to_dict(config_from_dict(portable(c)))
        except ConfigError:  # a key since removed, or no config at all: not comparable
            return None
        c["data"].pop("path", None)
        return c

    mine = recipe(config)
    if mine is None or recipe(old.get("config", {})) != mine:
        print(f"note: {path} holds another recipe; replacing it", file=sys.stderr)
        return results
    return {**old.get("results", {}), **results}


def summarize_runs(args) -> int:
    """Validation metrics of existing run folders (e.g. runs stopped early for time) and the baseline."""
    import csv

    from sbir.config import to_dict
    from sbir.data.formats import load_dataset
    from sbir.data.splits import apply_split_record, load_split_record
    from sbir.engine.evaluate import evaluate_finegrained
    from sbir.engine.inference import load_model

    results = {}
    for run in map(Path, args.from_runs):
        model, cfg, _ = load_model(run)
        ds = load_dataset(cfg.data.path, cfg.data.format)
        _, val = apply_split_record(ds.split("train"), load_split_record(run / "split.json"))
        trained = evaluate_finegrained(model, cfg, val, flip_tta=cfg.eval.flip_tta, progress=False).metrics
        base, base_cfg, _ = load_model("pretrained")
        base_cfg.data.image_size = cfg.data.image_size
        b = evaluate_finegrained(base, base_cfg, val, progress=False).metrics
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        best = max(rows, key=lambda r: float(r["val_acc@1"]))
        cat = Path(cfg.data.path).name
        keys = (
            "acc@1",
            "acc@5",
            "acc@10",
            "%corr",
            "n_queries",
            "n_gallery",
            "rerank_acc@1",
            "rerank_acc@5",
            "rerank_acc@10",
        )
        results[cat] = {
            "run_dir": portable_path(run),
            "epochs_run": len(rows),
            "epochs_planned": cfg.optim.epochs,
            "best_epoch": int(best["epoch"]),
            "train_wall_s": round(sum(float(r["seconds"]) for r in rows), 1),
            "val": {k: trained[k] for k in keys if k in trained},
            "imagenet_baseline_val": {k: b[k] for k in keys if k in b},
            "config": to_dict(cfg),
        }
    write_result(
        "fg_qmul_v1" + (f"-{args.tag}" if args.tag else ""),
        {"results": results, "split": "validation carved from the training split (split.json of each run)"},
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
