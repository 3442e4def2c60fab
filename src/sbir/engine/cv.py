"""``sbir cv``: k-fold cross-validation by photo (zero-shot: by class), the way to choose between recipes.

A validation split of 30 to 60 queries moves 2 to 3 points per query, so it
cannot tell two recipes apart. Cross-validation trains one run per fold
(``data.cv_folds`` / ``data.cv_fold``): the fold's photos and their sketches
are held out, the best epoch is chosen on a validation split carved from the
*other* folds, and the best checkpoint is then tested on the held-out fold
(with ``optim.average_last``, the averaged weights are tested too, as
``averaged_<metric>``: the option is cross-validated like any other). A
zero-shot run holds out a fold of the classes instead: they are its unseen classes,
and whole classes of the other folds choose its epoch. No
fold's score ever selected anything. The report holds each fold's metrics and
their mean and standard deviation. Runs are resumable: finished folds are
read back, a fold with a checkpoint continues from it.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

from sbir.config import TrainConfig, load_config, to_dict
from sbir.engine.evaluate import evaluate_run
from sbir.engine.tasks import task_spec, with_defaults
from sbir.engine.trainer import Trainer
from sbir.errors import ConfigError
from sbir.fileio import atomic_write_text

DEFAULT_FOLDS = 5


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


# Settings that do not change what a fold trains or how it is tested.
_RUN_ONLY_KEYS = ("device", "data.num_workers")
# Settings a fold fills in from its data when they are unset (zero-shot folds: their unseen classes; category
# models: the number of training classes).
_DERIVED_KEYS = ("data.unseen", "model.num_classes")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "backbone_kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_recipe(run_dir: Path, fold_cfg: TrainConfig) -> None:
    """ConfigError if ``run_dir`` holds a fold of another configuration: reading it back would report that
    recipe's numbers under this one's name."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = _flat(to_dict(load_config(saved)))
    except ConfigError as exc:
        raise ConfigError(f"{saved} cannot be read back ({exc}); delete {run_dir} or pass another --out") from exc
    new = _flat(to_dict(with_defaults(copy.deepcopy(fold_cfg))))  # as the trainer fills it in and saves it
    for cfg_dict in (old, new):
        if cfg_dict.get("data.path"):
            cfg_dict["data.path"] = str(Path(cfg_dict["data.path"]).expanduser().resolve())
    differ = [
        k
        for k in sorted(set(old) | set(new))
        if k not in _RUN_ONLY_KEYS and old.get(k) != new.get(k) and not (k in _DERIVED_KEYS and new.get(k) is None)
    ]
    if differ:
        k = differ[0]
        raise ConfigError(
            f"{run_dir} holds a fold of another configuration ({len(differ)} setting(s) differ, e.g. {k}: "
            f"{old.get(k)!r} there, {new.get(k)!r} now); pass another --out, or delete it to train this one"
        )


def cross_validate(cfg: TrainConfig, out_dir: str | Path, folds: int = DEFAULT_FOLDS, progress: bool = True) -> dict:
    """Train and test ``folds`` runs of ``cfg`` into ``out_dir/fold-<i>``; write and return ``out_dir/cv.json``."""
    if cfg.data.cv_folds not in (None, folds):
        raise ConfigError(f"data.cv_folds is {cfg.data.cv_folds} but --folds is {folds}; set one of them")
    keys = task_spec(cfg).metric_keys
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_fold: list[dict[str, Any]] = []
    for fold in range(folds):
        run_dir = out / f"fold-{fold}"
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.data.cv_folds, fold_cfg.data.cv_fold = folds, fold
        _check_same_recipe(run_dir, fold_cfg)
        if (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            if progress:
                print(f"cross-validation fold {fold + 1}/{folds}: {run_dir}", file=sys.stderr)
            resume = (run_dir / "last.json").is_file()
            trainer = Trainer(None if resume else fold_cfg, run_dir, resume=resume, progress=progress)
            summary = trainer.fit()
        metrics, _ = evaluate_run(run_dir, split="test", progress=False)
        # A run with a token re-ranker (model.rerank) is also scored re-ranked: rerank_acc@K.
        row = {k: metrics[k] for k in (*keys, *(f"rerank_{k}" for k in keys)) if k in metrics}
        if "averaged" in summary:  # optim.average_last: its averaged weights face the held-out fold too
            averaged, _ = evaluate_run(
                run_dir / "averaged.safetensors", split="test", progress=False, out_dir=run_dir / "eval-test-averaged"
            )
            row.update({f"averaged_{k}": averaged[k] for k in keys if k in averaged})
        row.update(
            fold=fold,
            n_queries=metrics.get("n_queries"),
            n_gallery=metrics.get("n_gallery"),  # Acc@K falls as the gallery grows: folds of other sizes differ
            best_epoch=summary["best_epoch"],
            epochs_run=summary["epochs_run"],
            train_seconds=round(sum(h["seconds"] for h in summary["history"]), 1),
        )
        per_fold.append(row)
    report: dict[str, Any] = {"folds": folds, "task": cfg.task, "per_fold": per_fold}
    for k in (*keys, *(f"{prefix}_{k}" for prefix in ("rerank", "averaged") for k in keys)):
        values = [r[k] for r in per_fold if k in r]
        if values:
            report[f"{k}_mean"], report[f"{k}_std"] = _mean_std(values)
    atomic_write_text(out / "cv.json", json.dumps(report, indent=2))
    return report


__all__ = ["DEFAULT_FOLDS", "cross_validate"]
