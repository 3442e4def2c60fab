"""Torch datasets of training pairs: :class:`FineGrainedPairs` (a sketch and its photo, fine-grained
SBIR), :class:`CategoryPairs` (a sketch and a photo of its class, category-level SBIR) and
:class:`TripletPairs` (a sketch, a positive and a negative photo: CLIP prompt learning).

FineGrainedPairs
----------------

Item ``i`` is the split's ``i``-th sketch with its photo, each as two
independently augmented views (the double-siamese NT-Xent needs both)::

    {"sketch": T_s(sketch), "sketch_aug": T_s'(sketch),
     "photo": T_p(photo),   "photo_aug": T_p'(photo),
     "group": index of the photo in split.photos, "index": i}

``T_s'``/``T_p'`` default to the same (random) transforms as the first views;
pass ``sketch_aug_transform``/``photo_aug_transform`` for an asymmetric scheme
(e.g. ARNet's plain anchor view and a strongly augmented second view). With
``two_views=False`` the ``*_aug`` keys are absent. The default collate turns a
list of items into a dict of batched tensors.

Decoding a PNG/JPEG costs more than augmenting it and is repeated every epoch.
``cache_decoded=True`` keeps each decoded image (an RGB PIL image, ``H·W·3``
bytes) after its first use. A cache filled inside DataLoader workers lives only
as long as the worker: call :meth:`FineGrainedPairs.preload` before building
the DataLoader (forked workers then share the decoded images), or use
``persistent_workers=True``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from sbir.data.records import ImageRef, Split
from sbir.errors import DataError, ImageLoadError

# How many unreadable files one error message lists.
MAX_LISTED_ERRORS = 20

Transform = Callable[[Image.Image], Any]


def annotated_negatives(split: Split) -> list[list[int]]:
    """Per sketch of ``split``, the photos its human triplet annotations rank (``Split.triplets`` rows
    ``(sketch, more similar, less similar)``), other than its own photo: the hard negatives of QMUL-V1."""
    if split.triplets is None or not len(split.triplets):
        raise DataError(
            f"split '{split.name}' has no human triplet annotations (QMUL-V1 <cat>_annotation.json); "
            "annotated negatives need them: set data.annotation_negatives=0 to draw negatives at random"
        )
    photo_index = split.photo_index()
    out: list[set[int]] = [set() for _ in split.sketches]
    for s, more, less in np.asarray(split.triplets, dtype=np.int64):
        own = photo_index.get(split.sketches[s].photo_id)
        out[s].update(int(j) for j in (more, less) if j != own)
    return [sorted(n) for n in out]


class FineGrainedPairs(Dataset):
    """Sketch/photo pairs of ``split`` (see the module docstring for the item layout).

    Raises :class:`DataError` at construction when the split has no sketches,
    a sketch has no ``photo_id``, or its ``photo_id`` is not in ``split.photos``.
    """

    def __init__(
        self,
        split: Split,
        sketch_transform: Transform,
        photo_transform: Transform,
        two_views: bool = True,
        cache_decoded: bool = False,
        sketch_aug_transform: Transform | None = None,
        photo_aug_transform: Transform | None = None,
        negatives: list[list[int]] | None = None,
        hard_ratio: float = 0.75,
        seed: int = 0,
    ):
        if not split.sketches:
            raise DataError(f"split '{split.name}' has no sketches; fine-grained training needs sketch/photo pairs")
        photo_index = split.photo_index()
        if len(photo_index) != len(split.photos):
            dup = next(pid for pid, c in Counter(p.id for p in split.photos).items() if c > 1)
            raise DataError(f"split '{split.name}' lists photo id '{dup}' more than once; photo ids must be unique")
        groups: list[int] = []
        for s in split.sketches:
            if s.photo_id is None:
                raise DataError(
                    f"sketch '{s.id}' ({s.image.describe()}) in split '{split.name}' has no photo_id; fine-grained "
                    "training needs every sketch paired with its photo. Rename it after its photo "
                    "(e.g. 00066_01.png for 00066.png), remove it, or set data.skip_orphans=true."
                )
            if s.photo_id not in photo_index:
                raise DataError(
                    f"sketch '{s.id}' ({s.image.describe()}) in split '{split.name}' names photo '{s.photo_id}', "
                    "which is not among the split's photos. Add the photo or remove the sketch."
                )
            groups.append(photo_index[s.photo_id])
        self.split = split
        self.sketch_transform = sketch_transform
        self.photo_transform = photo_transform
        self.sketch_aug_transform = sketch_aug_transform or sketch_transform
        self.photo_aug_transform = photo_aug_transform or photo_transform
        self.two_views = bool(two_views)
        self.cache_decoded = bool(cache_decoded)
        self.groups = groups
        self._sketch_cache: dict[int, Image.Image] = {}
        self._photo_cache: dict[int, Image.Image] = {}
        # Explicit negatives: with ``negatives`` (per sketch, photo indices humans ranked near it), every item
        # also carries a negative photo: one of its listed photos with probability ``hard_ratio``, else any
        # other photo, drawn with a generator seeded by (seed, epoch, item) as Deep_SBIR_tf draws its triplets.
        if negatives is not None and len(negatives) != len(split.sketches):
            raise DataError(
                f"negatives lists {len(negatives)} sketches, split '{split.name}' has {len(split.sketches)}"
            )
        if not 0.0 <= hard_ratio <= 1.0:
            raise DataError(f"the share of annotated negatives must be in [0, 1], got {hard_ratio}")
        if negatives is not None and len(split.photos) < 2:
            raise DataError(f"split '{split.name}' has one photo; a negative photo needs at least two")
        self.negatives = negatives
        self.hard_ratio = float(hard_ratio)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split.sketches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def negative_for(self, i: int) -> int:
        """The negative photo index of item ``i`` this epoch (never the sketch's own photo)."""
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        own = self.groups[i]
        listed = [j for j in self.negatives[i] if j != own]
        if listed and rng.random() < self.hard_ratio:
            return int(listed[int(rng.integers(len(listed)))])
        j = int(rng.integers(len(self.split.photos) - 1))
        return j if j < own else j + 1

    def photo_ids_for_sampler(self) -> list[int]:
        """The photo index (group) of every item, for :class:`~sbir.data.sampler.UniquePhotoBatchSampler`."""
        return list(self.groups)

    def _load(self, cache: dict[int, Image.Image], key: int, ref: ImageRef) -> Image.Image:
        if not self.cache_decoded:
            return ref.load()
        img = cache.get(key)
        if img is None:
            img = ref.load()
            cache[key] = img
        return img

    def sketch_image(self, i: int) -> Image.Image:
        return self._load(self._sketch_cache, i, self.split.sketches[i].image)

    def photo_image(self, j: int) -> Image.Image:
        return self._load(self._photo_cache, j, self.split.photos[j].image)

    def preload(self) -> None:
        """Decode every sketch and photo now (turns ``cache_decoded`` on); bad images fail here."""
        self.cache_decoded = True
        # Try every image, so a folder with several broken files is reported in one go.
        errors: list[ImageLoadError] = []
        loads = [(self.sketch_image, i) for i in range(len(self.split.sketches))]
        loads += [(self.photo_image, j) for j in sorted(set(self.groups))]
        for load, k in loads:
            try:
                load(k)
            except ImageLoadError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            shown = "\n".join(f"  {e.path}: {e.reason}" for e in errors[:MAX_LISTED_ERRORS])
            more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
            raise DataError(
                f"{len(errors)} images cannot be read:\n{shown}{more}\n"
                "Replace or delete these files (or re-export them as PNG/JPEG)."
            )

    def cached_images(self) -> int:
        return len(self._sketch_cache) + len(self._photo_cache)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} pairs")
        i = i % n
        group = self.groups[i]
        sketch = self.sketch_image(i)
        photo = self.photo_image(group)
        item: dict[str, Any] = {"sketch": self.sketch_transform(sketch), "photo": self.photo_transform(photo)}
        if self.two_views:
            item["sketch_aug"] = self.sketch_aug_transform(sketch)
            item["photo_aug"] = self.photo_aug_transform(photo)
        if self.negatives is not None:
            neg = self.negative_for(i)
            item["negative"] = self.photo_transform(self.photo_image(neg))
            item["negative_group"] = neg
        item["group"] = group
        item["index"] = i
        return item


