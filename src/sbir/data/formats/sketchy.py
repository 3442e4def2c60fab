"""The Sketchy database layout: instance pairs inside class folders.

::

    root/
      photo/<class>/<photo_id>.jpg
      sketch/<class>/<photo_id>-<n>.png

A sketch belongs to the photo of the same class whose stem is the sketch's stem
without its last ``-<n>`` (tried from the right, so photo stems may contain
``-``; a sketch named exactly like a photo also pairs). Photos without
sketches stay in the gallery (distractors). Sketches whose photo is missing
follow the orphan rule (DataError, or skipped with ``skip_orphans``).

Ids: ``"<class>/<photo_id>"`` for photos, ``"<class>/<photo_id>-<n>"`` for
sketches; ``label`` = class on both; ``SketchRecord.photo_id`` = the photo's id.

Sketchy has no official instance-level train/test split, so everything goes to
one split named ``train`` (carve a validation split with
:func:`sbir.data.splits.carve_validation`). Optionally ``train/`` and ``test/``
sub-folders, each holding ``photo/`` + ``sketch/``, give two splits.
"""

from __future__ import annotations

from pathlib import Path

from sbir.data.formats import (
    class_folders,
    has_split_dirs,
    index_by_stem,
    list_images,
    load_split_folders,
    match_stem,
    orphan,
    sorted_split,
)
from sbir.data.records import Dataset, FileRef, PhotoRecord, SketchRecord, Split

NAME = "sketchy"
LAYOUT = "photo/<class>/<id>.jpg + sketch/<class>/<id>-<n>.png (optionally under train/ and test/)"

PHOTO_DIR, SKETCH_DIR = "photo", "sketch"


def detect(root: Path) -> bool:
    return has_split_dirs(root, PHOTO_DIR, SKETCH_DIR)


def _load_split(name: str, base: Path, skip_orphans: bool, skipped: list[str]) -> Split:
    photo_root, sketch_root = base / PHOTO_DIR, base / SKETCH_DIR
    photos: list[PhotoRecord] = []
    stems_by_class: dict[str, dict[str, Path]] = {}
    for cdir in class_folders(photo_root):
        stems = index_by_stem(list_images(cdir))
        stems_by_class[cdir.name] = stems
        photos.extend(PhotoRecord(id=f"{cdir.name}/{s}", image=FileRef(p), label=cdir.name) for s, p in stems.items())
    sketches: list[SketchRecord] = []
    for cdir in class_folders(sketch_root):
        cls = cdir.name
        candidates = stems_by_class.get(cls, {})
        for stem, path in index_by_stem(list_images(cdir)).items():
            photo_stem = match_stem(stem, candidates, "-")
            if photo_stem is None:
                guess = stem.rsplit("-", 1)[0]
                orphan(path, f"a photo {photo_root / cls / guess}.<jpg|png|...>", skip_orphans, skipped)
                continue
            sketches.append(
                SketchRecord(id=f"{cls}/{stem}", image=FileRef(path), photo_id=f"{cls}/{photo_stem}", label=cls)
            )
    return sorted_split(name, photos, sketches, photo_root, sketch_root)


def load(root: Path, skip_orphans: bool = False) -> Dataset:
    return load_split_folders(root, NAME, LAYOUT, PHOTO_DIR, SKETCH_DIR, _load_split, skip_orphans)
