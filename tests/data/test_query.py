"""The one sketch-query model (sbir.data.query): formats, limits, errors, files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sbir.data.query import (
    MAX_DEPTH,
    QueryError,
    QueryLimits,
    SketchQuery,
    check_json_depth,
    load_query,
    parse_k,
)
from sbir.data.strokes import rasterize_strokes
from sbir.errors import DataError, SbirError

SQUARE = [[[10, 90, 90, 10, 10], [10, 10, 90, 90, 10]]]


def test_the_page_payload_and_every_stroke_format_are_accepted():
    # what the drawing page sends
    q = SketchQuery.parse({"strokes": SQUARE, "k": 5, "stroke_width": 2.5, "canvas": {"width": 400, "height": 300}})
    assert q.k == 5 and q.stroke_width == 2.5 and (q.canvas.width, q.canvas.height) == (400, 300)
    assert len(q.strokes) == 1 and q.strokes[0].shape == (5, 2) and q.n_points == 5
    # timestamps, stroke-3 rows, Quick, Draw!'s "drawing" key, k as a digit string (form style)
    assert SketchQuery.parse({"strokes": [[[0, 1], [0, 1], [0, 16]]]}).n_points == 2
    s3 = SketchQuery.parse({"strokes": [[0, 0, 0], [5, 5, 1], [9, 0, 0], [9, 9, 1]]})
    assert [len(s) for s in s3.strokes] == [2, 2]
    assert SketchQuery.parse({"drawing": SQUARE}).n_points == 5
    assert SketchQuery.parse({"strokes": SQUARE, "k": "7"}).k == 7
    assert SketchQuery.parse({"strokes": SQUARE}).k is None


def test_files_may_be_a_bare_list_or_a_quickdraw_record(tmp_path):
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(SQUARE))
    record = tmp_path / "record.json"
    qd = {"word": "square", "countrycode": "DE", "recognized": True, "key_id": "1", "drawing": SQUARE}
    record.write_text(json.dumps(qd))
    with_k = tmp_path / "k.json"
    with_k.write_text(json.dumps({"strokes": SQUARE, "k": 3}))
    a, ka = load_query(bare)
    b, kb = load_query(record)
    c, kc = load_query(with_k)
    assert (ka, kb, kc) == (None, None, 3)
    expected = np.asarray(rasterize_strokes(SQUARE, size=256, stroke_width=3))
    for img in (a, b, c):
        assert np.array_equal(np.asarray(img), expected)
    # the API is stricter: an object only, no unknown fields
    with pytest.raises(QueryError, match="must be an object"):
        SketchQuery.parse(SQUARE)
    with pytest.raises(QueryError, match="unknown field"):
        SketchQuery.parse({"word": "square", "drawing": SQUARE})


@pytest.mark.parametrize(
    "payload, words",
    [
        ({"k": 3}, 'missing field "strokes"'),
        ({"strokes": "abc"}, "must be a list"),
        ({"strokes": []}, "no strokes"),
        ({"strokes": [[[1, 2, 3], [1, 2]]]}, "3 x values but 2 y values"),
        ({"strokes": [[[1, "a"], [1, 2]]]}, "x[1] = 'a' is not a number"),
        ({"strokes": [[[0, float("nan")], [0, 1]]]}, "non-finite"),
        ({"strokes": [[[0, float("inf")], [0, 1]]]}, "non-finite"),
        ({"strokes": [[[0, 2e6], [0, 1]]]}, "beyond ±1e+06"),
        ({"strokes": SQUARE, "drawing": SQUARE}, "not both"),
        ({"strokes": SQUARE, "k": True}, "k must be an integer"),
        ({"strokes": SQUARE, "k": 0}, "k must be between 1 and"),
        ({"strokes": SQUARE, "canvas": {"width": 0, "height": 5}}, "canvas.width"),
        ({"strokes": SQUARE, "canvas": {"width": 5}}, '"canvas" must be an object'),
        ({"strokes": SQUARE, "stroke_width": float("nan")}, "stroke_width"),
        ({"strokes": SQUARE, "colour": "red", "size": 3}, "unknown field(s) colour, size"),
    ],
)
def test_bad_queries_raise_one_clear_sbir_error(payload, words):
    with pytest.raises(QueryError) as ei:
        SketchQuery.parse(payload, source="q.json")
    msg = str(ei.value)
    assert words in msg and msg.startswith("q.json: ")
    assert "\n" not in msg and "pydantic" not in msg.lower()
    assert isinstance(ei.value, DataError) and isinstance(ei.value, SbirError)


def test_limits_are_one_set_and_adjustable():
    many_points = [[list(range(600)), list(range(600))]] * 40  # 24,000 points
    with pytest.raises(QueryError, match="more than 20000 points"):
        SketchQuery.parse({"strokes": many_points})
    with pytest.raises(QueryError, match="more than 1000 points"):
        SketchQuery.parse({"strokes": many_points[:1] * 2}, QueryLimits(max_points=1000))
    with pytest.raises(QueryError, match="2001 strokes exceed the limit of 2000"):
        SketchQuery.parse({"strokes": [[[1], [1]]] * 2001})
    with pytest.raises(QueryError, match="k must be between 1 and 100"):
        SketchQuery.parse({"strokes": SQUARE, "k": 101}, QueryLimits(max_k=100))
    assert parse_k(None, 100, default=10) == 10 and parse_k("5", 100) == 5
    with pytest.raises(QueryError, match="k must be an integer"):
        parse_k(2.5, 100)


def test_json_nesting_depth_is_checked_before_parsing():
    deep = b"[" * 100_000 + b"]" * 100_000
    t0 = time.perf_counter()
    with pytest.raises(QueryError, match=f"nested 100000 levels deep; a sketch query needs at most {MAX_DEPTH}"):
        SketchQuery.from_json(deep)
    with pytest.raises(QueryError, match="nested"):
        SketchQuery.from_json(b'{"strokes": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert time.perf_counter() - t0 < 2
    # brackets inside strings do not count; ordinary queries pass
    check_json_depth(json.dumps({"strokes": SQUARE, "note": "[" * 1000}))
    check_json_depth(json.dumps({"strokes": SQUARE}).encode())
    with pytest.raises(QueryError, match="not valid JSON"):
        SketchQuery.from_json(b'{"strokes": [')


def test_missing_unreadable_and_deep_files_are_one_line_errors(tmp_path):
    with pytest.raises(QueryError, match="does not exist"):
        load_query(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QueryError, match="bad.json is not valid JSON"):
        load_query(bad)
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(QueryError, match="deep.json is nested 100000 levels deep"):
        load_query(deep)


def test_canvas_and_stroke_width_reach_the_raster():
    fitted = np.asarray(SketchQuery.parse({"strokes": SQUARE}).to_image().convert("L")) < 128
    placed = (
        np.asarray(
            SketchQuery.parse({"strokes": SQUARE, "canvas": {"width": 400, "height": 400}}).to_image().convert("L")
        )
        < 128
    )
    ys, xs = np.nonzero(placed)
    assert xs.max() < 128 and ys.max() < 128  # stays in the top-left quarter, as drawn
    assert fitted.any() and np.nonzero(fitted)[1].max() > 200  # fitted to the frame
    thin = (np.asarray(SketchQuery.parse({"strokes": SQUARE, "stroke_width": 1}).to_image().convert("L")) < 128).sum()
    thick = (np.asarray(SketchQuery.parse({"strokes": SQUARE, "stroke_width": 8}).to_image().convert("L")) < 128).sum()
    assert thick > 3 * thin


def test_json_schema_documents_the_fields():
    schema = SketchQuery.model_json_schema()
    assert set(schema["properties"]) == {"strokes", "k", "canvas", "stroke_width"}
    assert schema["required"] == ["strokes"] and schema["additionalProperties"] is False
