"""Training curves from the per-epoch metrics CSV the trainer writes.

:func:`plot_training_curves` draws the loss (top panel, learning rate on a
second axis when logged) and validation Acc@1/5/10 (bottom panel) per epoch and
marks the best epoch by ``val_acc@1`` (the original repo's ``acc.png``).
:func:`plot_columns` plots any columns, e.g. category-level ``map@all``.

Any subset of the columns ``epoch, train_loss, val_loss, val_acc@1, val_acc@5,
val_acc@10, lr, seconds`` may be present; empty cells (a metric not computed
that epoch) are skipped. Matplotlib is used through its object API with the Agg
canvas, so plotting never touches the global pyplot state or backend.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sbir.errors import ConfigError, DataError

__all__ = ["read_metrics_csv", "best_epoch", "has_training_curves", "plot_training_curves", "plot_columns"]

PathLike = str | os.PathLike

LOSS_COLUMNS = ("train_loss", "val_loss")
ACC_COLUMNS = ("val_acc@1", "val_acc@5", "val_acc@10")
_STYLE = {
    "train_loss": dict(color="#1f77b4", label="train loss"),
    "val_loss": dict(color="#ff7f0e", label="val loss"),
    "val_acc@1": dict(color="#d62728", label="val Acc@1", lw=2.0),
    "val_acc@5": dict(color="#9467bd", label="val Acc@5", lw=1.2, alpha=0.7),
    "val_acc@10": dict(color="#2ca02c", label="val Acc@10", lw=2.0),
}


def _float(cell: str) -> float:
    cell = (cell or "").strip()
    if cell == "" or cell.lower() in ("nan", "none", "null", "-"):
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return math.nan


def read_metrics_csv(path: PathLike) -> dict[str, np.ndarray]:
    """Read a metrics CSV (header row, one row per epoch) into column -> float array.

    Empty or non-numeric cells become NaN. Raises :class:`DataError` naming the
    file when it is missing, has no header or no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"metrics file {p} does not exist; pass the metrics.csv of a training run")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read metrics file {p}: {exc}") from exc
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"metrics file {p} is empty; it needs a header row and one row per epoch")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header) or any(h == "" for h in header):
        raise DataError(f"metrics file {p} has an empty or repeated column name in its header {header}")
    body = rows[1:]
    if not body:
        raise DataError(f"metrics file {p} has a header but no rows; train at least one epoch first")
    table = {}
    for j, name in enumerate(header):
        table[name] = np.array([_float(r[j]) if j < len(r) else math.nan for r in body], dtype=np.float64)
    return table


def best_epoch(table: dict[str, np.ndarray], column: str = "val_acc@1") -> tuple[float, float] | None:
    """``(epoch, value)`` of the first row with the highest ``column``; None if it has no values."""
    if column not in table:
        return None
    vals = table[column]
    if not np.isfinite(vals).any():
        return None
    i = int(np.nanargmax(np.where(np.isfinite(vals), vals, -np.inf)))
    epochs = _x(table)[0]
    return float(epochs[i]), float(vals[i])


