"""Offline demo data for fine-grained SBIR: procedurally drawn objects and their sketches.

:func:`generate_paired_dataset` writes the EffNet/ARNet paired layout::

    out_dir/trainA/00000_01.png   sketches (hand-drawn looking, black on white)
    out_dir/trainB/00000.png      photos (shaded, coloured/textured objects on a background)
    out_dir/testA/  out_dir/testB/
    out_dir/strokes.json          every sketch as strokes, Quick, Draw! style
    out_dir/README.txt            what the data is

Every photo shows one *object instance*: a silhouette composed of 1-4 primitives
(ellipses, irregular polygons, stars, rounded rectangles, handle rings), maybe a
hole punched through it and maybe a decal of a contrasting colour on it, filled
with a colour, gradient or texture, shaded as a 3-D bump, with a drop shadow on a
coloured or textured background, slightly blurred and noisy. Instances differ in
their shape parameters, not only in colour, so sketch-to-photo retrieval is
learnable (the sketch shows the shape) but not trivial (shapes are similar, the
sketches are distorted).

Each sketch traces the object's outlines (silhouette, holes, decal) with
wobbly, partly dropped, partly overlapping strokes of varying width, under a
slight global affine distortion. Sketches of the same photo are drawn
independently, like two designers drawing the same object.

Everything is deterministic given ``seed``: the object of photo ``k`` comes from
``numpy.random.default_rng([seed, k, 0])`` and its sketch ``j`` (1-based) from
``default_rng([seed, k, j])``; :func:`sketch_for_photo` reproduces any sketch's
strokes without reading the files.

Coordinates: a point ``(x, y)`` is in pixels of an ``image_size`` x
``image_size`` image, ``x`` to the right, ``y`` down, pixel ``i`` covering
``[i, i + 1)``; all coordinates lie in ``[0, image_size]``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from sbir.data.strokes import rasterize_strokes
from sbir.errors import ConfigError, DataError

__all__ = [
    "Primitive",
    "ObjectSpec",
    "random_object_spec",
    "object_spec_for",
    "object_mask",
    "object_contours",
    "render_photo",
    "draw_object_strokes",
    "sketch_for_photo",
    "strokes_to_drawing",
    "drawing_to_strokes",
    "load_strokes",
    "photo_stem",
    "generate_paired_dataset",
]

GENERATOR_VERSION = 1
_SS = 2  # supersampling factor for antialiased rendering
_KINDS = ("ellipse", "polygon", "star", "rrect", "ring")

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------
# object description
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """One shape in object units (the object spans roughly ``[-1, 1]``).

    ``kind`` is one of ``ellipse``, ``polygon`` (irregular, ``n`` vertices with
    per-vertex radius factors ``radii``), ``star`` (``n`` points, inner radius
    ratio ``inner``), ``rrect`` (corner radius ratio ``inner``) or ``ring`` (an
    elliptic annulus, thickness ratio ``inner``: a handle).
    """

    kind: str
    cx: float
    cy: float
    sx: float
    sy: float
    angle: float
    n: int = 0
    inner: float = 0.5
    radii: tuple = ()

    def outline(self, n_points: int = 96) -> np.ndarray:
        """Polygon of the outer boundary, (M, 2) in object units."""
        if self.kind in ("ellipse", "ring"):
            t = np.linspace(0.0, 2 * math.pi, n_points, endpoint=False)
            pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        elif self.kind == "polygon":
            t = np.linspace(0.0, 2 * math.pi, self.n, endpoint=False)
            r = np.asarray(self.radii, dtype=np.float64)
            pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        elif self.kind == "star":
            t = np.linspace(0.0, 2 * math.pi, 2 * self.n, endpoint=False) - math.pi / 2
            r = np.where(np.arange(2 * self.n) % 2 == 0, 1.0, self.inner)
            pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        elif self.kind == "rrect":
            pts = _rounded_rect(self.sx, self.sy, self.inner * min(self.sx, self.sy))
            return self._place(pts, prescaled=True)
        else:  # pragma: no cover - guarded by random_object_spec
            raise ConfigError(f"unknown primitive kind {self.kind!r}; use one of {_KINDS}")
        return self._place(pts)

    def inner_outline(self, n_points: int = 96) -> np.ndarray | None:
        """The inner boundary of a ring (its hole), else None."""
        if self.kind != "ring":
            return None
        t = np.linspace(0.0, 2 * math.pi, n_points, endpoint=False)
        k = 1.0 - self.inner
        pts = np.stack([k * np.cos(t), k * np.sin(t)], axis=1)
        return self._place(pts)

    def _place(self, pts: np.ndarray, prescaled: bool = False) -> np.ndarray:
        if not prescaled:
            pts = pts * np.array([self.sx, self.sy])
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        return pts @ rot.T + np.array([self.cx, self.cy])


def _rounded_rect(hx: float, hy: float, r: float, n_corner: int = 10) -> np.ndarray:
    r = max(1e-3, min(r, hx, hy))
    pts = []
    for cx, cy, a0 in (
        (hx - r, hy - r, 0.0),
        (-hx + r, hy - r, 0.5 * math.pi),
        (-hx + r, -hy + r, math.pi),
        (hx - r, -hy + r, 1.5 * math.pi),
    ):
        for a in np.linspace(a0, a0 + 0.5 * math.pi, n_corner):
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return np.asarray(pts)


@dataclass(frozen=True)
class ObjectSpec:
    """Everything needed to render one object instance, its photo and its sketches."""

    parts: tuple  # Primitive, union
    holes: tuple  # Primitive, punched through the union
    decal: Primitive | None  # contrasting panel on the object (outlined in sketches)
    rotation: float  # object rotation, radians
    scale: float  # image fraction per object unit
    centre: tuple  # object origin, image fractions (0..1)
    body_colour: tuple
    body_colour2: tuple
    decal_colour: tuple
    fill: str  # flat | linear | radial | stripes | spots | noise
    fill_angle: float
    fill_freq: float
    background: str  # gradient | floor | noise | stripes
    bg_colour1: tuple
    bg_colour2: tuple
    horizon: float
    light: tuple  # (lx, ly) direction the light comes from, image fractions
    texture_seed: int

    def to_image(self, pts: np.ndarray, image_size: int) -> np.ndarray:
        """Object units -> pixel coordinates of an ``image_size`` image."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        rot = np.array([[c, -s], [s, c]])
        return (pts @ rot.T * self.scale + np.asarray(self.centre)) * image_size


