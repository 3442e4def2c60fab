"""One model of a sketch query given as strokes: used by ``sbir search``, the REST API and the drawing page.

A query is a JSON object::

    {"strokes": [[[x0, x1, ...], [y0, y1, ...]], ...],   # required (alias "drawing")
     "k": 10,                                           # optional: number of results
     "canvas": {"width": W, "height": H},               # optional: keep the drawing's place on this surface
     "stroke_width": 3}                                 # optional: line width in pixels of the 256 px raster

``strokes`` is Quick, Draw!'s ``drawing`` (each stroke ``[[x...], [y...]]``,
optionally with a third list of timestamps) or a stroke-3 list of ``[x, y,
pen]`` rows (see :mod:`sbir.data.strokes`). A strokes *file* for ``sbir
search`` may also be a bare list of strokes or a whole Quick, Draw! record
(its other keys, such as ``word`` or ``key_id``, are ignored); the API takes
only the object above and refuses unknown fields.

Every query is held to the same :class:`QueryLimits` (at most
:data:`MAX_STROKES` strokes, :data:`MAX_POINTS` points, coordinates within
``±`` :data:`MAX_COORD`, finite numbers, JSON nested at most :data:`MAX_DEPTH`
levels, checked on the raw bytes before parsing). Anything wrong raises
:class:`QueryError` (a :class:`~sbir.errors.DataError`) with one message that
says what to fix. :meth:`SketchQuery.to_image` rasterises with
:func:`sbir.data.strokes.rasterize_strokes`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError

from sbir.errors import DataError

MAX_STROKES = 2_000
MAX_POINTS = 20_000
MAX_COORD = 1_000_000.0
MAX_CANVAS = 100_000.0
MAX_DEPTH = 16
MAX_K = 10_000
STROKE_WIDTH_RANGE = (0.5, 32.0)
RASTER_SIZE = 256
DEFAULT_STROKE_WIDTH = 3.0

FIELDS = ("strokes", "k", "canvas", "stroke_width")
#: keys of a Quick, Draw! ndjson record besides ``drawing``, ignored in a strokes file
QUICKDRAW_KEYS = ("word", "countrycode", "timestamp", "recognized", "key_id")


class QueryError(DataError):
    """A sketch query is malformed or over a limit; the message says what and how to fix it."""


@dataclass(frozen=True)
class QueryLimits:
    """The limits every sketch query is held to (the service may lower ``max_points`` and ``max_k``)."""

    max_strokes: int = MAX_STROKES
    max_points: int = MAX_POINTS
    max_coord: float = MAX_COORD
    max_depth: int = MAX_DEPTH
    max_k: int = MAX_K


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("sketch_query", "{reason}", {"reason": message})


def _limits(info: ValidationInfo) -> QueryLimits:
    ctx = info.context or {}
    return ctx.get("limits") or QueryLimits()


def parse_k(value: Any, max_k: int = MAX_K, default: int | None = None) -> int | None:
    """``k`` from JSON, a form field or a query parameter: an integer in ``[1, max_k]`` (``default`` if absent)."""
    if value is None or value == "":
        return default
    msg = f"k must be an integer between 1 and {max_k}, got {value!r}"
    if isinstance(value, bool):
        raise QueryError(msg)
    try:
        k = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise QueryError(msg) from None
    if not 1 <= k <= max_k:
        raise QueryError(f"k must be between 1 and {max_k}, got {k}")
    return k


def check_json_depth(data: bytes | str, max_depth: int = MAX_DEPTH, source: str = "the JSON") -> None:
    """Refuse JSON nested deeper than ``max_depth`` before parsing it (json.loads recurses per level)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    if b'"' in raw:  # brackets inside strings do not nest
        raw = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', raw, flags=re.DOTALL)
    arr = np.frombuffer(raw, dtype=np.uint8)
    step = np.isin(arr, (ord("["), ord("{"))).astype(np.int32) - np.isin(arr, (ord("]"), ord("}"))).astype(np.int32)
    depth = int(np.cumsum(step).max(initial=0))
    if depth > max_depth:
        raise QueryError(
            f"{source} is nested {depth} levels deep; a sketch query needs at most {max_depth} "
            '(an object {"strokes": [[[x...], [y...]], ...]})'
        )


