"""t-SNE of sketch and photo embeddings in one picture (scikit-learn's TSNE).

Sketches are crosses, photos circles; both are coloured by their key (the
photo pair for fine-grained runs: a sketch and its photo share a colour; the
class for category-level runs). Keys beyond the palette's 20 colours reuse
colours, so only the ``max_keys`` keys with the most points are shown.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["plot_tsne", "tsne_2d"]


def tsne_2d(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(n, 2)`` t-SNE coordinates (PCA init, perplexity fitted to small n)."""
    from sklearn.manifold import TSNE

    x = np.asarray(points, dtype=np.float32)
    if len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {len(x)}")
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(
    sketch_emb: np.ndarray,
    sketch_keys,
    photo_emb: np.ndarray,
    photo_keys,
    out_path: str | os.PathLike,
    colour_by: str = "photo pair",
    max_keys: int = 20,
    seed: int = 0,
) -> Path:
    """t-SNE of the sketches and photos whose key is among the ``max_keys`` most frequent; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s_keys = np.asarray([str(k) for k in sketch_keys])
    p_keys = np.asarray([str(k) for k in photo_keys])
    keys, counts = np.unique(np.concatenate([s_keys, p_keys]), return_counts=True)
    chosen = keys[np.argsort(-counts, kind="stable")[:max_keys]]
    s_sel, p_sel = np.isin(s_keys, chosen), np.isin(p_keys, chosen)
    xy = tsne_2d(np.concatenate([np.asarray(sketch_emb)[s_sel], np.asarray(photo_emb)[p_sel]]), seed=seed)
    n_s = int(s_sel.sum())
    colour = {k: i for i, k in enumerate(chosen)}
    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    for part, keys_part, marker, label in (
        (xy[:n_s], s_keys[s_sel], "x", "sketch"),
        (xy[n_s:], p_keys[p_sel], "o", "photo"),
    ):
        cols = [cmap(colour[k] % 20) for k in keys_part]
        edge = {"edgecolors": "black", "linewidths": 0.5} if marker == "o" else {"linewidths": 1.5}
        ax.scatter(part[:, 0], part[:, 1], c=cols, marker=marker, s=36, label=label, **edge)
    ax.legend(loc="best", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    shown = f"{len(chosen)} of {len(keys)}" if len(keys) > len(chosen) else f"{len(keys)}"
    ax.set_title(f"t-SNE of sketch (x) and photo (o) embeddings, coloured by {colour_by} ({shown} shown)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
