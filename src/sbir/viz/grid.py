"""Retrieval grids: one row per query sketch, then its top-k retrieved photos.

The true match is outlined with a thick green frame (:data:`MATCH_COLOUR`) where
it appears in the top-k; the row label gives the true match's rank. Drawn with
Pillow (text in matplotlib's bundled DejaVu Sans), so the picture's layout is
exact: :func:`grid_layout` says where every cell lies.

Layout, left to right: margin, row-label column, query cell, a separator, the
result cells (each result column adds ``thumb + gap`` pixels), margin. Top to
bottom: margin, optional title, column headers, the rows (each ``thumb``, plus a
caption line when scores are given, plus ``gap``), margin.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from sbir.data.image_io import load_image, to_rgb
from sbir.errors import ConfigError

__all__ = ["MATCH_COLOUR", "GridLayout", "grid_layout", "retrieval_grid", "write_retrieval_grid"]

MATCH_COLOUR = (0, 200, 0)  # frame around the true match; used for nothing else
_BG = (255, 255, 255)
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)
_CELL_BORDER = (200, 200, 200)
_GOOD = (0, 120, 0)
_BAD = (190, 30, 30)

ImageLike = Image.Image | str | os.PathLike


@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    try:
        import matplotlib

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except (ImportError, OSError):  # pragma: no cover - matplotlib ships the font
        return ImageFont.load_default(size=size)


def _text_w(font, text: str) -> int:
    x0, _, x1, _ = font.getbbox(text)
    return int(x1 - x0)


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a retrieval grid. Cell boxes are ``(x0, y0, x1, y1)``, exclusive ends."""

    n_rows: int
    n_results: int
    thumb: int
    margin: int
    gap: int
    frame: int
    font_size: int
    label_w: int
    title_h: int
    header_h: int
    caption_h: int

    @property
    def row_h(self) -> int:
        return self.thumb + self.caption_h + self.gap

    @property
    def query_x(self) -> int:
        return self.margin + self.label_w + self.gap

    @property
    def results_x(self) -> int:
        return self.query_x + self.thumb + 3 * self.gap

    @property
    def rows_y(self) -> int:
        return self.margin + self.title_h + self.header_h

    @property
    def width(self) -> int:
        return self.results_x + self.n_results * (self.thumb + self.gap) - self.gap + self.margin

    @property
    def height(self) -> int:
        return self.rows_y + self.n_rows * self.row_h - self.gap + self.margin

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Thumbnail box of ``row``; ``col`` 0 is the query, ``col`` j >= 1 the j-th result."""
        if not (0 <= row < self.n_rows and 0 <= col <= self.n_results):
            raise ConfigError(f"cell ({row}, {col}) is outside a {self.n_rows} x {self.n_results + 1} grid")
        y = self.rows_y + row * self.row_h
        x = self.query_x if col == 0 else self.results_x + (col - 1) * (self.thumb + self.gap)
        return (x, y, x + self.thumb, y + self.thumb)


def grid_layout(
    n_rows: int,
    n_results: int,
    thumb: int = 128,
    title: str | None = None,
    with_scores: bool = False,
    labels: Sequence[str] = (),
) -> GridLayout:
    """The geometry :func:`retrieval_grid` uses; ``labels`` are the row-label lines."""
    _check_int("thumb", thumb, 24, 1024)
    _check_int("number of rows", n_rows, 1, 10_000)
    _check_int("number of results per row", n_results, 1, 1000)
    font_size = max(10, min(18, thumb // 8))
    frame = max(3, thumb // 24)
    gap = frame + max(4, thumb // 24)
    margin = gap * 2
    font = _font(font_size)
    label_w = max([_text_w(font, "query 0000"), *(_text_w(font, t) for t in labels)]) + 4
    title_h = int(font_size * 2.2) if title else 0
    header_h = int(font_size * 1.6)
    caption_h = int(font_size * 1.5) if with_scores else 0
    return GridLayout(n_rows, n_results, thumb, margin, gap, frame, font_size, label_w, title_h, header_h, caption_h)


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")


def _as_image(img: ImageLike, what: str) -> Image.Image:
    if isinstance(img, Image.Image):
        return to_rgb(img)
    if isinstance(img, (str, os.PathLike)):
        return load_image(img)
    raise ConfigError(f"{what} must be a PIL image or an image path, got {type(img).__name__}")


def _fit(img: Image.Image, thumb: int) -> Image.Image:
    """Letterbox ``img`` into a ``thumb`` square on white, keeping its aspect ratio."""
    small = ImageOps.contain(img, (thumb, thumb), Image.LANCZOS)
    canvas = Image.new("RGB", (thumb, thumb), _BG)
    canvas.paste(small, ((thumb - small.width) // 2, (thumb - small.height) // 2))
    return canvas


def _rank_line(i: int, k: int, position: int | None, rank: int | None, have_truth: bool):
    """Second row-label line and its colour, or None."""
    if rank is not None:
        return f"rank {rank}", (_GOOD if rank <= k else _BAD)
    if position is not None:
        return f"rank {position + 1}", _GOOD
    if have_truth:
        return f"not in top {k}", _BAD
    return None


def retrieval_grid(
    queries: Sequence[ImageLike],
    results: Sequence[Sequence[ImageLike]],
    true_positions: Sequence[int | None] | None,
    out_path: str | os.PathLike,
    scores: Sequence[Sequence[float]] | None = None,
    title: str | None = None,
    thumb: int = 128,
    true_ranks: Sequence[int | None] | None = None,
    query_labels: Sequence[str] | None = None,
) -> Path:
    """Draw a retrieval grid and save it (PNG or JPEG by suffix); return the path.

    ``queries[i]`` is the sketch of row ``i`` and ``results[i]`` its ranked
    top-k photos (PIL images or image paths; rows may have different lengths).
    ``true_positions[i]`` is the 0-based index of the true match in
    ``results[i]``, or None when it is not among them (the row is then labelled
    "not in top k"); pass ``true_positions=None`` when there is no ground truth.
    ``true_ranks[i]`` (1-based rank in the whole gallery, or None) labels the row
    even when the match is beyond the top-k and must agree with
    ``true_positions``. ``scores[i][j]`` is printed under result ``j``.
    ``query_labels`` replaces the "query N" row labels.
    """
    n = len(queries)
    if n == 0:
        raise ConfigError("retrieval_grid needs at least one query")
    if len(results) != n:
        raise ConfigError(f"got {n} queries but {len(results)} result lists; pass one list of results per query")
    for name, seq in (
        ("true_positions", true_positions),
        ("true_ranks", true_ranks),
        ("query_labels", query_labels),
        ("scores", scores),
    ):
        if seq is not None and len(seq) != n:
            raise ConfigError(f"{name} has {len(seq)} entries for {n} queries; pass one per query")
    for i, row in enumerate(results):
        if len(row) == 0:
            raise ConfigError(f"results[{i}] is empty; every query needs at least one retrieved image")
        if scores is not None and len(scores[i]) != len(row):
            raise ConfigError(
                f"scores[{i}] has {len(scores[i])} values for {len(row)} results; pass one score per result"
            )
        p = None if true_positions is None else true_positions[i]
        if p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Integral) or not 0 <= p < len(row)):
            raise ConfigError(f"true_positions[{i}] = {p!r} is not an index into its {len(row)} results (or None)")
        r = None if true_ranks is None else true_ranks[i]
        if r is not None:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
                raise ConfigError(f"true_ranks[{i}] = {r!r} must be a 1-based rank (int >= 1) or None")
            if true_positions is not None and (p is not None) != (r <= len(row)):
                raise ConfigError(f"true_ranks[{i}] = {r} disagrees with true_positions[{i}] = {p}")
            if p is not None and r != p + 1:
                raise ConfigError(
                    f"true_ranks[{i}] = {r} disagrees with true_positions[{i}] = {p} (rank = position + 1)"
                )
    out = Path(out_path)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ConfigError(f"out_path {out} must end in .png or .jpg")

    k = max(len(row) for row in results)
    have_truth = true_positions is not None
    labels = []
    for i in range(n):
        first = query_labels[i] if query_labels is not None else f"query {i + 1}"
        second = _rank_line(
            i,
            len(results[i]),
            None if true_positions is None else true_positions[i],
            None if true_ranks is None else true_ranks[i],
            have_truth,
        )
        labels.append((str(first), second))
    lines = [a for a, _ in labels] + [b[0] for _, b in labels if b is not None]
    lay = grid_layout(n, k, thumb, title, scores is not None, lines)

    canvas = Image.new("RGB", (lay.width, lay.height), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font(lay.font_size)
    small = _font(max(9, lay.font_size - 2))
    if title:
        tfont = _font(lay.font_size + 2, bold=True)
        draw.text((lay.width // 2, lay.margin + lay.title_h // 2), title, fill=_TEXT, font=tfont, anchor="mm")
    hy = lay.margin + lay.title_h + lay.header_h // 2
    draw.text((lay.query_x + thumb // 2, hy), "sketch", fill=_MUTED, font=small, anchor="mm")
    for j in range(k):
        x0 = lay.results_x + j * (thumb + lay.gap)
        draw.text((x0 + thumb // 2, hy), f"top {j + 1}" if j == 0 else str(j + 1), fill=_MUTED, font=small, anchor="mm")
    sep_x = lay.query_x + thumb + (3 * lay.gap) // 2
    draw.line([(sep_x, lay.rows_y), (sep_x, lay.height - lay.margin)], fill=_CELL_BORDER, width=1)

    for i in range(n):
        qx0, qy0, qx1, qy1 = lay.cell_box(i, 0)
        canvas.paste(_fit(_as_image(queries[i], f"queries[{i}]"), thumb), (qx0, qy0))
        draw.rectangle([qx0 - 1, qy0 - 1, qx1, qy1], outline=_MUTED, width=1)
        first, second = labels[i]
        cy = (qy0 + qy1) // 2
        lx = lay.margin
        if second is None:
            draw.text((lx, cy), first, fill=_TEXT, font=font, anchor="lm")
        else:
            draw.text((lx, cy - 2), first, fill=_TEXT, font=font, anchor="ls")
            draw.text((lx, cy + 2), second[0], fill=second[1], font=font, anchor="lt")
        pos = None if true_positions is None else true_positions[i]
        for j, res in enumerate(results[i]):
            x0, y0, x1, y1 = lay.cell_box(i, j + 1)
            canvas.paste(_fit(_as_image(res, f"results[{i}][{j}]"), thumb), (x0, y0))
            if j == pos:
                f = lay.frame
                draw.rectangle([x0 - f, y0 - f, x1 - 1 + f, y1 - 1 + f], outline=MATCH_COLOUR, width=f)
            else:
                draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=_CELL_BORDER, width=1)
            if scores is not None:
                s = float(scores[i][j])
                text = f"{s:.3f}" if abs(s) < 1000 else f"{s:.3g}"
                draw.text(
                    ((x0 + x1) // 2, y1 + lay.frame + 1),
                    text,
                    fill=_GOOD if j == pos else _MUTED,
                    font=small,
                    anchor="mt",
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def write_retrieval_grid(
    evaluation, out_path: str | os.PathLike, title: str = "", n_queries: int = 8, top_k: int = 5
) -> Path | None:
    """Grid of an evaluation (:class:`sbir.engine.evaluate.Evaluation`): ``n_queries`` sketches spread over
    the queries, each with its top ``top_k`` photos under the evaluation's distance (and flip pairings);
    the first relevant photo is outlined and its rank printed. None when there is nothing to show."""
    import numpy as np

    from sbir.metrics import iter_score_chunks

    ev = evaluation
    n = min(n_queries, len(ev.queries))
    if n == 0 or len(ev.gallery) == 0:
        return None
    rows = np.linspace(0, len(ev.queries) - 1, n).round().astype(int)
    if ev.scores is not None:
        scores = np.asarray(ev.scores)[rows]
    else:
        _, scores = next(
            iter_score_chunks(
                ev.query_emb[rows],
                ev.gallery_emb,
                ev.distance,
                chunk_size=n,
                queries_flip=None if ev.query_flip is None else ev.query_flip[rows],
                gallery_flip=ev.gallery_flip,
            )
        )
    gallery_keys = np.asarray(ev.gallery_keys)
    queries, results, true_pos, ranks, top_scores, names = [], [], [], [], [], []
    for i, r in enumerate(rows):
        order = np.argsort(-scores[i], kind="stable")
        hits = np.flatnonzero(gallery_keys[order] == ev.query_keys[r])
        rank = int(hits[0]) + 1 if hits.size else None
        top = order[:top_k]
        queries.append(ev.queries[r].image.load())
        results.append([ev.gallery[j].image.load() for j in top])
        true_pos.append(rank - 1 if rank is not None and rank <= len(top) else None)
        ranks.append(rank)
        top_scores.append([float(scores[i, j]) for j in top])
        names.append(str(ev.query_keys[r]))
    return retrieval_grid(
        queries,
        results,
        true_pos,
        out_path,
        scores=top_scores,
        title=title,
        true_ranks=ranks,
        query_labels=names if ev.show_labels else None,
    )
