"""The validation split: carved from training data once, recorded, and reproduced exactly.

Model selection happens on a validation split carved from the training split,
never on test data. :func:`carve_validation` makes it (seeded) and returns a
JSON-serialisable *record* of which ids went to validation; the trainer saves
it in the run folder (:func:`save_split_record`) and resume/eval rebuild the
identical split with :func:`apply_split_record`.

How the split is made (``by``):

* ``"photo"`` -- fine-grained data (every sketch has a ``photo_id``). The
  photos that have at least one sketch are shuffled with ``seed`` and
  ``round(fraction * n)`` of them go to validation together with *all* their
  sketches; no photo is on both sides. Photos without sketches (gallery
  distractors, e.g. Sketchy) stay in train. With ``fraction > 0`` and at least
  two photos with sketches, validation gets at least one photo and train
  keeps at least one.
* ``"class-stratified"`` -- category-level data (sketches carry a ``label`` but
  no ``photo_id``). Within each class, photos and sketches are shuffled
  separately and ``round(fraction * n)`` of each go to validation (at most
  ``n - 1``, so every class keeps a training example). A class gets
  validation photos and sketches together or not at all, so every validation
  sketch has relevant validation photos. With ``fraction > 0`` and any class
  holding >= 2 photos and >= 2 sketches, validation is never empty. Classes
  are the same on both sides (this is not a zero-shot split).

``by`` is chosen automatically (photo when every sketch has a ``photo_id``);
pass ``by="class-stratified"`` to split instance-paired labelled data (e.g.
Sketchy) by class for category-level training.

``fraction = 0`` returns the whole split as train and an empty ``val`` split
(no photos, no sketches). Human triplets (``Split.triplets``) are kept on a
side only when the sketch and both photos are on that side, re-indexed into
that side's lists; triplets crossing the boundary are dropped (a side may end
with an empty ``(0, 3)`` array).
"""

from __future__ import annotations

import json
import math
import os
from numbers import Real
from pathlib import Path

import numpy as np

from sbir.data.records import Split
from sbir.errors import ConfigError, DataError
from sbir.fileio import atomic_write_text

RECORD_VERSION = 1
BY_PHOTO = "photo"
BY_CLASS = "class-stratified"
_BY_CHOICES = (BY_PHOTO, BY_CLASS)


def _check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not math.isfinite(float(fraction)):
        raise ConfigError(f"data.val_fraction must be a number in [0, 1), got {fraction!r}")
    f = float(fraction)
    if not 0.0 <= f < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {fraction}")
    return f


def _infer_by(split: Split) -> str:
    if not split.sketches:
        raise DataError(f"split '{split.name}' has no sketches; nothing to carve a validation split from.")
    has_photo = [s.photo_id is not None for s in split.sketches]
    if all(has_photo):
        return BY_PHOTO
    if not any(has_photo) and all(s.label is not None for s in split.sketches):
        return BY_CLASS
    raise DataError(
        f"split '{split.name}' mixes sketches with and without photo_id/label, so it can be split neither "
        "by photo nor by class. Use one dataset format for all of it."
    )


def _n_val(n: int, fraction: float) -> int:
    # Python's round() is banker's rounding; use round-half-up so results are unsurprising.
    return int(math.floor(fraction * n + 0.5))


def _select_by_photo(split: Split, fraction: float, rng: np.random.Generator) -> tuple[set[str], set[str]]:
    known = {p.id for p in split.photos}
    missing = sorted({s.photo_id for s in split.sketches} - known)
    if missing:
        raise DataError(
            f"split '{split.name}': {len(missing)} sketches point at photo ids that are not in the split "
            f"(e.g. {missing[:3]}). Reload the dataset (orphans must be fixed or skipped)."
        )
    with_sketches = sorted({s.photo_id for s in split.sketches})
    n = len(with_sketches)
    k = _n_val(n, fraction)
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    else:
        k = min(k, max(n - 1, 0))
    order = rng.permutation(n)
    val_photos = {with_sketches[i] for i in order[:k]}
    val_sketches = {s.id for s in split.sketches if s.photo_id in val_photos}
    return val_photos, val_sketches


