"""Retrieval grids and training curves: real PNGs of the documented size, match outlines where due."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sbir.data.image_io import load_image
from sbir.errors import ConfigError, DataError
from sbir.viz import MATCH_COLOUR, best_epoch, grid_layout, plot_columns, plot_training_curves, read_metrics_csv
from sbir.viz.grid import retrieval_grid

THUMB = 48


def _photo(i: int, size=(60, 40)) -> Image.Image:
    """A photo-like test image with no green in it (so MATCH_COLOUR can only come from the frame)."""
    rng = np.random.default_rng(i)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., 0] = rng.integers(0, 256, (size[1], size[0]))
    a[..., 2] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    return Image.fromarray(a, "RGB")


def _sketch(i: int) -> Image.Image:
    im = Image.new("L", (50, 50), 255)
    ImageDraw.Draw(im).ellipse([5 + i, 5, 40, 45 - i], outline=0, width=2)
    return im  # greyscale on purpose: the grid converts


def _match_pixels(img: Image.Image, box=None) -> int:
    a = np.asarray(img.convert("RGB"))
    if box is not None:
        x0, y0, x1, y1 = box
        a = a[max(0, y0) : y1, max(0, x0) : x1]
    return int(np.all(a == np.array(MATCH_COLOUR, np.uint8), axis=-1).sum())


def _grid(tmp_path, n=3, k=4, positions=(1, None, 0), name="g.png", **kw):
    qs = [_sketch(i) for i in range(n)]
    res = [[_photo(10 * i + j) for j in range(k)] for i in range(n)]
    out = retrieval_grid(
        qs, res, None if positions is None else list(positions[:n]), tmp_path / name, thumb=THUMB, **kw
    )
    return out, load_image(out)


def test_grid_png_has_the_layout_size_and_is_not_blank(tmp_path):
    out, img = _grid(tmp_path, scores=[[0.9, 0.8, 0.7, 0.6]] * 3, title="demo", true_ranks=[2, 9, 1])
    assert out.suffix == ".png" and out.is_file()
    lay = grid_layout(3, 4, THUMB, "demo", True, ["query 1", "rank 2", "rank 9", "rank 1"])
    assert img.size == (lay.width, lay.height)
    assert img.width >= lay.label_w + 5 * THUMB and img.height >= 3 * THUMB
    assert np.asarray(img).std() > 20
    # the query and result thumbnails are really pasted where the layout says
    q = np.asarray(img)[slice(*lay.cell_box(0, 0)[1::2]), slice(*lay.cell_box(0, 0)[0::2])]
    assert q.shape == (THUMB, THUMB, 3) and q.min() < 60 and (q > 240).mean() > 0.5  # a sketch
    r = np.asarray(img)[slice(*lay.cell_box(2, 3)[1::2]), slice(*lay.cell_box(2, 3)[0::2])]
    mid = r[THUMB // 2 - 6 : THUMB // 2 + 6]
    assert mid[..., 1].mean() < 5 and mid[..., 0].std() > 20  # the (green-free, noisy) photo
    assert (r[:4] == 255).all() and (r[-4:] == 255).all()  # 60x40 photo letterboxed, aspect kept


def test_each_result_column_and_row_adds_fixed_pixels(tmp_path):
    _, a = _grid(tmp_path, k=3, name="a.png")
    _, b = _grid(tmp_path, k=5, name="b.png")
    _, c = _grid(tmp_path, n=2, k=5, name="c.png")
    lay = grid_layout(3, 3, THUMB)
    assert b.width - a.width == 2 * (THUMB + lay.gap)
    assert a.height == b.height
    assert b.height - c.height == lay.row_h


def test_match_outline_only_where_the_true_match_is_in_top_k(tmp_path):
    _, img = _grid(tmp_path, positions=(1, None, 3))
    lay = grid_layout(3, 4, THUMB, labels=["query 1", "not in top 4", "rank 2", "rank 4"])
    assert img.size == (lay.width, lay.height)
    total = _match_pixels(img)
    assert total > 0
    f = lay.frame

    def framed(row, col):
        x0, y0, x1, y1 = lay.cell_box(row, col)
        return (x0 - f, y0 - f, x1 + f, y1 + f)

    in_row0 = _match_pixels(img, framed(0, 2))  # position 1 -> result column 2
    in_row2 = _match_pixels(img, framed(2, 4))
    ring = (THUMB + 2 * f) ** 2 - THUMB**2
    assert in_row0 >= 0.95 * ring and in_row2 >= 0.95 * ring
    assert in_row0 + in_row2 == total  # nothing anywhere else: not row 1, not other cells
    # inside the thumbnail itself there is no frame colour: the frame is around it
    assert _match_pixels(img, lay.cell_box(0, 2)) == 0
    _, none = _grid(tmp_path, positions=None, name="none.png")
    assert _match_pixels(none) == 0
    _, missing = _grid(tmp_path, positions=(None, None, None), name="missing.png")
    assert _match_pixels(missing) == 0


def test_grid_accepts_paths_ragged_rows_numpy_ints_and_jpeg(tmp_path):
    p = tmp_path / "photo.png"
    _photo(1).save(p)
    positions = [np.int64(0), None]  # e.g. straight from argsort
    out = retrieval_grid(
        [_sketch(0), _sketch(1)],
        [[p, _photo(2)], [_photo(3)]],
        positions,
        tmp_path / "sub" / "g.jpg",
        thumb=np.int64(32),
        query_labels=["chair 1", "chair 2"],
        true_ranks=[np.int64(1), 40],
        scores=np.array([[0.5, 0.25], [0.1]], dtype=object),
    )
    img = load_image(out)
    assert img.size == (grid_layout(2, 2, 32, labels=["chair 1", "chair 2", "rank 1", "rank 40"]).width, img.height)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(queries=[]), "at least one query"),
        (dict(results=[[1]]), "result lists"),
        (dict(results=[[], [1]]), "empty"),
        (dict(true_positions=[0]), "one per query"),
        (dict(true_positions=[4, None]), r"true_positions\[0\]"),
        (dict(true_positions=[True, None]), r"true_positions\[0\]"),
        (dict(true_ranks=[3, None]), "disagrees"),
        (dict(true_ranks=[1, 2]), "disagrees"),
        (dict(true_ranks=[0, None]), "1-based"),
        (dict(scores=[[1.0], [1.0, 2.0]]), r"scores\[0\]"),
        (dict(thumb=8), "thumb"),
        (dict(out_path="g.gif"), ".png"),
        (dict(queries=[_sketch(0), 42]), r"queries\[1\]"),
    ],
)
def test_grid_bad_parameters(tmp_path, kw, match):
    args = dict(
        queries=[_sketch(0), _sketch(1)],
        results=[[_photo(0), _photo(1)], [_photo(2), _photo(3)]],
        true_positions=[0, None],
        out_path=tmp_path / "g.png",
        thumb=32,
    )
    args.update(kw)
    if not str(args["out_path"]).startswith(str(tmp_path)):
        args["out_path"] = tmp_path / args["out_path"]
    with pytest.raises(ConfigError, match=match):
        retrieval_grid(**args)


# ---------------------------------------------------------------------------- curves

FULL = "epoch,train_loss,val_acc@1,val_acc@5,val_acc@10,lr,seconds\n"


def _csv(tmp_path, text, name="metrics.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _full_csv(tmp_path, epochs=12):
    rows = [FULL]
    for e in range(1, epochs + 1):
        acc1 = 0.5 * (1 - math.exp(-e / 3)) - 0.01 * max(0, e - 8)
        rows.append(
            f"{e},{2.5 * math.exp(-e / 4) + 0.3:.4f},{acc1:.4f},{acc1 + 0.15:.4f},{acc1 + 0.25:.4f},"
            f"{1e-3 * (0.5 + 0.5 * math.cos(math.pi * e / epochs)):.6f},10.5\n"
        )
    return _csv(tmp_path, "".join(rows))


def _nonblank(img: Image.Image) -> float:
    return float(np.asarray(img.convert("L")).std())


def test_training_curves_png(tmp_path):
    csv = _full_csv(tmp_path)
    out = plot_training_curves(csv, tmp_path / "plots" / "acc.png")
    img = load_image(out)
    assert img.size == (800, 600)
    assert _nonblank(img) > 10
    # the accuracy and loss colours are drawn
    a = np.asarray(img).reshape(-1, 3).astype(int)
    red = ((a[:, 0] > 190) & (a[:, 1] < 70) & (a[:, 2] < 70)).sum()  # val Acc@1 / best-epoch marker
    blue = ((a[:, 0] < 60) & (a[:, 2] > 160) & (a[:, 1] > 90) & (a[:, 1] < 140)).sum()  # train loss
    assert red > 200 and blue > 200
    big = plot_training_curves(csv, tmp_path / "big.png", figsize=(6, 3), dpi=80, title="run 7")
    assert load_image(big).size == (480, 240)


def test_best_epoch_skips_missing_values(tmp_path):
    csv = _csv(tmp_path, "epoch,train_loss,val_acc@1\n1,2.0,0.1\n2,1.5,\n3,1.2,0.4\n4,1.0,0.4\n5,0.9,0.3\n")
    table = read_metrics_csv(csv)
    assert math.isnan(table["val_acc@1"][1])
    assert best_epoch(table) == (3.0, 0.4)  # first of the tied best
    assert best_epoch(table, "val_acc@10") is None
    assert best_epoch(read_metrics_csv(_csv(tmp_path, "epoch,val_acc@1\n1,\n", "e.csv"))) is None


@pytest.mark.parametrize(
    "text",
    [
        FULL + "1,2.3,0.1,0.2,0.3,0.001,5.0\n",  # a single epoch
        "epoch,train_loss\n1,3.0\n2,2.0\n3,1.0\n",  # loss only
        "val_acc@1,val_acc@10\n0.1,0.3\n0.2,0.5\n",  # accuracy only, no epoch column
        "epoch,train_loss,val_acc@1,lr\n1,2.0,,0.01\n2,1.0,0.3,0.0\n",  # gaps and a zero lr
        "epoch,val_acc@1,val_acc@5,val_acc@10\n1,12.5,30,41\n2,20,35,50\n",  # percentages
    ],
)
def test_training_curves_tolerate_missing_columns(tmp_path, text):
    out = plot_training_curves(_csv(tmp_path, text), tmp_path / "acc.png")
    img = load_image(out)
    assert img.size == (800, 600) and _nonblank(img) > 10


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        (FULL, "no rows"),
        ("epoch,seconds\n1,3.0\n", "none of the columns"),
        ("epoch,epoch\n1,2\n", "repeated"),
    ],
)
def test_training_curves_bad_files(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        plot_training_curves(_csv(tmp_path, text), tmp_path / "acc.png")
    assert not (tmp_path / "acc.png").exists()


def test_curves_bad_parameters(tmp_path):
    csv = _full_csv(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        plot_training_curves(tmp_path / "nope.csv", tmp_path / "a.png")
    with pytest.raises(ConfigError, match="figsize"):
        plot_training_curves(csv, tmp_path / "a.png", figsize=(0, 3))
    with pytest.raises(ConfigError, match="dpi"):
        plot_training_curves(csv, tmp_path / "a.png", dpi=5)
    with pytest.raises(ConfigError, match=".png"):
        plot_training_curves(csv, tmp_path / "a.txt")
    with pytest.raises(ConfigError, match="columns"):
        plot_columns(csv, "train_loss", tmp_path / "a.png")
    with pytest.raises(DataError, match="map@all"):
        plot_columns(csv, ["map@all"], tmp_path / "a.png")


def test_plot_columns_lines_and_bars(tmp_path):
    out = plot_columns(_full_csv(tmp_path), ["val_acc@1", "val_acc@10"], tmp_path / "cols.png")
    img = load_image(out)
    assert img.size == (800, 450) and _nonblank(img) > 10
    cat = _csv(tmp_path, "map@all,map@200,p@100,p@200\n0.41,0.45,0.5,0.47\n", "cat.csv")
    bars = load_image(plot_columns(cat, ["map@all", "map@200", "p@100", "p@200"], tmp_path / "cat.png"))
    assert bars.size == (800, 450)
    a = np.asarray(bars).reshape(-1, 3).astype(int)
    bar_blue = ((a[:, 0] < 60) & (a[:, 1] > 100) & (a[:, 1] < 140) & (a[:, 2] > 160)).sum()
    assert bar_blue > 0.1 * a.shape[0]  # four filled bars cover a good part of the picture