def _validate_strokes(value: Any, info: ValidationInfo) -> tuple[np.ndarray, ...]:
    from sbir.data.strokes import StrokeError, parse_strokes

    lim = _limits(info)
    if not isinstance(value, (list, tuple)):
        raise _fail(f'"strokes" must be a list of strokes [[x...], [y...]], got {type(value).__name__}')
    try:
        strokes = parse_strokes(value, source="strokes", max_points=lim.max_points)
    except StrokeError as exc:
        raise _fail(str(exc)) from None
    if not strokes:
        raise _fail("strokes: the drawing has no strokes; draw something first")
    if len(strokes) > lim.max_strokes:
        raise _fail(f"strokes: {len(strokes)} strokes exceed the limit of {lim.max_strokes}; simplify the drawing")
    for i, pts in enumerate(strokes):
        big = np.abs(pts) > lim.max_coord
        if big.any():
            n = int(np.argwhere(big)[0][0])
            raise _fail(f"strokes: stroke {i}: point {n} has a coordinate beyond ±{lim.max_coord:g}")
    return tuple(strokes)


_STROKES_SCHEMA = {
    "type": "array",
    "description": "strokes as Quick, Draw!'s drawing: each [[x0, x1, ...], [y0, y1, ...]] (optionally a third "
    "list of timestamps), or stroke-3 rows [x, y, pen] with pen 1 ending a stroke",
    "items": {
        "type": "array",
        "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}}]},
    },
    "minItems": 1,
    "maxItems": MAX_STROKES,
}

