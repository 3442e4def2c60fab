"""The offline demo dataset generator: layout, determinism, image statistics, strokes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sbir.data.image_io import load_image
from sbir.data.strokes import StrokeError, rasterize_strokes
from sbir.data.synthetic import (
    draw_object_strokes,
    generate_paired_dataset,
    load_strokes,
    object_contours,
    object_mask,
    object_spec_for,
    render_photo,
    sketch_for_photo,
)
from sbir.errors import ConfigError, DataError

SIZE = 64
N_TRAIN, N_TEST, PER = 6, 3, 2
SEED = 3


def _gen(out, **kw):
    args = dict(
        n_train_photos=N_TRAIN, n_test_photos=N_TEST, sketches_per_photo=PER, image_size=SIZE, seed=SEED, progress=False
    )
    args.update(kw)
    return generate_paired_dataset(out, **args)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return _gen(tmp_path_factory.mktemp("syn") / "data")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _saturation(arr: np.ndarray) -> np.ndarray:
    a = arr.astype(np.float64)
    mx, mn = a.max(axis=2), a.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0.0)


def test_layout_and_names(ds):
    train_b = sorted(p.name for p in (ds / "trainB").iterdir())
    test_b = sorted(p.name for p in (ds / "testB").iterdir())
    assert train_b == [f"{i:05d}.png" for i in range(N_TRAIN)]
    assert test_b == [f"{i:05d}.png" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    for sk, ph, n in (("trainA", "trainB", N_TRAIN), ("testA", "testB", N_TEST)):
        sketches = sorted((ds / sk).iterdir())
        assert len(sketches) == n * PER
        for p in sketches:
            stem, num = p.stem.rsplit("_", 1)
            assert num in {f"{j:02d}" for j in range(1, PER + 1)}
            assert (ds / ph / f"{stem}.png").is_file(), f"{p} has no photo"
    assert (ds / "README.txt").read_text().startswith("sbir synthetic")
    assert "testA/00006_01.png" in (ds / "README.txt").read_text()


def test_images_are_rgb_of_the_right_size(ds):
    for p in ds.rglob("*.png"):
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE), p
        assert load_image(p).size == (SIZE, SIZE)


def test_deterministic_given_seed(ds, tmp_path):
    again = _gen(tmp_path / "again", progress=True)
    assert _files(again) == _files(ds)


def test_different_seed_differs(ds, tmp_path):
    other = _gen(tmp_path / "other", seed=SEED + 1)
    a, b = _files(ds), _files(other)
    assert a.keys() == b.keys()
    photos = [k for k in a if "B/" in k]
    assert all(a[k] != b[k] for k in photos)


def test_sketches_are_dark_strokes_on_white_and_photos_are_not(ds):
    for p in sorted((ds / "testA").iterdir()) + sorted((ds / "trainA").iterdir()):
        g = np.asarray(load_image(p).convert("L"))
        assert (g > 240).mean() > 0.8, f"{p} is not mostly white"
        assert g.min() < 80 and (g < 128).mean() > 0.01, f"{p} has no dark strokes"
        assert _saturation(np.asarray(load_image(p))).max() < 0.05  # grey ink
    for p in sorted((ds / "testB").iterdir()) + sorted((ds / "trainB").iterdir()):
        a = np.asarray(load_image(p))
        g = a.astype(np.float64).mean(axis=2)
        assert (g > 240).mean() < 0.1, f"{p} looks like a drawing on white"
        assert _saturation(a).mean() > 0.1, f"{p} is nearly grey"
        assert a.reshape(-1, 3).std(axis=0).mean() > 8, f"{p} is nearly flat"


def test_two_sketches_of_a_photo_differ(ds):
    a = np.asarray(load_image(ds / "testA" / "00006_01.png").convert("L"))
    b = np.asarray(load_image(ds / "testA" / "00006_02.png").convert("L"))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0


def _dark(path) -> np.ndarray:
    return np.asarray(load_image(path).convert("L")) < 160


def test_strokes_json_matches_the_sketches(ds):
    raw = json.loads((ds / "strokes.json").read_text())
    names = {f"{s}/{p.name}" for s in ("trainA", "testA") for p in (ds / s).iterdir()}
    assert set(raw) == names
    strokes = load_strokes(ds)
    names = sorted(strokes)
    for i, name in enumerate(names):
        st = strokes[name]
        assert st and all(s.ndim == 2 and s.shape[1] == 2 and len(s) >= 2 for s in st)
        allpts = np.concatenate(st)
        assert allpts.min() >= 0 and allpts.max() <= SIZE
        dark = _dark(ds / name)
        near = ndimage.binary_dilation(_dark_of(st), iterations=2)
        own = (dark & near).sum() / dark.sum()
        assert own > 0.95, f"{name}: strokes.json redraws only {own:.2f} of the sketch"
        # another sketch's strokes do not explain this sketch (the check can fail)
        other = strokes[names[(i + PER) % len(names)]]
        wrong = (dark & ndimage.binary_dilation(_dark_of(other), iterations=2)).sum() / dark.sum()
        assert wrong < own - 0.2


def _render(strokes, width=1.5) -> np.ndarray:
    """Strokes in pixel coordinates, drawn as the generator draws them (no fitting)."""
    img = rasterize_strokes(strokes, size=SIZE, stroke_width=width, canvas=(SIZE, SIZE), padding=0, supersample=3)
    return np.asarray(img.convert("L"))


def _dark_of(strokes) -> np.ndarray:
    return _render(strokes) < 160


def test_sketch_for_photo_reproduces_the_files(ds):
    strokes = load_strokes(ds)
    again = sketch_for_photo(SEED, N_TRAIN + 1, 2, SIZE)
    stored = strokes[f"testA/{N_TRAIN + 1:05d}_02.png"]
    assert len(again) == len(stored)
    for a, b in zip(again, stored, strict=False):
        np.testing.assert_allclose(a, b, atol=0.006)


def test_photos_differ_in_shape_and_sketches_follow_their_photo():
    n = 12
    specs = [object_spec_for(7, k) for k in range(n)]
    masks = [object_mask(s, SIZE) for s in specs]
    for i in range(n):
        assert 0.08 < masks[i].mean() < 0.7
        for j in range(i + 1, n):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.9, f"objects {i} and {j} have nearly the same silhouette"
    # chamfer distance from each sketch to every silhouette edge: own photo usually nearest
    dts = [ndimage.distance_transform_edt(~(m ^ ndimage.binary_erosion(m))) for m in masks]
    hits = 0
    for k in range(n):
        dark = _render(sketch_for_photo(7, k, 1, SIZE)) < 160
        d = [dt[dark].mean() for dt in dts]
        hits += int(np.argmin(d) == k)
    assert hits >= n // 2, f"only {hits}/{n} sketches are nearest to their own photo's outline"


def test_strokes_stay_close_to_the_object_outline():
    spec = object_spec_for(1, 4)
    contours = object_contours(spec, 128)
    assert contours and all(c.shape[1] == 2 for c in contours)
    mask = object_mask(spec, 128)
    edge_dt = ndimage.distance_transform_edt(~(mask ^ ndimage.binary_erosion(mask)))
    pts = np.concatenate(contours)
    ij = np.clip(pts[:, ::-1].astype(int), 0, 127)
    near_edge = edge_dt[ij[:, 0], ij[:, 1]] <= 1.5
    inside = mask[ij[:, 0], ij[:, 1]]
    assert (near_edge | inside).all()  # the silhouette's outline, or a decal's outline inside it
    assert near_edge.mean() > 0.6
    a = draw_object_strokes(spec, 128, 11)
    b = draw_object_strokes(spec, 128, 11)
    c = draw_object_strokes(spec, 128, 12)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert len(a) != len(c) or any(x.shape != y.shape or not np.allclose(x, y) for x, y in zip(a, c, strict=False))


def test_render_photo_is_deterministic_and_sized():
    spec = object_spec_for(0, 0)
    a, b = render_photo(spec, 96), render_photo(spec, 96)
    assert a.size == (96, 96) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_train_photos=0), "n_train_photos"),
        (dict(n_test_photos=-1), "n_test_photos"),
        (dict(n_train_photos=2.5), "n_train_photos"),
        (dict(sketches_per_photo=0), "sketches_per_photo"),
        (dict(sketches_per_photo=100), "sketches_per_photo"),
        (dict(image_size=8), "image_size"),
        (dict(image_size=True), "image_size"),
        (dict(seed=-1), "seed"),
        (dict(seed="1"), "seed"),
        (dict(progress="yes"), "progress"),
    ],
)
def test_bad_parameters_raise_config_error(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _gen(tmp_path / "bad", **kw)
    assert not (tmp_path / "bad").exists()  # validated before writing anything


def test_existing_dataset_needs_overwrite(ds, tmp_path):
    out = _gen(tmp_path / "d", n_train_photos=2, n_test_photos=1, sketches_per_photo=1)
    with pytest.raises(ConfigError, match="overwrite"):
        _gen(out, n_train_photos=2, n_test_photos=1, sketches_per_photo=1)
    _gen(out, overwrite=True)
    assert _files(out) == _files(ds)  # stale files removed, same result as a fresh folder
    (out / "trainA" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="non-PNG"):
        _gen(out, overwrite=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _gen(f)


def test_helpers_validate_input(tmp_path):
    spec = object_spec_for(0, 0)
    with pytest.raises(ConfigError, match="rng"):
        draw_object_strokes(spec, 64, rng="seed")
    with pytest.raises(StrokeError, match="2 stroke widths for 1 strokes"):
        _render([np.zeros((2, 2))], width=[1.0, 2.0])
    with pytest.raises(StrokeError, match="stroke_width"):
        _render([np.zeros((2, 2))], width=0)
    with pytest.raises(ConfigError, match="sketch_number"):
        sketch_for_photo(0, 0, 0)
    with pytest.raises(DataError, match="strokes.json"):
        load_strokes(tmp_path)
    (tmp_path / "strokes.json").write_text('{"a.png": [[[1, 2], [3]]]}')
    with pytest.raises(DataError, match="stroke 0"):
        load_strokes(tmp_path)


def test_strokes_json_works_with_the_shared_rasteriser(ds):
    """strokes.json is what a browser canvas of image_size px would send: the package's rasteriser,
    told the canvas size, redraws the sketch in place."""
    strokes_mod = pytest.importorskip("sbir.data.strokes")
    raw = json.loads((ds / "strokes.json").read_text())
    for name in sorted(raw)[:6]:
        im = strokes_mod.rasterize_strokes(raw[name], size=SIZE, canvas=(SIZE, SIZE), stroke_width=1.5, padding=0)
        redrawn = np.asarray(im.convert("L")) < 160
        dark = _dark(ds / name)
        assert (dark & ndimage.binary_dilation(redrawn, iterations=2)).sum() / dark.sum() > 0.95
