"""Stroke rasteriser: both input conventions, fitting, canvas mode, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sbir.data.strokes import StrokeError, parse_strokes, rasterize_strokes, stroke3_to_strokes
from sbir.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def ink(img) -> np.ndarray:
    """Boolean mask of dark pixels."""
    return np.asarray(img.convert("L")) < 128


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_quickdraw_square_is_fitted_centred_and_black_on_white():
    square = [[[0, 10, 10, 0, 0], [0, 0, 10, 10, 0]]]
    img = rasterize_strokes(square, size=100, stroke_width=2, padding=10)
    assert img.mode == "RGB" and img.size == (100, 100)
    arr = np.asarray(img)
    assert arr[0, 0].tolist() == [255, 255, 255]  # white background
    m = ink(img)
    x0, y0, x1, y1 = bbox(m)
    # The 10x10 square is scaled to the 80 px box inside 10 px padding (+- half the line width).
    assert abs(x0 - 10) <= 2 and abs(y0 - 10) <= 2 and abs(x1 - 89) <= 2 and abs(y1 - 89) <= 2
    assert not m[50, 50]  # hollow
    assert m[10, 50] and m[50, 10]  # edges drawn


def test_aspect_ratio_is_kept_and_drawing_centred():
    hline = [[[0, 100], [5, 5]]]  # zero height
    m = ink(rasterize_strokes(hline, size=64, stroke_width=2, padding=4))
    x0, y0, x1, y1 = bbox(m)
    assert x1 - x0 >= 52
    assert y1 - y0 <= 3
    assert abs((y0 + y1) / 2 - 31.5) <= 1.5  # vertically centred
    tall = [[[0, 0], [0, 50]], [[10, 10], [0, 50]]]  # 10 wide, 50 high
    m = ink(rasterize_strokes(tall, size=100, stroke_width=2, padding=0))
    x0, y0, x1, y1 = bbox(m)
    assert y1 - y0 >= 95
    assert 15 <= x1 - x0 <= 25  # width scaled by the same factor (2x)


def test_stroke_width_controls_line_thickness():
    line = [[[0, 10], [0, 0]], [[0, 10], [10, 10]]]
    thin = ink(rasterize_strokes(line, size=128, stroke_width=1)).sum()
    thick = ink(rasterize_strokes(line, size=128, stroke_width=8)).sum()
    assert thick > 4 * thin


def test_canvas_mode_keeps_position_and_scale():
    # A short stroke in the top-left quarter of a 400x400 canvas stays there.
    stroke = [[[20, 80], [20, 80]]]
    m = ink(rasterize_strokes(stroke, size=200, stroke_width=2, padding=0, canvas=(400, 400)))
    x0, y0, x1, y1 = bbox(m)
    assert x1 < 50 and y1 < 50 and x0 >= 7 and y0 >= 7
    fitted = ink(rasterize_strokes(stroke, size=200, stroke_width=2, padding=0))
    assert bbox(fitted)[2] > 190  # without canvas it fills the frame
    # A wide canvas is fitted preserving aspect: a point in the middle stays in the middle.
    dot = [[[300], [100]]]
    m = ink(rasterize_strokes(dot, size=100, stroke_width=4, padding=0, canvas=(600, 200)))
    x0, y0, x1, y1 = bbox(m)
    assert abs((x0 + x1) / 2 - 50) <= 2 and abs((y0 + y1) / 2 - 50) <= 2


def test_timestamps_are_accepted_and_single_points_are_dots():
    with_t = [[[0, 5, 10], [0, 5, 0], [0, 16, 33]], [[5], [9], [50]]]
    img = rasterize_strokes(with_t, size=64, stroke_width=3)
    assert ink(img).sum() > 0
    dot = ink(rasterize_strokes([[[3], [3]]], size=32, stroke_width=6))
    assert 10 <= dot.sum() <= 60  # a round dot in the centre
    assert dot[15:17, 15:17].all()


def test_stroke3_pen_lift_splits_strokes():
    # Two separate horizontal segments: pen lifted after the 2nd point.
    arr = np.array([[0, 0, 0], [10, 0, 1], [0, 10, 0], [10, 10, 1]], dtype=float)
    strokes = parse_strokes(arr)
    assert len(strokes) == 2
    np.testing.assert_allclose(strokes[1], [[0, 10], [10, 10]])
    m = ink(rasterize_strokes(arr, size=64, stroke_width=2, padding=4))
    assert not m[32, 32]  # no segment joins the two strokes across the middle
    # Same as the Quick, Draw! form.
    qd = [[[0, 10], [0, 0]], [[0, 10], [10, 10]]]
    np.testing.assert_array_equal(
        np.asarray(rasterize_strokes(arr, size=64)), np.asarray(rasterize_strokes(qd, size=64))
    )
    # A list of [x, y, pen] rows is stroke-3 too; an unterminated last stroke is kept.
    rows = [[0, 0, 0], [10, 0, 1], [0, 10, 0], [10, 10, 0]]
    assert len(parse_strokes(rows)) == 2


def test_relative_stroke3_offsets():
    offsets = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 1]], dtype=float)
    (s,) = stroke3_to_strokes(offsets, relative=True)
    np.testing.assert_allclose(s, [[0, 0], [10, 0], [10, 10]])


@pytest.mark.parametrize(
    "bad, words",
    [
        ("not a list", "list of strokes"),
        ([[[0, 1], [0]]], "2 x values but 1 y values"),
        ([[[0, "a"], [0, 1]]], "x[1]"),
        ([[[0, 1], [0, None]]], "y[1]"),
        ([[[0, True], [0, 1]]], "x[1]"),
        ([[[0, 1]]], "2 lists"),
        ([[[], []]], "no points"),
        ([[0, 1], [0, 1]], "stroke 0"),
        ([[[0, float("nan")], [0, 1]]], "non-finite"),
        ([[[0, 1], [0, 1], [5]]], "timestamps"),
        ([{"x": [1]}], "stroke 0"),
        (np.zeros((3, 2)), "(N, 3)"),
        ([], "no strokes"),
    ],
)
def test_malformed_input_names_the_problem(bad, words):
    with pytest.raises(StrokeError) as ei:
        rasterize_strokes(bad, size=32, source="req")
    assert words in str(ei.value)
    assert str(ei.value).startswith("req")
    assert isinstance(ei.value, DataError) and isinstance(ei.value, ValueError)


def test_limits_and_parameters_are_validated():
    many = [[list(range(600)), list(range(600))]] * 10
    with pytest.raises(StrokeError, match="more than 5000 points"):
        rasterize_strokes(many, max_points=5000)
    with pytest.raises(StrokeError, match="stroke_width"):
        rasterize_strokes([[[0, 1], [0, 1]]], stroke_width=0)
    with pytest.raises(StrokeError, match="padding"):
        rasterize_strokes([[[0, 1], [0, 1]]], size=32, padding=16)
    with pytest.raises(StrokeError, match="canvas"):
        rasterize_strokes([[[0, 1], [0, 1]]], canvas=(0, 10))
    blank = rasterize_strokes([], size=16, allow_empty=True)
    assert np.asarray(blank).min() == 255


@pytest.mark.shared_data
def test_real_quickdraw_and_chairv2_drawings_rasterise():
    qd = SHARED / "quickdraw_mini" / "cat.ndjson"
    if not qd.is_file():
        pytest.skip("../shared/data/quickdraw_mini not present")
    for line in qd.read_text().splitlines()[:5]:
        img = rasterize_strokes(json.loads(line)["drawing"], size=128)
        m = ink(img)
        assert 0.01 < m.mean() < 0.5
        x0, y0, x1, y1 = bbox(m)
        assert max(x1 - x0, y1 - y0) >= 100  # fitted to the frame


def test_point_arrays_per_stroke_widths_and_ink_for_pixel_coordinates():
    """What the synthetic demo data draws with: (n, 2) arrays in pixel coordinates, a width per stroke, grey ink."""
    a = np.array([[4.0, 8.0], [28.0, 8.0]])
    b = np.array([[4.0, 24.0], [28.0, 24.0]])
    img = rasterize_strokes([a, b], size=32, stroke_width=[1.0, 4.0], canvas=(32, 32), padding=0, ink=60)
    g = np.asarray(img.convert("L"))
    assert g.min() >= 60 and g[8, 16] < 200 and g[24, 16] == 60  # placed as given, grey ink
    thin, thick = (g[:16] < 200).sum(), (g[16:] < 200).sum()
    assert thick > 1.5 * thin and (g[16:] == 60).sum() > 3 * (g[:16] < 100).sum()
    # pixel-area convention: a horizontal line at y = 8.0 darkens rows 7 and 8 alike
    assert abs(int(g[7, 16]) - int(g[8, 16])) <= 2
    with pytest.raises(StrokeError, match="2 stroke widths for 1 strokes"):
        rasterize_strokes([a], stroke_width=[1.0, 2.0])
    with pytest.raises(StrokeError, match="ink"):
        rasterize_strokes([a], ink=300)
    with pytest.raises(StrokeError, match=r"shape \(n, 2\)"):
        rasterize_strokes([np.zeros((3, 3))])
    # trusted input may skip the point limit
    many = [np.stack([np.linspace(0, 10, 60_000), np.zeros(60_000)], 1)]
    assert rasterize_strokes(many, size=16, max_points=None).size == (16, 16)
