"""Google Quick, Draw! drawings (``<class>.ndjson``), rasterised on the fly.

::

    root/
      cat.ndjson            # one JSON object per line: {"word": ..., "drawing": [[[x...], [y...]], ...], ...}
      hot air balloon.ndjson
      photos/<class>/*.jpg  # optional: photos to retrieve (e.g. Doodle2Search's QuickDraw-Extended)

Quick, Draw! is sketches only. Two ways to use it:

* :func:`load_quickdraw` returns the sketches as :class:`SketchRecord` objects
  (``label`` = class = file name without ``.ndjson``), for sketch-side
  training/pretraining, zero-shot class splits or sketch-to-sketch retrieval;
* as a dataset format (``--format quickdraw``; detected by ``.ndjson`` files at
  the top of the folder), :func:`load` needs a ``photos/<class>/`` folder next
  to the ``.ndjson`` files and gives a category-level dataset with one split
  ``train`` (carve validation/test with the split tools or a zero-shot class
  list). Without photos it raises a DataError saying so, since retrieval needs
  a gallery.

Sketch classes are matched to photo folders case-insensitively with ``_``,
``-`` and spaces equivalent (``palm tree.ndjson`` <-> ``photos/palm_tree/``);
labels are the photo folder names. Drawings are validated when the file is
read: a line that is not JSON, has no ``drawing``, or whose strokes are not
``[[x...], [y...]]`` lists of numbers of equal length is a DataError naming the
file and line number. Each drawing is kept as a compact stroke-3 array and
drawn by :func:`sbir.data.strokes.rasterize_strokes` when the image is loaded
(``size`` and ``stroke_width`` configurable; the drawing is fitted to the box).

:class:`StrokeRef` is the lazily rasterised image reference used here and by
:mod:`sbir.data.formats.chairv2`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sbir.data.records import Dataset, FileRef, PhotoRecord, SketchRecord, Split
from sbir.data.strokes import StrokeError, parse_strokes, rasterize_strokes
from sbir.errors import DataError

NAME = "quickdraw"
LAYOUT = "<class>.ndjson Quick, Draw! files + photos/<class>/ (photos are required for retrieval)"

PHOTO_DIR = "photos"
PathLike = str | Path


@dataclass(frozen=True, eq=False)
class StrokeRef:
    """A vector sketch, rasterised when loaded.

    ``strokes`` is a stroke-3 ``(N, 3)`` float32 array of absolute ``x, y`` and
    pen state (1 = the pen lifts after this point). ``canvas`` (``(w, h)``) keeps
    the drawing where it was drawn on that surface; None fits its bounding box.
    """

    strokes: np.ndarray = field(repr=False)
    origin: str  # file and line / key, for error messages
    size: int = 256
    stroke_width: float = 3.0
    canvas: tuple[float, float] | None = None

    def load(self) -> Image.Image:
        return rasterize_strokes(
            self.strokes, size=self.size, stroke_width=self.stroke_width, canvas=self.canvas, source=self.origin
        )

    def describe(self) -> str:
        return self.origin


def strokes_to_stroke3(strokes: list[np.ndarray]) -> np.ndarray:
    """List of ``(n, 2)`` point arrays -> one ``(N, 3)`` float32 array with pen = 1 on each stroke's last point."""
    parts = []
    for s in strokes:
        pen = np.zeros((len(s), 1))
        pen[-1, 0] = 1.0
        parts.append(np.hstack([s, pen]))
    return np.concatenate(parts).astype(np.float32)


def ndjson_files(root: Path) -> list[Path]:
    try:
        return sorted(
            (p for p in Path(root).iterdir() if p.suffix == ".ndjson" and not p.name.startswith(".") and p.is_file()),
            key=lambda p: p.name,
        )
    except OSError as exc:
        raise DataError(f"cannot list folder {root}: {exc}. Check that it exists and is readable.") from exc


def read_ndjson(
    path: Path,
    label: str,
    size: int = 256,
    stroke_width: float = 3.0,
    max_items: int | None = None,
    recognized_only: bool = False,
) -> list[SketchRecord]:
    """Sketches of one ``.ndjson`` file, validated line by line (DataError names the file and line)."""
    out: list[SketchRecord] = []
    seen_ids: set[str] = set()
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc}") from exc
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if max_items is not None and len(out) >= max_items:
                    break
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{where}: not valid JSON ({exc.msg} at column {exc.colno}). Fix or delete this line."
                    ) from None
                if not isinstance(obj, dict):
                    raise DataError(
                        f"{where}: expected a JSON object with a 'drawing' field, got {type(obj).__name__}. Fix or "
                        "delete this line."
                    )
                if "drawing" not in obj:
                    raise DataError(
                        f"{where}: the object has no 'drawing' field (keys: {', '.join(sorted(obj)) or 'none'}). Fix "
                        "or delete this line."
                    )
                if recognized_only and obj.get("recognized") is False:
                    continue
                drawing = obj["drawing"]
                if not isinstance(drawing, list):
                    raise DataError(
                        f"{where}: 'drawing' must be a list of strokes [[x...], [y...]], got "
                        f"{type(drawing).__name__}. Fix or delete this line."
                    )
                try:
                    strokes = parse_strokes(drawing, source=where)
                except StrokeError as exc:
                    raise DataError(f"{exc}. Fix or delete this line.") from None
                if not strokes:
                    raise DataError(f"{where}: the drawing has no strokes. Fix or delete this line.")
                key = obj.get("key_id")
                rid = (
                    f"{label}/{key}"
                    if isinstance(key, (str, int)) and f"{label}/{key}" not in seen_ids
                    else f"{label}/line{lineno}"
                )
                seen_ids.add(rid)
                ref = StrokeRef(strokes_to_stroke3(strokes), origin=where, size=size, stroke_width=stroke_width)
                out.append(SketchRecord(id=rid, image=ref, label=label))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc}). Quick, Draw! files are UTF-8 ndjson.") from None
    return out


