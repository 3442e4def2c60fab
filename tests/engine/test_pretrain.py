"""Sketch-domain pretraining (``sbir train --task pretrain``) on tiny data, and ``model.init_from``.

The data is drawn here: three shape classes as Quick, Draw! strokes and as a Sketchy-style folder
(sketches + photos, the photos going through the real HED at 64 px), with one class ("circle") in
both sources, so the class union and the edge-map cache are exercised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sbir.cli import main
from sbir.config import TrainConfig
from sbir.errors import CheckpointError, ConfigError

pytest.importorskip("h5py")

ARGS = [
    "--task",
    "pretrain",
    "--epochs",
    "1",
    "--image-size",
    "64",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--no-progress",
    "--set",
    "model.pretrained=false",
    "data.val_fraction=0.25",
    "optim.warmup_epochs=0",
]


def _polygon(kind: str, jitter: float) -> list[tuple[float, float]]:
    n = {"triangle": 3, "square": 4, "circle": 24}[kind]
    r = 90 + 10 * jitter
    return [
        (128 + r * math.cos(2 * math.pi * k / n + jitter), 128 + r * math.sin(2 * math.pi * k / n + jitter))
        for k in range(n + 1)
    ]


def _write_data(root: Path) -> Path:
    qd = root / "qd"
    qd.mkdir(parents=True)
    for kind in ("triangle", "circle"):
        lines = []
        for i in range(6):
            pts = _polygon(kind, i / 6)
            stroke = [[round(x) for x, _ in pts], [round(y) for _, y in pts]]
            lines.append(json.dumps({"word": kind, "key_id": str(i), "drawing": [stroke]}))
        (qd / f"{kind}.ndjson").write_text("\n".join(lines) + "\n")
    sk = root / "sketchy"
    for kind in ("Circle", "square"):  # "Circle" is the Quick, Draw! "circle" class
        (sk / "photo" / kind).mkdir(parents=True)
        (sk / "sketch" / kind).mkdir(parents=True)
        for i in range(4):
            pts = [(x / 4, y / 4) for x, y in _polygon(kind.lower(), i / 4)]
            photo = Image.new("RGB", (64, 64), (200, 220, 240))
            ImageDraw.Draw(photo).polygon(pts, fill=(180, 40, 30))
            photo.save(sk / "photo" / kind / f"p{i}.jpg")
            sketch = Image.new("RGB", (64, 64), "white")
            ImageDraw.Draw(sketch).line(pts, fill="black", width=2)
            sketch.save(sk / "sketch" / kind / f"p{i}-1.png")
    (root / "notes").mkdir()  # a folder of no known layout is ignored
    return root


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> Path:
    import os

    tmp = tmp_path_factory.mktemp("pretrain")
    data = _write_data(tmp / "data")
    run = tmp / "run"
    old = os.environ.get("SBIR_CACHE_DIR")
    os.environ["SBIR_CACHE_DIR"] = str(tmp / "cache")
    try:
        assert main(["train", "--data", str(data), "--out", str(run), *ARGS]) == 0
    finally:
        if old is None:
            os.environ.pop("SBIR_CACHE_DIR")
        else:
            os.environ["SBIR_CACHE_DIR"] = old
    return run


def test_pretrain_run_writes_checkpoint_split_and_metrics(pretrain_run: Path):
    assert (pretrain_run / "best.safetensors").is_file()
    split = json.loads((pretrain_run / "split.json").read_text())
    assert split["classes"] == ["circle", "square", "triangle"]  # "Circle" and "circle" merged
    assert split["sources"]["qd"]["sketch"] == 12 and split["sources"]["sketchy"]["edge"] == 8
    assert {"qd", "sketchy"} == set(split["sources"])  # notes/ ignored
    assert any("/edge/" in i for i in split["val_ids"]) and any("/sketch/" in i for i in split["val_ids"])
    header = (pretrain_run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train_loss", "train_acc", "val_acc@1", "val_acc@5", "val_acc@1_sketch", "val_acc@1_edge"):
        assert key in header
    summary = json.loads((pretrain_run / "summary.json").read_text())
    assert 0.0 <= summary["best_val_acc@1"] <= 100.0
    assert summary["config"]["model"]["num_classes"] == 3


def test_edge_maps_are_cached_black_lines_on_white(pretrain_run: Path):
    import numpy as np

    cache = pretrain_run.parent / "cache"
    maps = sorted(cache.glob("hed-*/64px/*/*.png"))
    assert len(maps) == 8
    arr = np.asarray(Image.open(maps[0]).convert("L"))
    assert arr.shape == (64, 64)
    assert np.median(arr) == 255 and arr.min() < 128  # mostly white, with dark lines


def test_init_from_loads_the_encoder_into_both_finegrained_branches(pretrain_run: Path):
    from sbir.engine.checkpoint import read_weights
    from sbir.engine.tasks import build_model

    tensors, _ = read_weights(pretrain_run / "best.safetensors")
    cfg = TrainConfig()
    cfg.model.pretrained = False
    cfg.model.init_from = str(pretrain_run)
    model = build_model(cfg)
    for branch in (model.sketch_encoder, model.photo_encoder):
        sd = branch.state_dict()
        assert sd and all(torch.equal(v, tensors[f"encoder.{k}"]) for k, v in sd.items())
    # The heads keep their fresh initialisation; inference (pretrained=False) skips init_from.
    fresh = build_model(cfg, pretrained=False)
    k = next(iter(fresh.sketch_encoder.state_dict()))
    assert not torch.equal(fresh.sketch_encoder.state_dict()[k], tensors[f"encoder.{k}"])


def test_init_from_fills_a_backbone_cut_for_grid_features(pretrain_run: Path):
    # The fine-grained recipe cuts the backbone after block 4 (model.feature_level=3): it takes the pretraining
    # encoder's layers up to the cut and leaves the rest behind.
    from sbir.engine.checkpoint import read_weights
    from sbir.engine.tasks import build_model

    tensors, _ = read_weights(pretrain_run / "best.safetensors")
    cfg = TrainConfig()
    cfg.model.pretrained, cfg.model.shared_encoder = False, True
    cfg.model.feature_level, cfg.model.pool_grid, cfg.model.init_from = 3, 4, str(pretrain_run)
    model = build_model(cfg)
    sd = model.sketch_encoder.backbone.state_dict()
    assert "model.blocks.4.0.conv_pw.weight" in sd and "model.blocks.5.0.conv_pw.weight" not in sd
    assert all(torch.equal(v, tensors[f"encoder.{k}"]) for k, v in sd.items())


def _concat_cfg(init_from, backbones=("efficientnet_lite0", "efficientnet_lite1")) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.pretrained, cfg.model.shared_encoder = False, True
    cfg.model.backbone, cfg.model.extra_backbones = backbones[0], list(backbones[1:])
    cfg.model.feature_level, cfg.model.pool_grid, cfg.model.init_from = 3, 4, init_from
    return cfg


def test_init_from_fills_the_matching_member_of_extra_backbones(pretrain_run: Path):
    # The recipe concatenates Lite0, Lite1 and Lite2 grids: a Lite0 pretraining run fills the Lite0 member
    # (up to the cut) and leaves the others as they were built.
    from sbir.engine.checkpoint import read_weights
    from sbir.engine.tasks import build_model

    tensors, _ = read_weights(pretrain_run / "best.safetensors")
    torch.manual_seed(0)
    model = build_model(_concat_cfg(str(pretrain_run)))
    torch.manual_seed(0)
    fresh = build_model(_concat_cfg(str(pretrain_run)), pretrained=False)  # inference skips init_from
    lite0, lite1 = model.sketch_encoder.members
    sd = lite0.backbone.state_dict()
    assert sd and all(torch.equal(v, tensors[f"encoder.{k}"]) for k, v in sd.items())
    assert not all(torch.equal(v, fresh.sketch_encoder.members[0].backbone.state_dict()[k]) for k, v in sd.items())
    fresh1 = fresh.sketch_encoder.members[1].state_dict()
    assert all(torch.equal(v, fresh1[k]) for k, v in lite1.state_dict().items())

    with pytest.raises(CheckpointError) as refused:
        build_model(_concat_cfg(str(pretrain_run), ("efficientnet_lite1", "efficientnet_lite2")))
    message = str(refused.value)
    assert str(pretrain_run) in message and "(efficientnet_lite0)" in message, message
    assert "one backbone fits none of efficientnet_lite1+efficientnet_lite2" in message, message


def test_init_from_a_run_with_the_same_extra_backbones(tmp_path: Path):
    from sbir.engine.checkpoint import save_weights
    from sbir.engine.tasks import build_model

    cfg = _concat_cfg(None)
    source = build_model(cfg)
    with torch.no_grad():
        for p in source.sketch_encoder.parameters():
            p.add_(0.5)  # weights no fresh build has
    save_weights(source, tmp_path / "run.safetensors", cfg)
    model = build_model(_concat_cfg(str(tmp_path / "run.safetensors")))
    want = source.sketch_encoder.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.sketch_encoder.state_dict().items())
    assert model.photo_encoder is model.sketch_encoder

    other = _concat_cfg(str(tmp_path / "run.safetensors"), ("efficientnet_lite0", "efficientnet_lite2"))
    with pytest.raises(
        CheckpointError,
        match=r"\(efficientnet_lite0\+efficientnet_lite1\) does not fit .*"
        r"\(efficientnet_lite0\+efficientnet_lite2\)",
    ) as err:
        build_model(other)
    assert "\n" not in str(err.value)


def test_init_from_errors_are_one_line(pretrain_run: Path, tmp_path: Path):
    from sbir.engine.tasks import build_model

    cfg = TrainConfig()
    cfg.model.pretrained = False
    cfg.model.init_from = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="does not exist") as err:
        build_model(cfg)
    assert "\n" not in str(err.value)

    cfg.model.init_from = str(pretrain_run)
    cfg.model.backbone = "resnet18"
    with pytest.raises(CheckpointError, match=r"efficientnet_lite0.*does not fit.*resnet18") as err:
        build_model(cfg)
    assert "\n" not in str(err.value)

    cfg = TrainConfig()
    cfg.model.init_from = "  "
    with pytest.raises(ConfigError, match="model.init_from"):
        cfg.validate()


def test_eval_of_a_pretrain_run_is_refused(pretrain_run: Path):
    from sbir.engine.pretrain import no_retrieval_evaluation

    with pytest.raises(ConfigError, match="model.init_from=RUN"):
        no_retrieval_evaluation()


def test_pretrain_without_data_sources_is_a_clear_error(tmp_path: Path):
    from sbir.engine.pretrain import discover_sources
    from sbir.errors import DataError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no pretraining data"):
        discover_sources(tmp_path)


def test_resume_replays_the_recorded_split(pretrain_run: Path, monkeypatch):
    from sbir.engine.trainer import Trainer

    monkeypatch.setenv("SBIR_CACHE_DIR", str(pretrain_run.parent / "cache"))
    trainer = Trainer(None, pretrain_run, resume=True, progress=False)  # type: ignore[arg-type]
    split = json.loads((pretrain_run / "split.json").read_text())
    assert sorted(it.id for it in trainer.task.val_items) == split["val_ids"]
    assert trainer.start_epoch == 2 and trainer.cfg.model.num_classes == 3