def _select_by_class(split: Split, fraction: float, rng: np.random.Generator) -> tuple[set[str], set[str]]:
    if any(p.label is None for p in split.photos):
        raise DataError(
            f"split '{split.name}' has photos without a label; a class-stratified split needs a class for every photo."
        )
    photos_by: dict[str, list[str]] = {}
    sketches_by: dict[str, list[str]] = {}
    for p in split.photos:
        photos_by.setdefault(p.label, []).append(p.id)
    for s in split.sketches:
        sketches_by.setdefault(s.label, []).append(s.id)
    classes = sorted(set(photos_by) & set(sketches_by))
    plan: dict[str, tuple[int, int]] = {}
    for c in classes:
        P, S = len(photos_by[c]), len(sketches_by[c])
        kp, ks = min(_n_val(P, fraction), P - 1), min(_n_val(S, fraction), S - 1)
        if (kp > 0) != (ks > 0):  # a class contributes both or neither
            if kp == 0 and P >= 2:
                kp = 1
            elif ks == 0 and S >= 2:
                ks = 1
            else:
                kp = ks = 0
        plan[c] = (kp, ks)
    if fraction > 0 and not any(ks for _, ks in plan.values()):
        eligible = [c for c in classes if len(photos_by[c]) >= 2 and len(sketches_by[c]) >= 2]
        if eligible:
            # the class with most sketches (then photos, then name) gives one of each
            c = sorted(eligible, key=lambda c: (-len(sketches_by[c]), -len(photos_by[c]), c))[0]
            plan[c] = (1, 1)
    val_photos: set[str] = set()
    val_sketches: set[str] = set()
    # Draw in sorted class order so the result depends only on the data and the seed.
    for c in classes:
        kp, ks = plan[c]
        ph, sk = sorted(photos_by[c]), sorted(sketches_by[c])
        val_photos.update(ph[i] for i in rng.permutation(len(ph))[:kp])
        val_sketches.update(sk[i] for i in rng.permutation(len(sk))[:ks])
    return val_photos, val_sketches


def _subset_triplets(triplets: np.ndarray, sketch_map: np.ndarray, photo_map: np.ndarray) -> np.ndarray:
    """Keep rows whose three members map to >= 0 and re-index them."""
    t = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
    s, p, n = sketch_map[t[:, 0]], photo_map[t[:, 1]], photo_map[t[:, 2]]
    keep = (s >= 0) & (p >= 0) & (n >= 0)
    return np.stack([s[keep], p[keep], n[keep]], axis=1).astype(np.int64).reshape(-1, 3)


def _partition(
    split: Split, val_photos: set[str], val_sketches: set[str], val_name: str = "val"
) -> tuple[Split, Split]:
    in_val_p = np.array([p.id in val_photos for p in split.photos], dtype=bool)
    in_val_s = np.array([s.id in val_sketches for s in split.sketches], dtype=bool)
    train = Split(
        name=split.name,
        photos=[p for p, v in zip(split.photos, in_val_p, strict=False) if not v],
        sketches=[s for s, v in zip(split.sketches, in_val_s, strict=False) if not v],
    )
    val = Split(
        name=val_name,
        photos=[p for p, v in zip(split.photos, in_val_p, strict=False) if v],
        sketches=[s for s, v in zip(split.sketches, in_val_s, strict=False) if v],
    )
    if split.triplets is not None:
        tri = np.asarray(split.triplets)
        for side, pmask, smask in ((train, ~in_val_p, ~in_val_s), (val, in_val_p, in_val_s)):
            photo_map = np.full(len(split.photos), -1, dtype=np.int64)
            photo_map[pmask] = np.arange(int(pmask.sum()))
            sketch_map = np.full(len(split.sketches), -1, dtype=np.int64)
            sketch_map[smask] = np.arange(int(smask.sum()))
            side.triplets = _subset_triplets(tri, sketch_map, photo_map)
    return train, val


def make_split_record(split: Split, train: Split, val: Split, fraction: float, seed: int, by: str) -> dict:
    """The record of a validation split carved from ``split`` (what ``split.json`` holds)."""
    return {
        "version": RECORD_VERSION,
        "source_split": split.name,
        "fraction": fraction,
        "seed": seed,
        "by": by,
        "val_photo_ids": [p.id for p in val.photos],
        "val_sketch_ids": [s.id for s in val.sketches],
        "n_train_photos": len(train.photos),
        "n_train_sketches": len(train.sketches),
        "n_val_photos": len(val.photos),
        "n_val_sketches": len(val.sketches),
        "n_train_triplets": None if train.triplets is None else int(len(train.triplets)),
        "n_val_triplets": None if val.triplets is None else int(len(val.triplets)),
    }