def _x(table: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    n = len(next(iter(table.values())))
    if "epoch" in table and np.isfinite(table["epoch"]).all():
        return table["epoch"], "epoch"
    return np.arange(1, n + 1, dtype=np.float64), "epoch" if "epoch" not in table else "row"


def _new_figure(figsize, dpi, nrows: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def _check_figure(figsize, dpi, out_path) -> Path:
    if (
        not isinstance(figsize, (tuple, list))
        or len(figsize) != 2
        or not all(isinstance(v, (int, float)) and 1 <= v <= 50 for v in figsize)
    ):
        raise ConfigError(f"figsize must be (width, height) in inches, each 1..50, got {figsize!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 30 <= dpi <= 600:
        raise ConfigError(f"dpi must be an integer 30..600, got {dpi!r}")
    out = Path(out_path)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"out_path {out} must end in .png, .pdf or .svg")
    return out


def _series(ax, x, y, **style):
    ok = np.isfinite(y)
    # markers so a single epoch (or isolated values) still shows
    ax.plot(x[ok], y[ok], marker="o", ms=3.5 if ok.sum() > 1 else 6, **style)


def _integer_ticks(ax, x: np.ndarray):
    from matplotlib.ticker import MaxNLocator

    lo, hi = float(np.min(x)), float(np.max(x))
    pad = max(0.5, 0.03 * (hi - lo))  # a single epoch still gets a sensible axis
    ax.set_xlim(lo - pad, hi + pad)
    if hi - lo < 10:
        ax.set_xticks(np.arange(math.ceil(lo), math.floor(hi) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curve_columns(table: dict) -> tuple[list[str], list[str]]:
    """The loss and accuracy columns of ``table`` that hold at least one value."""
    losses = [c for c in LOSS_COLUMNS if c in table and np.isfinite(table[c]).any()]
    accs = [c for c in ACC_COLUMNS if c in table and np.isfinite(table[c]).any()]
    return losses, accs


def has_training_curves(metrics_csv: PathLike) -> bool:
    """Whether :func:`plot_training_curves` has anything to draw (a loss or an accuracy column with values)."""
    return any(_curve_columns(read_metrics_csv(metrics_csv)))


def plot_training_curves(
    metrics_csv: PathLike,
    out_path: PathLike,
    title: str | None = None,
    figsize: Sequence[float] = (8, 6),
    dpi: int = 100,
) -> Path:
    """Plot loss and validation accuracy per epoch, marking the best epoch by ``val_acc@1``.

    The picture is ``figsize * dpi`` pixels (800 x 600 by default). Needs at
    least one of the loss or accuracy columns; returns ``out_path``.
    """
    out = _check_figure(figsize, dpi, out_path)
    table = read_metrics_csv(metrics_csv)
    x, xlabel = _x(table)
    losses, accs = _curve_columns(table)
    if not losses and not accs:
        raise DataError(
            f"metrics file {metrics_csv} has none of the columns {list(LOSS_COLUMNS + ACC_COLUMNS)} with values "
            f"(it has {sorted(table)}); use plot_columns for other columns"
        )
    panels = (["loss"] if losses else []) + (["acc"] if accs else [])
    fig, axes = _new_figure(tuple(figsize), dpi, len(panels))
    best = best_epoch(table)
    for ax, panel in zip(axes, panels, strict=False):
        cols = losses if panel == "loss" else accs
        for c in cols:
            _series(ax, x, table[c], **_STYLE[c])
        ax.set_ylabel("loss" if panel == "loss" else "validation accuracy")
        ax.grid(True, alpha=0.3)
        if panel == "acc":
            hi = np.nanmax([np.nanmax(table[c]) for c in accs])
            # fractions on 0..1, percentages on 0..100
            ax.set_ylim(0, 1.02 if hi <= 1.0 else (102.0 if hi <= 100.0 else hi * 1.05))
        if panel == "loss" and "lr" in table and np.isfinite(table["lr"]).any():
            ax2 = ax.twinx()
            lr = table["lr"]
            ok = np.isfinite(lr)
            ax2.plot(x[ok], lr[ok], color="grey", ls=":", lw=1.2, marker=".", label="lr")
            ax2.set_ylabel("learning rate", color="grey")
            ax2.tick_params(axis="y", colors="grey")
            pos = lr[ok][lr[ok] > 0]
            if pos.size and pos.max() / pos.min() > 20:
                ax2.set_yscale("log")
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=9)
        else:
            ax.legend(loc="best", fontsize=9)
        if best is not None:
            ax.axvline(best[0], color="#d62728", ls="--", lw=1, alpha=0.7)
    if best is not None and "acc" in panels:
        ax = axes[panels.index("acc")]
        ax.plot([best[0]], [best[1]], marker="*", ms=14, color="#d62728", zorder=5, ls="none")
        ax.annotate(
            f"best epoch {best[0]:g}: Acc@1 {best[1]:.3g}",
            xy=(best[0], best[1]),
            xytext=(0.02, 0.95),
            textcoords="axes fraction",
            va="top",
            fontsize=10,
            bbox=dict(boxstyle="round", fc="white", ec="#d62728", alpha=0.9),
        )
    axes[-1].set_xlabel(xlabel)
    _integer_ticks(axes[-1], x)
    fig.suptitle(
        title if title is not None else f"training curves: {Path(metrics_csv).parent.name or Path(metrics_csv).name}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def plot_columns(
    metrics_csv: PathLike,
    columns: Sequence[str],
    out_path: PathLike,
    x: str = "epoch",
    title: str | None = None,
    ylabel: str | None = None,
    figsize: Sequence[float] = (8, 4.5),
    dpi: int = 100,
) -> Path:
    """Plot the given columns of a metrics CSV against ``x`` (row number if absent).

    With a single row (e.g. one evaluation's ``map@all, map@200, p@100, p@200``)
    draws a labelled bar per column instead of lines. Returns ``out_path``.
    """
    out = _check_figure(figsize, dpi, out_path)
    if isinstance(columns, str) or not columns:
        raise ConfigError("columns must be a non-empty list of column names")
    table = read_metrics_csv(metrics_csv)
    missing = [c for c in columns if c not in table]
    if missing:
        raise DataError(f"metrics file {metrics_csv} has no column(s) {missing}; it has {sorted(table)}")
    empty = [c for c in columns if not np.isfinite(table[c]).any()]
    if len(empty) == len(columns):
        raise DataError(f"columns {list(columns)} of {metrics_csv} hold no numbers")
    n = len(table[columns[0]])
    fig, (ax,) = _new_figure(tuple(figsize), dpi, 1)
    if n == 1:
        vals = [float(table[c][0]) for c in columns]
        pos = np.arange(len(columns))
        bars = ax.bar(pos, [0 if math.isnan(v) else v for v in vals], color="#1f77b4", width=0.6)
        for b, v in zip(bars, vals, strict=False):
            ax.annotate(
                "n/a" if math.isnan(v) else f"{v:.3g}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=10,
            )
        ax.set_xticks(pos, list(columns))
        finite = [v for v in vals if not math.isnan(v)]
        if finite and max(finite) > 0:
            ax.set_ylim(0, max(finite) * 1.15)  # room for the value labels
        ax.grid(True, axis="y", alpha=0.3)
    else:
        if x in table and np.isfinite(table[x]).all():
            xs, xlabel = table[x], x
        else:
            xs, xlabel = np.arange(1, n + 1, dtype=np.float64), "row"
        for c in columns:
            _series(ax, xs, table[c], label=c)
        ax.set_xlabel(xlabel)
        _integer_ticks(ax, xs)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel)
    fig.suptitle(title if title is not None else ", ".join(columns))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
