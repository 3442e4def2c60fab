"""The paired fine-grained layout of EffNet/ARNet-style repositories.

::

    root/
      trainA/  sketches     00066_01.png, 00066_02.png, 00067.png, ...
      trainB/  photos       00066.jpg, 00067.png, ...
      testA/   sketches
      testB/   photos

``train`` and/or ``test`` may be present; each needs both its A (sketch) and B
(photo) folder. A sketch belongs to the photo in the matching B folder whose
file stem is

1. the sketch's own stem (one sketch per photo: ``00066.png`` in A and B), or
2. the longest prefix of the sketch stem ending before an underscore: for
   ``shoe_left_3.png`` the candidates are ``shoe_left`` then ``shoe`` -- so photo
   stems may themselves contain underscores.

The photo may have any image extension. Photo ids and sketch ids are the file
stems; ``SketchRecord.photo_id`` is the photo's stem; there are no labels.
Files without an image extension and hidden files are ignored.
"""

from __future__ import annotations

from pathlib import Path

from sbir.data.formats import index_by_stem, list_images, match_stem, orphan, require_nonempty
from sbir.data.records import Dataset, FileRef, PhotoRecord, SketchRecord, Split
from sbir.errors import DataError

NAME = "paired"
LAYOUT = "trainA/ (sketches) + trainB/ (photos) and/or testA/ + testB/"

SPLITS = ("train", "test")


def detect(root: Path) -> bool:
    root = Path(root)
    return any((root / f"{s}{side}").is_dir() for s in SPLITS for side in ("A", "B"))


def match_photo_stem(sketch_stem: str, photo_stems) -> str | None:
    """The photo stem a sketch stem belongs to, or None (see the module docstring)."""
    return match_stem(sketch_stem, photo_stems, "_")


def _load_split(name: str, a: Path, b: Path, skip_orphans: bool, skipped: list[str]) -> Split:
    photo_files = index_by_stem(list_images(b))
    sketch_files = index_by_stem(list_images(a))
    photos = [PhotoRecord(id=stem, image=FileRef(path)) for stem, path in sorted(photo_files.items())]
    sketches = []
    for stem, path in sorted(sketch_files.items()):
        photo_stem = match_photo_stem(stem, photo_files)
        if photo_stem is None:
            guess = stem.rsplit("_", 1)[0] if "_" in stem else stem
            orphan(path, f"a photo {b / guess}.<png|jpg|...> in {b}", skip_orphans, skipped)
            continue
        sketches.append(SketchRecord(id=stem, image=FileRef(path), photo_id=photo_stem))
    split = Split(name=name, photos=photos, sketches=sketches)
    require_nonempty(split, b, a)
    return split


def load(root: Path, skip_orphans: bool = False) -> Dataset:
    root = Path(root)
    splits: dict[str, Split] = {}
    skipped: list[str] = []
    for name in SPLITS:
        a, b = root / f"{name}A", root / f"{name}B"
        if not a.is_dir() and not b.is_dir():
            continue
        if not b.is_dir():
            raise DataError(
                f"sketch folder {a} has no photo folder {b} next to it. "
                f"Add {name}B/ with the photos of these sketches, or remove {name}A/."
            )
        if not a.is_dir():
            raise DataError(
                f"photo folder {b} has no sketch folder {a} next to it. "
                f"Add {name}A/ with the sketches of these photos, or remove {name}B/."
            )
        splits[name] = _load_split(name, a, b, skip_orphans, skipped)
    if not splits:
        raise DataError(
            f"{root} has no trainA/ + trainB/ or testA/ + testB/ folders (paired layout: {LAYOUT}). "
            "Check the path or pass the right --format."
        )
    return Dataset(root=root, format=NAME, splits=splits, skipped=sorted(skipped))
