"""FineGrainedPairs on tiny generated splits (PNG files and in-memory arrays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sbir.config import AugmentConfig
from sbir.data.pairs import FineGrainedPairs
from sbir.data.records import ArrayRef, FileRef, PhotoRecord, SketchRecord, Split
from sbir.data.sampler import UniquePhotoBatchSampler
from sbir.data.transforms import eval_transform, train_transform
from sbir.errors import DataError, ImageLoadError

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def make_file_split(tmp_path, n_photos=4, sketches_per_photo=(2, 1, 3, 1)):
    rng = np.random.default_rng(0)
    photos, sketches = [], []
    for p in range(n_photos):
        colour = rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8)
        path = tmp_path / f"{p:05d}.png"
        Image.fromarray(colour).save(path)
        photos.append(PhotoRecord(id=f"{p:05d}", image=FileRef(path)))
        for k in range(sketches_per_photo[p]):
            sk = np.full((48, 30), 255, dtype=np.uint8)
            sk[5 + p : 20 + p, 3 + k] = 0
            spath = tmp_path / f"{p:05d}_{k + 1:02d}.png"
            Image.fromarray(sk, mode="L").save(spath)
            sketches.append(SketchRecord(id=f"{p:05d}_{k + 1:02d}", image=FileRef(spath), photo_id=f"{p:05d}"))
    # Sketches listed in an order unrelated to photos.
    sketches = sketches[::-1]
    return Split("train", photos, sketches)


def make_array_split(n_photos=3):
    photo_arr = np.stack([np.full((16, 16, 3), 40 * (p + 1), dtype=np.uint8) for p in range(n_photos)])
    sketch_arr = np.stack([np.full((16, 16), 10 * (s + 1), dtype=np.uint8) for s in range(2 * n_photos)])
    photos = [PhotoRecord(f"ph{p}", ArrayRef(photo_arr, p, "photos.mat")) for p in range(n_photos)]
    sketches = [
        SketchRecord(f"sk{s}", ArrayRef(sketch_arr, s, "sketches.mat"), photo_id=f"ph{s % n_photos}")
        for s in range(2 * n_photos)
    ]
    return Split("train", photos, sketches)


class Recording:
    """Wraps a transform and remembers the input pixels and the output of every call."""

    def __init__(self, transform):
        self.transform = transform
        self.calls: list[tuple[np.ndarray, torch.Tensor]] = []

    def __call__(self, img):
        out = self.transform(img)
        self.calls.append((np.asarray(img.convert("RGB")).copy(), out))
        return out

    def input_of(self, out: torch.Tensor) -> np.ndarray:
        """The image this transform turned into ``out`` (the very tensor object)."""
        found = [inp for inp, o in self.calls if o is out]
        assert len(found) == 1, "output not produced by exactly one call of this transform"
        return found[0]


def pixels(path) -> np.ndarray:
    """A file's RGB pixels read directly with PIL (independent of sbir's loader and records)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_items_pair_each_sketch_with_its_photo_in_two_random_views(tmp_path):
    split = make_file_split(tmp_path)
    aug = AugmentConfig()
    ts = Recording(train_transform(32, MEAN, STD, aug, "sketch"))
    tp = Recording(train_transform(32, MEAN, STD, aug, "photo"))
    ds = FineGrainedPairs(split, ts, tp)
    assert len(ds) == len(split.sketches) == 7
    plain = eval_transform(32, MEAN, STD)
    torch.manual_seed(0)
    for i in range(len(ds)):
        ts.calls.clear()
        tp.calls.clear()
        item = ds[i]
        sketch = split.sketches[i]
        assert set(item) == {"sketch", "sketch_aug", "photo", "photo_aug", "group", "index"}
        for k in ("sketch", "sketch_aug", "photo", "photo_aug"):
            assert item[k].shape == (3, 32, 32) and item[k].dtype == torch.float32
        assert item["index"] == i
        # The group is the position of the sketch's own photo in split.photos (what the sampler and
        # the loss use to tell positives from negatives).
        assert split.photos[item["group"]].id == sketch.photo_id
        assert ds.photo_ids_for_sampler()[i] == item["group"]
        # Both sketch views are augmentations of this sketch's file, both photo views of the file of
        # the photo it names (read here straight from disk by name, not through the records).
        want_sketch = pixels(tmp_path / f"{sketch.id}.png")
        want_photo = pixels(tmp_path / f"{sketch.photo_id}.png")
        assert len(ts.calls) == 2 and len(tp.calls) == 2
        np.testing.assert_array_equal(ts.input_of(item["sketch"]), want_sketch)
        np.testing.assert_array_equal(ts.input_of(item["sketch_aug"]), want_sketch)
        np.testing.assert_array_equal(tp.input_of(item["photo"]), want_photo)
        np.testing.assert_array_equal(tp.input_of(item["photo_aug"]), want_photo)
        # Two independent random views: they differ from each other and from the plain image.
        assert not torch.equal(item["sketch"], item["sketch_aug"])
        assert not torch.equal(item["photo"], item["photo_aug"])
        plain_photo = plain(Image.fromarray(want_photo))
        assert not torch.equal(item["photo"], plain_photo) and not torch.equal(item["photo_aug"], plain_photo)


def test_photo_matches_its_sketch(tmp_path):
    split = make_file_split(tmp_path)
    t = eval_transform(24, MEAN, STD)
    ds = FineGrainedPairs(split, t, t, two_views=False)
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"sketch", "photo", "group", "index"}
        photo = split.photos[item["group"]]
        assert photo.id == split.sketches[i].photo_id
        assert torch.equal(item["photo"], t(photo.image.load()))
        assert torch.equal(item["sketch"], t(split.sketches[i].image.load()))


