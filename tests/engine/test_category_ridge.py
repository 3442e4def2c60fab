"""Category / zero-shot model.head=ridge: `sbir train` fits the closed-form head (one centred map per domain)
on the training split before validating, optim.epochs=0 included, and the fit travels with the checkpoint;
model.extra_backbones concatenates pooled backbone features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sbir.cli import main
from sbir.config import LossConfig, ModelConfig, TrainConfig
from sbir.data.formats import load_dataset
from sbir.data.transforms import eval_transform
from sbir.engine.inference import load_model
from sbir.engine.tasks import check_config
from sbir.errors import ConfigError
from sbir.models.category import CategorySBIRModel
from sbir.models.grid_features import ConcatFeatures
from sbir.models.heads import DomainCentredMaps, ridge_map_low_rank
from tests.engine.test_category_e2e import SHAPES, make_category_dataset

SIZE = 32
# timm's tiny test EfficientNet (256 pooled features): the ridge fit solves and decomposes a D x D matrix, which
# takes tens of seconds on two CPU cores for Lite0's D = 1280.
BACKBONE = "test_efficientnet"
ARGS = [
    "--image-size",
    str(SIZE),
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--no-progress",
    "--seed",
    "0",
    "--set",
    f"model.backbone={BACKBONE}",
    "model.pretrained=false",
    "model.head=ridge",
    "model.dase=false",
    "loss.name=cosface",
]


def _train(data: Path, run: Path, task: str, *extra: str, epochs: int = 0, flags: tuple[str, ...] = ()) -> None:
    args = ["train", "--task", task, "--data", str(data), "--out", str(run), "--epochs", str(epochs), *flags]
    assert main([*args, *ARGS, *extra]) == 0


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _training_features(data: Path, run: Path, model) -> tuple[torch.Tensor, list[str], torch.Tensor, list[str]]:
    """Pooled backbone features (no head) and labels of the run's training sketches and photos (split.json)."""
    split = json.loads((run / "split.json").read_text())
    val_s, val_p = set(split["val_sketch_ids"]), set(split["val_photo_ids"])
    keep = set(split.get("train_classes") or [])
    train = load_dataset(data).splits["train"]
    photos = [p for p in train.photos if p.id not in val_p and (not keep or p.label in keep)]
    sketches = [s for s in train.sketches if s.id not in val_s and (not keep or s.label in keep)]
    tf = eval_transform(SIZE, model.mean, model.std)
    with torch.no_grad():
        s = model.features(torch.stack([tf(x.image.load()) for x in sketches]), "sketch")
        p = model.features(torch.stack([tf(x.image.load()) for x in photos]), "photo")
    return s.float(), [x.label for x in sketches], p.float(), [x.label for x in photos]


def _ridge_targets(s, s_lab, p, p_lab) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, photos, b)``: centred, normalised sketches and photos, and each sketch's class photo centre."""
    a = F.normalize(s.double() - s.double().mean(0), dim=-1)
    photos = F.normalize(p.double() - p.double().mean(0), dim=-1)
    classes = sorted(set(p_lab))
    centres = torch.stack([photos[[i for i, c in enumerate(p_lab) if c == k]].mean(0) for k in classes])
    b = F.normalize(centres, dim=-1)[[classes.index(c) for c in s_lab]]
    return a, photos, b


@pytest.fixture(scope="module")
def category_data(tmp_path_factory) -> Path:
    return make_category_dataset(tmp_path_factory.mktemp("cat_ridge"), SHAPES[:4], n_photos=5, n_sketches=5, seed=2)


