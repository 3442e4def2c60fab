"""Quick, Draw! ndjson and Chair-V2 stroke pickles: parsing, errors with file/line, rasterisation, safe unpickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbir.data.formats import chairv2, detect_format, load_dataset, quickdraw
from sbir.data.formats.quickdraw import StrokeRef, load_quickdraw
from sbir.data.safe_pickle import restricted_load
from sbir.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def write_ndjson(path: Path, drawings: list, word: str = "cat") -> None:
    path.write_text(
        "".join(json.dumps({"word": word, "key_id": str(i), "drawing": d}) + "\n" for i, d in enumerate(drawings))
    )


SQUARE = [[[10, 100, 100, 10, 10], [10, 10, 100, 100, 10]]]
CROSS = [[[0, 50], [0, 50]], [[0, 50], [50, 0]]]


def dark_fraction(img: Image.Image) -> float:
    return float((np.asarray(img.convert("L")) < 128).mean())


# ---------------------------------------------------------------- Quick, Draw!


def test_load_quickdraw_from_generated_files(tmp_path):
    write_ndjson(tmp_path / "cat.ndjson", [SQUARE, CROSS, SQUARE])
    write_ndjson(tmp_path / "hot air balloon.ndjson", [CROSS], word="hot air balloon")
    (tmp_path / "notes.txt").write_text("ignored")
    recs = load_quickdraw(tmp_path, size=64, stroke_width=2)
    assert [r.id for r in recs] == ["cat/0", "cat/1", "cat/2", "hot air balloon/0"]
    assert {r.label for r in recs} == {"cat", "hot air balloon"} and all(r.photo_id is None for r in recs)
    img = recs[0].image.load()
    assert img.size == (64, 64) and img.mode == "RGB"
    assert 0.02 < dark_fraction(img) < 0.5
    # the square's centre is white, its border black
    a = np.asarray(img.convert("L"))
    assert a[32, 32] > 200 and a[:, :8].min() < 100
    assert recs[0].image.describe().endswith("cat.ndjson:1")
    assert len(load_quickdraw(tmp_path, max_per_class=1)) == 2
    assert [r.label for r in load_quickdraw(tmp_path, classes=["Hot_Air-Balloon"])] == ["hot air balloon"]
    with pytest.raises(DataError, match="dog"):
        load_quickdraw(tmp_path, classes=["dog"])


def test_stroke_width_and_size_are_configurable(tmp_path):
    write_ndjson(tmp_path / "x.ndjson", [CROSS])
    thin = load_quickdraw(tmp_path, size=96, stroke_width=1)[0].image.load()
    thick = load_quickdraw(tmp_path, size=96, stroke_width=8)[0].image.load()
    assert thin.size == thick.size == (96, 96)
    assert dark_fraction(thick) > 3 * dark_fraction(thin)


def test_stroke3_keeps_stroke_boundaries():
    from sbir.data.strokes import stroke3_to_strokes

    strokes = [
        np.array([[0.0, 0.0], [1.0, 1.0]]),
        np.array([[5.0, 5.0]]),
        np.array([[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]),
    ]
    s3 = quickdraw.strokes_to_stroke3(strokes)
    assert s3.shape == (6, 3) and s3[:, 2].tolist() == [0, 1, 1, 0, 0, 1]
    back = stroke3_to_strokes(s3)
    assert len(back) == 3 and all(np.array_equal(a, b) for a, b in zip(back, strokes, strict=False))


@pytest.mark.parametrize(
    "bad_line,needle",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"word": "cat"}), "no 'drawing' field"),
        (json.dumps({"drawing": [[[1, 2, 3], [4, 5]]]}), "3 x values but 2 y values"),
        (json.dumps({"drawing": [[[1, 2]]]}), "stroke 0"),
        (json.dumps({"drawing": [[[1, "a"], [4, 5]]]}), "not a number"),
        (json.dumps({"drawing": "strokes"}), "must be a list"),
        (json.dumps({"drawing": []}), "no strokes"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, needle):
    good = json.dumps({"word": "cat", "drawing": SQUARE})
    f = tmp_path / "cat.ndjson"
    f.write_text(good + "\n" + good + "\n" + bad_line + "\n" + good + "\n")
    with pytest.raises(DataError) as err:
        load_quickdraw(tmp_path)
    msg = str(err.value)
    assert f"{f}:3" in msg and needle in msg


def test_quickdraw_format_needs_photos(tmp_path):
    write_ndjson(tmp_path / "cat.ndjson", [SQUARE, CROSS])
    write_ndjson(tmp_path / "palm tree.ndjson", [CROSS])
    assert quickdraw.detect(tmp_path)
    with pytest.raises(DataError, match="no photos/ folder"):
        quickdraw.load(tmp_path)
    for cls in ("cat", "palm_tree"):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "photos" / cls / "p1.jpg")
    ds = quickdraw.load(tmp_path)
    split = ds.split("train")
    assert [p.id for p in split.photos] == ["cat/p1", "palm_tree/p1"]
    assert sorted({s.label for s in split.sketches}) == ["cat", "palm_tree"]  # labels follow the photo folders
    assert len(split.sketches) == 3
    write_ndjson(tmp_path / "dog.ndjson", [SQUARE])
    with pytest.raises(DataError, match="dog"):
        quickdraw.load(tmp_path)
    ds = quickdraw.load(tmp_path, skip_orphans=True)
    assert ds.skipped == [str(tmp_path / "dog.ndjson")]
    # the folder is recognised without --format
    (tmp_path / "dog.ndjson").unlink()
    assert detect_format(tmp_path) == "quickdraw"
    assert len(load_dataset(tmp_path).split("train").sketches) == 3


@pytest.mark.shared_data
def test_quickdraw_mini():
    root = shared("quickdraw_mini")
    recs = load_quickdraw(root, max_per_class=2)
    assert len(recs) == 344 * 2 and len({r.label for r in recs}) == 344
    cat = [r for r in load_quickdraw(root, classes=["cat"]) if r.label == "cat"]
    assert len(cat) == 25 and len({r.id for r in cat}) == 25
    img = cat[0].image.load()
    assert img.size == (256, 256) and 0.01 < dark_fraction(img) < 0.3


# ---------------------------------------------------------------- safe pickle


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_load_refuses_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"/train/a_1": _Evil(marker)}))
    with pytest.raises(DataError) as err:
        restricted_load(bad)
    msg = str(err.value)
    assert str(bad) in msg and ("posix.system" in msg or "os.system" in msg or "nt.system" in msg)
    assert not marker.exists()
    import collections  # a harmless but non-numpy class is refused too

    (tmp_path / "od.pkl").write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(DataError, match="collections.OrderedDict"):
        restricted_load(tmp_path / "od.pkl")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_load_reads_numpy_containers(tmp_path, protocol):
    data = {
        "/train/x_1": np.arange(12, dtype=np.float64).reshape(4, 3),
        "ints": [np.int64(3), np.float32(2.5)],
        "nested": ({"a": np.zeros((2, 2), dtype=np.uint8)}, {1, 2}, b"raw", None, True),
    }
    f = tmp_path / f"ok{protocol}.pkl"
    f.write_bytes(pickle.dumps(data, protocol=protocol))
    out = restricted_load(f)
    assert np.array_equal(out["/train/x_1"], data["/train/x_1"])
    assert out["ints"][0] == 3 and out["nested"][1] == {1, 2} and out["nested"][2] == b"raw"
    with open(f, "rb") as fh:  # file objects work too
        assert restricted_load(fh)["nested"][0]["a"].dtype == np.uint8


def test_restricted_load_broken_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        restricted_load(tmp_path / "missing.pkl")
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(pickle.dumps({"a": np.ones(10)})[:20])
    with pytest.raises(DataError, match=str(trunc)):
        restricted_load(trunc)


# ---------------------------------------------------------------- Chair-V2


def fake_chairv2(root: Path) -> Path:
    def sketch(offset):
        return np.array(
            [[10 + offset, 10, 0], [100, 10, 0], [100, 100, 1], [20, 200, 0], [200, 200, 1]], dtype=np.float64
        )

    data = {
        "/train/chairA_1": sketch(0),
        "/train/chairA_2": sketch(5),
        "/train/chair_B_1": sketch(3),
        "/test/chairC_A1YX741QQSMKPS": sketch(1),  # worker-id suffix, as in the real file
    }
    p = root / "ChairV2_Coordinate"
    p.write_bytes(pickle.dumps(data, protocol=2))
    return p


def test_load_chairv2_without_and_with_photos(tmp_path):
    pk = fake_chairv2(tmp_path)
    ds = chairv2.load_chairv2(pk, size=64, stroke_width=2)
    train, test = ds.split("train"), ds.split("test")
    assert [s.id for s in train.sketches] == ["chairA_1", "chairA_2", "chair_B_1"]
    assert [s.photo_id for s in train.sketches] == ["chairA", "chairA", "chair_B"]
    assert test.sketches[0].photo_id == "chairC" and all(s.label is None for s in train.sketches)
    assert train.photos == [] and test.photos == []
    img = train.sketches[0].image.load()
    assert img.size == (64, 64)
    # pen state 1 ends a stroke: no line joins (100, 100) to the next stroke's start (20, 200).
    ref = train.sketches[0].image
    joined_arr = ref.strokes.copy()
    joined_arr[:-1, 2] = 0  # one continuous stroke
    joined = StrokeRef(joined_arr, origin="joined", size=64, stroke_width=2, canvas=ref.canvas).load()
    pad = 0.05 * 64 + 1  # the rasteriser's default padding; the 256 canvas fills the rest
    x, y = (np.array([60.0, 150.0]) * (64 - 2 * pad) / 256 + pad).round().astype(int)  # midpoint of the connector
    assert np.asarray(joined.convert("L"))[y, x] < 128
    assert np.asarray(img.convert("L"))[y, x] > 200
    assert "chairA_1" in train.sketches[0].image.describe()

    with pytest.raises(DataError, match="photos"):
        chairv2.load(tmp_path)
    photos = tmp_path / "photo"
    photos.mkdir()
    for name in ("chairA", "chair_B", "chairC", "unused"):
        Image.new("RGB", (40, 40), (90, 90, 90)).save(photos / f"{name}.png")
    assert chairv2.detect(tmp_path) and detect_format(tmp_path) == "chairv2"
    ds = chairv2.load(tmp_path)
    assert [p.id for p in load_dataset(tmp_path).split("train").photos] == [p.id for p in ds.split("train").photos]
    assert [p.id for p in ds.split("train").photos] == ["chairA", "chair_B"]
    assert [p.id for p in ds.split("test").photos] == ["chairC"]
    (photos / "chairC.png").unlink()
    with pytest.raises(DataError, match="chairC"):
        chairv2.load(tmp_path)
    ds = chairv2.load(tmp_path, skip_orphans=True)
    assert "test" not in ds.splits and len(ds.skipped) == 1


def test_chairv2_bad_contents(tmp_path):
    p = tmp_path / "ChairV2_Coordinate"
    p.write_bytes(pickle.dumps({"/val/x_1": np.zeros((3, 3))}))
    with pytest.raises(DataError, match="/val/x_1"):
        chairv2.load_chairv2(p)
    p.write_bytes(pickle.dumps({"/train/x_1": np.zeros((3, 2))}))
    with pytest.raises(DataError, match=r"\(3, 2\)"):
        chairv2.load_chairv2(p)


@pytest.mark.shared_data
def test_real_chairv2_pickle():
    pk = shared("chairv2_strokes", "ChairV2_Coordinate")
    ds = chairv2.load_chairv2(pk, size=128)
    train, test = ds.split("train"), ds.split("test")
    assert len(train.sketches) == 952 and len(test.sketches) == 323
    assert len({s.photo_id for s in train.sketches}) == 300 and len({s.photo_id for s in test.sketches}) == 100
    assert not {s.photo_id for s in train.sketches} & {s.photo_id for s in test.sketches}
    ref = train.sketches[0].image
    assert isinstance(ref, StrokeRef) and ref.strokes.shape[1] == 3
    img = ref.load()
    assert img.size == (128, 128) and 0.01 < dark_fraction(img) < 0.3
