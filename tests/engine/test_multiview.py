"""Multi-view testing: 10 distinct views, the mirror permutation, and a mirrored query ranking like itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sbir.data.records import FileRef
from sbir.data.transforms import MIRRORED_VIEWS, multiview_transform
from sbir.metrics import finegrained_report_from_scores, multiview_scores, similarity_matrix


def _asymmetric_image(seed: int, size: int = 72) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 20, 2)
        x1, y1 = x0 + rng.integers(8, 20), y0 + rng.integers(8, 20)
        d.rectangle(
            [int(x0), int(y0), int(x1), int(y1)], outline="black", width=2, fill=tuple(rng.integers(0, 255, 3).tolist())
        )
    return img


def test_ten_views_differ_and_mirroring_permutes_them():
    tf = multiview_transform(48, (0.5,) * 3, (0.5,) * 3, scale=1.15)  # 55 px: an odd margin is made even
    img = _asymmetric_image(0)
    views = tf(img)
    assert views.shape == (10, 3, 48, 48)
    for a in range(10):
        for b in range(a + 1, 10):
            assert not torch.equal(views[a], views[b]), (a, b)
    mirrored = tf(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    for v in range(10):
        torch.testing.assert_close(mirrored[v], views[MIRRORED_VIEWS[v]])


def test_multiview_scores_by_hand():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(3, 2, 4)), rng.normal(size=(5, 2, 4))
    plain = multiview_scores(q, g, "euclidean")
    want = -0.5 * (
        np.linalg.norm(q[:, None, 0] - g[None, :, 0], axis=-1) + np.linalg.norm(q[:, None, 1] - g[None, :, 1], axis=-1)
    )
    np.testing.assert_allclose(plain, want, rtol=1e-5)
    mirrored = multiview_scores(q, g, "cosine", mirror=(1, 0))
    want = sum(similarity_matrix(q[:, a], g[:, b], "cosine") for a, b in ((0, 0), (1, 1), (0, 1), (1, 0))) / 4
    np.testing.assert_allclose(mirrored, want, rtol=1e-5)
    report = finegrained_report_from_scores(
        np.array([[0.9, 0.1], [0.5, 0.5]]), [0, 1], ks=(1,), triplets=[[0, 0, 1], [1, 1, 0]]
    )
    assert report["ranks"] == [1, 2] and report["acc@1"] == 50.0 and report["%corr"] == 50.0  # ties are wrong


def test_mirrored_query_ranks_like_the_query(tmp_path: Path):
    from sbir.config import ModelConfig, TrainConfig
    from sbir.data.records import PhotoRecord, SketchRecord, Split
    from sbir.engine.evaluate import evaluate_finegrained
    from sbir.engine.tasks import build_model, with_defaults

    torch.manual_seed(0)
    cfg = with_defaults(TrainConfig(model=ModelConfig(backbone="resnet18", pretrained=False, embed_dim=16)))
    cfg.data.image_size = 48
    model = build_model(cfg).eval()

    def ref(img: Image.Image, name: str) -> FileRef:
        img.save(tmp_path / f"{name}.png")
        return FileRef(tmp_path / f"{name}.png")

    photos = [PhotoRecord(id=f"p{i}", image=ref(_asymmetric_image(100 + i), f"p{i}")) for i in range(8)]

    def split_of(mirror: bool) -> Split:
        sketches = []
        for i in range(8):
            img = _asymmetric_image(200 + i)
            if mirror:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            sketches.append(SketchRecord(id=f"s{i}", image=ref(img, f"s{i}_{mirror}"), photo_id=f"p{i}"))
        return Split(name="test", photos=photos, sketches=sketches)

    kw = dict(progress=False, multiview=True)
    plain, mirrored = (
        evaluate_finegrained(model, cfg, split_of(False), **kw),
        evaluate_finegrained(model, cfg, split_of(True), **kw),
    )
    np.testing.assert_allclose(mirrored.scores, plain.scores, rtol=1e-4, atol=1e-5)
    assert mirrored.metrics["ranks"] == plain.metrics["ranks"] and plain.metrics["views"] == 10
    # A single view does not have this property: the test can tell.
    one = evaluate_finegrained(model, cfg, split_of(False), progress=False)
    one_m = evaluate_finegrained(model, cfg, split_of(True), progress=False)
    assert not np.allclose(one.query_emb, one_m.query_emb, atol=1e-3)


def test_eval_cli_multiview(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    from sbir.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_paired_dataset), "--out", str(run), "--epochs", "1", "--image-size", "64",
                 "--batch-size", "8", "--workers", "0", "--no-progress", "--set", "model.pretrained=false",
                 "model.backbone=resnet18", "model.embed_dim=16", "optim.max_steps_per_epoch=2"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--multiview", "--json", "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["views"] == 10 and m["n_queries"] == 16 and 0 <= m["acc@1"] <= 100
    assert (run / "eval-test" / "retrieval.png").is_file()
    with pytest.raises(SystemExit):
        main(["eval", str(run), "--multiview=yes"])
