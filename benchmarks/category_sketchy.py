"""Category-level and zero-shot SBIR on ``../shared/data/sketchy_mini`` (125 classes, 25 photos + 25 sketches each).

* ``category``: all 125 classes. A fixed, seeded 20% of every class's sketches
  (5 per class, 625 queries) is held out as the test queries and never used for
  training or model selection; the gallery is **all** 3125 photos (as in the
  Sketchy category-level protocol, photos are not held out). The run trains on
  the other sketches and all photos (a class-stratified validation split is
  carved from them for model selection) with ``configs/category_sketchy.yaml``.
  The split is a folder of symbolic links (``<runs>/sketchy_mini_category_view``,
  Sketchy layout with ``train/`` and ``test/``), so ``sbir train`` / ``sbir eval
  --split test`` use it like any dataset; nothing is copied.
* ``zeroshot``: train on the 104 seen classes (10% of them held out for model
  selection), test the 21 unseen classes of the standard split
  (``sketchy_unseen21``): their 525 sketches against their 525 photos.

Each beside the off-the-shelf ImageNet EfficientNet-Lite0 baseline
(``load_model("pretrained")``: one shared encoder, no projection, cosine
distance, same flip TTA) on the same test split. Reports map@all, map@200,
p@100, p@200 (+ variants and Hamming-code metrics) and wall times.

    python benchmarks/category_sketchy.py                          # both tasks, full recipe
    python benchmarks/category_sketchy.py --tasks zeroshot --set optim.epochs=2
    python benchmarks/category_sketchy.py --cv 3 --tag distill --set loss.weight_distill=1

``--cv K`` cross-validates the zero-shot recipe by class instead (``sbir cv --task
zeroshot``): the 125 classes are dealt into K folds, each fold's classes are unseen
once (the recipe's ``data.unseen`` is replaced by the folds), and the mean and
standard deviation of the folds' zero-shot metrics are reported, beside the ImageNet
features on the same folds. Writes ``benchmarks/results/category_sketchy-cv<K>[-<tag>].json``.

Writes ``benchmarks/results/category_sketchy[-<tag>].json``; a task run alone replaces only its own
entry there (each entry keeps its command, date and machine).
"""

from __future__ import annotations

import argparse
import os
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
    portable_path,
    resolve_overrides,
    resolve_path,
    run_main,
    write_result,
)

TASKS = ("category", "zeroshot")
TEST_FRACTION = 0.2
TEST_SEED = 0
REPORT_KEYS = (
    "map@all",
    "map@200",
    "p@10",
    "p@100",
    "p@200",
    "map@all_voc",
    "map@200_voc",
    "p@100_zse",
    "p@200_zse",
    "n_queries",
    "n_gallery",
    "n_classes",
    "distance",
    "flip",
)


