"""model.head=ridge: `sbir train` fits the closed-form head on the training pairs before validating, and
the fit travels with the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sbir.cli import main
from sbir.config import ModelConfig, TrainConfig
from sbir.data.formats import load_dataset
from sbir.data.transforms import eval_transform
from sbir.engine.inference import load_model
from sbir.engine.tasks import check_config
from sbir.errors import ConfigError

GRID = [
    "data.image_size=64",
    "data.num_workers=0",
    "model.shared_encoder=true",
    "model.feature_level=3",
    "model.pool_grid=2",
    "model.head=ridge",
    "optim.batch_size=8",
]


def _train(data: Path, run: Path, epochs: int, *extra: str) -> None:
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", str(epochs), "--no-progress"]
    assert main([*args, "--set", *GRID, *extra]) == 0


def _training_pairs(data: Path, run: Path, model) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone features (no head) of the run's training sketches and of their photos."""
    val = set(json.loads((run / "split.json").read_text())["val_photo_ids"])
    train = load_dataset(data).splits["train"]
    photos = {p.id: p for p in train.photos if p.id not in val}
    sketches = [s for s in train.sketches if s.photo_id in photos]
    tf = eval_transform(64, model.mean, model.std)
    with torch.no_grad():
        s = model.encoder("sketch")(torch.stack([tf(x.image.load()) for x in sketches]))
        p = model.encoder("photo")(torch.stack([tf(photos[x.photo_id].image.load()) for x in sketches]))
    return s, p


def test_ridge_head_is_fitted_on_the_training_pairs_and_saved(tiny_paired_dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    _train(tiny_paired_dataset, run, 0)  # optim.epochs=0: the ImageNet grid, plus the fitted head
    model, cfg, _ = load_model(run)
    sketch_head, photo_head = model.sketch_head.proj, model.photo_head.proj
    s, p = _training_pairs(tiny_paired_dataset, run, model)
    photo_feats = model.encoder("photo")
    assert photo_feats is model.encoder("sketch")  # one shared encoder: only the heads tell the domains apart

    # Each domain is centred on its own training mean (photos counted once each, sketches once each).
    assert torch.allclose(sketch_head.mean, s.mean(0), atol=1e-4)
    assert not torch.allclose(sketch_head.mean, photo_head.mean, atol=1e-2)
    # Photos are only centred; sketches are mapped, and the map is not the identity.
    assert photo_head.left.shape[1] == 0 and photo_head.right.shape[0] == 0
    n_pairs = len(s)
    assert sketch_head.left.shape == (s.shape[1], n_pairs) and sketch_head.right.shape == (n_pairs, s.shape[1])
    assert (sketch_head.left @ sketch_head.right).abs().max() > 1e-3

    # The map brings the training sketches closer to their own photos than plain cosine does.
    fitted = (model.sketch_head(s) * model.photo_head(p)).sum(1).mean()
    plain = (F.normalize(s, dim=-1) * F.normalize(p, dim=-1)).sum(1).mean()
    assert fitted > plain

    # Searching uses the fitted heads: `sbir eval` of the saved run gives the validation score it recorded.
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run), "--split", "val", "--no-progress"]) == 0
    metrics = json.loads((run / "eval-val" / "metrics.json").read_text())
    assert metrics["acc@1"] == pytest.approx(summary["best_val_acc@1"])


def test_ridge_head_is_refitted_after_gradient_training(tiny_paired_dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    _train(tiny_paired_dataset, run, 1, "model.freeze_stages=3")
    model, _, _ = load_model(run)
    s, _ = _training_pairs(tiny_paired_dataset, run, model)
    # The saved head belongs to the trained encoder's features, not to the ImageNet ones.
    assert torch.allclose(model.sketch_head.proj.mean, s.mean(0), atol=1e-4)


@pytest.mark.parametrize(
    ("task", "method"), [("pretrain", None), ("category", "clip-prompt"), ("zeroshot", "clip-prompt")]
)
def test_other_tasks_refuse_the_ridge_head(task, method):
    with pytest.raises(ConfigError, match="model.head=ridge is for fine-grained, category and zero-shot runs"):
        check_config(TrainConfig(task=task, method=method, model=ModelConfig(head="ridge")))


def test_ridge_head_settings_are_checked():
    with pytest.raises(ConfigError, match="model.ridge_lambda must be > 0"):
        ModelConfig(head="ridge", ridge_lambda=0.0).validate()
