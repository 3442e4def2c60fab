"""Category-level layout (TU-Berlin style): any photo of the sketch's class is a match.

::

    root/
      photos/<class>/*.jpg
      sketches/<class>/*.png

Every record has ``label = <class>`` and no ``photo_id``. Ids are
``"<class>/<file stem>"``. Everything is one split ``train`` unless ``train/``
and/or ``test/`` sub-folders each hold ``photos/`` + ``sketches/`` (one split
per sub-folder).

Errors: a ``photos/<class>/`` folder without images (DataError naming it); a
sketch class with no photo class (DataError naming the class -- or, with
``skip_orphans``, its sketches are skipped and listed in ``Dataset.skipped``).
Photo classes without sketches are allowed (gallery-only classes); empty
``sketches/<class>/`` folders are ignored.
"""

from __future__ import annotations

from pathlib import Path

from sbir.data.formats import (
    class_folders,
    has_split_dirs,
    index_by_stem,
    list_images,
    load_split_folders,
    sorted_split,
)
from sbir.data.records import Dataset, FileRef, PhotoRecord, SketchRecord, Split
from sbir.errors import DataError

NAME = "category"
LAYOUT = "photos/<class>/ + sketches/<class>/ (optionally under train/ and test/)"

PHOTO_DIR, SKETCH_DIR = "photos", "sketches"


def detect(root: Path) -> bool:
    return has_split_dirs(root, PHOTO_DIR, SKETCH_DIR)


def _load_split(name: str, base: Path, skip_orphans: bool, skipped: list[str]) -> Split:
    photo_root, sketch_root = base / PHOTO_DIR, base / SKETCH_DIR
    photos: list[PhotoRecord] = []
    photo_classes: set[str] = set()
    for cdir in class_folders(photo_root):
        files = index_by_stem(list_images(cdir))
        if not files:
            raise DataError(
                f"class folder {cdir} has no photos (hidden and non-image files are ignored). "
                "Add photos of this class or remove the folder."
            )
        photo_classes.add(cdir.name)
        photos.extend(PhotoRecord(id=f"{cdir.name}/{s}", image=FileRef(p), label=cdir.name) for s, p in files.items())
    sketches: list[SketchRecord] = []
    for cdir in class_folders(sketch_root):
        files = index_by_stem(list_images(cdir))
        if not files:
            continue
        if cdir.name not in photo_classes:
            if skip_orphans:
                skipped.extend(str(p) for p in files.values())
                continue
            raise DataError(
                f"sketch class {cdir.name!r} ({cdir}) has no photo class folder {photo_root / cdir.name}. "
                "Add photos of this class, remove the sketch folder, or pass --skip-orphans "
                "(data.skip_orphans=true) to ignore its sketches."
            )
        sketches.extend(
            SketchRecord(id=f"{cdir.name}/{s}", image=FileRef(p), label=cdir.name) for s, p in files.items()
        )
    return sorted_split(name, photos, sketches, photo_root, sketch_root)


def load(root: Path, skip_orphans: bool = False) -> Dataset:
    return load_split_folders(root, NAME, LAYOUT, PHOTO_DIR, SKETCH_DIR, _load_split, skip_orphans)
