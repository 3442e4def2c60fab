"""Dataset formats: one module per on-disk layout, all producing :class:`~sbir.data.records.Dataset`.

Every format module exposes

* ``NAME`` -- the name used with ``--format`` / ``data.format``;
* ``LAYOUT`` -- a one-line description of what :func:`detect` looks for;
* ``detect(root: Path) -> bool`` -- cheap check of the folder's layout;
* ``load(root: Path, skip_orphans: bool = False) -> Dataset``.

:data:`FORMATS` lists them in detection order (the first whose ``detect`` is
true wins): ``paired`` (trainA/trainB/testA/testB), ``qmul_v1`` (``.mat``
files), ``sketchy`` (``photo/`` + ``sketch/``), ``category`` (``photos/`` +
``sketches/``), then the vector-sketch formats ``quickdraw`` (``<class>.ndjson``
+ ``photos/<class>/``) and ``chairv2`` (``ChairV2_Coordinate`` + ``photo/``); ``mixture``
(a ``sources.yaml`` merging several of them by class name) is tried first.

Conventions shared by all formats: hidden files and files without an image
extension (``.txt``, ``.DS_Store``, ...) are ignored; records are sorted by id
(plain string order); every split has at least one photo and one sketch; a
sketch whose photo is missing (an "orphan") is a :class:`DataError` unless
``skip_orphans`` is true, in which case its path is listed in
``Dataset.skipped``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from sbir.data.image_io import is_image_file
from sbir.data.records import Dataset, Split
from sbir.errors import ConfigError, DataError

PathLike = str | Path

# ---------------------------------------------------------------------------
# Helpers shared by the format modules. They are defined before the format
# modules are imported below, because those modules import them from here.
# ---------------------------------------------------------------------------


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; hidden and non-image files skipped."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc}. Check that it exists and is readable.") from exc
    return sorted(
        (p for p in entries if not is_hidden(p) and is_image_file(p.name) and p.is_file()),
        key=lambda p: p.name,
    )


def list_subdirs(folder: Path) -> list[Path]:
    """Non-hidden sub-folders of ``folder``, sorted by name."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc}. Check that it exists and is readable.") from exc
    return sorted((p for p in entries if p.is_dir() and not is_hidden(p)), key=lambda p: p.name)


def index_by_stem(files: Iterable[Path]) -> dict[str, Path]:
    """Map file stem -> path; two files with the same stem (``a.png``, ``a.jpg``) are a DataError."""
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(
                f"two images with the same name {f.stem!r}: {out[f.stem]} and {f}. "
                "Ids come from file names without extension; delete or rename one of them."
            )
        out[f.stem] = f
    return out


def check_root(root: PathLike) -> Path:
    """``root`` as an absolute Path; DataError when it is missing, not a folder, or empty."""
    p = Path(os.path.abspath(Path(root).expanduser()))  # normalises ".." without resolving symlinks
    if not p.exists():
        raise DataError(f"dataset folder {p} does not exist. Check the path (data.path / --data).")
    if not p.is_dir():
        raise DataError(f"dataset path {p} is not a folder. Pass the folder that holds the dataset.")
    try:
        visible = [c for c in p.iterdir() if not is_hidden(c)]
    except OSError as exc:
        raise DataError(f"cannot list dataset folder {p}: {exc}. Check its permissions.") from exc
    if not visible:
        raise DataError(f"dataset folder {p} is empty. Put the dataset files in it or pass another folder.")
    return p


def require_nonempty(split: Split, photo_where: Path, sketch_where: Path | None = None) -> None:
    """Every split must have at least one photo and one sketch; the error names the folder."""
    sketch_where = photo_where if sketch_where is None else sketch_where
    if not split.photos:
        raise DataError(
            f"split '{split.name}' has no photos in {photo_where}. Add photo images there "
            "(hidden and non-image files are ignored)."
        )
    if not split.sketches:
        raise DataError(
            f"split '{split.name}' has no sketches in {sketch_where}. Add sketch images there "
            "(hidden and non-image files are ignored; skipped orphan sketches do not count)."
        )


