"""Dataset format modules and the format registry, on generated folders and on ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from sbir.data.formats import FORMATS, category, detect_format, get_format, load_dataset, paired, qmul_v1, sketchy
from sbir.data.records import ArrayRef, FileRef
from sbir.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def img(path: Path, value: int = 0, size: int = 8) -> Path:
    """Write a tiny greyscale image (format from the suffix) filled with ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)
    return path


def junk(folder: Path) -> None:
    """Files every loader must ignore."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._hidden.png").write_bytes(b"mac resource fork, not a png")
    (folder / "Thumbs.db").write_bytes(b"\x01\x02")


def ids(records) -> list[str]:
    return [r.id for r in records]


# ============================================================== paired


def make_paired(root: Path, with_test: bool = True) -> Path:
    a, b = root / "trainA", root / "trainB"
    img(b / "00001.jpg", 10)
    img(b / "00002.png", 20)
    img(b / "shoe_left.png", 30)
    img(b / "shoe.png", 40)
    img(b / "lonely.png", 50)  # a photo without sketches stays in the gallery
    img(a / "00001_01.png", 1)
    img(a / "00001_02.jpeg", 2)
    img(a / "00002.png", 3)  # one-sketch-per-photo naming: same stem as the photo
    img(a / "shoe_left_3.png", 4)  # longest matching prefix wins: shoe_left, not shoe
    img(a / "shoe_9.jpg", 5)
    junk(a)
    junk(b)
    if with_test:
        img(root / "testB" / "t_1.png", 60)
        img(root / "testA" / "t_1_a.png", 6)
    return root


def test_paired_pairing(tmp_path):
    ds = paired.load(make_paired(tmp_path))
    assert ds.format == "paired" and set(ds.splits) == {"train", "test"}
    tr = ds.splits["train"]
    assert ids(tr.photos) == ["00001", "00002", "lonely", "shoe", "shoe_left"]
    pairs = {s.id: s.photo_id for s in tr.sketches}
    assert pairs == {
        "00001_01": "00001",
        "00001_02": "00001",
        "00002": "00002",
        "shoe_left_3": "shoe_left",
        "shoe_9": "shoe",
    }
    assert ids(tr.sketches) == sorted(pairs)
    assert all(r.label is None for r in (*tr.photos, *tr.sketches))
    assert all(isinstance(r.image, FileRef) for r in (*tr.photos, *tr.sketches))
    # references point at the right files and load through the one loader
    by_id = {s.id: s for s in tr.sketches}
    assert by_id["00001_02"].image.path.name == "00001_02.jpeg"
    assert np.asarray(by_id["shoe_9"].image.load())[0, 0].tolist() == [5, 5, 5]
    photo = {p.id: p for p in tr.photos}["00001"]
    assert photo.image.path.suffix == ".jpg"
    te = ds.splits["test"]
    assert [(s.id, s.photo_id) for s in te.sketches] == [("t_1_a", "t_1")]
    assert ds.skipped == []


def test_paired_ignores_non_images(tmp_path):
    tr = paired.load(make_paired(tmp_path)).splits["train"]
    names = {r.image.path.name for r in (*tr.photos, *tr.sketches)}
    assert not any(n.startswith(".") or not n.endswith((".png", ".jpg", ".jpeg")) for n in names)
    assert len(tr.photos) == 5 and len(tr.sketches) == 5


def test_paired_orphan_error_names_file(tmp_path):
    root = make_paired(tmp_path)
    img(root / "trainA" / "00099_01.png")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    msg = str(info.value)
    assert str(root / "trainA" / "00099_01.png") in msg
    assert "--skip-orphans" in msg and "00099" in msg


def test_paired_skip_orphans(tmp_path):
    root = make_paired(tmp_path)
    img(root / "trainA" / "00099_01.png")
    img(root / "trainA" / "nomatch.png")
    img(root / "testA" / "zzz_1.png")
    ds = load_dataset(root, skip_orphans=True)
    assert len(ds.skipped) == 3
    assert str(root / "trainA" / "00099_01.png") in ds.skipped
    assert str(root / "testA" / "zzz_1.png") in ds.skipped
    assert len(ds.splits["train"].sketches) == 5 and len(ds.splits["test"].sketches) == 1


def test_paired_missing_b_folder(tmp_path):
    img(tmp_path / "trainA" / "1_1.png")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(tmp_path / "trainA") in str(info.value) and "trainB" in str(info.value)


def test_paired_missing_a_folder(tmp_path):
    make_paired(tmp_path, with_test=False)
    img(tmp_path / "testB" / "1.png")
    with pytest.raises(DataError, match="testA"):
        load_dataset(tmp_path)


def test_paired_only_test_split(tmp_path):
    img(tmp_path / "testB" / "1.png")
    img(tmp_path / "testA" / "1_0.png")
    ds = load_dataset(tmp_path)
    assert list(ds.splits) == ["test"]


def test_paired_split_without_sketches_names_folder(tmp_path):
    make_paired(tmp_path, with_test=False)
    junk(tmp_path / "testA")
    img(tmp_path / "testB" / "1.png")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(tmp_path / "testA") in str(info.value) and "no sketches" in str(info.value)


def test_paired_split_without_photos_names_folder(tmp_path):
    img(tmp_path / "trainA" / "1_1.png")
    junk(tmp_path / "trainB")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path, skip_orphans=True)
    assert str(tmp_path / "trainB") in str(info.value) and "no photos" in str(info.value)


def test_paired_duplicate_stem(tmp_path):
    make_paired(tmp_path, with_test=False)
    img(tmp_path / "trainB" / "00002.jpg")  # 00002.png exists too
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert "00002.png" in str(info.value) and "00002.jpg" in str(info.value)


def test_paired_underscore_stems_prefer_exact_then_longest(tmp_path):
    b, a = tmp_path / "trainB", tmp_path / "trainA"
    for stem in ("a", "a_b", "a_b_c"):
        img(b / f"{stem}.png")
    for stem in ("a_b_c", "a_b_c_1", "a_b_x", "a_zz", "a_b_x_y"):
        img(a / f"{stem}.png")
    tr = load_dataset(tmp_path).splits["train"]
    assert {s.id: s.photo_id for s in tr.sketches} == {
        "a_b_c": "a_b_c",
        "a_b_c_1": "a_b_c",
        "a_b_x": "a_b",
        "a_zz": "a",
        "a_b_x_y": "a_b",
    }


def test_paired_match_photo_stem():
    stems = {"x", "x_y"}
    assert paired.match_photo_stem("x_y_1", stems) == "x_y"
    assert paired.match_photo_stem("x_1", stems) == "x"
    assert paired.match_photo_stem("x", stems) == "x"
    assert paired.match_photo_stem("y_1", stems) is None
    assert paired.match_photo_stem("x1", stems) is None


# ============================================================== qmul_v1


def write_qmul(
    root: Path, cat: str = "shoes", n: int = 5, split: str = "train", size: int = 16, seed: int = 0
) -> tuple:
    rng = np.random.default_rng(seed)
    sk = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    ed = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / f"{cat}_sketch_db_{split}.mat", {"data": sk})
    scipy.io.savemat(root / f"{cat}_edge_db_{split}.mat", {"data": ed})
    return sk, ed


def test_qmul_pairs_by_index(tmp_path):
    sk, ed = write_qmul(tmp_path, n=5)
    ds = load_dataset(tmp_path)
    assert ds.format == "qmul_v1" and list(ds.splits) == ["train"]
    tr = ds.splits["train"]
    assert ids(tr.photos) == ["00000", "00001", "00002", "00003", "00004"]
    assert ids(tr.sketches) == [f"{i:05d}_0" for i in range(5)]
    assert [s.photo_id for s in tr.sketches] == ids(tr.photos)
    assert tr.triplets is None
    ref = tr.sketches[3].image
    assert isinstance(ref, ArrayRef) and ref.index == 3
    assert ref.origin == str(tmp_path / "shoes_sketch_db_train.mat")
    assert np.array_equal(np.asarray(ref.load())[..., 0], sk[3])
    assert np.array_equal(np.asarray(tr.photos[2].image.load())[..., 1], ed[2])
    assert "shoes_edge_db_train.mat[2]" in tr.photos[2].image.describe()


def test_qmul_reads_train_and_test(tmp_path):
    write_qmul(tmp_path, n=4, split="train")
    write_qmul(tmp_path, n=3, split="test", seed=1)
    ds = load_dataset(tmp_path)
    assert set(ds.splits) == {"train", "test"}
    assert len(ds.splits["test"].photos) == 3 and len(ds.splits["test"].sketches) == 3


def test_qmul_triplets_from_annotation(tmp_path):
    write_qmul(tmp_path, n=4)
    ann = {
        "train": {
            "images": [f"{i + 1}.jpg" for i in range(4)],
            "sketches": [f"{i + 1}.png" for i in range(4)],
            # per sketch: [more similar, less similar]; 65535 = upstream "missing" marker
            "triplets": [[[0, 1], [0, 2]], [[1, 3]], [], [[3, 0], [65535, 1], [2, 2]]],
        }
    }
    (tmp_path / "shoes_annotation.json").write_text(json.dumps(ann))
    tr = load_dataset(tmp_path).splits["train"]
    assert tr.triplets.dtype == np.int64
    assert tr.triplets.tolist() == [[0, 0, 1], [0, 0, 2], [1, 1, 3], [3, 3, 0]]


def test_qmul_bad_annotation(tmp_path):
    write_qmul(tmp_path, n=3)
    ann_path = tmp_path / "shoes_annotation.json"
    ann_path.write_text(json.dumps({"train": {"triplets": [[[0, 1]]]}}))  # 1 list for 3 sketches
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(ann_path) in str(info.value)
    ann_path.write_text(json.dumps({"train": {"triplets": [[[0, 7]], [], []]}}))  # photo 7 does not exist
    with pytest.raises(DataError, match="outside"):
        load_dataset(tmp_path)
    ann_path.write_text("{not json")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(ann_path) in str(info.value)


def test_qmul_count_mismatch_names_both_files(tmp_path):
    write_qmul(tmp_path, n=5)
    scipy.io.savemat(tmp_path / "shoes_edge_db_train.mat", {"data": np.zeros((4, 16, 16), np.uint8)})
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    msg = str(info.value)
    assert "shoes_sketch_db_train.mat" in msg and "shoes_edge_db_train.mat" in msg


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"data": np.zeros((3, 16, 16), np.float64)}, "uint8"),
        ({"data": np.zeros((16, 16), np.uint8)}, "uint8"),  # 2-D
        ({"images": np.zeros((3, 16, 16), np.uint8)}, "no variable 'data'"),
    ],
)
def test_qmul_bad_arrays(tmp_path, payload, match):
    write_qmul(tmp_path, n=3)
    scipy.io.savemat(tmp_path / "shoes_sketch_db_train.mat", payload)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(tmp_path)
    assert str(tmp_path / "shoes_sketch_db_train.mat") in str(info.value)


def test_qmul_corrupt_mat(tmp_path):
    write_qmul(tmp_path, n=3)
    bad = tmp_path / "shoes_edge_db_train.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(bad) in str(info.value)
    bad.write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(bad) in str(info.value)


def test_qmul_missing_partner(tmp_path):
    write_qmul(tmp_path, n=3)
    (tmp_path / "shoes_edge_db_train.mat").unlink()
    with pytest.raises(DataError, match="shoes_edge_db_train.mat"):
        load_dataset(tmp_path)


def test_qmul_several_categories_refused(tmp_path):
    write_qmul(tmp_path, cat="shoes", n=3)
    write_qmul(tmp_path, cat="chairs", n=3)
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert "chairs" in str(info.value) and "shoes" in str(info.value) and "own folder" in str(info.value)


def test_qmul_v73_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    sk, _ = write_qmul(tmp_path, n=3, size=8)
    arr = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    path = tmp_path / "shoes_edge_db_train.mat"
    path.unlink()
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("data", data=arr.transpose(2, 1, 0))  # MATLAB is column-major
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ") + bytes(8) + b"\x00\x02IM"
    with open(path, "r+b") as fh:
        fh.write(header)
    tr = load_dataset(tmp_path).splits["train"]
    assert np.array_equal(np.asarray(tr.photos[1].image.load())[..., 0], arr[1])


# ============================================================== sketchy


def make_sketchy(root: Path) -> Path:
    img(root / "photo" / "cat" / "n01_5.jpg")
    img(root / "photo" / "cat" / "n01_6.jpg")  # no sketch: stays as a distractor
    img(root / "photo" / "dog" / "x-y.jpg")  # '-' inside the photo id
    img(root / "sketch" / "cat" / "n01_5-1.png")
    img(root / "sketch" / "cat" / "n01_5-2.png")
    img(root / "sketch" / "cat" / "n01_5-10.png")
    img(root / "sketch" / "dog" / "x-y-1.png")
    junk(root / "photo" / "cat")
    junk(root / "sketch" / "dog")
    return root


def test_sketchy_instance_pairs(tmp_path):
    ds = load_dataset(make_sketchy(tmp_path))
    assert ds.format == "sketchy" and list(ds.splits) == ["train"]
    tr = ds.splits["train"]
    assert ids(tr.photos) == ["cat/n01_5", "cat/n01_6", "dog/x-y"]
    assert [(s.id, s.photo_id, s.label) for s in tr.sketches] == [
        ("cat/n01_5-1", "cat/n01_5", "cat"),
        ("cat/n01_5-10", "cat/n01_5", "cat"),
        ("cat/n01_5-2", "cat/n01_5", "cat"),
        ("dog/x-y-1", "dog/x-y", "dog"),
    ]
    assert [p.label for p in tr.photos] == ["cat", "cat", "dog"]
    assert tr.labels() == ["cat", "dog"]


def test_sketchy_orphans(tmp_path):
    root = make_sketchy(tmp_path)
    orphan_file = img(root / "sketch" / "bird" / "b1-1.png")  # class missing on the photo side
    img(root / "sketch" / "cat" / "n01_7-1.png")  # photo missing in an existing class
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert str(orphan_file) in str(info.value)
    ds = load_dataset(root, skip_orphans=True)
    assert ds.skipped == sorted([str(orphan_file), str(root / "sketch" / "cat" / "n01_7-1.png")])
    assert len(ds.splits["train"].sketches) == 4


def test_sketchy_train_test_subfolders(tmp_path):
    make_sketchy(tmp_path / "train")
    img(tmp_path / "test" / "photo" / "cow" / "c1.jpg")
    img(tmp_path / "test" / "sketch" / "cow" / "c1-1.png")
    ds = load_dataset(tmp_path)
    assert ds.format == "sketchy" and set(ds.splits) == {"train", "test"}
    assert [s.photo_id for s in ds.splits["test"].sketches] == ["cow/c1"]


def test_sketchy_image_outside_class_folder(tmp_path):
    root = make_sketchy(tmp_path)
    stray = img(root / "sketch" / "loose-1.png")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert str(stray) in str(info.value) and "class" in str(info.value)


# ============================================================== category


def make_category(root: Path) -> Path:
    for cls, n_photos, n_sketches in (("apple", 3, 2), ("bee", 2, 3), ("car", 1, 0)):
        for i in range(n_photos):
            img(root / "photos" / cls / f"p{i}.jpg")
        for i in range(n_sketches):
            img(root / "sketches" / cls / f"{i}.png")
    junk(root / "photos" / "apple")
    junk(root / "sketches" / "bee")
    return root


def test_category_labels(tmp_path):
    ds = load_dataset(make_category(tmp_path))
    assert ds.format == "category" and list(ds.splits) == ["train"]
    tr = ds.splits["train"]
    assert ids(tr.photos) == ["apple/p0", "apple/p1", "apple/p2", "bee/p0", "bee/p1", "car/p0"]
    assert ids(tr.sketches) == ["apple/0", "apple/1", "bee/0", "bee/1", "bee/2"]
    assert all(s.photo_id is None for s in tr.sketches)
    assert [s.label for s in tr.sketches] == ["apple", "apple", "bee", "bee", "bee"]
    assert tr.labels() == ["apple", "bee", "car"]


def test_category_sketch_class_without_photos(tmp_path):
    root = make_category(tmp_path)
    img(root / "sketches" / "dog" / "0.png")
    img(root / "sketches" / "dog" / "1.png")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert "'dog'" in str(info.value) and "--skip-orphans" in str(info.value)
    ds = load_dataset(root, skip_orphans=True)
    assert len(ds.skipped) == 2 and all("dog" in s for s in ds.skipped)


def test_category_empty_photo_class(tmp_path):
    root = make_category(tmp_path)
    junk(root / "photos" / "emptyclass")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert str(root / "photos" / "emptyclass") in str(info.value)


def test_category_train_test(tmp_path):
    make_category(tmp_path / "train")
    img(tmp_path / "test" / "photos" / "zebra" / "z.jpg")
    img(tmp_path / "test" / "sketches" / "zebra" / "z.png")
    ds = load_dataset(tmp_path)
    assert set(ds.splits) == {"train", "test"}
    assert ds.splits["test"].labels() == ["zebra"]


def test_category_half_split_folder(tmp_path):
    make_category(tmp_path / "train")
    img(tmp_path / "test" / "photos" / "zebra" / "z.jpg")  # no test/sketches
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(tmp_path / "test" / "sketches") in str(info.value)


# ============================================================== registry


def test_registry_order():
    assert list(FORMATS) == ["mixture", "paired", "qmul_v1", "sketchy", "category", "quickdraw", "chairv2"]
    for name, module in FORMATS.items():
        assert module.NAME == name and callable(module.detect) and callable(module.load) and module.LAYOUT


def test_detection(tmp_path):
    make_paired(tmp_path / "p")
    write_qmul(tmp_path / "q")
    make_sketchy(tmp_path / "s")
    make_category(tmp_path / "c")
    assert detect_format(tmp_path / "p") == "paired"
    assert detect_format(tmp_path / "q") == "qmul_v1"
    assert detect_format(tmp_path / "s") == "sketchy"
    assert detect_format(tmp_path / "c") == "category"
    assert not category.detect(tmp_path / "s") and not sketchy.detect(tmp_path / "c")
    assert not qmul_v1.detect(tmp_path / "p") and not paired.detect(tmp_path / "q")


def test_detect_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        detect_format(tmp_path / "missing")
    f = tmp_path / "file.png"
    img(f)
    with pytest.raises(DataError, match="not a folder"):
        detect_format(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError, match="empty"):
        detect_format(empty)
    with pytest.raises(DataError, match="empty"):
        load_dataset(empty, format="paired")
    other = tmp_path / "other"
    img(other / "images" / "a.png")
    with pytest.raises(DataError) as info:
        detect_format(other)
    msg = str(info.value)
    for looked_for in ("trainA", "_sketch_db_", "photo/", "photos/", "images/"):
        assert looked_for in msg


def test_detect_suggests_subfolder(tmp_path):
    write_qmul(tmp_path / "shoes")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    assert str(tmp_path / "shoes") in str(info.value)


def test_forced_format(tmp_path):
    root = make_paired(tmp_path)
    assert load_dataset(root, format="paired").format == "paired"
    assert load_dataset(root, format="auto").format == "paired"
    with pytest.raises(DataError, match="photos/"):
        load_dataset(root, format="category")
    with pytest.raises(DataError, match="_sketch_db_"):
        load_dataset(root, format="qmul_v1")
    with pytest.raises(ConfigError) as info:
        load_dataset(root, format="tuberlin")
    for name in FORMATS:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        get_format("nope")


def test_loading_is_deterministic(tmp_path):
    a = load_dataset(make_paired(tmp_path / "a"))
    b = load_dataset(make_paired(tmp_path / "b"))
    for name in a.splits:
        assert ids(a.splits[name].photos) == ids(b.splits[name].photos)
        assert ids(a.splits[name].sketches) == ids(b.splits[name].sketches)


def test_root_is_absolute(tmp_path, monkeypatch):
    make_category(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("data")
    assert ds.root.is_absolute()
    assert ds.splits["train"].photos[0].image.path.is_absolute()


# ============================================================== real data


@pytest.mark.shared_data
def test_real_qmul_shoes():
    ds = load_dataset(shared("qmul_v1", "shoes"))
    assert ds.format == "qmul_v1" and list(ds.splits) == ["train"]
    tr = ds.splits["train"]
    assert len(tr.photos) == 304 and len(tr.sketches) == 304
    assert np.asarray(tr.sketches[0].image.load()).shape == (256, 256, 3)
    t = tr.triplets
    assert t.shape == (304 * 135, 3) and t.min() >= 0 and t[:, 1:].max() < 304
    assert np.array_equal(np.unique(t[:, 0]), np.arange(304))
    # the human annotations mostly rank a sketch's own photo as the more similar one
    own = t[(t[:, 1] == t[:, 0]) | (t[:, 2] == t[:, 0])]
    assert (own[:, 1] == own[:, 0]).mean() > 0.9


@pytest.mark.shared_data
def test_real_qmul_chairs_and_handbags():
    chairs = load_dataset(shared("qmul_v1", "chairs")).splits["train"]
    assert len(chairs.photos) == len(chairs.sketches) == 200
    assert chairs.triplets.shape == (200 * 135, 3)
    handbags = load_dataset(shared("qmul_v1", "handbags")).splits["train"]
    assert len(handbags.photos) == len(handbags.sketches) == 400
    assert handbags.triplets is None  # the handbag .mat holds true-match triplets, not human annotations


@pytest.mark.shared_data
def test_real_sketchy_mini():
    ds = load_dataset(shared("sketchy_mini"))
    assert ds.format == "sketchy" and list(ds.splits) == ["train"] and ds.skipped == []
    tr = ds.splits["train"]
    assert len(tr.photos) == 3125 and len(tr.sketches) == 3125
    assert len(tr.labels()) == 125
    photo_ids = set(tr.photo_index())
    assert all(s.photo_id in photo_ids for s in tr.sketches)
    assert len({s.photo_id for s in tr.sketches}) == 578  # the README's instance-pair count
    assert all(s.label == s.photo_id.split("/")[0] for s in tr.sketches)