def _colour(rng: np.random.Generator, sat: tuple, val: tuple) -> tuple:
    """A random RGB colour with saturation and value in the given ranges."""
    h = rng.random()
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(round(255 * x)) for x in rgb)


def _primitive(rng: np.random.Generator, kind: str, cx: float, cy: float, size: float, aspect: float) -> Primitive:
    sx = size * math.sqrt(aspect)
    sy = size / math.sqrt(aspect)
    angle = rng.uniform(0, math.pi)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        radii = tuple(float(x) for x in rng.uniform(0.65, 1.0, n))
        return Primitive("polygon", cx, cy, sx, sy, angle, n=n, radii=radii)
    if kind == "star":
        n = int(rng.integers(4, 9))
        return Primitive("star", cx, cy, sx, sy, angle, n=n, inner=float(rng.uniform(0.45, 0.75)))
    if kind == "rrect":
        return Primitive("rrect", cx, cy, sx, sy, angle, inner=float(rng.uniform(0.05, 0.6)))
    if kind == "ring":
        return Primitive("ring", cx, cy, sx, sy, angle, inner=float(rng.uniform(0.25, 0.45)))
    return Primitive("ellipse", cx, cy, sx, sy, angle)


def random_object_spec(rng: np.random.Generator) -> ObjectSpec:
    """Draw one random object instance (shape, colours, textures, background)."""
    body_kind = ["ellipse", "polygon", "star", "rrect"][int(rng.choice(4, p=[0.3, 0.25, 0.15, 0.3]))]
    body = _primitive(
        rng,
        body_kind,
        rng.uniform(-0.08, 0.08),
        rng.uniform(-0.08, 0.08),
        rng.uniform(0.6, 0.85),
        rng.uniform(0.5, 2.0),
    )
    parts = [body]
    n_extra = int(rng.choice(3, p=[0.25, 0.45, 0.3]))
    for _ in range(n_extra):
        kind = ["ellipse", "polygon", "star", "rrect", "ring"][int(rng.choice(5, p=[0.3, 0.2, 0.1, 0.2, 0.2]))]
        theta = rng.uniform(0, 2 * math.pi)
        # on the body's boundary, in the body's frame
        bx, by = body.sx * math.cos(theta), body.sy * math.sin(theta)
        c, s = math.cos(body.angle), math.sin(body.angle)
        dist = rng.uniform(0.75, 1.05)
        cx = body.cx + dist * (c * bx - s * by)
        cy = body.cy + dist * (s * bx + c * by)
        size = rng.uniform(0.2, 0.45) if kind != "ring" else rng.uniform(0.3, 0.45)
        parts.append(_primitive(rng, kind, cx, cy, size, rng.uniform(0.5, 2.0)))

    holes = []
    decal = None
    inner_r = 0.45 * min(body.sx, body.sy)
    hole_dir = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.35:
        off = rng.uniform(0.0, 0.45) * inner_r
        kind = ["ellipse", "rrect", "polygon"][int(rng.integers(3))]
        holes.append(
            _primitive(
                rng,
                kind,
                body.cx + off * math.cos(hole_dir),
                body.cy + off * math.sin(hole_dir),
                rng.uniform(0.12, 0.22),
                rng.uniform(0.6, 1.6),
            )
        )
    if rng.random() < 0.65:
        off = rng.uniform(0.3, 0.7) * inner_r if holes else rng.uniform(0.0, 0.6) * inner_r
        d = hole_dir + math.pi + rng.uniform(-0.6, 0.6)
        kind = ["ellipse", "rrect", "star", "polygon"][int(rng.integers(4))]
        decal = _primitive(
            rng,
            kind,
            body.cx + off * math.cos(d),
            body.cy + off * math.sin(d),
            rng.uniform(0.12, 0.28),
            rng.uniform(0.6, 1.6),
        )

    rotation = rng.uniform(-math.pi, math.pi)
    # fit the object into the frame: bounding box of the rotated parts
    c, s = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    pts = np.concatenate([p.outline(48) for p in parts]) @ rot.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = float((hi - lo).max())
    target = rng.uniform(0.58, 0.78)  # fraction of the image the object spans
    scale = target / extent
    mid = (lo + hi) / 2 * scale
    free = (1.0 - target) / 2 - 0.04
    centre = (0.5 - mid[0] + rng.uniform(-free, free), 0.5 - mid[1] + rng.uniform(-free, free))

    body_colour = _colour(rng, (0.45, 0.95), (0.45, 0.95))
    body_colour2 = _colour(rng, (0.3, 0.9), (0.35, 0.95))
    decal_colour = tuple(int(255 - x * 0.85) for x in body_colour)  # contrasting
    if rng.random() < 0.5:
        decal_colour = _colour(rng, (0.6, 1.0), (0.2, 0.9))
    bg1 = _colour(rng, (0.05, 0.45), (0.55, 0.98))
    bg2 = _colour(rng, (0.05, 0.5), (0.3, 0.9))
    light_angle = rng.uniform(-math.pi, 0.0)  # from above-ish
    return ObjectSpec(
        parts=tuple(parts),
        holes=tuple(holes),
        decal=decal,
        rotation=float(rotation),
        scale=float(scale),
        centre=(float(centre[0]), float(centre[1])),
        body_colour=body_colour,
        body_colour2=body_colour2,
        decal_colour=decal_colour,
        fill=["flat", "linear", "radial", "stripes", "spots", "noise"][int(rng.integers(6))],
        fill_angle=float(rng.uniform(0, math.pi)),
        fill_freq=float(rng.uniform(4.0, 12.0)),
        background=["gradient", "floor", "noise", "stripes"][int(rng.integers(4))],
        bg_colour1=bg1,
        bg_colour2=bg2,
        horizon=float(rng.uniform(0.5, 0.8)),
        light=(float(math.cos(light_angle)), float(math.sin(light_angle))),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def object_spec_for(seed: int, photo_index: int) -> ObjectSpec:
    """The object of photo number ``photo_index`` in a dataset generated with ``seed``."""
    _check_int("seed", seed, 0)
    _check_int("photo_index", photo_index, 0)
    return random_object_spec(np.random.default_rng([seed, photo_index, 0]))


# ---------------------------------------------------------------------------
# masks and contours
# ---------------------------------------------------------------------------


def _poly(draw: ImageDraw.ImageDraw, pts: np.ndarray, fill: int) -> None:
    # pixel i covers [i, i + 1); PIL puts integer coordinates at pixel centres
    draw.polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in pts], fill=fill)