def test_category_ridge_head_is_fitted_on_the_training_split_and_saved(category_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    _train(category_data, run, "category", "optim.samples_per_class=2")  # optim.epochs=0: fit, validate, save
    assert (run / "best.safetensors").is_file()
    assert not (run / "acc.png").exists()  # no loss or accuracy column to draw for a closed-form run
    rows = _rows(run)
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_map@all"]) <= 1.0

    model, cfg, _ = load_model(run)
    assert cfg.model.head == "ridge" and isinstance(model.head, DomainCentredMaps)
    dim = model.backbone.num_features
    assert model.normalize and model.embed_dim == dim == 256
    s, s_lab, p, p_lab = _training_features(category_data, run, model)
    assert len(s) == 16 and len(p) == 16  # 4 classes x 5, one of each per class held out for validation
    sk, ph = model.head.sketch, model.head.photo

    # Each domain is centred on its own training mean; photos are only centred, sketches mapped (full rank).
    assert torch.allclose(sk.mean, s.mean(0), atol=1e-4)
    assert torch.allclose(ph.mean, p.mean(0), atol=1e-4)
    assert not torch.allclose(sk.mean, ph.mean, atol=1e-3)
    assert ph.left.shape == (dim, 0) and ph.right.shape == (0, dim)
    assert sk.left.shape == (dim, dim) and sk.right.shape == (dim, dim)
    correction = sk.left.double() @ sk.right.double()
    assert correction.abs().max() > 1e-3

    # The map is the ridge map from the centred training sketches to their class's photo centre ...
    a, photos, b = _ridge_targets(s, s_lab, p, p_lab)
    left, right = ridge_map_low_rank(a, b, cfg.model.ridge_lambda)
    assert torch.allclose(correction, left @ right, atol=1e-5)

    # ... which takes the training sketches closer to their class's photo centre than the identity does.
    with torch.no_grad():
        mapped, centred = model.project(s, "sketch").double(), model.project(p, "photo").double()
    assert torch.allclose(centred, photos, atol=1e-4)  # the photo side: centred and normalised, nothing more
    assert torch.allclose(mapped.norm(dim=1), torch.ones(len(s), dtype=torch.float64), atol=1e-5)
    fitted = (mapped * b).sum(1).mean()
    identity = (a * b).sum(1).mean()
    assert fitted > identity + 0.05

    # Searching uses the fitted head: `sbir eval` of the saved run gives the validation score it recorded.
    assert main(["eval", str(run), "--split", "val", "--no-progress"]) == 0
    metrics = json.loads((run / "eval-val" / "metrics.json").read_text())
    assert metrics["map@all"] == pytest.approx(float(rows[0]["val_map@all"]), abs=1e-4)
    assert metrics["distance"] == "angular"


def test_zeroshot_ridge_head_on_concatenated_backbones_is_refitted_after_training(tmp_path: Path):
    data = make_category_dataset(tmp_path / "zs", SHAPES, n_photos=3, n_sketches=3, seed=4)
    run = tmp_path / "run"
    _train(
        data,
        run,
        "zeroshot",
        "data.val_fraction=0.5",
        "optim.samples_per_class=4",
        "optim.warmup_epochs=0",
        "model.extra_backbones=[test_efficientnet_ln]",
        "model.ridge_rank=4",
        epochs=1,
        flags=("--unseen", "star,bar"),
    )
    rows = _rows(run)
    assert (run / "best.safetensors").is_file() and len(rows) == 1 and "val_map@all" in rows[0]
    assert float(rows[0]["train_loss"]) > 0  # a gradient epoch ran through both backbones

    model, cfg, _ = load_model(run)
    assert cfg.model.extra_backbones == ["test_efficientnet_ln"] and cfg.model.ridge_rank == 4
    assert isinstance(model.backbone, ConcatFeatures)
    assert [m.num_features for m in model.backbone.members] == [256, 256]
    assert model.backbone.num_features == model.embed_dim == 512
    # The sketch map is kept to ridge_rank directions, fitted to the trained encoder on the seen training classes.
    assert model.head.sketch.left.shape == (512, 4) and model.head.sketch.right.shape == (4, 512)
    s, s_lab, p, p_lab = _training_features(data, run, model)
    split = json.loads((run / "split.json").read_text())
    assert len(split["train_classes"]) == 2 and len(s) == 6 and len(p) == 6
    assert torch.allclose(model.head.sketch.mean, s.mean(0), atol=1e-4)
    assert torch.allclose(model.head.photo.mean, p.mean(0), atol=1e-4)
    a, _, b = _ridge_targets(s, s_lab, p, p_lab)
    left, right = ridge_map_low_rank(a, b, cfg.model.ridge_lambda, 4)
    assert torch.allclose(model.head.sketch.left.double() @ model.head.sketch.right.double(), left @ right, atol=1e-5)


def test_category_model_concatenates_the_pooled_features_of_its_backbones():
    torch.manual_seed(0)
    cfg = ModelConfig(pretrained=False, head="ridge", extra_backbones=["efficientnet_lite1"])
    model = CategorySBIRModel(cfg, num_classes=3, dase=False).eval()
    assert isinstance(model.backbone, ConcatFeatures)
    lite0, lite1 = model.backbone.members
    assert (lite0.name, lite1.name) == ("efficientnet_lite0", "efficientnet_lite1")
    assert model.backbone.num_features == model.embed_dim == 1280 + 1280
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.features(x, "sketch")
        assert feats.shape == (2, 2560)
        assert torch.allclose(feats, torch.cat([lite0(x), lite1(x)], dim=1))
        emb = model.embed(x, "photo")
    assert emb.shape == (2, 2560) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_category_model_with_ridge_head_projects_per_domain():
    torch.manual_seed(0)
    model = CategorySBIRModel(
        ModelConfig(backbone=BACKBONE, head="ridge", pretrained=False, embed_dim=32), num_classes=3, normalize=False
    ).eval()
    assert isinstance(model.head, DomainCentredMaps)
    assert model.normalize and model.embed_dim == model.backbone.num_features == 256  # embed_dim=32 ignored
    feats = torch.randn(4, 256)
    # Unfitted: the identity head on both sides.
    for domain in ("sketch", "photo"):
        assert torch.allclose(model.project(feats, domain), F.normalize(feats, dim=-1), atol=1e-6)
    model.head.sketch.set_map(torch.randn(256), 0.1 * torch.randn(256, 3), torch.randn(3, 256))
    model.head.photo.set_map(torch.randn(256), torch.zeros(256, 0), torch.zeros(0, 256))
    s, p = model.project(feats, "sketch"), model.project(feats, "photo")
    assert torch.allclose(s, F.normalize(model.head.sketch(feats), dim=-1), atol=1e-6)
    assert torch.allclose(p, F.normalize(feats - model.head.photo.mean, dim=-1), atol=1e-6)
    assert not torch.allclose(s, p, atol=1e-2)
    ids = torch.tensor([1, 0, 0, 1])
    mixed = model.project(feats, ids)
    assert torch.allclose(mixed, torch.stack([p[0], s[1], s[2], p[3]]), atol=1e-6)
    # With DASE (the default) the domain reaches both the blocks and the head.
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        for domain in ("sketch", "photo"):
            want = model.project(model.features(x, domain), domain)
            assert torch.allclose(model.embed(x, domain), want, atol=1e-6)


# ---------------------------------------------------------------- config rules


def _cfg(task: str = "category", loss: str | None = "cosface", **model) -> TrainConfig:
    return TrainConfig(task=task, model=ModelConfig(**model), loss=LossConfig(name=loss))


@pytest.mark.parametrize("task", ["category", "zeroshot"])
def test_category_and_zeroshot_accept_the_ridge_head_with_cosface(task):
    check_config(_cfg(task, head="ridge", dase=False))
    check_config(_cfg(task, head="ridge", ridge_rank=8))
    check_config(_cfg(task, head="ridge", dase=False, extra_backbones=["efficientnet_lite1"]))


@pytest.mark.parametrize("loss", [None, "mems"])  # the category default loss is MEMS (euclidean)
def test_category_ridge_head_refuses_a_euclidean_loss(loss):
    with pytest.raises(ConfigError, match="use loss.name=cosface with the ridge head"):
        check_config(_cfg("category", loss, head="ridge"))


def test_ridge_rank_rules():
    with pytest.raises(ConfigError, match="model.ridge_rank must be >= 1"):
        ModelConfig(head="ridge", ridge_rank=0).validate()
    ModelConfig(head="ridge", ridge_rank=1).validate()
    msg = "model.ridge_rank truncates a category / zero-shot ridge head"
    with pytest.raises(ConfigError, match=msg):
        check_config(_cfg("category", head="linear", ridge_rank=4))
    with pytest.raises(ConfigError, match=msg):  # the fine-grained ridge head is never truncated
        check_config(TrainConfig(task="finegrained", model=ModelConfig(head="ridge", ridge_rank=4)))