def build_category_view(src: Path, dst: Path, fraction: float = TEST_FRACTION, seed: int = TEST_SEED) -> dict:
    """Sketchy-layout folder of symlinks: ``train/`` = held-in sketches + all photos, ``test/`` = held-out
    sketches + all photos. Returns a description (counts, rule)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_test = 0
    n_train = 0
    classes = sorted(p.name for p in (src / "sketch").iterdir() if p.is_dir())
    for c in classes:
        sketches = sorted(p for p in (src / "sketch" / c).iterdir() if p.is_file() and not p.name.startswith("."))
        k = int(np.floor(fraction * len(sketches) + 0.5))
        test_idx = set(rng.permutation(len(sketches))[:k].tolist())
        for part in ("train", "test"):
            pdir = dst / part / "photo" / c
            if not pdir.exists():
                pdir.parent.mkdir(parents=True, exist_ok=True)
                os.symlink((src / "photo" / c).resolve(), pdir, target_is_directory=True)
            (dst / part / "sketch" / c).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(sketches):
            part = "test" if i in test_idx else "train"
            link = dst / part / "sketch" / c / s.name
            if not link.exists():
                os.symlink(s.resolve(), link)
            n_test += part == "test"
            n_train += part == "train"
    return {
        "rule": f"per class, a seeded ({seed}) {fraction:.0%} of the sketches are test queries; all photos in both",
        "classes": len(classes),
        "train_sketches": n_train,
        "test_sketches": n_test,
        "view": portable_path(dst),
    }


def _pick(report: dict) -> dict:
    out = {k: report[k] for k in REPORT_KEYS if k in report}
    hashed = ("map@all", "map@200", "p@100", "p@200")
    out.update({k: v for k, v in report.items() if "_hash" in k and k.split("_hash")[0] in hashed})
    return out


def run_task(task: str, args) -> dict:
    import torch

    from sbir.config import load_config, to_dict
    from sbir.data.formats import load_dataset
    from sbir.data.policies import evaluation_split
    from sbir.engine.evaluate import evaluate_category
    from sbir.engine.inference import load_model
    from sbir.engine.tasks import task_spec
    from sbir.engine.trainer import Trainer
    from sbir.viz.grid import write_retrieval_grid

    src = SHARED_DATA / "sketchy_mini"
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    entry: dict = {}
    if task == "category":
        view = runs / "sketchy_mini_category_view"
        entry["split"] = build_category_view(src, view)
        data = view
    else:
        data = src
    config = args.config_category if task == "category" else args.config_zeroshot
    cfg = load_config(config, [f"data.path={data}", *resolve_overrides(args.set)])
    run_dir = runs / f"{task}{('-' + args.tag) if args.tag else ''}-{time.strftime('%Y%m%d-%H%M%S')}"

    t0 = time.time()
    trainer = Trainer(cfg, run_dir, progress=not args.no_progress)
    summary = trainer.fit()
    train_s = time.time() - t0
    device = str(trainer.device)
    del trainer

    model, cfg, _ = load_model(run_dir, device=device)
    dataset = load_dataset(str(data))
    target = evaluation_split(dataset, cfg, str(data), task_spec(cfg).split_policy, run_dir)
    t0 = time.time()
    evaluation = evaluate_category(model, cfg, target, flip_tta=cfg.eval.flip_tta, progress=not args.no_progress)
    eval_s = time.time() - t0
    trained = evaluation.metrics
    write_retrieval_grid(evaluation, run_dir / "eval-test" / "retrieval.png", title="test retrieval")
    entry.update(
        config=portable_path(config),
        overrides=list(args.set),
        run_dir=portable_path(run_dir),
        best_epoch=summary["best_epoch"],
        epochs=cfg.optim.epochs,
        best_val_map_all=summary[f"best_val_{cfg.select_metric}"] if cfg.select_metric == "map@all" else None,
        train_wall_s=round(train_s, 1),
        test_eval_wall_s=round(eval_s, 1),
        test=_pick(trained),
        resolved_config=to_dict(cfg),
    )
    del model
    if not args.no_baseline:
        base, _, _ = load_model("pretrained", device=device)
        t0 = time.time()
        b = evaluate_category(
            base, cfg, target, flip_tta=cfg.eval.flip_tta, distance="cosine", progress=not args.no_progress
        ).metrics
        entry["imagenet_baseline_test"] = _pick(b)
        entry["imagenet_baseline_eval_wall_s"] = round(time.time() - t0, 1)
        del base
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    t = entry["test"]
    base_map = entry.get("imagenet_baseline_test", {}).get("map@all", float("nan"))
    print(
        f"{task}: test map@all {t['map@all']:.3f} map@200 {t['map@200']:.3f} p@100 {t['p@100']:.3f} "
        f"p@200 {t['p@200']:.3f}  (ImageNet baseline map@all {base_map:.3f})  train {train_s:.0f}s",
        file=sys.stderr,
    )
    return entry


def cross_validate_zeroshot(args, argv) -> int:
    """``--cv K``: the zero-shot recipe cross-validated by class; fold metrics, their mean and std."""
    from sbir.config import load_config
    from sbir.data.formats import load_dataset
    from sbir.data.policies import evaluation_split
    from sbir.engine.cv import cross_validate
    from sbir.engine.evaluate import evaluate_category
    from sbir.engine.inference import load_model

    data = SHARED_DATA / "sketchy_mini"
    overrides = [f"data.path={data}", *resolve_overrides(args.set), "data.unseen=null"]
    cfg = load_config(args.config_zeroshot, overrides)
    out = Path(args.runs) / f"zeroshot-cv{args.cv}{('-' + args.tag) if args.tag else ''}"
    t0 = time.time()
    report = cross_validate(cfg, out, folds=args.cv, progress=not args.no_progress)
    entry = {k: v for k, v in report.items() if k != "task"}
    entry.update(config=portable_path(args.config_zeroshot), overrides=list(args.set), cv_dir=portable_path(out))
    entry["wall_s"] = round(time.time() - t0, 1)
    if not args.no_baseline:
        base, _, _ = load_model("pretrained")
        dataset = load_dataset(str(data))
        per_fold = []
        for fold in range(args.cv):
            run = out / f"fold-{fold}"
            fold_cfg = load_config(run / "config.yaml")  # its unseen classes; the weights are not needed here
            target = evaluation_split(dataset, fold_cfg, str(data), "unseen", run, announce=False)
            flip = fold_cfg.eval.flip_tta
            m = evaluate_category(base, fold_cfg, target, flip_tta=flip, distance="cosine", progress=False).metrics
            per_fold.append({k: m[k] for k in ("map@all", "p@10", "p@100")})
        entry["imagenet_baseline"] = fold_stats(per_fold)
    print(
        f"zero-shot {args.cv}-fold by class: map@all {report['map@all_mean']:.3f} +- {report['map@all_std']:.3f}  "
        f"p@10 {report['p@10_mean']:.3f} +- {report['p@10_std']:.3f}",
        file=sys.stderr,
    )
    name = f"category_sketchy-cv{args.cv}" + (f"-{args.tag}" if args.tag else "")
    write_result(name, {"data": portable_path(data), "command": command_line(__file__, argv), **entry})
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--config-category", type=resolve_path, default=REPO_ROOT / "configs" / "category_sketchy.yaml")
    ap.add_argument("--config-zeroshot", type=resolve_path, default=REPO_ROOT / "configs" / "zeroshot_sketchy.yaml")
    ap.add_argument("--cv", type=int, metavar="K", help="cross-validate the zero-shot recipe by class, K folds")
    add_training_arguments(ap, "bench_category_sketchy", set_help="config overrides for both tasks")
    args = ap.parse_args(argv)

    if not (SHARED_DATA / "sketchy_mini").is_dir():
        print(f"{SHARED_DATA / 'sketchy_mini'} not found", file=sys.stderr)
        return 1
    if args.cv is not None:
        if args.cv < 2:
            ap.error(f"--cv needs at least 2 folds, got {args.cv}")
        return cross_validate_zeroshot(args, argv)
    import datetime as dt
    import json

    from _common import RESULTS_DIR, machine

    name = "category_sketchy" + (f"-{args.tag}" if args.tag else "")
    command = command_line(__file__, argv)
    results = {}
    for task in args.tasks:
        t0 = time.time()
        entry = run_task(task, args)
        # Each task records its own command, date and machine: tasks may come from separate invocations.
        results[task] = {
            "command": command,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "total_wall_s": round(time.time() - t0, 1),
            **entry,
        }
    previous = RESULTS_DIR / f"{name}.json"
    if previous.is_file():  # keep the tasks this invocation did not run
        try:
            old = json.loads(previous.read_text()).get("results", {})
        except ValueError:
            old = {}
        results = {**{k: v for k, v in old.items() if k not in results}, **results}
    write_result(name, {"data": portable_path(SHARED_DATA / "sketchy_mini"), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
