"""QMUL-V1 fine-grained SBIR (Shoe-V1, Chair-V1, Handbag) as released with Deep_SBIR_tf.

One category per folder (e.g. ``qmul_v1/shoes``)::

    <cat>_sketch_db_<split>.mat   variable ``data``: uint8 (N, H, W) sketches (256x256 upstream)
    <cat>_edge_db_<split>.mat     variable ``data``: uint8 (N, H, W) edge maps of the photos
    <cat>_annotation.json         optional: human relative-similarity triplets

``<split>`` is ``train`` and/or ``test``; both are read when present. Sketch
``i`` belongs to photo (edge map) ``i``. MATLAB v5 files are read with
:func:`scipy.io.loadmat`, v7.3 (HDF5) files with h5py (transposed back to
``(N, H, W)`` as Deep_SBIR_tf does). Ids: photo ``f"{i:05d}"``, its sketch
``f"{i:05d}_0"`` (``photo_id`` = the photo id); no labels.

One category per folder: a folder holding the ``.mat`` files of several
categories is a :class:`DataError` asking to pass one category's folder.

Triplet annotations (what the released files contain, checked against
Deep_SBIR_tf ``sbir_sampling/sample_util.py`` and ``sbir_util/smts_api.py``):

* ``<cat>_annotation.json`` (shoes, chairs): ``{split: {"images": [...],
  "sketches": [...], "triplets": T}}`` where ``T[i]`` is the list for sketch
  ``i`` of pairs ``[more_similar, less_similar]`` -- 0-based indices into the
  split's edge array. Deep_SBIR_tf samples ``pos_id, neg_id = T[anc_id][k]``
  and indexes the ``.mat`` arrays with them directly. Each sketch has 135
  pairs = 45 pairs over 10 candidate photos (always including its own photo)
  x 3 annotators; duplicate and even contradicting votes of different
  annotators are kept, one row each. Checks on the real files: the true match
  is the first element in 93% (shoes) / 99% (chairs) of the pairs it occurs
  in, confirming [more, less] order; indices range over 0..N-1. Upstream uses
  65535 (train) / 255 (test) as a "missing" marker; pairs containing such an
  out-of-range marker or two equal indices are skipped.
  We store ``Split.triplets`` as int64 rows ``(sketch_index, more_similar_photo_index,
  less_similar_photo_index)``.
* ``shoes_train_triplets.mat`` (keys ``One``, ``Two``, ``Three``: one cell
  array per annotator, 419 x 45 pairs): the same annotations over the full
  419-shoe set (train + test) in an ordering that the released files do not
  map to the split arrays (shoe 0's pairs do not mention index 0 or 1). Not
  read; the JSON carries the same information in split indices.
* ``handbags_triplets_train.mat`` (key ``triplets``, int (800, 399)): row
  ``2k`` is ``k`` repeated, row ``2k+1`` every other index: the trivial
  "true match beats every other photo" triplets, **not** human annotations
  (Deep_SBIR_tf samples handbag triplets from true matches only). Not read,
  so handbags have ``Split.triplets = None`` and no %corr.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from sbir.data.formats import require_nonempty
from sbir.data.records import ArrayRef, Dataset, PhotoRecord, SketchRecord, Split
from sbir.errors import DataError

NAME = "qmul_v1"
LAYOUT = "<cat>_sketch_db_<train|test>.mat + <cat>_edge_db_<train|test>.mat (one category per folder)"

SPLITS = ("train", "test")
_MAT_RE = re.compile(r"^(?P<cat>.+)_(?P<kind>sketch|edge)_db_(?P<split>train|test)\.mat$")
# Deep_SBIR_tf's "no annotation" markers (train / test).
_MISSING_MARKERS = (65535, 255)


def _mat_files(root: Path) -> dict[str, dict[tuple[str, str], Path]]:
    """category -> {(kind, split): path}."""
    out: dict[str, dict[tuple[str, str], Path]] = {}
    for p in sorted(root.iterdir()):
        m = _MAT_RE.match(p.name)
        if m and p.is_file():
            out.setdefault(m["cat"], {})[(m["kind"], m["split"])] = p
    return out


def detect(root: Path) -> bool:
    root = Path(root)
    return root.is_dir() and bool(_mat_files(root))


def _read_mat73(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        if "data" not in f:
            return {k: None for k in f.keys()}
        # MATLAB stores column-major; h5py sees (W, H, N).
        return {"data": np.asarray(f["data"]).transpose(2, 1, 0)}


def read_mat_array(path: Path) -> np.ndarray:
    """The uint8 ``(N, H, W)`` array under ``data`` in ``path``; DataError naming the file otherwise."""
    import scipy.io

    try:
        try:
            m = scipy.io.loadmat(str(path))
        except NotImplementedError:  # MATLAB v7.3 = HDF5
            m = _read_mat73(path)
    except Exception as exc:  # MatReadError, ValueError, OSError, zlib errors, ...
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc}. The file is corrupt or not a MATLAB .mat file; "
            "re-download or re-export it."
        ) from exc
    if m.get("data") is None:
        have = ", ".join(k for k in m if not k.startswith("__")) or "nothing"
        raise DataError(
            f"{path} has no variable 'data' (it has: {have}). Expected uint8 (N, H, W) images under 'data'."
        )
    arr = m["data"]
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3 or min(arr.shape) < 1:
        desc = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise DataError(
            f"{path}: variable 'data' is {desc}; expected uint8 (N, H, W) with N, H, W >= 1. "
            "Re-export the images as a uint8 N x H x W array."
        )
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


def _read_triplets(path: Path, split: str, n_sketches: int, n_photos: int) -> np.ndarray | None:
    try:
        with open(path, encoding="utf-8") as fh:
            ann = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}. Fix or delete it (it is optional).") from exc
    if not isinstance(ann, dict) or not isinstance(ann.get(split), dict) or "triplets" not in ann[split]:
        return None
    per_sketch = ann[split]["triplets"]
    if not isinstance(per_sketch, list) or len(per_sketch) != n_sketches:
        got = len(per_sketch) if isinstance(per_sketch, list) else type(per_sketch).__name__
        raise DataError(
            f"{path}: '{split}.triplets' should hold one list per sketch ({n_sketches}), got {got}. "
            "The annotation does not belong to these .mat files; fix or delete it."
        )
    rows: list[tuple[int, int, int]] = []
    for i, pairs in enumerate(per_sketch):
        if not isinstance(pairs, list):
            raise DataError(f"{path}: '{split}.triplets[{i}]' is not a list of [more_similar, less_similar] pairs.")
        for pair in pairs:
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            ):
                raise DataError(
                    f"{path}: '{split}.triplets[{i}]' contains {pair!r}; expected [more_similar, less_similar] "
                    "pairs of photo indices."
                )
            pos, neg = pair
            if any(v in _MISSING_MARKERS and v >= n_photos for v in pair):
                continue
            if not (0 <= pos < n_photos and 0 <= neg < n_photos):
                raise DataError(
                    f"{path}: '{split}.triplets[{i}]' has photo index {pair!r} outside 0..{n_photos - 1}. "
                    "The annotation does not belong to these .mat files; fix or delete it."
                )
            if pos == neg:
                continue
            rows.append((i, pos, neg))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def load(root: Path, skip_orphans: bool = False) -> Dataset:
    """Load one QMUL-V1 category folder. ``skip_orphans`` has no effect (pairs are by index)."""
    root = Path(root)
    files = _mat_files(root) if root.is_dir() else {}
    if not files:
        raise DataError(f"{root} has no QMUL-V1 files ({LAYOUT}). Check the path or pass the right --format.")
    if len(files) > 1:
        raise DataError(
            f"{root} holds .mat files of several categories ({', '.join(sorted(files))}). "
            "Put each category in its own folder and pass that folder (e.g. qmul_v1/shoes)."
        )
    ((cat, by_key),) = files.items()
    splits: dict[str, Split] = {}
    for split in SPLITS:
        sk_path, ed_path = by_key.get(("sketch", split)), by_key.get(("edge", split))
        if sk_path is None and ed_path is None:
            continue
        if sk_path is None or ed_path is None:
            have, missing = (
                (sk_path, f"{cat}_edge_db_{split}.mat")
                if ed_path is None
                else (ed_path, f"{cat}_sketch_db_{split}.mat")
            )
            raise DataError(
                f"{have} has no partner file {root / missing}. Add it (sketches and edge maps come in pairs)."
            )
        sk, ed = read_mat_array(sk_path), read_mat_array(ed_path)
        if sk.shape[0] != ed.shape[0]:
            raise DataError(
                f"{sk_path} holds {sk.shape[0]} sketches but {ed_path} holds {ed.shape[0]} edge maps; "
                "they are paired by index, so the counts must match. Use files from the same release."
            )
        n = sk.shape[0]
        photos = [PhotoRecord(id=f"{i:05d}", image=ArrayRef(ed, i, str(ed_path))) for i in range(n)]
        sketches = [
            SketchRecord(id=f"{i:05d}_0", image=ArrayRef(sk, i, str(sk_path)), photo_id=f"{i:05d}") for i in range(n)
        ]
        triplets = None
        ann = root / f"{cat}_annotation.json"
        if ann.is_file():
            triplets = _read_triplets(ann, split, n_sketches=n, n_photos=n)
        s = Split(name=split, photos=photos, sketches=sketches, triplets=triplets)
        require_nonempty(s, ed_path, sk_path)
        splits[split] = s
    return Dataset(root=root, format=NAME, splits=splits)
