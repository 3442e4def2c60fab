"""Vector sketches (strokes) to raster images.

Two input conventions are accepted, both in **absolute** coordinates (x to the
right, y downwards, as on a screen or in a Quick, Draw! 256 box):

* **Quick, Draw! style** (the ``drawing`` field of the simplified ndjson, and
  what the web page sends): a list of strokes, each ``[[x0, x1, ...], [y0,
  y1, ...]]`` or ``[[x...], [y...], [t...]]`` (the third list, timestamps, is
  validated for length and ignored).
* **stroke-3** as in QMUL-Chair-V2 (``ChairV2_Coordinate``): an ``(N, 3)``
  array (or list of ``[x, y, pen]`` rows) of absolute ``x, y`` and a pen state
  where ``pen == 1`` means *the pen is lifted after this point*, i.e. the point
  ends a stroke. (sketch-rnn's stroke-3 stores *offsets*; convert those with
  :func:`stroke3_to_strokes` and ``relative=True`` first, or pass
  ``relative=True`` to :func:`parse_strokes`.)

A stroke may also be given as an ``(n, 2)`` numpy array of ``x, y`` points
(what :func:`parse_strokes` returns, and what the synthetic demo data draws):
a list of such arrays is taken as already split into strokes. Lists are always
read as ``[[x...], [y...]]``.

:func:`rasterize_strokes` is the one stroke rasteriser of sbir (the query
CLI/API, the Quick, Draw! and QMUL-Chair-V2 loaders and the synthetic demo data
use it). It draws dark, antialiased strokes (supersampled, then area-averaged)
on white. By default the drawing
is fitted into the output box (its bounding box scaled uniformly, aspect ratio
kept, centred, ``padding`` pixels from the border), which is how Quick, Draw!
simplified drawings and most sketch datasets are normalised. With ``canvas``
``(width, height)`` the coordinates are instead taken as positions on that
canvas and the whole canvas is fitted into the box, so the drawing keeps the
place and size it had when it was drawn.

Malformed input raises :class:`StrokeError`, which is both a
:class:`~sbir.errors.DataError` and a :class:`ValueError`, with a message
naming the stroke and point that is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sbir.errors import DataError

#: Refuse drawings with more points than this (a guard for untrusted input).
MAX_POINTS = 50_000


class StrokeError(DataError, ValueError):
    """A vector sketch is malformed; the message says which stroke/point and why."""


StrokesLike = Sequence[Any] | np.ndarray


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_finite(arr: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise StrokeError(f"{where}: point {bad} has a non-finite coordinate (NaN or infinity)")


def stroke3_to_strokes(
    data: StrokesLike, relative: bool = False, source: str = "strokes", max_points: int | None = MAX_POINTS
) -> list[np.ndarray]:
    """Split a stroke-3 ``(N, 3)`` sequence ``x, y, pen`` into strokes.

    ``pen == 1`` ends the current stroke after that point. With ``relative``
    the ``x, y`` columns are offsets from the previous point (sketch-rnn) and are
    accumulated first. Returns a list of ``(n, 2)`` float arrays.
    """
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StrokeError(f"{source}: a stroke-3 sketch must be an (N, 3) array of numbers ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise StrokeError(f"{source}: a stroke-3 sketch must have shape (N, 3) (x, y, pen state), got {arr.shape}")
    if arr.shape[0] == 0:
        raise StrokeError(f"{source}: the stroke-3 sketch has no points")
    if max_points is not None and arr.shape[0] > max_points:
        raise StrokeError(f"{source}: {arr.shape[0]} points exceed the limit of {max_points}")
    _check_finite(arr, source)
    xy = arr[:, :2].copy()
    if relative:
        xy = np.cumsum(xy, axis=0)
    ends = np.flatnonzero(arr[:, 2] >= 0.5)
    strokes: list[np.ndarray] = []
    start = 0
    for e in ends:
        strokes.append(xy[start : e + 1])
        start = e + 1
    if start < len(xy):  # the last stroke need not be terminated by pen == 1
        strokes.append(xy[start:])
    return [s for s in strokes if len(s)]


def _looks_like_stroke3(data: Any) -> bool:
    if isinstance(data, np.ndarray):
        return data.ndim == 2 and data.shape[1] == 3 and data.dtype != object
    if isinstance(data, (list, tuple)) and data:
        first = data[0]
        return isinstance(first, (list, tuple, np.ndarray)) and len(first) == 3 and all(_is_number(v) for v in first)
    return False


def parse_strokes(
    data: StrokesLike, source: str = "strokes", max_points: int | None = MAX_POINTS, relative: bool = False
) -> list[np.ndarray]:
    """Validate a sketch in either supported convention; return strokes as ``(n, 2)`` float arrays.

    ``source`` names the input in error messages (a file and line, or "request");
    ``max_points`` None means no limit (trusted input).
    """
    if isinstance(data, np.ndarray) or _looks_like_stroke3(data):
        return stroke3_to_strokes(data, relative=relative, source=source, max_points=max_points)
    if not isinstance(data, (list, tuple)):
        raise StrokeError(
            f"{source}: expected a list of strokes [[x...], [y...]] or an (N, 3) stroke-3 array, "
            f"got {type(data).__name__}"
        )
    out: list[np.ndarray] = []
    total = 0
    for i, stroke in enumerate(data):
        where = f"{source}: stroke {i}"
        if isinstance(stroke, np.ndarray):  # already (n, 2) points
            pts = np.asarray(stroke, dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
                raise StrokeError(f"{where}: an array stroke must have shape (n, 2) with n >= 1, got {pts.shape}")
            total += len(pts)
            if max_points is not None and total > max_points:
                raise StrokeError(f"{source}: more than {max_points} points in total; simplify the drawing")
            _check_finite(pts, where)
            out.append(pts)
            continue
        if not isinstance(stroke, (list, tuple)):
            raise StrokeError(f"{where} must be a list [[x...], [y...]], got {type(stroke).__name__}")
        if len(stroke) not in (2, 3):
            raise StrokeError(f"{where} must have 2 lists (x, y) or 3 (x, y, t), got {len(stroke)} elements")
        for j, axis in enumerate(stroke):
            if not isinstance(axis, (list, tuple)):
                raise StrokeError(
                    f"{where}: its {'xyt'[j]} coordinates must be a list of numbers, got {type(axis).__name__}"
                )
        xs, ys = stroke[0], stroke[1]
        if len(xs) != len(ys):
            raise StrokeError(f"{where} has {len(xs)} x values but {len(ys)} y values; they must match")
        if len(stroke) == 3 and len(stroke[2]) != len(xs):
            raise StrokeError(f"{where} has {len(xs)} points but {len(stroke[2])} timestamps; they must match")
        if len(xs) == 0:
            raise StrokeError(f"{where} has no points")
        total += len(xs)
        if max_points is not None and total > max_points:
            raise StrokeError(f"{source}: more than {max_points} points in total; simplify the drawing")
        for j, axis in enumerate(stroke[:2]):
            for n, v in enumerate(axis):
                if not _is_number(v):
                    raise StrokeError(f"{where}: {'xy'[j]}[{n}] = {v!r} is not a number")
        pts = np.column_stack([np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)])
        _check_finite(pts, where)
        out.append(pts)
    return out


def rasterize_strokes(
    strokes: StrokesLike,
    size: int = 256,
    stroke_width: float | Sequence[float] = 3.0,
    padding: float | None = None,
    canvas: tuple[float, float] | None = None,
    supersample: int = 2,
    source: str = "strokes",
    max_points: int | None = MAX_POINTS,
    allow_empty: bool = False,
    ink: int = 0,
) -> Image.Image:
    """Draw a vector sketch as dark strokes on a white ``size`` x ``size`` RGB image.

    Coordinates follow the pixel-area convention: output pixel ``i`` covers
    ``[i, i + 1)`` of the fitted coordinates, so with ``canvas=(size, size)`` and
    ``padding=0`` a point ``(x, y)`` lands at pixel position ``(x, y)``.

    Args:
        strokes: Quick, Draw! strokes ``[[[x...], [y...]], ...]``, a list of ``(n, 2)``
            point arrays, or a stroke-3 ``(N, 3)`` array of absolute ``x, y, pen``
            (pen 1 = lifted after the point).
        size: output side in pixels.
        stroke_width: line width in output pixels (round caps and joins); one
            value, or one per stroke.
        padding: margin in output pixels between the fitted drawing and the
            border; default ``0.05 * size + max(stroke_width) / 2``.
        canvas: ``(width, height)`` of the surface the strokes were drawn on; if
            given, that whole surface (not the drawing's bounding box) is fitted
            into the box, keeping position and scale as drawn.
        supersample: draw at this multiple of ``size`` and area-average down
            (antialiasing); 1 = off.
        source: name of the input in error messages.
        max_points: refuse more points than this (None: no limit, for trusted input).
        allow_empty: return a blank image for a drawing with no strokes instead of raising.
        ink: grey level of the strokes, 0 (black) to 255.
    """
    if not isinstance(size, int) or size < 8:
        raise StrokeError(f"{source}: size must be an integer >= 8, got {size!r}")
    if not _is_number(ink) or not 0 <= ink <= 255:
        raise StrokeError(f"{source}: ink must be a grey level 0..255, got {ink!r}")
    parsed = parse_strokes(strokes, source=source, max_points=max_points)
    if isinstance(stroke_width, (list, tuple, np.ndarray)):
        widths = list(stroke_width)
        if len(widths) != len(parsed):
            raise StrokeError(
                f"{source}: got {len(widths)} stroke widths for {len(parsed)} strokes; pass one width or one per stroke"
            )
    else:
        widths = [stroke_width] * len(parsed)
    for w in widths or [stroke_width]:
        if not _is_number(w) or not 0 < w <= size / 4:
            raise StrokeError(f"{source}: stroke_width must be in (0, {size / 4}], got {w!r}")
    if not parsed:
        if allow_empty:
            return Image.new("RGB", (size, size), (255, 255, 255))
        raise StrokeError(f"{source}: the drawing has no strokes; draw something first")
    if padding is None:
        padding = 0.05 * size + max(widths) / 2
    if not _is_number(padding) or padding < 0 or 2 * padding >= size:
        raise StrokeError(f"{source}: padding must be in [0, {size / 2}), got {padding!r}")

    if canvas is not None:
        try:
            cw, ch = float(canvas[0]), float(canvas[1])
        except (TypeError, ValueError, IndexError):
            raise StrokeError(f"{source}: canvas must be (width, height), got {canvas!r}") from None
        if not (math.isfinite(cw) and math.isfinite(ch) and cw > 0 and ch > 0):
            raise StrokeError(f"{source}: canvas width and height must be positive numbers, got {canvas!r}")
        x0, y0, w, h = 0.0, 0.0, cw, ch
    else:
        allpts = np.concatenate(parsed)
        x0, y0 = allpts.min(axis=0)
        x1, y1 = allpts.max(axis=0)
        w, h = float(x1 - x0), float(y1 - y0)
    avail = size - 2 * padding
    extent = max(w, h)
    scale = avail / extent if extent > 0 else 1.0
    # Centre the (scaled) box inside the output.
    off_x = padding + (avail - w * scale) / 2 - x0 * scale
    off_y = padding + (avail - h * scale) / 2 - y0 * scale

    ss = max(1, int(supersample))
    big = size * ss
    cover = Image.new("L", (big, big), 0)  # ink coverage, drawn supersampled
    draw = ImageDraw.Draw(cover)
    for pts, sw in zip(parsed, widths, strict=True):
        xy = np.empty_like(pts)
        # PIL's pixel j is centred on j: area coordinate u maps to u * ss - 0.5
        xy[:, 0] = (pts[:, 0] * scale + off_x) * ss - 0.5
        xy[:, 1] = (pts[:, 1] * scale + off_y) * ss - 0.5
        coords = [(float(a), float(b)) for a, b in xy]
        width_px = max(1, int(round(sw * ss)))
        r = width_px / 2.0
        if len(coords) > 1:
            draw.line(coords, fill=255, width=width_px, joint="curve")
        # Round caps (and dots for single-point strokes).
        for cx, cy in (coords[0], coords[-1]):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    if ss > 1:
        cover = cover.resize((size, size), Image.Resampling.BOX)
    a = np.asarray(cover, dtype=np.float32) / 255.0
    grey = np.clip(np.round(255.0 - a * (255.0 - float(ink))), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")