Strokes = Annotated[tuple[np.ndarray, ...], PlainValidator(_validate_strokes), WithJsonSchema(_STROKES_SCHEMA)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Canvas(BaseModel):
    """The drawing surface the strokes' coordinates refer to."""

    model_config = ConfigDict(frozen=True)

    width: float = Field(gt=0, le=MAX_CANVAS)
    height: float = Field(gt=0, le=MAX_CANVAS)


class SketchQuery(BaseModel):
    """A sketch query given as strokes; see the module docstring for the JSON and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    strokes: Strokes
    k: int | None = Field(default=None, ge=1, description="number of results")
    canvas: Canvas | None = Field(
        default=None,
        description="size of the drawing surface; if given, the drawing keeps its position and scale on it, "
        "otherwise it is fitted to the frame",
    )
    stroke_width: float = Field(
        default=DEFAULT_STROKE_WIDTH,
        ge=STROKE_WIDTH_RANGE[0],
        le=STROKE_WIDTH_RANGE[1],
        description=f"line width in pixels of the {RASTER_SIZE} px raster",
    )

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any, info: ValidationInfo) -> Any:
        from_file = bool((info.context or {}).get("file"))
        if from_file and isinstance(data, list):
            return {"strokes": data}
        if not isinstance(data, dict):
            raise _fail('the JSON must be an object like {"strokes": [[[x...], [y...]], ...], "k": 10}')
        data = dict(data)
        if "drawing" in data:  # a Quick, Draw! record
            if "strokes" in data:
                raise _fail('give the strokes once, as "strokes" or as "drawing", not both')
            data["strokes"] = data.pop("drawing")
            if from_file:
                data = {key: v for key, v in data.items() if key not in QUICKDRAW_KEYS}
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise _fail(f"unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(FIELDS)}")
        if "strokes" not in data:
            raise _fail('missing field "strokes": a list of strokes, each [[x0, x1, ...], [y0, y1, ...]]')
        return data

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, value: Any, info: ValidationInfo) -> int | None:
        try:
            return parse_k(value, _limits(info).max_k)
        except QueryError as exc:
            raise _fail(str(exc)) from None

    @field_validator("canvas", mode="before")
    @classmethod
    def _canvas(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"width", "height"}:
            raise _fail('"canvas" must be an object {"width": W, "height": H}')
        for name in ("width", "height"):
            v = value[name]
            if not _number(v) or not 0 < v <= MAX_CANVAS:
                raise _fail(f'"canvas.{name}" must be a number in (0, {MAX_CANVAS:g}], got {v!r}')
        return value

    @field_validator("stroke_width", mode="before")
    @classmethod
    def _width(cls, value: Any) -> Any:
        lo, hi = STROKE_WIDTH_RANGE
        if not _number(value) or not lo <= value <= hi:
            raise _fail(
                f'"stroke_width" must be a number between {lo:g} and {hi:g} (pixels at {RASTER_SIZE} px), got {value!r}'
            )
        return value

    # ------------------------------------------------------------ constructors

    @classmethod
    def parse(
        cls, data: Any, limits: QueryLimits | None = None, source: str = "", from_file: bool = False
    ) -> SketchQuery:
        """Validate decoded JSON; :class:`QueryError` (prefixed with ``source``) if anything is wrong."""
        try:
            return cls.model_validate(data, context={"limits": limits or QueryLimits(), "file": from_file})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            msg = err["msg"]
            if err["type"] != "sketch_query":  # a pydantic check (should not happen: the validators come first)
                where = ".".join(str(p) for p in err["loc"])
                msg = f'"{where}": {msg}' if where else msg
            raise QueryError(f"{source}: {msg}" if source else msg) from None

    @classmethod
    def from_json(
        cls, data: bytes | str, limits: QueryLimits | None = None, source: str = "", from_file: bool = False
    ) -> SketchQuery:
        """Check the nesting depth of raw JSON, parse and validate it."""
        lim = limits or QueryLimits()
        what = source or "the JSON body"
        check_json_depth(data, lim.max_depth, what)
        try:
            decoded = json.loads(data)
        except RecursionError:  # pragma: no cover - the depth check comes first
            raise QueryError(f"{what} is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            hint = ' a strokes file holds {"strokes": [[[x...], [y...]], ...]}' if from_file else ""
            raise QueryError(f"{what} is not valid JSON ({exc});{hint}".rstrip(";")) from None
        return cls.parse(decoded, lim, source, from_file)

    @classmethod
    def from_file(cls, path: str | Path, limits: QueryLimits | None = None) -> SketchQuery:
        """A strokes ``.json`` file (an object as above, a bare list of strokes or a Quick, Draw! record)."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise QueryError(f"sketch {p} does not exist; pass a sketch image or a strokes .json file") from None
        except OSError as exc:
            raise QueryError(f"cannot read {p}: {exc}") from None
        return cls.from_json(raw, limits, source=str(p), from_file=True)

    # ------------------------------------------------------------ use

    @property
    def n_points(self) -> int:
        return int(sum(len(s) for s in self.strokes))

    def to_image(self, size: int = RASTER_SIZE) -> Image.Image:
        """Rasterise as black strokes on white, ``size`` px (``stroke_width`` is scaled from the 256 px raster)."""
        from sbir.data.strokes import rasterize_strokes

        canvas = (self.canvas.width, self.canvas.height) if self.canvas is not None else None
        return rasterize_strokes(
            list(self.strokes),
            size=size,
            stroke_width=self.stroke_width * size / RASTER_SIZE,
            canvas=canvas,
            source="strokes",
            max_points=None,  # already held to the query limits
        )


def load_query(
    path: str | Path, limits: QueryLimits | None = None, size: int = RASTER_SIZE
) -> tuple[Image.Image, int | None]:
    """A sketch query from a file: an image, or a strokes ``.json`` file; returns (image, k from the file or None)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        q = SketchQuery.from_file(p, limits)
        return q.to_image(size), q.k
    from sbir.data.image_io import load_image

    return load_image(p), None
