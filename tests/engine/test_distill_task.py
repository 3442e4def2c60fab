"""loss.weight_distill in the category / zero-shot task: the frozen ImageNet model teaches the backbone's own
ImageNet classifier; refused where it cannot apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sbir.config import TrainConfig
from sbir.engine.tasks import build_task, check_config
from sbir.errors import ConfigError

from .test_category_e2e import SHAPES, make_category_dataset


def _cfg(data: Path, **loss) -> TrainConfig:
    cfg = TrainConfig(task="category")
    cfg.data.path = str(data)
    cfg.data.image_size = 64
    cfg.data.num_workers = 0
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.pretrained = True
    cfg.model.embed_dim = 32
    cfg.optim.batch_size = 8
    cfg.optim.samples_per_class = 2
    cfg.loss.name = "cosface"
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return check_config(cfg)


def _classifier(model) -> torch.Tensor:
    return model.backbone.model.get_classifier().weight.detach().clone()


def _steps(task, n: int = 3) -> list[dict]:
    batch = next(iter(task.train_batches(epoch=1)))
    opt = torch.optim.AdamW(task.model.param_groups(1e-2, 1.0, 0.0))
    task.model.train()
    parts_seen = []
    for _ in range(n):
        loss, parts = task.compute_loss(batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        parts_seen.append(parts)
    return parts_seen


def test_distillation_trains_the_classifier_against_a_frozen_teacher(tmp_path: Path):
    data = make_category_dataset(tmp_path / "data", SHAPES[:4], n_photos=4, n_sketches=4)
    torch.manual_seed(0)
    task = build_task(_cfg(data, weight_distill=1.0), tmp_path / "run", progress=False)
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_before = _classifier(task.model)
    # Before any step the student's classifier and backbone are the teacher's, DASE gates aside.
    assert torch.equal(student_before, task.teacher.model.get_classifier().weight)

    parts = _steps(task)
    assert all(p["distill"] >= 0 for p in parts) and parts[0]["distill"] > 0
    assert not torch.equal(_classifier(task.model), student_before)  # the classifier learns
    for k, v in task.teacher.state_dict().items():  # the teacher never does, running statistics included
        assert torch.equal(v, teacher_before[k]), k
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert not any(k.startswith("teacher") for k in task.model.state_dict())  # not saved with the model


def test_without_distillation_the_classifier_is_untouched(tmp_path: Path):
    data = make_category_dataset(tmp_path / "data", SHAPES[:4], n_photos=4, n_sketches=4)
    torch.manual_seed(0)
    task = build_task(_cfg(data), tmp_path / "run", progress=False)
    assert task.teacher is None
    before = _classifier(task.model)
    parts = _steps(task, n=2)
    assert "distill" not in parts[0]
    assert torch.equal(_classifier(task.model), before)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"task": "finegrained"}, "category / zero-shot"),
        ({"pretrained": False}, "model.pretrained=true"),
        ({"distill_temperature": 0.0}, "distill_temperature"),
        ({"weight_distill": -1.0}, "weight_distill"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, sets: dict, message: str):
    cfg = TrainConfig(task=sets.get("task", "category"))
    cfg.model.pretrained = sets.get("pretrained", True)
    cfg.loss.weight_distill = sets.get("weight_distill", 1.0)
    cfg.loss.distill_temperature = sets.get("distill_temperature")
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_a_backbone_without_its_classifier_is_refused(tmp_path: Path):
    data = make_category_dataset(tmp_path / "data", SHAPES[:4], n_photos=4, n_sketches=4)
    import timm
    from safetensors.torch import save_file

    # timm backbones are built without their classifier; local weights keep the hub out of it.
    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), str(weights))
    cfg = _cfg(data, weight_distill=1.0)
    cfg.model.backbone = "resnet18"
    cfg.model.weights_path = str(weights)
    with pytest.raises(ConfigError, match="keeps its ImageNet classifier"):
        build_task(cfg, tmp_path / "run", progress=False)
