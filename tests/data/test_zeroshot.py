"""Zero-shot class lists (built-in, file, comma list) and the seen/unseen split."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbir.data.records import FileRef, PhotoRecord, SketchRecord, Split
from sbir.data.zeroshot import list_builtin_splits, load_class_list, normalize_class_name, split_seen_unseen
from sbir.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

README_21 = (
    "bat cabin cow dolphin door giraffe helicopter mouse pear raccoon rhinoceros saw scissors seagull "
    "skyscraper songbird sword tree wheelchair windmill window"
).split()


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def toy_split() -> Split:
    classes = ["hot-air_balloon", "Cat", "dog", "car_(sedan)"]
    ref = FileRef(Path("/nonexistent.png"))  # never loaded
    photos = [PhotoRecord(id=f"{c}/p{i}", image=ref, label=c) for c in classes for i in range(2)]
    sketches = [SketchRecord(id=f"{c}/s{i}", image=ref, label=c) for c in classes for i in range(3)]
    return Split(name="train", photos=photos, sketches=sketches)


def test_builtin_lists_and_sizes():
    names = list_builtin_splits()
    assert names == ["quickdraw_unseen30", "sketchy_unseen21", "sketchy_unseen25", "tuberlin_unseen30"]
    sizes = {n: len(load_class_list(n)) for n in names}
    assert sizes == {"quickdraw_unseen30": 30, "sketchy_unseen21": 21, "sketchy_unseen25": 25, "tuberlin_unseen30": 30}
    assert load_class_list("sketchy_unseen21") == README_21
    assert load_class_list("sketchy_unseen21.txt") == README_21
    assert load_class_list("sketchy_unseen25").source.endswith("sketchy_unseen25.txt")
    for n in names:  # every shipped file documents its source
        text = (Path(load_class_list(n).source)).read_text()
        assert text.startswith("# ") and "github.com" in text


def test_normalisation():
    assert normalize_class_name("Hot-air_balloon") == "hot air balloon"
    assert normalize_class_name("  teddy_bear ") == normalize_class_name("teddy-bear") == "teddy bear"
    assert normalize_class_name("car_(sedan)") == "car (sedan)"


def test_comma_list_and_user_file(tmp_path):
    assert load_class_list("cat, dog") == ["cat", "dog"]
    assert load_class_list("cat,") == ["cat"]
    assert load_class_list(["cat", "dog"]) == ["cat", "dog"]
    many = [f"class_number_{i}" for i in range(60)]  # longer than a file name may be
    assert load_class_list(",".join(many) + ",") == many
    f = tmp_path / "mine.txt"
    f.write_text("# my split\n\ncat\n  Hot Air Balloon  \n")
    assert load_class_list(str(f)) == ["cat", "Hot Air Balloon"]
    assert load_class_list(f).source == str(f)
    f.write_text("cat\nCat\n")
    with pytest.raises(ConfigError, match="listed twice"):
        load_class_list(f)
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no classes"):
        load_class_list(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_class_list(str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match="not a built-in split"):
        load_class_list("sketchy_unseen22")


def test_split_seen_unseen_matches_names_loosely():
    seen, unseen = split_seen_unseen(toy_split(), "Hot Air Balloon,cat")
    assert seen.name == "train_seen" and unseen.name == "train_unseen"
    assert sorted({r.label for r in unseen.photos}) == ["Cat", "hot-air_balloon"]
    assert sorted({r.label for r in seen.sketches}) == ["car_(sedan)", "dog"]
    assert len(unseen.sketches) == 6 and len(seen.photos) == 4
    assert {r.label for r in seen.photos}.isdisjoint({r.label for r in unseen.photos})


def test_missing_class_error_names_the_class_and_the_file(tmp_path):
    f = tmp_path / "my_unseen.txt"
    f.write_text("cat\nunicorn\n")
    with pytest.raises(DataError) as err:
        split_seen_unseen(toy_split(), str(f))
    msg = str(err.value)
    assert "unicorn" in msg and str(f) in msg
    with pytest.raises(DataError, match="both sides"):
        split_seen_unseen(toy_split(), "hot air balloon,cat,dog,car (sedan)")


def test_unlabelled_records_are_refused():
    s = toy_split()
    s.sketches.append(SketchRecord(id="x", image=s.sketches[0].image, photo_id="dog/p0"))
    with pytest.raises(DataError, match="without a class label"):
        split_seen_unseen(s, "cat,")


@pytest.mark.shared_data
def test_sketchy_mini_has_all_sketchy_unseen_classes():
    photo = shared("sketchy_mini", "photo")
    present = {normalize_class_name(d.name) for d in photo.iterdir() if d.is_dir()}
    for name in ("sketchy_unseen21", "sketchy_unseen25"):
        missing = [c for c in load_class_list(name) if normalize_class_name(c) not in present]
        assert not missing, f"{name}: {missing}"
    assert len(present) == 125


@pytest.mark.shared_data
def test_split_of_sketchy_mini():
    from sbir.data.formats import load_dataset

    ds = load_dataset(shared("sketchy_mini"))
    seen, unseen = split_seen_unseen(ds.split("train"), "sketchy_unseen21")
    assert len({r.label for r in unseen.photos}) == 21 and len({r.label for r in seen.photos}) == 104
    assert all(s.photo_id is None or s.photo_id.split("/")[0] == s.label for s in unseen.sketches)


@pytest.mark.shared_data
def test_quickdraw_mini_has_the_doodle2search_unseen_classes():
    root = shared("quickdraw_mini")
    present = {normalize_class_name(p.stem) for p in root.glob("*.ndjson")}
    assert all(normalize_class_name(c) in present for c in load_class_list("quickdraw_unseen30"))
