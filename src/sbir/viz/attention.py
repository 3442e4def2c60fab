"""Mean attention distance of a Vision Transformer, per layer and head (Dosovitskiy et al. 2021, Fig. 7).

For one head and one query patch ``i`` the attention distance is the
attention-weighted mean of the euclidean distances, **in pixels on the 2-D
image grid**, from patch ``i`` to every key patch ``j``:

    d_i = sum_j a_ij * ||pos_i - pos_j||_2,   pos = (row, col) * patch_size

A head's mean attention distance averages ``d_i`` over all query patches and
images. Prefix tokens (CLS, register or distillation tokens) have no position:
their query rows are left out, their key columns are dropped and each query's
remaining weights are renormalised to sum to 1 (so ``d_i`` is the mean distance
of the attention that lands on patches). Tokens are in timm's order: prefix
tokens first, then the patches row-major. (ARNet's script used the distance
between token *indices*, ``|i - j|``, which mixes up rows and columns of the 2-D
grid; this is the published definition.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["mean_attention_distance", "patch_distances", "plot_attention_distance"]


def patch_distances(grid_hw: tuple[int, int], patch_size: float) -> np.ndarray:
    """``(N, N)`` euclidean distances in pixels between the patches of a row-major ``grid_hw`` grid."""
    h, w = (int(v) for v in grid_hw)
    rows, cols = np.divmod(np.arange(h * w), w)
    pos = np.stack([rows, cols], axis=1).astype(np.float64) * float(patch_size)
    return np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))


def mean_attention_distance(
    attn, grid_hw: tuple[int, int], patch_size: float, num_prefix_tokens: int = 1
) -> np.ndarray:
    """``(heads,)`` mean attention distance in pixels of one layer's attention ``(B, heads, T, T)`` (or
    ``(heads, T, T)``) over ``T = num_prefix_tokens + H * W`` tokens; see the module docstring."""
    a = np.asarray(attn.detach().float().cpu().numpy() if hasattr(attn, "detach") else attn, dtype=np.float64)
    if a.ndim == 3:
        a = a[None]
    h, w = (int(v) for v in grid_hw)
    n = h * w
    if a.ndim != 4 or a.shape[-1] != a.shape[-2] or a.shape[-1] != num_prefix_tokens + n:
        raise ValueError(
            f"attention of shape {a.shape} does not fit {num_prefix_tokens} prefix tokens + a {h}x{w} patch grid"
        )
    p = int(num_prefix_tokens)
    patches = a[:, :, p:, p:]
    mass = patches.sum(-1, keepdims=True)
    patches = patches / np.maximum(mass, 1e-12)
    d = (patches * patch_distances((h, w), patch_size)).sum(-1)  # (B, heads, N)
    return d.mean(axis=(0, 2))


def plot_attention_distance(
    distances: dict[str, np.ndarray],
    out_path: str | os.PathLike,
    image_size: int | None = None,
    title: str = "mean attention distance",
) -> Path:
    """One panel per encoder: a dot per head at each layer (``distances[name]`` is ``(layers, heads)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names: Sequence[str] = list(distances)
    fig = Figure(figsize=(5 * max(1, len(names)), 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        d = np.asarray(distances[name])
        layers = np.arange(1, d.shape[0] + 1)
        for head in range(d.shape[1]):
            ax.scatter(layers, d[:, head], s=18, alpha=0.75, label=f"head {head + 1}" if d.shape[1] <= 12 else None)
        ax.set_xlabel("layer (block)")
        ax.set_ylabel("mean attention distance (pixels)")
        ax.set_title(f"{name} encoder")
        ax.set_xticks(layers)
        if image_size:
            ax.set_ylim(0, image_size * 0.75)
        ax.grid(True, alpha=0.3)
        if d.shape[1] <= 12:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