def _masks(spec: ObjectSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary silhouette and decal masks (uint8 0/1) of a ``size`` x ``size`` canvas."""
    sil = np.zeros((size, size), dtype=np.uint8)
    for part in spec.parts:
        layer = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(layer)
        _poly(d, spec.to_image(part.outline(), size), 1)
        inner = part.inner_outline()
        if inner is not None:
            _poly(d, spec.to_image(inner, size), 0)
        np.maximum(sil, np.asarray(layer, dtype=np.uint8), out=sil)
    if spec.holes:
        layer = Image.fromarray(sil)
        d = ImageDraw.Draw(layer)
        for hole in spec.holes:
            _poly(d, spec.to_image(hole.outline(), size), 0)
        sil = np.asarray(layer, dtype=np.uint8).copy()
    decal = np.zeros_like(sil)
    if spec.decal is not None:
        layer = Image.new("L", (size, size), 0)
        _poly(ImageDraw.Draw(layer), spec.to_image(spec.decal.outline(), size), 1)
        decal = np.asarray(layer, dtype=np.uint8) & sil
    return sil, decal


def object_mask(spec: ObjectSpec, image_size: int) -> np.ndarray:
    """Binary silhouette (bool, ``image_size`` x ``image_size``) of the object."""
    _check_int("image_size", image_size, 16, 2048)
    return _masks(spec, image_size)[0].astype(bool)


def _contours_of(mask: np.ndarray, factor: float, min_len: float) -> list[np.ndarray]:
    import contourpy

    z = np.pad(mask.astype(np.float32), 1)  # closed contours even at the border
    # light smoothing removes the pixel staircase before tracing
    z = ndimage.gaussian_filter(z, 0.3 * factor)
    lines = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate).lines(0.5)
    out = []
    for line in lines:
        pts = (np.asarray(line, dtype=np.float64) - 1.0 + 0.5) / factor  # padded canvas -> image px
        if len(pts) < 4:
            continue
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()
        if seg < min_len:
            continue
        out.append(pts)
    return out


def _resample(pts: np.ndarray, spacing: float, closed: bool) -> np.ndarray:
    if closed and np.linalg.norm(pts[0] - pts[-1]) > 1e-9:
        pts = np.vstack([pts, pts[:1]])
    d = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(d)])
    total = s[-1]
    if total <= 0:
        return pts[:1].copy()
    n = max(2, int(math.ceil(total / spacing)) + (0 if closed else 1))
    t = np.linspace(0.0, total, n, endpoint=not closed)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], axis=1)


def object_contours(spec: ObjectSpec, image_size: int) -> list[np.ndarray]:
    """Closed outlines of the object (silhouette, holes, decal) in pixel coordinates.

    Each is an (N, 2) array of (x, y) points spaced about one pixel (at 128 px)
    apart, without repeating the first point at the end.
    """
    _check_int("image_size", image_size, 16, 2048)
    factor = 2
    sil, decal = _masks(spec, image_size * factor)
    unit = image_size / 128.0
    min_len = 6.0 * unit
    spacing = 1.2 * unit
    out = [_resample(c, spacing, True) for c in _contours_of(sil, factor, min_len)]
    if decal.any():
        out += [_resample(c, spacing, True) for c in _contours_of(decal, factor, min_len)]
    return out


# ---------------------------------------------------------------------------
# photos
# ---------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], ``size`` x ``size``."""
    small = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _lerp(c1: tuple, c2: tuple, t: np.ndarray) -> np.ndarray:
    a = np.asarray(c1, dtype=np.float32)
    b = np.asarray(c2, dtype=np.float32)
    return a + (b - a) * t[..., None]


def render_photo(spec: ObjectSpec, image_size: int = 128, noise_rng: np.random.Generator | None = None) -> Image.Image:
    """Render the object as a "photo": shaded, filled, on a background, blurred and noisy.

    Deterministic given ``spec`` (textures and noise come from ``spec.texture_seed``
    unless ``noise_rng`` is given).
    """
    _check_int("image_size", image_size, 16, 2048)
    rng = np.random.default_rng(spec.texture_seed) if noise_rng is None else noise_rng
    S = image_size
    yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) + 0.5) / S

    # background
    c1, c2 = spec.bg_colour1, spec.bg_colour2
    if spec.background == "gradient":
        t = np.clip(xx * math.cos(spec.fill_angle + 1.0) * 0.5 + yy * 0.8, 0, 1)
        bg = _lerp(c1, c2, t)
    elif spec.background == "floor":
        soft = 1.0 / (1.0 + np.exp(-(yy - spec.horizon) * S / 3.0))
        wall = _lerp(c1, tuple(0.85 * x for x in c1), yy)
        floor = _lerp(c2, tuple(min(255, 1.15 * x) for x in c2), (yy - spec.horizon).clip(0, 1) * 2)
        bg = wall * (1 - soft[..., None]) + floor * soft[..., None]
    elif spec.background == "noise":
        bg = _lerp(c1, c2, 0.7 * _smooth_noise(rng, S, 6) + 0.3 * _smooth_noise(rng, S, 24))
    else:  # stripes
        u = xx * math.cos(spec.fill_angle) + yy * math.sin(spec.fill_angle)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u * rng.uniform(3, 7))
        bg = _lerp(c1, c2, 0.35 * t + 0.2 * yy)
    vignette = 1.0 - 0.25 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    bg = bg * vignette[..., None]

    # antialiased coverage from a supersampled mask
    sil2, dec2 = _masks(spec, S * _SS)
    sil = sil2.reshape(S, _SS, S, _SS).mean(axis=(1, 3), dtype=np.float32)
    dec = dec2.reshape(S, _SS, S, _SS).mean(axis=(1, 3), dtype=np.float32)
    alpha, dec_alpha = sil, dec

    # drop shadow, away from the light
    lx, ly = spec.light
    shift = (-ly * 0.03 * S, -lx * 0.03 * S)
    shadow = ndimage.gaussian_filter(ndimage.shift(sil, shift, order=1), 0.025 * S)
    bg = bg * (1.0 - 0.45 * shadow)[..., None]

    # object colour field
    u = xx * math.cos(spec.fill_angle) + yy * math.sin(spec.fill_angle)
    ox, oy = spec.centre
    if spec.fill == "flat":
        body = _lerp(spec.body_colour, spec.body_colour, np.zeros_like(xx))
    elif spec.fill == "linear":
        body = _lerp(spec.body_colour, spec.body_colour2, np.clip((u - u.min()) / (np.ptp(u) + 1e-6), 0, 1))
    elif spec.fill == "radial":
        r = np.sqrt((xx - ox) ** 2 + (yy - oy) ** 2) / max(spec.scale, 1e-3)
        body = _lerp(spec.body_colour, spec.body_colour2, np.clip(r, 0, 1))
    elif spec.fill == "stripes":
        wave = np.sin(2 * math.pi * u * spec.fill_freq)
        t = np.clip((wave - 0.2) * (S / (8.0 * spec.fill_freq)) + 0.5, 0.0, 1.0)  # ~1 px soft edge
        body = _lerp(spec.body_colour, spec.body_colour2, t)
    elif spec.fill == "spots":
        layer = Image.new("L", (S, S), 0)
        d = ImageDraw.Draw(layer)
        for _ in range(int(spec.fill_freq * 3)):
            cx, cy = rng.uniform(0, S, 2)
            r = rng.uniform(0.015, 0.045) * S
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        t = ndimage.gaussian_filter(np.asarray(layer, dtype=np.float32) / 255.0, 0.5)
        body = _lerp(spec.body_colour, spec.body_colour2, t)
    else:  # noise
        t = 0.6 * _smooth_noise(rng, S, int(spec.fill_freq)) + 0.4 * _smooth_noise(rng, S, 3 * int(spec.fill_freq))
        body = _lerp(spec.body_colour, spec.body_colour2, t)
    body = body * (1 - dec_alpha[..., None]) + np.asarray(spec.decal_colour, np.float32) * dec_alpha[..., None]

    # 3-D shading: the silhouette as a height field, lit from spec.light
    height = ndimage.gaussian_filter(sil, 0.05 * S)
    height += 0.35 * ndimage.gaussian_filter(dec, 0.01 * S)  # raised decal
    gy, gx = np.gradient(height)
    k = 0.08 * S
    nx, ny, nz = -gx * k, -gy * k, np.ones_like(gx)
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    light = np.array([lx, ly, 0.9])
    light = light / np.linalg.norm(light)
    ndotl = (nx * light[0] + ny * light[1] + nz * light[2]) / norm
    diffuse = np.clip(ndotl, 0, 1)
    spec_hl = np.clip(ndotl, 0, 1) ** 24
    shade = 0.35 + 0.75 * diffuse
    obj = body * shade[..., None] + 110.0 * spec_hl[..., None]

    img = bg * (1 - alpha[..., None]) + obj * alpha[..., None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.7)) * image_size / 128.0))
    arr = np.asarray(pil, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 5.0), arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------
