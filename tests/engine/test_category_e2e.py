"""End to end: category-level and zero-shot training and evaluation through the CLI.

The datasets are drawn here: every class is a simple shape (photos: filled, coloured, on a
tinted background; sketches: black outlines on white), 64 px.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sbir.cli import main

SHAPES = ("circle", "square", "triangle", "cross", "star", "bar")
TRAIN_ARGS = [
    "--image-size",
    "64",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--seed",
    "0",
    "--set",
    "model.pretrained=false",
    "model.embed_dim=32",
    "optim.samples_per_class=2",
    "optim.warmup_epochs=0.5",
    "optim.lr=0.003",
]


def _shape_points(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def poly(angles, radii):
        pairs = zip(angles, radii, strict=True)
        return [(cx + rad * math.cos(a + rot), cy + rad * math.sin(a + rot)) for a, rad in pairs]

    if kind == "circle":
        return poly(np.linspace(0, 2 * math.pi, 32, endpoint=False), [r] * 32)
    if kind == "square":
        return poly([math.pi / 4 + k * math.pi / 2 for k in range(4)], [r] * 4)
    if kind == "triangle":
        return poly([-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)], [r] * 3)
    if kind == "star":
        radii = [r if k % 2 == 0 else r * 0.45 for k in range(10)]
        return poly([-math.pi / 2 + k * math.pi / 5 for k in range(10)], radii)
    if kind == "bar":
        return poly([0.25, math.pi - 0.25, math.pi + 0.25, -0.25], [r] * 4)
    # cross: 12-gon
    a = r * 0.35
    pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw(kind: str, rng: np.random.Generator, photo: bool, size: int = 64) -> Image.Image:
    cx, cy = rng.uniform(size * 0.4, size * 0.6, 2)
    r = rng.uniform(size * 0.25, size * 0.38)
    pts = _shape_points(kind, cx, cy, r, rng.uniform(-0.3, 0.3))
    if photo:
        bg = tuple(int(v) for v in rng.integers(150, 255, 3))
        img = Image.new("RGB", (size, size), bg)
        ImageDraw.Draw(img).polygon(pts, fill=tuple(int(v) for v in rng.integers(0, 140, 3)))
    else:
        img = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(img).line(pts + pts[:1], fill="black", width=int(rng.integers(1, 4)))
    return img


def make_category_dataset(
    root: Path, classes, n_photos: int = 6, n_sketches: int = 6, seed: int = 0, split: str | None = None
) -> Path:
    """``root[/split]/photos/<class>/*.png`` + ``sketches/<class>/*.png``."""
    rng = np.random.default_rng(seed)
    base = root / split if split else root
    for c in classes:
        for kind, n, photo in (("photos", n_photos, True), ("sketches", n_sketches, False)):
            d = base / kind / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _draw(c, rng, photo).save(d / f"{c}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    return make_category_dataset(tmp_path_factory.mktemp("cat_train"), SHAPES[:4], seed=1)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """A different, held-out dataset: other drawings, one class the training data lacks, a test/ split."""
    root = tmp_path_factory.mktemp("cat_other")
    make_category_dataset(root, ("circle", "square", "star"), n_photos=5, n_sketches=4, seed=7, split="test")
    make_category_dataset(root, ("circle", "square", "star"), n_photos=2, n_sketches=2, seed=8, split="train")
    return root


@pytest.fixture(scope="module")
def category_run(train_data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "cat"
    rc = main(
        [
            "train",
            "--task",
            "category",
            "--data",
            str(train_data),
            "--out",
            str(run),
            "--epochs",
            "2",
            *TRAIN_ARGS,
            "eval.hash_bits=[32]",
        ]
    )
    assert rc == 0
    return run


def _metrics_csv(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _ap_at_all(scores: np.ndarray, relevant: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(np.mean([average_precision_score(relevant[i], scores[i]) for i in range(len(scores))]))


def _embed(model, paths, domain: str, size: int, flip: bool = False) -> torch.Tensor:
    from sbir.data.image_io import load_image
    from sbir.data.transforms import eval_transform

    tf = eval_transform(size, model.mean, model.std)
    x = torch.stack([tf(load_image(p)) for p in paths])
    if flip:
        x = torch.flip(x, dims=[3])
    with torch.no_grad():
        return model.embed(x, domain).float()


def test_category_train_outputs(category_run: Path):
    for name in (
        "config.yaml",
        "split.json",
        "metrics.csv",
        "acc.png",
        "best.safetensors",
        "last.json",
        "summary.json",
        "val_retrieval.png",
        "hash32.safetensors",
    ):
        assert (category_run / name).is_file(), name
    rows = _metrics_csv(category_run)
    assert len(rows) == 2
    assert {"val_map@all", "val_map@200", "val_p@100", "val_p@200", "train_acc_sketch"} <= set(rows[0])
    split = json.loads((category_run / "split.json").read_text())
    assert split["by"] == "class-stratified" and split["task"] == "category"
    # each class gives validation photos and sketches (6 per class, 15% -> 1)
    assert len(split["val_sketch_ids"]) == 4 and len(split["val_photo_ids"]) == 4
    summary = json.loads((category_run / "summary.json").read_text())
    assert summary["config"]["select_metric"] == "map@all"
    assert summary["config"]["loss"]["name"] == "mems" and summary["config"]["model"]["num_classes"] == 4
    best = max(float(r["val_map@all"]) for r in rows)
    assert summary["best_val_map@all"] == pytest.approx(best)

    # The best epoch's validation mAP@all, recomputed with sklearn from the saved best weights: the
    # recorded validation sketches against the recorded validation photos, euclidean distance (MEMS).
    from sbir.engine.inference import load_model

    model, cfg, _ = load_model(category_run)
    root = Path(cfg.data.path)
    sk_ids, ph_ids = split["val_sketch_ids"], split["val_photo_ids"]
    s = _embed(model, [root / "sketches" / f"{i}.png" for i in sk_ids], "sketch", cfg.data.image_size)
    p = _embed(model, [root / "photos" / f"{i}.png" for i in ph_ids], "photo", cfg.data.image_size)
    relevant = np.array([i.split("/")[0] for i in sk_ids])[:, None] == np.array([i.split("/")[0] for i in ph_ids])[None]
    want = _ap_at_all(-torch.cdist(s, p).numpy(), relevant)
    assert summary["best_val_map@all"] == pytest.approx(want, abs=1e-4)


def test_eval_on_other_dataset_matches_independent_computation(category_run: Path, other_data: Path):
    from sbir.engine.inference import load_model

    out = category_run / "eval-other"
    assert (
        main(
            [
                "eval",
                str(category_run),
                "--data",
                str(other_data),
                "--split",
                "test",
                "--flip-tta",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "map@all",
        "map@200",
        "p@100",
        "p@200",
        "map@all_voc",
        "map@200_voc",
        "p@100_zse",
        "map@all_hash32",
        "p@100_hash32",
    ):
        assert key in m, key
    assert m["n_queries"] == 12 and m["n_gallery"] == 15 and m["distance"] == "euclidean"
    assert m["flip"] == "pairings"
    assert (out / "retrieval.png").is_file()

    model, cfg, _ = load_model(category_run)
    assert sorted(model.hash_heads) == [32]
    sk = sorted((other_data / "test" / "sketches").glob("*/*.png"))
    ph = sorted((other_data / "test" / "photos").glob("*/*.png"))
    s_lab = np.array([p.parent.name for p in sk])
    p_lab = np.array([p.parent.name for p in ph])
    size = cfg.data.image_size
    s, sf = _embed(model, sk, "sketch", size), _embed(model, sk, "sketch", size, flip=True)
    p, pf = _embed(model, ph, "photo", size), _embed(model, ph, "photo", size, flip=True)
    # DASE-MEMS flip TTA: the minimum euclidean distance over the four pairings.
    dist = torch.stack([torch.cdist(a, b) for a in (s, sf) for b in (p, pf)]).amin(dim=0).numpy()
    relevant = s_lab[:, None] == p_lab[None, :]
    assert m["map@all"] == pytest.approx(_ap_at_all(-dist, relevant), abs=1e-5)
    order = np.argsort(dist, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(relevant, order, axis=1)
    assert m["p@100"] == pytest.approx(rel_sorted[:, :15].sum(1).mean() / 15)  # K clipped to the gallery
    # mAP@200 over a 15-photo gallery = mAP@all (every relevant photo is retrieved)
    assert m["map@200"] == pytest.approx(m["map@all"], abs=1e-6)

    # Hamming mAP from the saved 32-bit head, computed independently.
    head = model.hash_heads[32]
    codes = lambda e: np.where(head.linear(e).detach().numpy() >= 0, 1, -1)  # noqa: E731
    hd = np.stack([(codes(a)[:, None, :] != codes(b)[None, :, :]).sum(-1) for a in (s, sf) for b in (p, pf)]).min(0)
    # ties: the metric module ranks equal distances by gallery index, as a stable sort does
    order = np.argsort(hd, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(relevant, order, axis=1)
    ap = [np.mean(np.cumsum(r)[r] / (np.flatnonzero(r) + 1)) for r in rel_sorted]
    assert m["map@all_hash32"] == pytest.approx(float(np.mean(ap)), abs=1e-6)


def test_eval_val_split_and_resume_of_finished_run(category_run: Path, capsys):
    assert main(["eval", str(category_run), "--split", "val", "--no-progress"]) == 0
    m = json.loads((category_run / "eval-val" / "metrics.json").read_text())
    split = json.loads((category_run / "split.json").read_text())
    assert m["n_queries"] == len(split["val_sketch_ids"]) and m["n_gallery"] == len(split["val_photo_ids"])
    rows = _metrics_csv(category_run)
    best = max(float(r["val_map@all"]) for r in rows)
    assert m["map@all"] == pytest.approx(best, abs=1e-4)  # the best checkpoint reproduces its validation score

    before = (category_run / "metrics.csv").read_text()
    assert main(["train", "--resume", str(category_run), "--no-progress"]) == 0
    assert (category_run / "metrics.csv").read_text() == before


def test_test_split_of_training_dataset_is_refused(category_run: Path, capsys):
    capsys.readouterr()
    assert main(["eval", str(category_run), "--split", "test", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no test split" in err and "Traceback" not in err
    assert not (category_run / "eval-test" / "metrics.json").exists()


def test_zeroshot_trains_on_seen_classes_only(tmp_path: Path):
    from sbir.engine.inference import load_model

    data = make_category_dataset(tmp_path / "zs", SHAPES, n_photos=4, n_sketches=4, seed=3)
    run = tmp_path / "zs_run"
    rc = main(
        [
            "train",
            "--task",
            "zeroshot",
            "--unseen",
            "star,bar",
            "--data",
            str(data),
            "--out",
            str(run),
            "--epochs",
            "1",
            *TRAIN_ARGS,
            "data.val_fraction=0.5",
            "optim.samples_per_class=4",
            "loss.name=cosface",
        ]
    )
    assert rc == 0
    split = json.loads((run / "split.json").read_text())
    assert split["unseen_classes"] == ["bar", "star"] and split["class_disjoint"] is True
    assert len(split["val_classes"]) == 2 and len(split["train_classes"]) == 2
    assert not set(split["val_classes"]) & set(split["train_classes"])
    assert not {"bar", "star"} & set(split["val_classes"] + split["train_classes"])
    assert all(i.split("/")[0] in split["val_classes"] for i in split["val_sketch_ids"] + split["val_photo_ids"])
    model, cfg, _ = load_model(run)
    assert cfg.model.num_classes == 2 and cfg.data.unseen == "star,bar"
    assert model.normalize  # CosFace embeddings live on the unit sphere

    # The test protocol of a zero-shot run on its own dataset: unseen sketches against unseen photos.
    assert main(["eval", str(run), "--split", "test", "--no-progress"]) == 0
    m = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert m["n_queries"] == 8 and m["n_gallery"] == 8 and m["n_classes"] == 2 and m["distance"] == "angular"
    assert m["flip"] == "none"
    # Recomputed with sklearn over exactly the bar and star files (angular distance ranks like cosine).
    sk = sorted(p for c in ("bar", "star") for p in (data / "sketches" / c).glob("*.png"))
    ph = sorted(p for c in ("bar", "star") for p in (data / "photos" / c).glob("*.png"))
    s = torch.nn.functional.normalize(_embed(model, sk, "sketch", cfg.data.image_size), dim=1)
    p = torch.nn.functional.normalize(_embed(model, ph, "photo", cfg.data.image_size), dim=1)
    relevant = np.array([x.parent.name for x in sk])[:, None] == np.array([x.parent.name for x in ph])[None]
    assert m["map@all"] == pytest.approx(_ap_at_all((s @ p.T).numpy(), relevant), abs=1e-5)


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys):
    def train(data: Path, task: str = "category", flags=(), sets=()) -> str:
        capsys.readouterr()
        rc = main(
            [
                "train",
                "--task",
                task,
                "--data",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
                *flags,
                *TRAIN_ARGS,
                *sets,
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and err.startswith("error: "), err
        assert not (tmp_path / "r" / "last.json").exists()
        return err

    # a sketch class unknown to the photo side
    d1 = make_category_dataset(tmp_path / "d1", SHAPES[:3], n_photos=2, n_sketches=2)
    (d1 / "sketches" / "hexagon").mkdir()
    _draw("circle", np.random.default_rng(0), False).save(d1 / "sketches" / "hexagon" / "h.png")
    assert "'hexagon'" in train(d1)

    # a class folder with no photos
    d2 = make_category_dataset(tmp_path / "d2", SHAPES[:3], n_photos=2, n_sketches=2)
    (d2 / "photos" / "empty").mkdir()
    (d2 / "photos" / "empty" / "notes.txt").write_text("no images here")
    assert str(d2 / "photos" / "empty") in train(d2)

    # an unseen-class file naming a class the data does not have
    d3 = make_category_dataset(tmp_path / "d3", SHAPES[:4], n_photos=2, n_sketches=2)
    lst = tmp_path / "unseen.txt"
    lst.write_text("# my split\ncircle\nunicorn\n")
    err = train(d3, "zeroshot", flags=("--unseen", str(lst)))
    assert "unicorn" in err and str(lst) in err

    # a malformed Quick, Draw! line names the file and line (format auto-detected)
    d4 = tmp_path / "qd"
    rng = np.random.default_rng(0)
    for c in ("circle", "square"):
        (d4 / "photos" / c).mkdir(parents=True)
        for i in range(2):
            _draw(c, rng, True).save(d4 / "photos" / c / f"{i}.png")
    good = json.dumps({"word": "circle", "drawing": [[[0, 10, 20], [0, 10, 0]]]})
    (d4 / "circle.ndjson").write_text(good + "\n" + good + "\n")
    (d4 / "square.ndjson").write_text(good + "\n{not json\n")
    assert f"{d4 / 'square.ndjson'}:2" in train(d4)

    # a batch asking for more classes than the training data has
    d5 = make_category_dataset(tmp_path / "d5", SHAPES[:3], n_photos=3, n_sketches=3)
    err = train(d5, sets=("optim.samples_per_class=1",))
    assert "optim.batch_size" in err and "has 3" in err


def test_flip_embeddings_keep_mems_scale(tmp_path: Path):
    """Flip averaging must not renormalise un-normalised (MEMS) embeddings; the flipped ones come back apart."""
    from sbir.config import ModelConfig
    from sbir.data.records import FileRef
    from sbir.engine.embed import embed_images
    from sbir.models.category import CategorySBIRModel

    rng = np.random.default_rng(0)
    refs = []
    for i, c in enumerate(("circle", "triangle", "star")):
        _draw(c, rng, False).save(tmp_path / f"{i}.png")
        refs.append(FileRef(tmp_path / f"{i}.png"))
    torch.manual_seed(0)
    for normalize in (False, True):
        model = CategorySBIRModel(ModelConfig(pretrained=False, embed_dim=8), 2, normalize=normalize).eval()
        kw = dict(image_size=32, progress=False)
        sep = embed_images(model, refs, "sketch", return_flipped=True, **kw)
        avg = embed_images(model, refs, "sketch", flip_tta=True, **kw).embeddings
        direct = _embed(model, [r.path for r in refs], "sketch", 32).numpy()
        mirrored = _embed(model, [r.path for r in refs], "sketch", 32, flip=True).numpy()
        np.testing.assert_allclose(sep.embeddings, direct, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sep.flipped, mirrored, rtol=1e-4, atol=1e-5)
        assert not np.allclose(sep.embeddings, sep.flipped)  # the shapes are not mirror-symmetric
        mean = 0.5 * (direct + mirrored)
        want = mean / np.linalg.norm(mean, axis=1, keepdims=True) if normalize else mean
        np.testing.assert_allclose(avg, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        embed_images(model, refs, "sketch", flip_tta=True, return_flipped=True, **kw)