def test_aug_transforms_used_for_second_views():
    split = make_array_split()
    plain = eval_transform(16, MEAN, STD)
    flipped = lambda img: plain(img.transpose(Image.FLIP_LEFT_RIGHT)) + 100  # noqa: E731
    ds = FineGrainedPairs(split, plain, plain, sketch_aug_transform=flipped, photo_aug_transform=flipped)
    for i in range(len(ds)):
        item = ds[i]
        sketch_img = split.sketches[i].image.load()
        photo_img = split.photos[i % 3].image.load()  # sketch sk{i} belongs to photo ph{i % 3}
        assert item["group"] == i % 3
        assert torch.equal(item["sketch"], plain(sketch_img)) and torch.equal(item["photo"], plain(photo_img))
        # the second views come from the aug transforms, applied to the same images
        assert torch.equal(item["sketch_aug"], flipped(sketch_img))
        assert torch.equal(item["photo_aug"], flipped(photo_img))
        # the array images are uniform grey levels: 10 * (i + 1) for sketch i, 40 * (p + 1) for photo p
        assert np.asarray(sketch_img)[0, 0, 0] == 10 * (i + 1) and np.asarray(photo_img)[0, 0, 0] == 40 * (i % 3 + 1)


def test_default_collate_with_unique_photo_sampler(tmp_path):
    split = make_file_split(tmp_path)
    t = eval_transform(16, MEAN, STD)
    ds = FineGrainedPairs(split, t, t)
    sampler = UniquePhotoBatchSampler(ds.photo_ids_for_sampler(), batch_size=3, seed=0)
    batches = list(DataLoader(ds, batch_sampler=sampler))
    assert len(batches) == len(sampler) == 2
    for b in batches:
        assert b["sketch"].shape == b["photo_aug"].shape == (3, 3, 16, 16)
        assert b["group"].dtype == torch.int64 and len(set(b["group"].tolist())) == 3
        assert b["index"].tolist() in [list(x) for x in sampler.batches()]
        # After collation, row r still pairs sketch b["index"][r] with its own photo.
        for r, i in enumerate(b["index"].tolist()):
            sketch = split.sketches[i]
            assert split.photos[int(b["group"][r])].id == sketch.photo_id
            assert torch.equal(b["sketch"][r], t(Image.fromarray(pixels(tmp_path / f"{sketch.id}.png"))))
            want_photo = t(Image.fromarray(pixels(tmp_path / f"{sketch.photo_id}.png")))
            assert torch.equal(b["photo"][r], want_photo) and torch.equal(b["photo_aug"][r], want_photo)


def test_cache_decoded(tmp_path):
    split = make_file_split(tmp_path)
    t = eval_transform(16, MEAN, STD)
    uncached = FineGrainedPairs(split, t, t)
    uncached[0]
    assert uncached.cached_images() == 0
    ds = FineGrainedPairs(split, t, t, cache_decoded=True)
    first = ds[0]
    assert ds.cached_images() == 2
    # Delete the files: cached images are still served, uncached ones fail naming the file.
    for p in tmp_path.glob("*.png"):
        p.unlink()
    again = ds[0]
    assert torch.equal(first["sketch"], again["sketch"]) and torch.equal(first["photo"], again["photo"])
    with pytest.raises(ImageLoadError, match=r"\.png"):
        ds[1]


def test_preload(tmp_path):
    split = make_file_split(tmp_path)
    t = eval_transform(16, MEAN, STD)
    ds = FineGrainedPairs(split, t, t)
    before = [ds[i] for i in range(len(ds))]
    ds.preload()
    assert ds.cache_decoded and ds.cached_images() == len(split.sketches) + len(split.photos)
    for p in tmp_path.glob("*.png"):
        p.unlink()
    # Served from memory: the same pixels as read from the files before they were deleted.
    for i in range(len(ds)):
        item = ds[i]
        for k in ("sketch", "sketch_aug", "photo", "photo_aug"):
            assert torch.equal(item[k], before[i][k]), (i, k)


def test_preload_reports_every_broken_file(tmp_path):
    split = make_file_split(tmp_path)
    t = eval_transform(16, MEAN, STD)
    broken = [split.sketches[0].image.path, split.photos[2].image.path]
    open(broken[0], "wb").close()  # 0 bytes
    with open(broken[1], "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError) as info:
        FineGrainedPairs(split, t, t).preload()
    msg = str(info.value)
    assert msg.startswith("2 images cannot be read") and all(str(p) in msg for p in broken)
    Image.new("RGB", (8, 8)).save(broken[1])
    with pytest.raises(ImageLoadError, match=str(broken[0])):  # a single bad file keeps its own error
        FineGrainedPairs(split, t, t).preload()


def test_errors_name_the_sketch():
    split = make_array_split()
    t = eval_transform(16, MEAN, STD)
    orphan = Split("train", split.photos, split.sketches + [SketchRecord("lonely_01", split.sketches[0].image)])
    with pytest.raises(DataError, match=r"sketch 'lonely_01' \(sketches.mat\[0\]\).*no photo_id"):
        FineGrainedPairs(orphan, t, t)
    missing = Split("train", split.photos, [SketchRecord("x_01", split.sketches[0].image, photo_id="nope")])
    with pytest.raises(DataError, match=r"sketch 'x_01'.*'nope'.*not among"):
        FineGrainedPairs(missing, t, t)
    with pytest.raises(DataError, match="no sketches"):
        FineGrainedPairs(Split("train", split.photos, []), t, t)
    with pytest.raises(DataError, match="'ph0' more than once"):
        FineGrainedPairs(Split("train", split.photos + split.photos[:1], split.sketches), t, t)
    ds = FineGrainedPairs(split, t, t)
    with pytest.raises(IndexError):
        ds[len(ds)]