def match_stem(stem: str, candidates, sep: str = "_") -> str | None:
    """The candidate a sketch stem belongs to: the stem itself if it is a candidate, else the
    longest prefix ending before a ``sep`` (tried from the right), else None."""
    if stem in candidates:
        return stem
    s = stem
    while sep in s:
        s = s.rsplit(sep, 1)[0]
        if s in candidates:
            return s
    return None


def class_folders(folder: Path) -> list[Path]:
    """Class sub-folders of ``folder``; an image directly inside ``folder`` is a DataError."""
    stray = list_images(folder)
    if stray:
        raise DataError(
            f"image {stray[0]} is directly inside {folder} ({len(stray)} such files); "
            f"images must be in class sub-folders ({folder}/<class>/). Move them into a class folder."
        )
    return list_subdirs(folder)


def orphan(sketch: Path, expected: str, skip_orphans: bool, skipped: list[str]) -> None:
    """Handle a sketch whose photo is missing: DataError, or record it in ``skipped``."""
    if skip_orphans:
        skipped.append(str(sketch))
        return
    raise DataError(
        f"sketch {sketch} has no matching photo (expected {expected}). "
        "Add the photo, delete the sketch, or pass --skip-orphans (data.skip_orphans=true) to ignore such sketches."
    )


def split_roots(root: Path, photo_dir: str, sketch_dir: str) -> dict[str, Path]:
    """Folders holding ``photo_dir/`` + ``sketch_dir/``: the root itself (one split ``train``)
    or ``train/`` and/or ``test/`` sub-folders (one split each). Empty dict when neither."""

    def has_pair(d: Path) -> bool:
        return (d / photo_dir).is_dir() and (d / sketch_dir).is_dir()

    def half(d: Path) -> str | None:
        for name in (photo_dir, sketch_dir):
            if (d / name).is_dir():
                return name
        return None

    subs: dict[str, Path] = {}
    for name in ("train", "test"):
        d = root / name
        if d.is_dir():
            if has_pair(d):
                subs[name] = d
            elif half(d) is not None:
                have = half(d)
                missing = sketch_dir if have == photo_dir else photo_dir
                raise DataError(
                    f"{d / have} has no sibling folder {d / missing}. "
                    f"Each split folder needs both {photo_dir}/ and {sketch_dir}/."
                )
    if has_pair(root):
        if subs:
            raise DataError(
                f"{root} has both {photo_dir}/ + {sketch_dir}/ at the top and inside "
                f"{' and '.join(n + '/' for n in subs)}; keep one layout (move the top-level folders into train/)."
            )
        return {"train": root}
    if not subs:
        h = half(root)
        if h is not None:
            missing = sketch_dir if h == photo_dir else photo_dir
            raise DataError(f"{root / h} has no sibling folder {root / missing}. Add {missing}/ next to it.")
    return subs


def has_split_dirs(root: Path, photo_dir: str, sketch_dir: str) -> bool:
    """``detect`` of class-folder layouts: ``photo_dir/`` + ``sketch_dir/`` at the root or under train/ or test/."""
    root = Path(root)
    return any((d / photo_dir).is_dir() and (d / sketch_dir).is_dir() for d in (root, root / "train", root / "test"))


def sorted_split(name: str, photos: list, sketches: list, photo_root: Path, sketch_root: Path) -> Split:
    """A split of ``photos`` and ``sketches`` sorted by id; DataError naming the folders when a side is empty."""
    photos.sort(key=lambda r: r.id)
    sketches.sort(key=lambda r: r.id)
    split = Split(name=name, photos=photos, sketches=sketches)
    require_nonempty(split, photo_root, sketch_root)
    return split