class CategoryPairs(Dataset):
    """Item ``i``: training sketch ``i``, a random photo of its class, and the class index.

    ``{"sketch": T_s(sketch), "photo": T_p(photo), "label": class index}``. The
    photo is drawn with a generator seeded by ``(seed, epoch, i)`` (call
    :meth:`set_epoch` before building the DataLoader), so runs and resumes draw
    the same pairs whatever the number of loader workers.
    """

    def __init__(self, split: Split, classes: list[str], sketch_transform, photo_transform, seed: int = 0):
        self.split = split
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.sketch_transform = sketch_transform
        self.photo_transform = photo_transform
        self.seed = int(seed)
        self.epoch = 0
        self.labels = [self.class_index[s.label] for s in split.sketches]
        by_class: dict[int, list[int]] = {}
        for j, p in enumerate(split.photos):
            if p.label in self.class_index:
                by_class.setdefault(self.class_index[p.label], []).append(j)
        missing = sorted({classes[c] for c in self.labels if c not in by_class})
        if missing:
            raise DataError(
                f"training split '{split.name}' has sketches of class(es) with no training photo: "
                f"{', '.join(missing[:10])}. Add photos of these classes (each class needs photos and sketches)."
            )
        self.photos_of = by_class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split.sketches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.labels[i]
        pool = self.photos_of[c]
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        j = pool[int(rng.integers(len(pool)))]
        return {
            "sketch": self.sketch_transform(self.split.sketches[i].image.load()),
            "photo": self.photo_transform(self.split.photos[j].image.load()),
            "label": c,
        }