def load_quickdraw(
    root: PathLike,
    size: int = 256,
    stroke_width: float = 3.0,
    max_per_class: int | None = None,
    classes: Iterable[str] | None = None,
    recognized_only: bool = False,
) -> list[SketchRecord]:
    """All sketches of the ``.ndjson`` files in ``root`` (label = file name), sorted by id.

    ``max_per_class`` keeps the first N drawings of each file; ``classes``
    restricts to those classes (matched like zero-shot class lists: case and
    ``_``/``-``/space insensitive; a name with no file is a DataError);
    ``recognized_only`` drops drawings the Quick, Draw! game did not recognise.
    """
    from sbir.data.zeroshot import normalize_class_name

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Quick, Draw! folder {root} does not exist or is not a folder.")
    files = ndjson_files(root)
    if not files:
        raise DataError(f"{root} has no .ndjson files (expected Quick, Draw! <class>.ndjson files).")
    if max_per_class is not None and max_per_class < 1:
        raise DataError(f"max_per_class must be >= 1, got {max_per_class}")
    if classes is not None:
        wanted = {normalize_class_name(c): c for c in classes}
        by_norm = {normalize_class_name(f.stem): f for f in files}
        missing = [c for k, c in wanted.items() if k not in by_norm]
        if missing:
            raise DataError(f"no .ndjson file in {root} for class(es): {', '.join(missing)}. Check the class names.")
        files = [by_norm[k] for k in wanted]
    out: list[SketchRecord] = []
    for f in files:
        out.extend(read_ndjson(f, f.stem, size, stroke_width, max_per_class, recognized_only))
    out.sort(key=lambda r: r.id)
    return out


# ---------------------------------------------------------------- dataset format


def detect(root: Path) -> bool:
    root = Path(root)
    return root.is_dir() and any(p.suffix == ".ndjson" and not p.name.startswith(".") for p in root.iterdir())


def load(
    root: Path,
    skip_orphans: bool = False,
    size: int = 256,
    stroke_width: float = 3.0,
    max_per_class: int | None = None,
) -> Dataset:
    """Category-level dataset: sketches from the ``.ndjson`` files, photos from ``photos/<class>/``."""
    from sbir.data.formats import class_folders, index_by_stem, list_images
    from sbir.data.zeroshot import normalize_class_name

    root = Path(root)
    photo_root = root / PHOTO_DIR
    n_files = len(ndjson_files(root))
    if not photo_root.is_dir():
        raise DataError(
            f"{root} holds Quick, Draw! sketches ({n_files} .ndjson files) but no {PHOTO_DIR}/ folder: "
            f"Quick, Draw! has no photos, so it cannot be a retrieval dataset by itself. Add photos as "
            f"{photo_root}/<class>/*.jpg (e.g. the QuickDraw-Extended photos of Doodle2Search), or use "
            "sbir.data.formats.quickdraw.load_quickdraw() for sketch-only training."
        )
    photos: list[PhotoRecord] = []
    photo_class: dict[str, str] = {}
    for cdir in class_folders(photo_root):
        files = index_by_stem(list_images(cdir))
        if not files:
            raise DataError(
                f"class folder {cdir} has no photos (hidden and non-image files are ignored). Add photos or remove it."
            )
        key = normalize_class_name(cdir.name)
        if key in photo_class:
            raise DataError(
                f"photo folders {photo_root / photo_class[key]} and {cdir} name the same class; merge them."
            )
        photo_class[key] = cdir.name
        photos.extend(PhotoRecord(id=f"{cdir.name}/{s}", image=FileRef(p), label=cdir.name) for s, p in files.items())
    skipped: list[str] = []
    sketches: list[SketchRecord] = []
    for f in ndjson_files(root):
        label = photo_class.get(normalize_class_name(f.stem))
        if label is None:
            if skip_orphans:
                skipped.append(str(f))
                continue
            raise DataError(
                f"sketch file {f} (class {f.stem!r}) has no photo folder {photo_root / f.stem}. Add photos of this "
                "class, remove the file, or pass --skip-orphans (data.skip_orphans=true) to ignore it."
            )
        recs = read_ndjson(f, label, size, stroke_width, max_per_class)
        sketches.extend(recs)
    photos.sort(key=lambda r: r.id)
    sketches.sort(key=lambda r: r.id)
    split = Split(name="train", photos=photos, sketches=sketches)
    if not sketches:
        raise DataError(f"no Quick, Draw! sketch in {root} matches a photo class in {photo_root}.")
    return Dataset(root=root, format=NAME, splits={"train": split}, skipped=sorted(skipped))


__all__ = ["LAYOUT", "NAME", "StrokeRef", "detect", "load", "load_quickdraw", "read_ndjson", "strokes_to_stroke3"]
