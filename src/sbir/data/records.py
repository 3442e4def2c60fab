"""The common record type every dataset format produces.

A dataset is a set of named splits (``train``, ``test``, later ``val``). Each
split holds photos and sketches. A sketch points at its photo by ``photo_id``
(fine-grained pairs) and/or carries a ``label`` (category-level SBIR). Images
are referenced lazily through :class:`ImageRef` so a split of 100k files costs
only the list of paths until it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sbir.data.image_io import array_to_image, load_image


@dataclass(frozen=True)
class FileRef:
    """An image stored as a file."""

    path: Path

    def load(self) -> Image.Image:
        return load_image(self.path)

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True, eq=False)
class ArrayRef:
    """An image stored as one slice of an in-memory uint8 array (e.g. a QMUL ``.mat``)."""

    array: np.ndarray = field(repr=False)  # shared by all refs of one file; never print it
    index: int
    origin: str  # file the array came from, for error messages

    def load(self) -> Image.Image:
        return array_to_image(self.array[self.index])

    def describe(self) -> str:
        return f"{self.origin}[{self.index}]"


ImageRef = FileRef | ArrayRef


@dataclass(frozen=True)
class PhotoRecord:
    """One gallery photo. ``id`` is unique within its split."""

    id: str
    image: ImageRef
    label: str | None = None


@dataclass(frozen=True)
class SketchRecord:
    """One query sketch. ``photo_id`` names its photo (fine-grained), ``label`` its class."""

    id: str
    image: ImageRef
    photo_id: str | None = None
    label: str | None = None


@dataclass
class Split:
    """Photos and sketches of one split."""

    name: str
    photos: list[PhotoRecord]
    sketches: list[SketchRecord]
    # Optional human relative-similarity triplets (QMUL): rows of
    # (sketch_index, more_similar_photo_index, less_similar_photo_index)
    # indexing into ``sketches`` / ``photos``.
    triplets: np.ndarray | None = None

    def photo_index(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.photos)}

    def labels(self) -> list[str]:
        return sorted({r.label for r in (*self.photos, *self.sketches) if r.label is not None})

    def __len__(self) -> int:
        return len(self.sketches)


@dataclass
class Dataset:
    """A dataset on disk, parsed by one format module."""

    root: Path
    format: str
    splits: dict[str, Split] = field(default_factory=dict)
    # Orphan sketches skipped when the user asked for --skip-orphans.
    skipped: list[str] = field(default_factory=list)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            from sbir.errors import DataError

            raise DataError(
                f"dataset {self.root} (format {self.format}) has no '{name}' split (it has: {have}). "
                "Add the missing files or choose another split."
            )
        return self.splits[name]
