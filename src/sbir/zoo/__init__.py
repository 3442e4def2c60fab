"""Models shipped inside the package, loadable by name: ``--model general``.

Each is one fp16 safetensors file in this folder, written by ``sbir export RUN
--format fp16`` (:func:`sbir.engine.pack.pack_weights`), with the run's config in
its metadata like any sbir checkpoint. The model card (``README.md`` here) says
how each was trained and what it measured.

A shipped name wins over a folder of the same name in the working directory;
write ``./general`` to mean the folder.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
SHIPPED: dict[str, str] = {
    # Category-level sketch -> photo model: ImageNet Lite0 + Lite1 with a ridge head fitted on every sketch and photo
    # in ../shared/data (configs/general_sketch.yaml); the default model of `sbir index build`.
    "general": "general.safetensors",
}


def is_shipped_spec(spec: object) -> bool:
    return isinstance(spec, str | Path) and str(spec) in SHIPPED


def shipped_path(name: str) -> Path:
    """The file of shipped model ``name``; it may be missing in a source tree built without it."""
    return ZOO_DIR / SHIPPED[name]


def is_installed(name: str) -> bool:
    return shipped_path(name).is_file()


__all__ = ["SHIPPED", "ZOO_DIR", "is_installed", "is_shipped_spec", "shipped_path"]
