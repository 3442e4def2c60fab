"""Photo edge maps from HED (:mod:`sbir.models.hed`), computed once and cached on disk.

HED is a VGG16 at full resolution: on a CPU it costs about half a second per
128 px photo, so sketch-domain pretraining computes each photo's edge map once.
The cache is content-addressed: ``<cache>/hed-<weights sha256[:16]>/<size>px/<photo sha256[:2]>/<photo sha256>.png``
(the cache root is ``$SBIR_CACHE_DIR``, default ``~/.cache/sbir``), so new HED
weights, another size or an edited photo never reuse a stale map, and every run
(and every dataset folder holding the same photos) shares the work.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sbir.fileio import atomic_write_with, sha256_file

CACHE_ENV = "SBIR_CACHE_DIR"


def cache_root() -> Path:
    """``$SBIR_CACHE_DIR``, else ``~/.cache/sbir``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sbir").expanduser()


def hed_edge_maps(
    photos: Sequence[Path],
    size: int,
    progress: bool = True,
    batch_size: int = 8,
    weights: Path | None = None,
) -> list[Path]:
    """The cached edge-map PNG of each photo (black lines on white, ``size`` px), computing the missing ones."""
    import torch

    from sbir.models.hed import detect_edges, hed_weights_file, load_hed

    weights = Path(weights) if weights is not None else hed_weights_file()
    folder = cache_root() / f"hed-{sha256_file(weights)[:16]}" / f"{size}px"
    out = []
    for p in photos:
        key = sha256_file(p)
        out.append(folder / key[:2] / f"{key}.png")
    todo = sorted({i for i, o in enumerate(out) if not o.is_file()})
    if not todo:
        return out
    model = load_hed(weights)
    bar = tqdm(total=len(todo), desc="HED edge maps", unit="photo", disable=not progress, file=sys.stderr)
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            images = []
            for i in idx:
                with Image.open(photos[i]) as im:
                    images.append(im.convert("RGB"))
            for i, edges in zip(idx, detect_edges(model, images, size), strict=True):
                atomic_write_with(out[i], lambda tmp, e=edges: Image.fromarray(e).save(tmp, format="PNG"))
            bar.update(len(idx))
    bar.close()
    return out


__all__ = ["CACHE_ENV", "cache_root", "hed_edge_maps"]
