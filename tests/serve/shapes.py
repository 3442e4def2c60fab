"""A generated gallery of distinctive shapes and hand-drawable copies of their outlines.

Each "photo" is a filled, coloured shape with a dark outline on a beige
background; its sketch is the closed outline polyline. With the off-the-shelf
ImageNet EfficientNet-Lite0 (no SBIR training) an outline sketch, fitted to the
frame, retrieves its own shape first for every shape here (checked by
``test_shape_gallery_is_retrievable``), so tests of the API and of the web page
can assert the right top result with the real model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _regular(n: int, r: float, rot: float = 0.0, cx: float = 0.5, cy: float = 0.5) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False) + rot
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _star(n: int = 5, r1: float = 0.4, r2: float = 0.16) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False) - math.pi / 2
    r = np.where(np.arange(2 * n) % 2 == 0, r1, r2)
    return np.stack([0.5 + r * np.cos(a), 0.5 + r * np.sin(a)], 1)


def _moon() -> np.ndarray:
    a = np.linspace(-math.pi / 2, math.pi / 2, 24)
    outer = np.stack([0.5 + 0.4 * np.cos(a), 0.5 + 0.4 * np.sin(a)], 1)
    inner = np.stack([0.5 + 0.18 * np.cos(a[::-1]), 0.5 + 0.4 * np.sin(a[::-1])], 1)
    return np.concatenate([outer, inner])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([0.5 + x / 40, 0.45 + y / 40], 1)


# Outlines in unit coordinates (x right, y down). (A square and a cross were dropped: the
# pretrained model confuses their outline sketches with other shapes.)
SHAPES: dict[str, np.ndarray] = {
    "arrow": np.array([[0.1, 0.4], [0.55, 0.4], [0.55, 0.2], [0.92, 0.5], [0.55, 0.8], [0.55, 0.6], [0.1, 0.6]]),
    "circle": _regular(48, 0.38),
    "hbar": np.array([[0.08, 0.4], [0.92, 0.4], [0.92, 0.6], [0.08, 0.6]]),
    "lshape": np.array([[0.2, 0.1], [0.42, 0.1], [0.42, 0.7], [0.85, 0.7], [0.85, 0.9], [0.2, 0.9]]),
    "moon": _moon(),
    "star": _star(),
    "triangle": _regular(3, 0.42, -math.pi / 2, cy=0.56),
    "tshape": np.array(
        [[0.1, 0.12], [0.9, 0.12], [0.9, 0.34], [0.61, 0.34], [0.61, 0.9], [0.39, 0.9], [0.39, 0.34], [0.1, 0.34]]
    ),
    "heart": _heart(),
    "hourglass": np.array([[0.2, 0.1], [0.8, 0.1], [0.56, 0.5], [0.8, 0.9], [0.2, 0.9], [0.44, 0.5]]),
}
COLOURS = [
    (200, 40, 40),
    (40, 140, 60),
    (40, 70, 190),
    (220, 160, 20),
    (140, 50, 160),
    (30, 150, 160),
    (200, 90, 30),
    (90, 90, 90),
    (170, 120, 60),
    (60, 60, 120),
]

# Shapes whose sketch wins by the widest margin (> 0.1 cosine) with the pretrained model.
CLEAREST = ("moon", "heart", "hbar")


def photo(name: str, size: int = 128) -> Image.Image:
    i = list(SHAPES).index(name)
    img = Image.new("RGB", (size, size), (235, 232, 220))
    d = ImageDraw.Draw(img)
    pts = [(float(x * size), float(y * size)) for x, y in SHAPES[name]]
    fill = tuple((c + 255) // 2 for c in COLOURS[i % len(COLOURS)])  # light colours: the outline dominates
    d.polygon(pts, fill=fill, outline=(20, 20, 20), width=max(2, size // 40))
    return img


def outline(name: str, scale: float = 1.0) -> np.ndarray:
    """The closed outline as (N, 2) points, scaled to ``scale``."""
    p = SHAPES[name]
    return np.concatenate([p, p[:1]]) * scale


def strokes(name: str, scale: float = 400.0) -> list:
    """The outline as one Quick, Draw! style stroke [[x...], [y...]]."""
    p = outline(name, scale)
    return [[p[:, 0].round(1).tolist(), p[:, 1].round(1).tolist()]]


def write_gallery(root: Path, size: int = 128) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    for name in SHAPES:
        photo(name, size).save(root / f"{name}.png")
    return [f"{n}.png" for n in SHAPES]
