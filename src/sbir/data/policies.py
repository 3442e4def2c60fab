"""Split policies: which records a task trains, validates and tests on.

A task names one policy (``sbir.engine.tasks``):

* ``"photo"`` (fine-grained): the dataset's ``train`` split, a validation split
  carved from it **by photo** (:func:`sbir.data.splits.carve_validation`);
  test = the ``test`` split. With ``data.cv_folds`` (``sbir cv``), fold
  ``data.cv_fold`` of the training photos is held out first
  (:func:`sbir.data.splits.hold_out_fold`) and is the run's test split; the
  validation split for model selection is carved from the other folds.
* ``"class"`` (category-level): a **class-stratified** validation split (per
  class, ``data.val_fraction`` of the photos and of the sketches); validation
  classes are training classes. Test = the ``test`` split; a dataset without one
  is an error when it is the training dataset (it would measure training data).
* ``"unseen"`` (zero-shot): the unseen classes (``data.unseen``: a built-in list
  such as ``sketchy_unseen21``, a class-list file or a comma list; unset = the
  standard Sketchy split when the data has all of its classes) are removed
  first, so training **and** validation only see seen classes. Validation holds
  out whole seen classes (:func:`sbir.data.splits.carve_heldout_classes`), so
  model selection measures retrieval of classes the network did not train on.
  Test = the **unseen classes only** of the ``test`` split (of ``train`` when
  there is none), never the seen ones: that is the zero-shot number. With
  ``data.cv_folds`` the unseen classes are fold ``data.cv_fold`` of the classes
  (:func:`sbir.data.splits.hold_out_class_fold`: cross-validation by class),
  written into ``data.unseen`` as a comma list, so the run records and replays them.

Any other dataset (``--data OTHER`` at test time) is a held-out set: its
``test`` split, or all of it when it has a single split. A zero-shot run still
drops the classes it trained or validated on, when ``split.json`` names them.

``split.json`` records the validation ids (and, for zero-shot, the unseen,
training and validation classes); resume and ``sbir eval --split val`` replay it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sbir.config import TrainConfig
from sbir.data.formats import load_dataset, skipped_message
from sbir.data.records import Split
from sbir.data.splits import (
    BY_CLASS,
    BY_PHOTO,
    apply_split_record,
    carve_heldout_classes,
    carve_validation,
    hold_out_class_fold,
    hold_out_fold,
    load_split_record,
    save_split_record,
)
from sbir.errors import ConfigError, DataError

POLICIES = ("photo", "class", "unseen")
DEFAULT_SKETCHY_UNSEEN = "sketchy_unseen21"


def require_labels(split: Split, where: str) -> None:
    """Every photo and sketch of ``split`` must carry its class label."""
    for kind, recs in (("photo", split.photos), ("sketch", split.sketches)):
        bad = next((r for r in recs if r.label is None), None)
        if bad is not None:
            raise DataError(
                f"{kind} {bad.id} ({bad.image.describe()}) in split '{split.name}' of {where} has no class label; "
                "category-level and zero-shot SBIR need classes: use a class-folder layout "
                "(photos/<class>/ + sketches/<class>/, or Sketchy's photo/<class>/ + sketch/<class>/)"
            )


def default_unseen(split: Split) -> str | None:
    """``sketchy_unseen21`` when ``split`` has every class of it (Sketchy-like data), else None."""
    from sbir.data.zeroshot import load_class_list, normalize_class_name

    have = {normalize_class_name(c) for c in split.labels()}
    wanted = {normalize_class_name(c) for c in load_class_list(DEFAULT_SKETCHY_UNSEEN)}
    return DEFAULT_SKETCHY_UNSEEN if wanted <= have and len(have) > len(wanted) else None


def resolve_unseen(cfg: TrainConfig, split: Split) -> str:
    """The unseen-class spec of a zero-shot run; an unset ``cfg.data.unseen`` is filled (and so recorded)."""
    if cfg.data.unseen:
        return cfg.data.unseen
    guess = default_unseen(split)
    if guess is None:
        raise ConfigError(
            "task zeroshot needs the unseen classes: pass --unseen (data.unseen) with a built-in split "
            "(sketchy_unseen21, sketchy_unseen25, tuberlin_unseen30, quickdraw_unseen30), a class-list file "
            f"or a comma-separated list of classes of {cfg.data.path}"
        )
    cfg.data.unseen = guess
    return guess


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"split policy must be one of {POLICIES}, got {policy!r}")


def prepare_splits(cfg: TrainConfig, run_dir: Path, split_record: dict | None, progress: bool, policy: str):
    """Load the dataset and build (or replay) the train / validation splits; writes ``split.json``.

    Returns ``(dataset, train, val)``; see the module docstring for the policies.
    """
    from sbir.data.zeroshot import load_class_list, split_seen_unseen

    _check_policy(policy)
    if not cfg.data.path:
        raise DataError("no dataset given: pass --data PATH (or data.path in the config)")
    dataset = load_dataset(cfg.data.path, cfg.data.format, skip_orphans=cfg.data.skip_orphans)
    if dataset.skipped and progress:
        print(skipped_message(dataset), file=sys.stderr)
    full = dataset.split("train")
    extra: dict[str, Any] = {"dataset": str(Path(cfg.data.path).resolve()), "format": dataset.format}
    if policy != "photo":
        require_labels(full, str(dataset.root))
        extra["task"] = cfg.task
    pool = full
    if cfg.data.cv_folds and policy == "class":
        raise ConfigError(
            f"cross-validation (data.cv_folds) holds out photos (fine-grained) or classes (zero-shot); task "
            f"{cfg.task!r} has neither: use --task zeroshot to cross-validate by class"
        )
    if cfg.data.cv_folds and policy == "photo":
        pool, _, extra["cv"] = hold_out_fold(full, cfg.data.cv_folds, cfg.data.cv_fold, cfg.data.split_seed)
    if cfg.data.cv_folds and policy == "unseen" and split_record is None:
        if cfg.data.unseen:
            raise ConfigError(
                f"data.unseen ({cfg.data.unseen}) and data.cv_folds both choose the unseen classes; cross-validation "
                "makes every fold's classes unseen in turn: unset data.unseen (--set data.unseen=null)"
            )
        held, extra["cv"] = hold_out_class_fold(full, cfg.data.cv_folds, cfg.data.cv_fold, cfg.data.split_seed)
        bad = [c for c in held if "," in c]
        if bad:
            raise DataError(f"class {bad[0]!r} has a comma in its name; cross-validation by class cannot record it")
        cfg.data.unseen = ",".join(held) + ","  # the trailing comma keeps a single class a list
    if policy == "unseen":
        spec = resolve_unseen(cfg, full)
        classes = load_class_list(spec)
        pool, unseen = split_seen_unseen(full, classes)
        extra.update(unseen=spec, unseen_source=getattr(classes, "source", spec), unseen_classes=unseen.labels())
        if split_record is not None and sorted(split_record.get("unseen_classes", [])) != unseen.labels():
            raise DataError(
                f"the run's split.json lists unseen classes {split_record.get('unseen_classes')} but "
                f"data.unseen={spec!r} gives {unseen.labels()} on {cfg.data.path}; the data or the list changed. "
                "Restore them, or start a new run."
            )
    if split_record is None:
        if policy == "unseen":
            train, val, record = carve_heldout_classes(pool, cfg.data.val_fraction, cfg.data.split_seed)
            record["train_classes"] = train.labels()
        else:
            by = BY_PHOTO if policy == "photo" else BY_CLASS
            train, val, record = carve_validation(pool, cfg.data.val_fraction, cfg.data.split_seed, by=by)
        record.update(extra)
        save_split_record(Path(run_dir) / "split.json", record)
    else:
        train, val = apply_split_record(pool, split_record)
        val.name = "val"
    if len(val.sketches) == 0 or (policy != "photo" and len(val.photos) == 0):
        raise DataError(
            f"the validation split carved from {cfg.data.path} is empty; model selection needs one: "
            "raise data.val_fraction (default 0.15) or add data"
            + ("" if policy == "photo" else " (each class needs >= 2 photos and >= 2 sketches)")
        )
    return dataset, train, val


def _same_dataset(data_path: str | Path, cfg: TrainConfig, record: dict | None) -> bool:
    here = Path(data_path).expanduser().resolve()
    paths = [Path(cfg.data.path).expanduser().resolve()] if cfg.data.path else []
    if record and record.get("dataset"):
        paths.append(Path(record["dataset"]))
    return here in paths


def _run_record(run_dir: Path | None) -> dict | None:
    if run_dir is None or not (Path(run_dir) / "split.json").is_file():
        return None
    try:
        return load_split_record(Path(run_dir) / "split.json")
    except DataError:
        return None


def evaluation_split(
    dataset, cfg: TrainConfig, data_path: str | Path, policy: str, run_dir: Path | None = None, announce: bool = True
) -> Split:
    """The split ``sbir eval --split test`` evaluates (see the module docstring)."""
    from sbir.data.zeroshot import load_class_list, normalize_class_name

    _check_policy(policy)
    if policy == "photo" and cfg.data.cv_folds and _same_dataset(data_path, cfg, _run_record(run_dir)):
        # A cross-validation run: its test split is its held-out fold of the training photos.
        _, held_out, _ = hold_out_fold(dataset.split("train"), cfg.data.cv_folds, cfg.data.cv_fold, cfg.data.split_seed)
        return held_out
    if policy == "photo":
        return dataset.split("test")
    record = _run_record(run_dir)
    same = _same_dataset(data_path, cfg, record)
    has_test = "test" in dataset.splits
    if has_test:
        base, what = dataset.split("test"), "its test split"
    elif same and policy == "unseen":
        base, what = dataset.split("train"), "its train split"
    elif not same and len(dataset.splits) == 1:
        (name,) = dataset.splits
        base, what = dataset.split(name), f"all of it (a held-out dataset with the single split '{name}')"
    elif not same:
        raise DataError(
            f"dataset {dataset.root} has splits {', '.join(sorted(dataset.splits))} but no 'test'; "
            "add a test/ folder or evaluate another dataset"
        )
    else:
        raise DataError(
            f"dataset {dataset.root} has no test split, and the run trained on its train split, so testing on it "
            "would measure training data. Evaluate the validation split (--split val), give a held-out dataset "
            "(--data OTHER), or add train/ and test/ folders."
        )
    require_labels(base, str(dataset.root))
    keep = None
    if policy == "unseen":
        if not cfg.data.unseen:
            raise ConfigError("this zero-shot run records no unseen classes (data.unseen); it cannot be tested")
        unseen = {normalize_class_name(c) for c in load_class_list(cfg.data.unseen)}
        present = {normalize_class_name(c) for c in base.labels()}
        if unseen & present:
            keep, what = unseen, f"the unseen classes ({cfg.data.unseen}) of {what}"
        elif same:
            raise DataError(
                f"{what} of {dataset.root} has none of the run's unseen classes ({cfg.data.unseen}); "
                "a zero-shot test needs them"
            )
        elif record and (record.get("train_classes") or record.get("val_classes")):
            seen = {normalize_class_name(c) for c in [*record.get("train_classes", []), *record.get("val_classes", [])]}
            keep, what = present - seen, f"the classes of {what} the run never trained on"
    target = Split(
        name="test",
        photos=[p for p in base.photos if keep is None or normalize_class_name(p.label) in keep],
        sketches=[s for s in base.sketches if keep is None or normalize_class_name(s.label) in keep],
    )
    if not target.sketches or not target.photos:
        raise DataError(
            f"the test split of {dataset.root} ({what}) has {len(target.sketches)} sketches and "
            f"{len(target.photos)} photos; evaluation needs both"
        )
    if announce:
        n_cls = len({s.label for s in target.sketches})
        print(
            f"evaluating {dataset.root}: {what}: {len(target.sketches)} sketches of {n_cls} classes "
            f"against {len(target.photos)} photos",
            file=sys.stderr,
        )
    return target


__all__ = ["POLICIES", "default_unseen", "prepare_splits", "require_labels", "resolve_unseen", "evaluation_split"]