def carve_validation(
    split: Split, fraction: float = 0.15, seed: int = 0, by: str | None = None
) -> tuple[Split, Split, dict]:
    """Split ``split`` into (train, val, record); see the module docstring for the rules.

    ``train`` keeps ``split.name``; ``val`` is named ``"val"``. Records keep
    the order of ``split``. ``record`` is JSON-serialisable and reproduces the
    split through :func:`apply_split_record`.
    """
    f = _check_fraction(fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"data.split_seed must be an integer, got {seed!r}")
    if by is None:
        by = _infer_by(split)
    elif by not in _BY_CHOICES:
        raise ConfigError(f"validation split 'by' must be one of {', '.join(_BY_CHOICES)}, got {by!r}")
    elif by == BY_PHOTO and any(s.photo_id is None for s in split.sketches):
        raise DataError(
            f"split '{split.name}' has sketches without photo_id, so it cannot be split by photo; use by='{BY_CLASS}'."
        )
    elif by == BY_CLASS and any(s.label is None for s in split.sketches):
        raise DataError(
            f"split '{split.name}' has sketches without a label, so it cannot be split by class; use by='{BY_PHOTO}'."
        )
    rng = np.random.default_rng(int(seed))
    if by == BY_PHOTO:
        val_p, val_s = _select_by_photo(split, f, rng)
    else:
        val_p, val_s = _select_by_class(split, f, rng)
    train, val = _partition(split, val_p, val_s)
    return train, val, make_split_record(split, train, val, f, int(seed), by)


def hold_out_fold(split: Split, folds: int, fold: int, seed: int = 0) -> tuple[Split, Split, dict]:
    """Cross-validation by photo: ``(rest, held_out, record)`` for fold ``fold`` of ``folds``.

    The photos that have sketches are shuffled with ``seed`` and dealt into
    ``folds`` folds of near-equal size; fold ``fold`` and all its sketches are
    held out. Folds are disjoint and cover every photo with sketches; photos
    without sketches (distractors) stay in ``rest``. ``record`` names the held-out ids.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds!r}")
    if not 0 <= fold < folds:
        raise ConfigError(f"fold must be in [0, {folds}), got {fold!r}")
    if any(s.photo_id is None for s in split.sketches):
        raise DataError(
            f"split '{split.name}' has sketches without photo_id; cross-validation by photo needs paired sketches"
        )
    with_sketches = sorted({s.photo_id for s in split.sketches})
    if len(with_sketches) < folds:
        raise DataError(f"split '{split.name}' has {len(with_sketches)} photos with sketches, fewer than {folds} folds")
    order = np.random.default_rng(int(seed)).permutation(len(with_sketches))
    held = {with_sketches[i] for i in order[fold::folds]}
    held_sketches = {s.id for s in split.sketches if s.photo_id in held}
    rest, held_out = _partition(split, held, held_sketches, val_name="test")
    record = {
        "folds": int(folds),
        "fold": int(fold),
        "seed": int(seed),
        "heldout_photo_ids": [p.id for p in held_out.photos],
        "heldout_sketch_ids": [s.id for s in held_out.sketches],
    }
    return rest, held_out, record


def hold_out_class_fold(split: Split, folds: int, fold: int, seed: int = 0) -> tuple[list[str], dict]:
    """Cross-validation by class (zero-shot): ``(classes, record)``, the classes of fold ``fold`` of ``folds``.

    The classes that have both photos and sketches are sorted, shuffled with
    ``seed`` and dealt into ``folds`` folds of near-equal size, so folds are
    disjoint and every such class is unseen in exactly one fold.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds!r}")
    if not 0 <= fold < folds:
        raise ConfigError(f"fold must be in [0, {folds}), got {fold!r}")
    classes = sorted({p.label for p in split.photos} & {s.label for s in split.sketches} - {None})
    if len(classes) < folds:
        raise DataError(
            f"split '{split.name}' has {len(classes)} classes with both photos and sketches, fewer than {folds} folds"
        )
    order = np.random.default_rng(int(seed)).permutation(len(classes))
    held = sorted(classes[i] for i in order[fold::folds])
    return held, {"folds": int(folds), "fold": int(fold), "seed": int(seed), "by": "class", "heldout_classes": held}


