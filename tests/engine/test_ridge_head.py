"""model.head=ridge: `sbir train` fits the closed-form head on the training pairs before validating, and
the fit travels with the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sbir.cli import main
from sbir.config import ModelConfig, OptimConfig, TrainConfig
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


def _batchnorm_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_ridge_crossfit_trains_the_encoder_through_maps_fitted_on_the_other_half(
    tiny_paired_dataset: Path, tmp_path: Path
):
    from sbir.config import load_config
    from sbir.engine.tasks import build_task

    overrides = [f"data.path={tiny_paired_dataset}", *GRID, "optim.epochs=2", "model.ridge_crossfit=true"]
    cfg = check_config(load_config(None, [*overrides, "loss.weight_sketch=0", "loss.weight_photo=0"]))
    task = build_task(cfg, tmp_path / "task", progress=False)
    start_bn = _batchnorm_buffers(task.model)
    task.model.train()
    batches = task.train_batches(1)
    batch = next(batches)
    # No in-modal terms: one view of each sketch and photo is drawn.
    assert "sketch_aug" not in batch and "photo_aug" not in batch
    halves = task.crossfit.half
    n_photos = len(task.train_split.photos)
    assert len(halves) == n_photos and int(halves.sum()) == n_photos - n_photos // 2
    # Training keeps BatchNorm in eval mode (the maps were fitted on eval-mode features), the rest trains.
    batchnorms = [m for m in task.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and not any(m.training for m in batchnorms) and task.model.training

    loss, parts = task.compute_loss(batch, torch.device("cpu"))
    loss.backward()
    grads = [p.grad for p in task.model.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and sum(float(g.abs().sum()) for g in grads) > 0
    # The loss compares each sketch, mapped by the other half's map, with its centred photo.
    with torch.no_grad():
        task.model.eval()
        s = task.crossfit.sketches(task.model.features(batch["sketch"], "sketch"), batch["group"])
        p = task.crossfit.photos(task.model.features(batch["photo"], "photo"))
        pos = (s * p).sum(1)
        assert pos.mean() > (s @ p.T).mean()  # the maps already pair them better than chance
    list(batches)

    # Each epoch draws its own halves, the same ones again for the same epoch (a resumed run).
    again = task._fit_crossfit_maps(1).half
    assert torch.equal(again, halves) and not torch.equal(task._fit_crossfit_maps(2).half, halves)

    # Through `sbir train`: the encoder moved, BatchNorm statistics did not, and the saved head is the
    # map fitted on all training pairs for the trained encoder.
    run = tmp_path / "run"
    _train(tiny_paired_dataset, run, 2, "model.ridge_crossfit=true", "loss.weight_sketch=0", "loss.weight_photo=0")
    model, _, _ = load_model(run)
    trained = model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in start_bn.items())
    start = build_task(cfg, tmp_path / "fresh", progress=False).model.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.endswith("weight") and "encoder" in k)
    s, _ = _training_pairs(tiny_paired_dataset, run, model)
    assert torch.allclose(model.sketch_head.proj.mean, s.mean(0), atol=1e-4)
    assert model.sketch_head.proj.left.shape[1] == len(s)


def test_the_topology_term_goes_through_the_crossfit_maps_like_the_retrieval_loss(
    tiny_paired_dataset: Path, tmp_path: Path
):
    """The meta update's topology loss (``task.topology_loss``) ranks the same cross-fitted embeddings the
    retrieval loss trains, not the model's un-mapped ones."""
    from sbir.config import load_config
    from sbir.engine.tasks import build_task

    overrides = [f"data.path={tiny_paired_dataset}", *GRID, "optim.epochs=2", "model.ridge_crossfit=true"]
    topology = ["loss.weight_topology=1", "loss.topology_meta=true", "loss.topology_pairs=20"]
    topology.append("loss.topology_margin=0.5")  # wide: most pairs active, so the two embeddings' losses differ
    cfg = check_config(load_config(None, [*overrides, "loss.weight_sketch=0", "loss.weight_photo=0", *topology]))
    task = build_task(cfg, tmp_path / "task", progress=False)
    task.model.train()
    batches = task.train_batches(1)
    batch = next(batches)
    with torch.no_grad():
        torch.manual_seed(5)
        got = task.topology_loss(batch, torch.device("cpu"))
        g = batch["group"]
        ref = task.ref_photo_dist[g][:, g]
        mapped_s = task.crossfit.sketches(task.model.features(batch["sketch"], "sketch"), g)
        mapped_p = task.crossfit.photos(task.model.features(batch["photo"], "photo"))
        torch.manual_seed(5)
        through_maps = task.criterion.topology(mapped_s, mapped_p, ref)
        torch.manual_seed(5)
        unmapped = task.criterion.topology(
            task.model.embed(batch["sketch"], "sketch"), task.model.embed(batch["photo"], "photo"), ref
        )
    assert float(got) > 0 and torch.allclose(got, through_maps, atol=1e-6)
    assert not torch.allclose(got, unmapped, atol=1e-4)
    list(batches)


def test_ridge_crossfit_settings_are_checked():
    with pytest.raises(ConfigError, match="model.ridge_crossfit trains through the ridge head"):
        ModelConfig(head="linear", ridge_crossfit=True).validate()
    with pytest.raises(ConfigError, match="optim.epochs is 0"):
        check_config(TrainConfig(model=ModelConfig(head="ridge", ridge_crossfit=True), optim=OptimConfig(epochs=0)))
    with pytest.raises(ConfigError, match="model.ridge_crossfit is for fine-grained runs"):
        check_config(TrainConfig(task="category", model=ModelConfig(head="ridge", ridge_crossfit=True)))
