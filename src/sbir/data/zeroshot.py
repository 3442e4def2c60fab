"""Zero-shot SBIR class splits: train on *seen* classes, test on *unseen* ones.

Built-in unseen-class lists (``src/sbir/splits/*.txt``; each file's ``#`` header
names its paper and source repository):

* ``sketchy_unseen21`` -- Sketchy, 21 classes (Yelamarthi et al., ECCV 2018);
* ``sketchy_unseen25`` -- Sketchy, 25 classes (ZSIH, CVPR 2018, as in SAKE);
* ``tuberlin_unseen30`` -- TU-Berlin, 30 classes (ZSIH / SAKE);
* ``quickdraw_unseen30`` -- QuickDraw-Extended, 30 classes (Doodle2Search, CVPR 2019).

``data.unseen`` / ``--unseen`` accepts a built-in name, a path to a text file
in the same format (one class per line; ``#`` comments and blank lines
ignored), or a comma-separated list (``--unseen bat,cow`` -- a single class
needs a trailing comma: ``bat,``).

Class names are compared after :func:`normalize_class_name`: lower case, with
``_``, ``-`` and runs of spaces all equal to one space, so ``hot-air_balloon``
(Sketchy), ``hot air balloon`` (TU-Berlin, Quick, Draw!) and ``Hot_Air_Balloon``
are the same class. Parentheses and other characters are kept
(``car_(sedan)`` == ``car (sedan)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from sbir.data.records import Split
from sbir.errors import ConfigError, DataError

SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"
_SEP = re.compile(r"[\s_\-]+")


def normalize_class_name(name: str) -> str:
    """Case- and separator-insensitive class key: ``'Hot-air_balloon'`` -> ``'hot air balloon'``."""
    return _SEP.sub(" ", str(name).strip().lower()).strip()


class ClassList(list):
    """A list of class names that remembers where it came from (``source``) for error messages."""

    def __init__(self, names: Iterable[str] = (), source: str = "<list>"):
        super().__init__(names)
        self.source = source


def list_builtin_splits() -> list[str]:
    """Names of the shipped class lists (file names without ``.txt``)."""
    if not SPLITS_DIR.is_dir():
        return []
    return sorted(p.stem for p in SPLITS_DIR.glob("*.txt"))


def _parse_lines(lines: Iterable[str], source: str) -> ClassList:
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = normalize_class_name(line)
        if not key:
            raise ConfigError(f"{source}:{lineno}: {raw.strip()!r} is not a class name")
        if key in seen:
            raise ConfigError(f"{source}:{lineno}: class {line!r} is listed twice (also line {seen[key]}); remove one")
        seen[key] = lineno
        names.append(line)
    if not names:
        raise ConfigError(f"{source} lists no classes (one class per line; lines starting with # are comments)")
    return ClassList(names, source)


def _read_file(path: Path) -> ClassList:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read class list {path}: {exc}") from exc
    return _parse_lines(text.splitlines(), str(path))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a long comma list is too long for a file name
        return False


def load_class_list(name_or_path: str | Path | Iterable[str]) -> ClassList:
    """Unseen classes from a built-in split name, a file path, a comma-separated string or a list.

    ConfigError when the argument is none of these, or the list is empty or
    names a class twice.
    """
    if isinstance(name_or_path, ClassList):
        return name_or_path
    if isinstance(name_or_path, (list, tuple, set, frozenset)):
        return _parse_lines([str(c) for c in name_or_path], "<class list>")
    if isinstance(name_or_path, Path):
        if not name_or_path.is_file():
            raise ConfigError(f"class list file {name_or_path} does not exist")
        return _read_file(name_or_path)
    text = str(name_or_path).strip()
    if not text:
        raise ConfigError("empty unseen-class list; give a built-in split name, a file or a comma-separated list")
    builtin = text[:-4] if text.endswith(".txt") else text
    if "/" not in text and "\\" not in text and builtin in list_builtin_splits():
        return _read_file(SPLITS_DIR / f"{builtin}.txt")
    p = Path(text).expanduser()
    if _is_file(p):
        return _read_file(p)
    if "," in text:
        return _parse_lines(text.split(","), f"--unseen {text!r}")
    if "/" in text or "\\" in text or text.endswith(".txt"):
        raise ConfigError(f"class list file {p} does not exist. Check the path.")
    raise ConfigError(
        f"unseen classes {text!r} is not a built-in split ({', '.join(list_builtin_splits())}), "
        "not an existing file, and not a comma-separated list (for one class write it with a trailing comma, e.g. "
        "'bat,')"
    )


def split_seen_unseen(
    split: Split, unseen: str | Path | Iterable[str], source: str | None = None
) -> tuple[Split, Split]:
    """Split ``split`` by class into ``(<name>_seen, <name>_unseen)``.

    A record (photo or sketch) is unseen when its label matches a class of
    ``unseen`` (after :func:`normalize_class_name`). DataError when a listed
    class is not in the split (the message names the classes and the list's
    source), when a record has no label, or when either side would be empty.
    Triplet annotations are dropped (their indices would not survive the split).
    """
    classes = load_class_list(unseen)
    src = source or getattr(classes, "source", "<class list>")
    unlabeled = [r for r in (*split.photos, *split.sketches) if r.label is None]
    if unlabeled:
        raise DataError(
            f"split '{split.name}' has {len(unlabeled)} records without a class label (e.g. {unlabeled[0].id}); "
            "zero-shot splits need class labels (use a category-level dataset layout)"
        )
    present = {normalize_class_name(lbl): lbl for lbl in split.labels()}
    wanted = {normalize_class_name(c): c for c in classes}
    missing = [c for k, c in wanted.items() if k not in present]
    if missing:
        have = sorted(present.values())
        more = f", ... ({len(have) - 20} more)" if len(have) > 20 else ""
        raise DataError(
            f"unseen class list {src} names {len(missing)} class(es) that split '{split.name}' does not have: "
            f"{', '.join(missing)}. Classes are matched ignoring case and '_'/'-'/space differences; "
            f"the split has: {', '.join(have[:20])}{more}. Fix the list or use the matching dataset."
        )

    def is_unseen(label: str | None) -> bool:
        return normalize_class_name(label or "") in wanted

    seen = Split(
        name=f"{split.name}_seen",
        photos=[p for p in split.photos if not is_unseen(p.label)],
        sketches=[s for s in split.sketches if not is_unseen(s.label)],
    )
    unseen_split = Split(
        name=f"{split.name}_unseen",
        photos=[p for p in split.photos if is_unseen(p.label)],
        sketches=[s for s in split.sketches if is_unseen(s.label)],
    )
    for part in (seen, unseen_split):
        if not part.photos or not part.sketches:
            raise DataError(
                f"zero-shot split of '{split.name}' with {src}: part '{part.name}' has "
                f"{len(part.photos)} photos and {len(part.sketches)} sketches; both sides need at least one. "
                "Check that the unseen list leaves some seen classes (and vice versa)."
            )
    return seen, unseen_split


__all__ = [
    "ClassList",
    "SPLITS_DIR",
    "list_builtin_splits",
    "load_class_list",
    "normalize_class_name",
    "split_seen_unseen",
]