def load_split_folders(
    root: Path, fmt: str, layout: str, photo_dir: str, sketch_dir: str, load_split, skip_orphans: bool
) -> Dataset:
    """``load`` of class-folder layouts: ``load_split(name, base, skip_orphans, skipped)`` for each split root."""
    root = Path(root)
    bases = split_roots(root, photo_dir, sketch_dir)
    if not bases:
        raise DataError(
            f"{root} has no {photo_dir}/ + {sketch_dir}/ folders ({fmt} layout: {layout}). Check the path or --format."
        )
    skipped: list[str] = []
    splits = {name: load_split(name, base, skip_orphans, skipped) for name, base in bases.items()}
    return Dataset(root=root, format=fmt, splits=splits, skipped=sorted(skipped))


# ---------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------

from sbir.data.formats import category, chairv2, mixture, paired, qmul_v1, quickdraw, sketchy  # noqa: E402

# Detection order: a mixture's sources.yaml first (it names its own formats), then the older
# image-folder formats, so a folder that matches one of them keeps its format; then the vector-sketch
# formats (``.ndjson`` files, a ``ChairV2_Coordinate`` pickle).
_DETECTION_ORDER = (mixture, paired, qmul_v1, sketchy, category, quickdraw, chairv2)
FORMATS: OrderedDict[str, ModuleType] = OrderedDict((m.NAME, m) for m in _DETECTION_ORDER)


def _describe_contents(root: Path, limit: int = 8) -> str:
    names = sorted(c.name + ("/" if c.is_dir() else "") for c in root.iterdir() if not is_hidden(c))
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _detect_one(root: Path) -> str | None:
    for name, module in FORMATS.items():
        try:
            if module.detect(root):
                return name
        except OSError:
            continue
    return None


def detect_format(root: PathLike) -> str:
    """Name of the first format in :data:`FORMATS` whose layout ``root`` matches.

    DataError when ``root`` is missing, not a folder, empty, or matches none
    (the message lists what each format looks for and suggests a sub-folder
    that does match, e.g. ``qmul_v1/shoes`` when given ``qmul_v1``).
    """
    p = check_root(root)
    found = _detect_one(p)
    if found is not None:
        return found
    hints = []
    for sub in list_subdirs(p)[:50]:
        name = _detect_one(sub)
        if name is not None:
            hints.append(f"{sub} ({name})")
    looked = "; ".join(f"{n}: {m.LAYOUT}" for n, m in FORMATS.items())
    msg = f"cannot tell the dataset format of {p} (it contains: {_describe_contents(p)}). Looked for -- {looked}."
    if hints:
        msg += " These sub-folders match a format; pass one of them: " + ", ".join(hints[:5]) + "."
    else:
        msg += " Arrange the files in one of these layouts, or pass --format."
    raise DataError(msg)


def skipped_message(dataset: Dataset) -> str:
    """One line saying what loading left out (``Dataset.skipped``), in the format's own terms."""
    module = FORMATS.get(dataset.format)
    describe = getattr(module, "describe_skipped", None)
    if describe is not None:
        return describe(dataset.skipped)
    return f"skipped {len(dataset.skipped)} sketch(es) with no photo (--skip-orphans)"


def get_format(name: str) -> ModuleType:
    """The format module called ``name``; ConfigError listing valid names otherwise."""
    if name not in FORMATS:
        raise ConfigError(
            f"unknown dataset format {name!r}; valid formats: {', '.join(FORMATS)} (or 'auto' / unset to auto-detect)."
        )
    return FORMATS[name]


def load_dataset(root: PathLike, format: str | None = None, skip_orphans: bool = False) -> Dataset:
    """Load the dataset in ``root``; ``format`` forces a format module, else (None, "" or "auto") it is detected."""
    if format not in (None, "", "auto"):
        module = get_format(format)  # a bad name is a config problem, report it before touching the disk
        p = check_root(root)
    else:
        p = check_root(root)
        module = FORMATS[detect_format(p)]
    ds = module.load(p, skip_orphans=skip_orphans)
    if not ds.splits:
        raise DataError(f"no split found in {p} (format {module.NAME}: {module.LAYOUT}).")
    for split in ds.splits.values():
        require_nonempty(split, p)
    return ds


__all__ = ["FORMATS", "detect_format", "get_format", "load_dataset", "skipped_message"]