# sketches
# ---------------------------------------------------------------------------


def _wobble(n: int, spacing: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency 2-D displacement along a stroke of ``n`` points ``spacing`` px apart."""
    t = np.arange(n) * spacing
    out = np.zeros((n, 2))
    for _ in range(3):
        wavelength = rng.uniform(25.0, 90.0) * spacing
        a = amp * rng.uniform(0.4, 1.0)
        phase = rng.uniform(0, 2 * math.pi, 2)
        out[:, 0] += a * np.sin(2 * math.pi * t / wavelength + phase[0])
        out[:, 1] += a * np.sin(2 * math.pi * t / wavelength * rng.uniform(0.7, 1.3) + phase[1])
    fine = rng.normal(0.0, 0.12 * amp, (n, 2))
    if n >= 5:
        fine = ndimage.uniform_filter1d(fine, 5, axis=0, mode="nearest")
    return out + fine


def _arc(loop: np.ndarray, start: float, length: float) -> np.ndarray:
    """Points of a closed loop from index ``start`` over ``length`` indices (wrapping)."""
    n = len(loop)
    idx = np.arange(int(math.floor(start)), int(math.ceil(start + length)) + 1)
    return loop[idx % n]


def draw_object_strokes(
    spec: ObjectSpec,
    image_size: int = 128,
    rng: np.random.Generator | int | None = None,
    contours: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """A hand-drawn-looking sketch of the object as a list of strokes.

    Each stroke is an (N, 2) float array of (x, y) pixel coordinates in
    ``[0, image_size]``, in drawing order. ``rng`` (a Generator or an int seed)
    decides the "designer": the global affine distortion, where strokes break,
    which parts are dropped or retraced, the wobble. ``contours`` may pass
    precomputed :func:`object_contours` to save time.
    """
    _check_int("image_size", image_size, 16, 2048)
    if rng is None or isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
    loops = list(contours) if contours is not None else object_contours(spec, image_size)
    unit = image_size / 128.0

    # the designer's global distortion: scale, anisotropy, rotation, shear, offset
    scale = rng.uniform(0.9, 1.1)
    aniso = rng.uniform(0.95, 1.05)
    theta = math.radians(rng.uniform(-7.0, 7.0))
    shear = rng.uniform(-0.06, 0.06)
    c, s = math.cos(theta), math.sin(theta)
    A = np.array([[c, -s], [s, c]]) @ np.array([[scale * aniso, shear], [0.0, scale / aniso]])
    offset = rng.uniform(-0.05, 0.05, 2) * image_size
    centre = np.array([image_size / 2.0, image_size / 2.0])
    amp = rng.uniform(0.5, 1.6) * unit
    drop_p = rng.uniform(0.04, 0.16)
    retrace_p = rng.uniform(0.0, 0.3)

    strokes: list[np.ndarray] = []
    for loop in loops:
        n = len(loop)
        if n < 4:
            continue
        spacing = float(np.linalg.norm(np.diff(loop, axis=0), axis=1).mean())
        perimeter = n * spacing
        max_breaks = max(1, int(round(perimeter / (0.45 * image_size))))
        k = int(rng.integers(1, max_breaks + 2))
        start = rng.uniform(0, n)
        cuts = np.sort(rng.uniform(0, n, k - 1)) if k > 1 else np.array([])
        bounds = np.concatenate([[0.0], cuts, [float(n)]])
        budget = 0.2 * n  # at most this much of an outline goes missing
        arcs = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            length = b - a
            if length < 3:
                continue
            if k > 1 and rng.random() < drop_p and length <= budget:
                budget -= length  # the designer skipped this part of the outline
                continue
            # gaps and overlaps where strokes meet, occasionally a shortened stroke
            head = rng.uniform(-0.05, 0.06) * length
            tail = rng.uniform(-0.05, 0.08) * length
            if rng.random() < drop_p:
                cut = min(rng.uniform(0.1, 0.3) * length, max(budget, 0.0))
                tail -= cut
                budget -= cut
            length = max(3.0, length + head + tail)
            arcs.append((start + a - head, min(length, n + 2.0)))
        if not arcs:  # never lose a whole outline
            arcs.append((start, float(n)))
        for a0, length in arcs:
            pts = _arc(loop, a0, length)
            pts = pts + _wobble(len(pts), spacing, amp, rng)
            strokes.append(pts)
            if rng.random() < retrace_p and len(pts) > 8:
                i0 = int(rng.integers(0, len(pts) // 2))
                i1 = int(rng.integers(i0 + 4, len(pts)))
                again = _arc(loop, a0 + i0, i1 - i0)
                strokes.append(again + _wobble(len(again), spacing, amp * 1.2, rng) + rng.normal(0, 0.6 * unit, 2))
    out = []
    for pts in strokes:
        p = (pts - centre) @ A.T + centre + offset
        out.append(np.clip(p, 0.0, float(image_size)))
    return out


def sketch_for_photo(seed: int, photo_index: int, sketch_number: int, image_size: int = 128) -> list[np.ndarray]:
    """The strokes of sketch ``sketch_number`` (1-based) of photo ``photo_index``, exactly as
    :func:`generate_paired_dataset` with this ``seed`` and ``image_size`` draws them."""
    _check_int("sketch_number", sketch_number, 1, 99)
    spec = object_spec_for(seed, photo_index)
    return draw_object_strokes(spec, image_size, np.random.default_rng([seed, photo_index, sketch_number]))


def _sketch_image(strokes: list[np.ndarray], image_size: int, rng: np.random.Generator) -> Image.Image:
    unit = image_size / 128.0
    base = rng.uniform(1.0, 2.4) * unit
    widths = [max(1.2, base * rng.uniform(0.75, 1.25)) for _ in strokes]  # visible at small sizes too
    ink = int(rng.integers(0, 60))
    return rasterize_strokes(
        strokes,
        size=image_size,
        stroke_width=widths,
        canvas=(image_size, image_size),  # pixel coordinates: no fitting
        padding=0,
        supersample=3 if image_size <= 256 else 2,
        source="synthetic sketch",
        max_points=None,
        allow_empty=True,
        ink=ink,
    )


# ---------------------------------------------------------------------------
# strokes.json (Quick, Draw! "drawing" format)
# ---------------------------------------------------------------------------


def strokes_to_drawing(strokes: Sequence[np.ndarray], decimals: int = 2) -> list:
    """Strokes -> ``[[[x0, x1, ...], [y0, y1, ...]], ...]`` (JSON-friendly)."""
    out = []
    for pts in strokes:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        out.append([[round(float(v), decimals) for v in pts[:, 0]], [round(float(v), decimals) for v in pts[:, 1]]])
    return out


def drawing_to_strokes(drawing: Sequence) -> list[np.ndarray]:
    """``[[[x...], [y...]], ...]`` -> list of (N, 2) float arrays."""
    out = []
    for i, stroke in enumerate(drawing):
        if not (isinstance(stroke, (list, tuple)) and len(stroke) >= 2 and len(stroke[0]) == len(stroke[1])):
            raise DataError(f"stroke {i} is not [[x...], [y...]] with equally many x and y values")
        out.append(np.stack([np.asarray(stroke[0], dtype=np.float64), np.asarray(stroke[1], dtype=np.float64)], axis=1))
    return out


def load_strokes(out_dir: PathLike) -> dict[str, list[np.ndarray]]:
    """Read ``out_dir/strokes.json``: sketch path (relative, e.g. ``testA/00160_01.png``) -> strokes."""
    path = Path(out_dir) / "strokes.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; generate the data with sbir.data.synthetic.generate_paired_dataset")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}; regenerate the synthetic data") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path} must hold a JSON object mapping sketch paths to strokes")
    try:
        return {name: drawing_to_strokes(d) for name, d in raw.items()}
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


# ---------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{name} must be {rng}, got {value}")


def photo_stem(index: int, n_total: int) -> str:
    """File stem of photo ``index``: zero-padded to 5 digits (more if needed)."""
    return str(index).zfill(max(5, len(str(max(n_total - 1, 0)))))


_SPLITS = ("trainA", "trainB", "testA", "testB")

_README = """\
sbir synthetic fine-grained SBIR demo data (generator version {version})
==========================================================================

Not real photos or sketches: every image is drawn procedurally by
sbir.data.synthetic.generate_paired_dataset(seed={seed}, image_size={size}).
Use it to try the toolkit offline (train, evaluate, index, serve); numbers
measured on it say nothing about real SBIR datasets.

Layout (EffNet/ARNet paired format):
  trainB/<id>.png      {n_train} training photos
  trainA/<id>_NN.png   {sketches} sketches per training photo
  testB/<id>.png       {n_test} test photos (ids {first_test} and up, disjoint from training)
  testA/<id>_NN.png    {sketches} sketches per test photo
  A sketch <id>_NN.png belongs to the photo <id>.png of the same split.

Photos: one object instance each, a silhouette made of 1-4 primitives
(ellipses, polygons, stars, rounded rectangles, handle rings) with maybe a hole
and a decal, filled with a colour, gradient or texture, shaded, with a drop
shadow on a coloured or textured background, slightly blurred and noisy.
Sketches: the object's outlines (silhouette, holes, decal) as black strokes on
white, wobbly, with gaps, dropped and retraced parts, varying width and a
slight random affine distortion; the sketches of one photo are drawn
independently.

strokes.json maps every sketch path (e.g. "testA/{first_test}_01.png") to its
strokes in drawing order, Quick, Draw! style: [[[x0, x1, ...], [y0, y1, ...]],
...], pixel coordinates in 0..{size} (x right, y down). Rendering them with
sbir.data.strokes.rasterize_strokes(strokes, size={size}, canvas=({size}, {size}),
padding=0) gives the sketch up to stroke width/ink.
"""


def generate_paired_dataset(
    out_dir: PathLike,
    n_train_photos: int = 120,
    n_test_photos: int = 40,
    sketches_per_photo: int = 2,
    image_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic paired fine-grained SBIR dataset into ``out_dir``; return it.

    Training photos are numbered ``0 .. n_train_photos - 1``, test photos follow.
    ``out_dir`` must not already hold the dataset's folders unless ``overwrite``
    (which deletes the PNG files in them and rewrites everything).
    """
    _check_int("n_train_photos", n_train_photos, 1, 100_000)
    _check_int("n_test_photos", n_test_photos, 1, 100_000)
    _check_int("sketches_per_photo", sketches_per_photo, 1, 99)
    _check_int("image_size", image_size, 32, 1024)
    _check_int("seed", seed, 0)
    for name, v in (("progress", progress), ("overwrite", overwrite)):
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be True or False, got {v!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} is a file; pass a folder path")
    existing = [p for p in [*(out / s for s in _SPLITS), out / "strokes.json"] if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a dataset ({existing[0].name} exists); choose an empty folder "
            "or pass overwrite=True to replace it"
        )
    for s in _SPLITS:
        d = out / s
        if d.is_dir():
            others = [p for p in d.iterdir() if not (p.is_file() and p.suffix.lower() == ".png")]
            if others:
                raise ConfigError(
                    f"{d} holds non-PNG entries ({others[0].name}); refusing to overwrite, empty it first"
                )
            for p in d.iterdir():
                p.unlink()
        d.mkdir(parents=True, exist_ok=True)

    n_total = n_train_photos + n_test_photos
    jobs = [("trainA", "trainB", i) for i in range(n_train_photos)] + [
        ("testA", "testB", i) for i in range(n_train_photos, n_total)
    ]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n_total, desc="synthetic photos", unit="photo", file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    drawings: dict[str, list] = {}
    for sketch_dir, photo_dir, k in jobs:
        stem = photo_stem(k, n_total)
        spec = random_object_spec(np.random.default_rng([seed, k, 0]))
        render_photo(spec, image_size).save(out / photo_dir / f"{stem}.png", optimize=False)
        contours = object_contours(spec, image_size)
        for j in range(1, sketches_per_photo + 1):
            rng = np.random.default_rng([seed, k, j])
            strokes = draw_object_strokes(spec, image_size, rng, contours=contours)
            name = f"{stem}_{j:02d}.png"
            _sketch_image(strokes, image_size, rng).save(out / sketch_dir / name, optimize=False)
            drawings[f"{sketch_dir}/{name}"] = strokes_to_drawing(strokes)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    tmp = out / "strokes.json.tmp"
    tmp.write_text(json.dumps(drawings, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, out / "strokes.json")
    (out / "README.txt").write_text(
        _README.format(
            version=GENERATOR_VERSION,
            seed=seed,
            size=image_size,
            n_train=n_train_photos,
            n_test=n_test_photos,
            sketches=sketches_per_photo,
            first_test=photo_stem(n_train_photos, n_total),
        ),
        encoding="utf-8",
    )
    return out
