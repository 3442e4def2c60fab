"""The seeded validation split: no photo on both sides, reproducible from its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sbir.data.formats import load_dataset
from sbir.data.records import FileRef, PhotoRecord, SketchRecord, Split
from sbir.data.splits import apply_split_record, carve_validation, load_split_record, save_split_record
from sbir.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def fg_split(n_photos: int = 40, sketches_per_photo=(1, 2, 3), n_distractors: int = 5, triplets: bool = False) -> Split:
    """Fine-grained split: photo i has sketches_per_photo[i % len] sketches; distractors have none."""
    photos, sketches = [], []
    for i in range(n_photos):
        pid = f"p{i:03d}"
        photos.append(PhotoRecord(id=pid, image=FileRef(Path(f"{pid}.png"))))
        for k in range(sketches_per_photo[i % len(sketches_per_photo)]):
            sketches.append(SketchRecord(id=f"{pid}_{k}", image=FileRef(Path(f"{pid}_{k}.png")), photo_id=pid))
    for j in range(n_distractors):
        photos.append(PhotoRecord(id=f"d{j:03d}", image=FileRef(Path(f"d{j}.png"))))
    tri = None
    if triplets:
        pindex = {p.id: i for i, p in enumerate(photos)}
        rows = []
        for si, s in enumerate(sketches):
            own = pindex[s.photo_id]
            for other in (own + 1, own + 7, own + 13):
                rows.append((si, own, other % n_photos))
        tri = np.asarray(rows, dtype=np.int64)
    return Split(name="train", photos=photos, sketches=sketches, triplets=tri)


def cat_split(classes=("a", "b", "c", "d"), n_photos: int = 10, n_sketches: int = 20) -> Split:
    photos = [
        PhotoRecord(id=f"{c}/p{i}", image=FileRef(Path(f"{c}/p{i}.jpg")), label=c)
        for c in classes
        for i in range(n_photos)
    ]
    sketches = [
        SketchRecord(id=f"{c}/s{i}", image=FileRef(Path(f"{c}/s{i}.png")), label=c)
        for c in classes
        for i in range(n_sketches)
    ]
    return Split(name="train", photos=photos, sketches=sketches)


def photo_ids(split: Split) -> set[str]:
    return {p.id for p in split.photos}


def sketch_ids(split: Split) -> set[str]:
    return {s.id for s in split.sketches}


# ---------------------------------------------------------------- by photo


def test_no_photo_on_both_sides():
    full = fg_split()
    train, val, record = carve_validation(full, 0.25, seed=3)
    assert photo_ids(train).isdisjoint(photo_ids(val))
    assert sketch_ids(train).isdisjoint(sketch_ids(val))
    assert photo_ids(train) | photo_ids(val) == photo_ids(full)
    assert sketch_ids(train) | sketch_ids(val) == sketch_ids(full)
    # every sketch sits with its photo
    for side in (train, val):
        assert all(s.photo_id in photo_ids(side) for s in side.sketches)
    # distractors (photos without sketches) stay in train
    assert all(pid.startswith("p") for pid in photo_ids(val))
    assert {f"d{j:03d}" for j in range(5)} <= photo_ids(train)
    assert len(val.photos) == 10  # round(0.25 * 40 photos with sketches)
    assert record["by"] == "photo" and record["fraction"] == 0.25 and record["seed"] == 3
    assert record["n_val_photos"] == 10 and record["n_train_photos"] == 35
    assert record["n_val_sketches"] == len(val.sketches) and record["n_train_sketches"] == len(train.sketches)
    assert sorted(record["val_photo_ids"]) == sorted(photo_ids(val))
    assert train.name == "train" and val.name == "val"
    json.dumps(record)  # serialisable


def test_order_preserved():
    full = fg_split()
    train, val, _ = carve_validation(full, 0.3, seed=0)
    order = {p.id: i for i, p in enumerate(full.photos)}
    for side in (train, val):
        idx = [order[p.id] for p in side.photos]
        assert idx == sorted(idx)


def test_seeded_reproducible_and_seeds_differ():
    full = fg_split()
    _, v1, r1 = carve_validation(full, 0.2, seed=7)
    _, v2, r2 = carve_validation(fg_split(), 0.2, seed=7)
    assert r1 == r2 and [p.id for p in v1.photos] == [p.id for p in v2.photos]
    _, v3, r3 = carve_validation(full, 0.2, seed=8)
    assert r3["val_photo_ids"] != r1["val_photo_ids"]
    assert len(v3.photos) == len(v1.photos)


def test_tiny_data_gets_one_val_photo():
    full = fg_split(n_photos=3, sketches_per_photo=(1,), n_distractors=0)
    train, val, _ = carve_validation(full, 0.05, seed=0)  # round(0.15) would be 0
    assert len(val.photos) == 1 and len(val.sketches) == 1 and len(train.photos) == 2
    two = fg_split(n_photos=2, sketches_per_photo=(1,), n_distractors=0)
    train, val, _ = carve_validation(two, 0.9, seed=0)  # train keeps at least one photo
    assert len(train.photos) == 1 and len(val.photos) == 1
    one = fg_split(n_photos=1, sketches_per_photo=(2,), n_distractors=3)
    train, val, _ = carve_validation(one, 0.5, seed=0)  # cannot split a single photo
    assert len(val.photos) == 0 and len(train.sketches) == 2


def test_fraction_zero_gives_empty_val():
    full = fg_split(triplets=True)
    train, val, record = carve_validation(full, 0.0)
    assert val.photos == [] and val.sketches == [] and len(val.triplets) == 0
    assert len(train.photos) == len(full.photos) and np.array_equal(train.triplets, full.triplets)
    assert record["val_photo_ids"] == [] and record["val_sketch_ids"] == []


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.2", None, True])
def test_fraction_validation(bad):
    with pytest.raises(ConfigError):
        carve_validation(fg_split(), bad)


def test_bad_seed_and_by():
    with pytest.raises(ConfigError):
        carve_validation(fg_split(), 0.2, seed=1.5)
    with pytest.raises(ConfigError):
        carve_validation(fg_split(), 0.2, by="random")
    with pytest.raises(DataError):
        carve_validation(fg_split(), 0.2, by="class-stratified")  # no labels
    with pytest.raises(DataError):
        carve_validation(cat_split(), 0.2, by="photo")  # no photo_id


def test_triplets_reindexed_and_boundary_dropped():
    full = fg_split(n_photos=30, sketches_per_photo=(2,), n_distractors=0, triplets=True)
    train, val, record = carve_validation(full, 0.4, seed=1)
    kept = 0
    for side in (train, val):
        t = side.triplets
        assert t.dtype == np.int64 and t.shape[1] == 3
        if len(t):
            assert t[:, 0].max() < len(side.sketches) and t[:, 1:].max() < len(side.photos)
        # each re-indexed row names the same records as some original row
        orig = {(full.sketches[a].id, full.photos[b].id, full.photos[c].id) for a, b, c in full.triplets.tolist()}
        for a, b, c in t.tolist():
            assert (side.sketches[a].id, side.photos[b].id, side.photos[c].id) in orig
        kept += len(t)
    # a row survives iff all three members fell on the same side
    pv = photo_ids(val)
    expected = sum(
        1
        for a, b, c in full.triplets.tolist()
        if len({full.photos[b].id in pv, full.photos[c].id in pv, full.sketches[a].photo_id in pv}) == 1
    )
    assert kept == expected < len(full.triplets)
    assert record["n_train_triplets"] + record["n_val_triplets"] == kept


def test_no_triplets_stays_none():
    train, val, record = carve_validation(fg_split(), 0.2)
    assert train.triplets is None and val.triplets is None
    assert record["n_train_triplets"] is None


# ---------------------------------------------------------------- class-stratified


def test_class_stratified():
    full = cat_split()
    train, val, record = carve_validation(full, 0.2, seed=0)
    assert record["by"] == "class-stratified"
    assert photo_ids(train).isdisjoint(photo_ids(val)) and sketch_ids(train).isdisjoint(sketch_ids(val))
    for c in ("a", "b", "c", "d"):
        assert sum(p.label == c for p in val.photos) == 2  # 20% of 10
        assert sum(s.label == c for s in val.sketches) == 4  # 20% of 20
    assert val.labels() == train.labels() == ["a", "b", "c", "d"]


def test_class_stratified_tiny_classes():
    full = cat_split(classes=("a", "b", "c"), n_photos=2, n_sketches=2)
    train, val, _ = carve_validation(full, 0.1, seed=0)  # round(0.2) = 0 everywhere -> still one class in val
    assert len(val.photos) == 1 and len(val.sketches) == 1
    assert val.photos[0].label == val.sketches[0].label
    single = cat_split(classes=("a",), n_photos=1, n_sketches=5)
    train, val, _ = carve_validation(single, 0.5, seed=0)  # the class's only photo stays in train
    assert val.photos == [] and val.sketches == [] and len(train.photos) == 1


def test_class_split_forced_on_instance_data():
    full = fg_split()
    for s_i, s in enumerate(full.sketches):
        full.sketches[s_i] = SketchRecord(id=s.id, image=s.image, photo_id=s.photo_id, label="x")
    full.photos = [PhotoRecord(id=p.id, image=p.image, label="x") for p in full.photos]
    _, val, record = carve_validation(full, 0.2, by="class-stratified")
    assert record["by"] == "class-stratified" and len(val.photos) == 9  # round(0.2 * 45)


# ---------------------------------------------------------------- records


@pytest.mark.parametrize("make", [lambda: fg_split(triplets=True), cat_split])
def test_record_round_trip(tmp_path, make):
    full = make()
    train, val, record = carve_validation(full, 0.3, seed=11)
    path = save_split_record(tmp_path / "run" / "split.json", record)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    loaded = load_split_record(path)
    assert loaded == record
    train2, val2 = apply_split_record(make(), loaded)
    for a, b in ((train, train2), (val, val2)):
        assert [p.id for p in a.photos] == [p.id for p in b.photos]
        assert [s.id for s in a.sketches] == [s.id for s in b.sketches]
        if a.triplets is not None:
            assert np.array_equal(a.triplets, b.triplets)
        else:
            assert b.triplets is None
    assert val2.name == "val" and train2.name == "train"


def test_apply_record_missing_ids(tmp_path):
    full = fg_split()
    _, _, record = carve_validation(full, 0.3, seed=0)
    gone = record["val_photo_ids"][0]
    shrunk = Split(
        name="train",
        photos=[p for p in full.photos if p.id != gone],
        sketches=[s for s in full.sketches if s.photo_id != gone],
    )
    with pytest.raises(DataError) as info:
        apply_split_record(shrunk, record)
    assert gone in str(info.value) and "delete" in str(info.value).lower()


def test_apply_record_new_sketch_follows_photo():
    full = fg_split()
    _, val, record = carve_validation(full, 0.3, seed=0)
    vpid = val.photos[0].id
    full.sketches.append(SketchRecord(id=f"{vpid}_new", image=FileRef(Path("n.png")), photo_id=vpid))
    train2, val2 = apply_split_record(full, record)
    assert f"{vpid}_new" in sketch_ids(val2) and photo_ids(train2).isdisjoint(photo_ids(val2))


def test_apply_record_malformed():
    full = fg_split()
    for bad in (
        [],
        {"by": "photo"},
        {"by": "x", "val_photo_ids": [], "val_sketch_ids": []},
        {"by": "photo", "val_photo_ids": "p001", "val_sketch_ids": []},
    ):
        with pytest.raises(DataError):
            apply_split_record(full, bad)
    # a val sketch whose photo the record puts in train is inconsistent
    with pytest.raises(DataError, match="p001"):
        apply_split_record(full, {"by": "photo", "val_photo_ids": [], "val_sketch_ids": ["p001_0"]})


def test_load_record_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split_record(tmp_path / "nope.json")
    p = tmp_path / "split.json"
    p.write_text("{broken")
    with pytest.raises(DataError) as info:
        load_split_record(p)
    assert str(p) in str(info.value)
    p.write_text(json.dumps({"something": 1}))
    with pytest.raises(DataError):
        load_split_record(p)


@pytest.mark.shared_data
def test_real_qmul_shoes_split(tmp_path):
    root = SHARED_DATA / "qmul_v1" / "shoes"
    if not root.exists():
        pytest.skip(f"{root} not available")
    full = load_dataset(root).splits["train"]
    train, val, record = carve_validation(full, 0.15, seed=0)
    assert len(val.photos) == len(val.sketches) == 46 and len(train.photos) == 258
    assert photo_ids(train).isdisjoint(photo_ids(val))
    assert len(train.triplets) + len(val.triplets) < len(full.triplets)
    train2, val2 = apply_split_record(full, json.loads(json.dumps(record)))
    assert [p.id for p in val2.photos] == [p.id for p in val.photos]


def test_cross_validation_folds_are_disjoint_by_photo():
    from sbir.data.splits import hold_out_fold

    split = fg_split(n_photos=23, sketches_per_photo=(1, 2, 3), n_distractors=4)
    held = [hold_out_fold(split, 5, f, seed=4) for f in range(5)]
    photo_sets = [{p.id for p in h.photos} for _, h, _ in held]
    with_sketches = {s.photo_id for s in split.sketches}
    assert set().union(*photo_sets) == with_sketches  # every photo with sketches is tested once
    assert sum(len(s) for s in photo_sets) == len(with_sketches)  # ... and only once
    assert sorted(len(s) for s in photo_sets) == [4, 4, 5, 5, 5]  # near-equal folds
    for rest, out, record in held:
        assert {s.photo_id for s in out.sketches} == {p.id for p in out.photos}  # sketches follow their photo
        assert not {p.id for p in rest.photos} & {p.id for p in out.photos}
        assert not {s.photo_id for s in rest.sketches} & {p.id for p in out.photos}
        assert {p.id for p in rest.photos} >= {f"d{j:03d}" for j in range(4)}  # distractors stay in training
        assert len(rest.sketches) + len(out.sketches) == len(split.sketches)
        assert record["heldout_photo_ids"] == [p.id for p in out.photos]
        # the validation split for model selection comes from the rest: disjoint from the held-out fold
        _, val, _ = carve_validation(rest, 0.2, seed=0)
        assert not {p.id for p in val.photos} & {p.id for p in out.photos}
    assert hold_out_fold(split, 5, 2, seed=4)[2] == held[2][2]  # seeded: the same folds again
    assert hold_out_fold(split, 5, 2, seed=5)[2] != held[2][2]
    with pytest.raises(ConfigError):
        hold_out_fold(split, 1, 0)
    with pytest.raises(ConfigError):
        hold_out_fold(split, 5, 5)


def test_cross_validation_folds_are_disjoint_by_class():
    from sbir.data.splits import hold_out_class_fold

    classes = tuple(f"c{i:02d}" for i in range(12))
    split = cat_split(classes=classes, n_photos=2, n_sketches=2)
    # A class with photos but no sketches cannot be a zero-shot query class: it is never held out.
    split.photos.append(PhotoRecord(id="lonely", image=FileRef(Path("lonely.png")), label="photo_only"))
    folds = [hold_out_class_fold(split, 5, f, seed=3) for f in range(5)]
    held = [set(h) for h, _ in folds]
    assert set().union(*held) == set(classes)  # every class is unseen in exactly one fold
    assert sum(len(h) for h in held) == len(classes)
    assert sorted(len(h) for h in held) == [2, 2, 2, 3, 3]  # near-equal folds
    for h, record in folds:
        assert record["heldout_classes"] == sorted(h) and record["by"] == "class"
    assert hold_out_class_fold(split, 5, 1, seed=3) == folds[1]  # seeded: the same folds again
    assert [hold_out_class_fold(split, 5, f, seed=4)[0] for f in range(5)] != [h for h, _ in folds]
    with pytest.raises(ConfigError):
        hold_out_class_fold(split, 1, 0)
    with pytest.raises(ConfigError):
        hold_out_class_fold(split, 5, 5)
    with pytest.raises(DataError, match="fewer than 13 folds"):
        hold_out_class_fold(split, 13, 0)
