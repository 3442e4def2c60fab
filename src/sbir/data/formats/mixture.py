"""Several datasets merged by class name into one category-level training collection.

::

    root/
      sources.yaml

``sources.yaml`` lists the datasets (paths relative to the file)::

    sources:
      - path: ../../../shared/data/sketchy_mini       # any format, detected or given with `format`
      - path: ../../../shared/data/quickdraw_mini     # sketches only: photos come from the other sources
        max_per_class: 25
      - path: ../../../shared/data/qmul_v1/shoes      # a fine-grained set without classes: name its class
        label: shoe
      - path: ../../../shared/data/chairv2_strokes
        format: chairv2
        label: chair

Rules, so a merged collection can be trusted:

* classes are matched across sources case- and separator-insensitively
  (``hot-air_balloon`` = ``hot air balloon``); a class keeps the spelling of
  the first source that has it;
* a source without photos (Quick, Draw! ``.ndjson`` files, the Chair-V2 stroke
  pickle) contributes sketches of the classes that some other source has photos
  of; its other classes are listed in ``Dataset.skipped`` (never silently dropped);
* only each source's ``train`` split is taken unless the entry says
  ``splits: [train, test]``, so a benchmark's test split is never trained on by
  accident; everything lands in the mixture's one split ``train``;
* ids are ``<source>/<id>`` where ``<source>`` is the entry's ``name`` (default:
  the folder name), so two sources can hold the same file names
  (``<source>/<split>/<id>`` when an entry takes several splits); a sketch keeps
  its fine-grained ``photo_id`` (prefixed the same way);
* a missing folder, an unknown key, or a source with no usable records is a
  DataError naming the entry.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from sbir.data.records import Dataset, PhotoRecord, SketchRecord, Split
from sbir.errors import DataError

NAME = "mixture"
LAYOUT = "sources.yaml listing dataset folders to merge by class name"
SOURCES_FILE = "sources.yaml"
ENTRY_KEYS = {"path", "format", "label", "name", "max_per_class", "splits"}


def detect(root: Path) -> bool:
    return (Path(root) / SOURCES_FILE).is_file()


def read_sources(root: Path) -> list[dict]:
    """The entries of ``root/sources.yaml``, checked; paths made absolute (relative to the file)."""
    import yaml

    path = Path(root) / SOURCES_FILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        why = f"line {mark.line + 1}: {exc.problem}" if mark is not None else " ".join(str(exc).split())
        raise DataError(f"{path}: cannot read it as YAML ({why}). Fix the file.") from None
    entries = doc.get("sources") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty list under 'sources:' (each entry with a 'path').")
    out, names = [], set()
    for i, e in enumerate(entries):
        where = f"{path} sources[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise DataError(f"{where}: each entry needs 'path: FOLDER' (relative to {path.parent}).")
        unknown = sorted(set(e) - ENTRY_KEYS)
        if unknown:
            raise DataError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(ENTRY_KEYS))}."
            )
        folder = Path(e["path"]).expanduser()
        folder = folder if folder.is_absolute() else (path.parent / folder).absolute()
        if not folder.is_dir():
            raise DataError(f"{where}: folder {folder} does not exist. Fix its 'path' (relative to {path.parent}).")
        name = str(e.get("name") or folder.name)
        if name in names:
            raise DataError(f"{where}: two sources are called {name!r}; give one a different 'name'.")
        names.add(name)
        splits = e.get("splits", ["train"])
        if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits) or not splits:
            raise DataError(f"{where}: 'splits' must be a list of split names, e.g. [train] or [train, test].")
        mpc = e.get("max_per_class")
        if mpc is not None and (not isinstance(mpc, int) or isinstance(mpc, bool) or mpc < 1):
            raise DataError(f"{where}: max_per_class must be a positive integer, got {mpc!r}.")
        label = e.get("label")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise DataError(f"{where}: 'label' must be a class name, got {label!r}.")
        out.append({**e, "path": folder, "name": name, "splits": splits, "where": where})
    return out


def _load_source(entry: dict) -> list[Split]:
    """The requested splits of one source; sketch-only sources give splits with no photos."""
    from sbir.data.formats import chairv2, load_dataset, quickdraw

    folder, fmt = entry["path"], entry.get("format")
    if fmt in (None, "quickdraw") and quickdraw.detect(folder) and not (folder / quickdraw.PHOTO_DIR).is_dir():
        sketches = quickdraw.load_quickdraw(folder, max_per_class=entry.get("max_per_class"))
        return [Split(name="train", photos=[], sketches=sketches)]
    if (
        fmt in (None, "chairv2")
        and chairv2.detect(folder)
        and not any((folder / d).is_dir() for d in chairv2.PHOTO_DIRS)
    ):
        ds = chairv2.load_chairv2(folder / chairv2.PICKLE_NAME)
    else:
        ds = load_dataset(folder, format=fmt)
    missing = [s for s in entry["splits"] if s not in ds.splits]
    if missing:
        raise DataError(
            f"{entry['where']}: {folder} has no split(s) {', '.join(missing)} "
            f"(it has: {', '.join(sorted(ds.splits))}). Fix its 'splits'."
        )
    return [ds.splits[s] for s in entry["splits"]]


def load(root: Path, skip_orphans: bool = False) -> Dataset:
    """Merge the sources of ``root/sources.yaml`` into one ``train`` split (see the module docstring)."""
    from sbir.data.zeroshot import normalize_class_name

    root = Path(root)
    loaded = []
    for entry in read_sources(root):
        splits = _load_source(entry)
        label = entry.get("label")
        mpc = entry.get("max_per_class")
        # Ids: <source>/<id>, or <source>/<split>/<id> when the entry takes several splits (their ids may repeat).
        photos: list[PhotoRecord] = []
        sketches: list[SketchRecord] = []
        for split in splits:
            pre = entry["name"] if len(splits) == 1 else f"{entry['name']}/{split.name}"
            photos.extend(replace(p, id=f"{pre}/{p.id}", label=label or p.label) for p in split.photos)
            sketches.extend(
                replace(
                    s,
                    id=f"{pre}/{s.id}",
                    photo_id=f"{pre}/{s.photo_id}" if s.photo_id is not None else None,
                    label=label or s.label,
                )
                for s in split.sketches
            )
        unlabeled = next((r for r in (*photos, *sketches) if r.label is None), None)
        if unlabeled is not None:
            raise DataError(
                f"{entry['where']}: {entry['path']} has records without a class (e.g. {unlabeled.id}); "
                "give the entry 'label: CLASS'."
            )
        if mpc is not None:  # every source, sketch-only ones included (a no-op where the loader capped already)
            sketches = _cap_per_class(sketches, mpc)
        loaded.append((entry, photos, sketches))

    canonical: dict[str, str] = {}  # normalised class -> first spelling seen
    for _, photos, sketches in loaded:
        for r in (*photos, *sketches):
            canonical.setdefault(normalize_class_name(r.label), r.label)
    with_photos = {normalize_class_name(p.label) for _, photos, _ in loaded for p in photos}
    all_photos: list[PhotoRecord] = []
    all_sketches: list[SketchRecord] = []
    skipped: list[str] = []
    for entry, photos, sketches in loaded:
        no_photo: dict[str, int] = {}
        kept = 0
        all_photos.extend(replace(p, label=canonical[normalize_class_name(p.label)]) for p in photos)
        for s in sketches:
            key = normalize_class_name(s.label)
            if key not in with_photos:
                no_photo[s.label] = no_photo.get(s.label, 0) + 1
                continue
            kept += 1
            all_sketches.append(replace(s, label=canonical[key]))
        skipped.extend(
            f"{entry['name']}: class {c!r} ({n} sketches): no source has photos of it"
            for c, n in sorted(no_photo.items())
        )
        if not photos and not kept:
            raise DataError(
                f"{entry['where']}: none of the classes of {entry['path']} has photos in another source; "
                "add a source with photos of them or remove the entry."
            )
    split = Split(
        name="train",
        photos=sorted(all_photos, key=lambda r: r.id),
        sketches=sorted(all_sketches, key=lambda r: r.id),
    )
    if not split.photos or not split.sketches:
        raise DataError(f"{root / SOURCES_FILE}: the sources give no photos or no sketches; list a dataset with both.")
    return Dataset(root=root, format=NAME, splits={"train": split}, skipped=skipped)


def describe_skipped(skipped: list[str]) -> str:
    """The one-line summary of what a mixture left out (its ``Dataset.skipped`` lists one class per line)."""
    n = sum(int(m.group(1)) for m in map(_SKIPPED_COUNT.search, skipped) if m)
    return f"mixture: left out {n} sketch(es) of {len(skipped)} class(es) that no source has photos of"


_SKIPPED_COUNT = re.compile(r"\((\d+) sketches\)")


def _cap_per_class(sketches: list[SketchRecord], n: int) -> list[SketchRecord]:
    seen: dict[str, int] = {}
    out = []
    for s in sorted(sketches, key=lambda r: r.id):
        if seen.get(s.label, 0) < n:
            seen[s.label] = seen.get(s.label, 0) + 1
            out.append(s)
    return out


__all__ = ["LAYOUT", "NAME", "SOURCES_FILE", "describe_skipped", "detect", "load", "read_sources"]