def carve_heldout_classes(split: Split, fraction: float, seed: int) -> tuple[Split, Split, dict]:
    """Hold out whole classes of ``split`` for validation (zero-shot model selection).

    ``round(fraction * n)`` of the classes that have both photos and sketches
    (at least 2, and at least 2 classes stay for training) are drawn with
    ``seed``; all their photos and sketches go to validation. The record is
    :func:`carve_validation`'s with ``by="class-stratified"``, plus
    ``"class_disjoint": true`` and ``"val_classes"``.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction is {fraction}; zero-shot model selection holds out that fraction of the seen "
            "classes, so it must be in (0, 1) (e.g. 0.1)"
        )
    photo_classes = {p.label for p in split.photos}
    eligible = sorted({s.label for s in split.sketches} & photo_classes)
    if len(eligible) < 4:
        raise DataError(
            f"zero-shot training needs at least 4 seen classes with photos and sketches (2 to train, 2 held out "
            f"for validation); split '{split.name}' has {len(eligible)}: {', '.join(eligible)}. "
            "Use fewer unseen classes or more data."
        )
    k = int(np.floor(fraction * len(eligible) + 0.5))
    k = min(max(k, 2), len(eligible) - 2)
    rng = np.random.default_rng(int(seed))
    val_classes = sorted(eligible[i] for i in rng.permutation(len(eligible))[:k])
    held = set(val_classes)
    val_p = {p.id for p in split.photos if p.label in held}
    val_s = {s.id for s in split.sketches if s.label in held}
    train, val = _partition(split, val_p, val_s)
    record = {
        **make_split_record(split, train, val, float(fraction), int(seed), BY_CLASS),
        "class_disjoint": True,
        "val_classes": val_classes,
    }
    return train, val, record


def apply_split_record(split: Split, record: dict) -> tuple[Split, Split]:
    """Rebuild (train, val) from a record made by :func:`carve_validation` on the same data.

    DataError if the record is malformed, or names photos/sketches that are no
    longer in ``split`` (the data changed: delete the record to carve anew, or
    restore the data). Records added to the data since are put in train --
    except, when split by photo, new sketches of a validation photo, which
    follow their photo into val so that no photo is on both sides.
    """
    where = "split record"
    if not isinstance(record, dict):
        raise DataError(f"{where} must be a JSON object, got {type(record).__name__}. Delete it to carve a new split.")
    for key in ("by", "val_photo_ids", "val_sketch_ids"):
        if key not in record:
            raise DataError(
                f"{where} has no '{key}' entry; it was not written by sbir. Delete it to carve a new split."
            )
    by = record["by"]
    if by not in _BY_CHOICES:
        raise DataError(
            f"{where} has unknown 'by' value {by!r} (expected {' or '.join(_BY_CHOICES)}). Delete it to carve a new "
            "split."
        )
    ids = {}
    for key in ("val_photo_ids", "val_sketch_ids"):
        v = record[key]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DataError(f"{where}: '{key}' must be a list of id strings. Delete the record to carve a new split.")
        ids[key] = set(v)
    val_p, val_s = ids["val_photo_ids"], ids["val_sketch_ids"]
    have_p = {p.id for p in split.photos}
    have_s = {s.id: s for s in split.sketches}
    for kind, wanted, have in (("photo", val_p, have_p), ("sketch", val_s, have_s)):
        missing = sorted(wanted - set(have))
        if missing:
            raise DataError(
                f"{where} lists {len(missing)} validation {kind} id(s) that are not in split '{split.name}' "
                f"(e.g. {', '.join(repr(m) for m in missing[:3])}). The data changed since the split was recorded: "
                "restore it, or delete the split record to carve a new validation split."
            )
    if by == BY_PHOTO:
        for sid in sorted(val_s):
            pid = have_s[sid].photo_id
            if pid not in val_p:
                raise DataError(
                    f"{where} puts sketch {sid!r} in validation but its photo {pid!r} in train; the record does not "
                    "match this data. Delete it to carve a new validation split."
                )
        val_s = val_s | {s.id for s in split.sketches if s.photo_id in val_p}
    return _partition(split, val_p, val_s)


def save_split_record(path: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as JSON at ``path`` (atomically: a reader never sees half a file)."""
    p = Path(path)
    atomic_write_text(p, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return p


def load_split_record(path: str | os.PathLike) -> dict:
    """Read a record written by :func:`save_split_record`; DataError naming the file if unusable."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"split record {p} does not exist. Carve a new validation split (or pass the right run folder)."
        )
    try:
        with open(p, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read split record {p}: {exc}. Delete it to carve a new validation split.") from exc
    if not isinstance(record, dict) or "by" not in record:
        raise DataError(
            f"split record {p} is not a validation split record made by sbir. Delete it to carve a new one."
        )
    return record


__all__ = [
    "apply_split_record",
    "carve_heldout_classes",
    "carve_validation",
    "hold_out_fold",
    "load_split_record",
    "make_split_record",
    "save_split_record",
]