class TripletPairs(CategoryPairs):
    """Item ``i``: training sketch ``i``, a positive photo, a negative photo and the class index (CLIP prompts).

    ``{"sketch": T_s(sketch), "photo": T_p(positive), "negative": T_p(negative), "label": class index}``.

    * category-level (``fine_grained=False``): the positive is a random photo of the sketch's class, the
      negative a random photo of another class.
    * fine-grained (``fine_grained=True``): the positive is the sketch's own photo (``photo_id``), the
      negative another photo of its class (of another class when its class has a single photo).

    Random choices use a generator seeded by ``(seed, epoch, i)`` (call :meth:`set_epoch`), as in
    :class:`CategoryPairs`.
    """

    def __init__(
        self,
        split: Split,
        classes: list[str],
        sketch_transform,
        photo_transform,
        seed: int = 0,
        fine_grained: bool = False,
    ):
        super().__init__(split, classes, sketch_transform, photo_transform, seed)
        self.classes = list(classes)
        self.fine_grained = bool(fine_grained)
        by_class = self.photos_of
        if len(by_class) < 2:
            raise DataError(f"training split '{split.name}' has photos of {len(by_class)} class(es); triplets need 2")
        self.own_photo: list[int] = []
        if self.fine_grained:
            index = split.photo_index()
            for s in split.sketches:
                if s.photo_id is None or s.photo_id not in index:
                    raise DataError(
                        f"sketch '{s.id}' ({s.image.describe()}) has no photo in split '{split.name}'; fine-grained "
                        "training needs every sketch paired with its photo (a layout such as sketchy's "
                        "photo/<class>/<id>.jpg + sketch/<class>/<id>-<n>.png)"
                    )
                self.own_photo.append(index[s.photo_id])

    def _pick(self, i: int) -> tuple[int, int]:
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        c = self.labels[i]
        others = [k for k in self.photos_of if k != c]
        other_class_photo = self.photos_of[others[int(rng.integers(len(others)))]]
        if self.fine_grained:
            pos = self.own_photo[i]
            same = [j for j in self.photos_of[c] if j != pos]
            pool = same or other_class_photo
            return pos, pool[int(rng.integers(len(pool)))]
        pool = self.photos_of[c]
        return pool[int(rng.integers(len(pool)))], other_class_photo[int(rng.integers(len(other_class_photo)))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos, neg = self._pick(i)
        return {
            "sketch": self.sketch_transform(self.split.sketches[i].image.load()),
            "photo": self.photo_transform(self.split.photos[pos].image.load()),
            "negative": self.photo_transform(self.split.photos[neg].image.load()),
            "label": self.labels[i],
        }
