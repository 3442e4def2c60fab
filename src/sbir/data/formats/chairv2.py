"""QMUL-Chair-V2 vector sketches (``ChairV2_Coordinate``), fine-grained pairs.

The file (from github.com/AyanKumarBhunia/on-the-fly-FGSBIR) is a pickle of a
dict ``'/train/<photo>_<n>'`` or ``'/test/<photo>_<n>'`` -> float array
``(N, 3)``: absolute ``x, y`` in a 256 x 256 box and a pen state that is **1 on
the last point of each stroke** (the pen lifts after it; on-the-fly-FGSBIR's
renderer starts a new line after such a point), 0 elsewhere. The sketch of key
``/train/2kb-34_2`` belongs to photo ``2kb-34`` (everything before the last
``_``, as in on-the-fly-FGSBIR; a few suffixes are worker ids, not numbers). It is read with
:func:`sbir.data.safe_pickle.restricted_load`, never plain ``pickle.load``.

The file holds no photos. :func:`load_chairv2` gives the sketches as
:class:`~sbir.data.records.SketchRecord` (``id`` = key without the split
prefix, ``photo_id`` = photo name, ``label`` None) in splits ``train`` and
``test``, rasterised on load (``size``, ``stroke_width``; drawn where they were
drawn on the 256 x 256 canvas, as in the original renderer). Give ``photo_dir``
(the Chair-V2 ``photo/`` folder with ``<photo>.png`` or ``.jpg``) to pair them
with photos and get a fine-grained retrieval dataset; each split's gallery is
the photos its sketches name (photos no sketch names are not used).

As a dataset format (``--format chairv2``; detected by a ``ChairV2_Coordinate``
file in the folder) the photos must be in ``photo/`` (or ``photos/``) next to
the pickle; without them :func:`load` raises a DataError saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sbir.data.formats.quickdraw import StrokeRef
from sbir.data.records import Dataset, FileRef, PhotoRecord, SketchRecord, Split
from sbir.data.safe_pickle import restricted_load
from sbir.errors import DataError

NAME = "chairv2"
PICKLE_NAME = "ChairV2_Coordinate"
LAYOUT = f"{PICKLE_NAME} (stroke pickle) + photo/<photo>.png"
PHOTO_DIRS = ("photo", "photos")
CANVAS = (256.0, 256.0)

PathLike = str | Path


def _parse_key(key: object, source: str) -> tuple[str, str, str]:
    """``'/train/<photo>_<n>'`` -> (split, sketch id, photo id)."""
    if not isinstance(key, str):
        raise DataError(f"{source}: key {key!r} is not a string; expected '/train/<photo>_<n>' or '/test/<photo>_<n>'")
    parts = key.strip("/").split("/", 1)
    if len(parts) != 2 or parts[0] not in ("train", "test") or not parts[1]:
        raise DataError(f"{source}: key {key!r} does not look like '/train/<photo>_<n>' or '/test/<photo>_<n>'")
    split, sid = parts
    photo, sep, n = sid.rpartition("_")
    if not sep or not photo or not n:
        raise DataError(f"{source}: key {key!r} has no '_<n>' suffix after the photo name")
    return split, sid, photo


def _check_array(arr: object, key: str, source: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{source}: value of {key!r} is a {type(arr).__name__}, expected an (N, 3) numpy array")
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise DataError(f"{source}: sketch {key!r} has shape {arr.shape}, expected (N, 3) x, y, pen with N >= 1")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{source}: sketch {key!r} has dtype {arr.dtype}, expected numbers")
    a = arr.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise DataError(f"{source}: sketch {key!r} has non-finite coordinates")
    return a


def load_chairv2(
    pickle_path: PathLike,
    photo_dir: PathLike | None = None,
    size: int = 256,
    stroke_width: float = 3.0,
    skip_orphans: bool = False,
) -> Dataset:
    """Chair-V2 sketches in splits ``train``/``test``; paired with photos when ``photo_dir`` is given.

    Without ``photo_dir`` every split has ``photos=[]`` (sketch-only use). With
    it, a sketch whose photo is missing is a DataError, or is skipped and listed
    in ``Dataset.skipped`` when ``skip_orphans``.
    """
    from sbir.data.formats import index_by_stem, list_images, orphan

    path = Path(pickle_path)
    data = restricted_load(path)
    source = str(path)
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"{source}: expected a non-empty dict of '/train/<photo>_<n>' -> (N, 3) arrays, got {type(data).__name__}"
        )
    photo_files: dict[str, Path] | None = None
    if photo_dir is not None:
        pdir = Path(photo_dir)
        if not pdir.is_dir():
            raise DataError(f"Chair-V2 photo folder {pdir} does not exist. Pass the folder holding <photo>.png files.")
        photo_files = index_by_stem(list_images(pdir))
        if not photo_files:
            raise DataError(f"Chair-V2 photo folder {pdir} has no images.")
    sketches: dict[str, list[SketchRecord]] = {"train": [], "test": []}
    used: dict[str, set[str]] = {"train": set(), "test": set()}
    skipped: list[str] = []
    for key in data:
        split, sid, photo = _parse_key(key, source)
        arr = _check_array(data[key], key, source)
        if photo_files is not None and photo not in photo_files:
            orphan(Path(f"{source}[{key}]"), f"{Path(photo_dir) / photo}.png", skip_orphans, skipped)  # type: ignore[arg-type]
            continue
        ref = StrokeRef(arr, origin=f"{source}[{key!r}]", size=size, stroke_width=stroke_width, canvas=CANVAS)
        sketches[split].append(SketchRecord(id=sid, image=ref, photo_id=photo, label=None))
        used[split].add(photo)
    splits: dict[str, Split] = {}
    for name in ("train", "test"):
        if not sketches[name]:
            continue
        photos: list[PhotoRecord] = []
        if photo_files is not None:
            photos = [PhotoRecord(id=p, image=FileRef(photo_files[p])) for p in sorted(used[name])]
        splits[name] = Split(name=name, photos=photos, sketches=sorted(sketches[name], key=lambda r: r.id))
    if not splits:
        raise DataError(f"{source}: no sketches left (all skipped as orphans?)")
    root = path.parent
    return Dataset(root=root, format=NAME, splits=splits, skipped=sorted(skipped))


# ---------------------------------------------------------------- dataset format


def detect(root: Path) -> bool:
    return (Path(root) / PICKLE_NAME).is_file()


def load(root: Path, skip_orphans: bool = False, size: int = 256, stroke_width: float = 3.0) -> Dataset:
    root = Path(root)
    photo_dir = next((root / d for d in PHOTO_DIRS if (root / d).is_dir()), None)
    if photo_dir is None:
        raise DataError(
            f"{root / PICKLE_NAME} holds Chair-V2 sketches only; retrieval needs the photos. Put the Chair-V2 "
            f"photos in {root / 'photo'}/<photo>.png (names as in the pickle keys, e.g. '2kb-34.png'), or use "
            "sbir.data.formats.chairv2.load_chairv2() for sketch-only use."
        )
    ds = load_chairv2(
        root / PICKLE_NAME, photo_dir=photo_dir, size=size, stroke_width=stroke_width, skip_orphans=skip_orphans
    )
    ds.root = root
    return ds


__all__ = ["CANVAS", "LAYOUT", "NAME", "PICKLE_NAME", "detect", "load", "load_chairv2"]
