"""The task registry: every part of a task comes from its spec; config values are checked, never rewritten."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sbir.config import LossConfig, ModelConfig, TrainConfig, load_config
from sbir.engine import tasks
from sbir.errors import ConfigError
from sbir.losses.factory import _LOSSES, register_loss


def test_registry_lists_the_tasks_and_refuses_unknown_ones():
    assert {"category", "finegrained", "zeroshot"} <= set(tasks.list_tasks())
    with pytest.raises(ConfigError, match="task must be one of"):
        tasks.get_task("segmentation")
    fg, cat, zs = (tasks.get_task(n) for n in ("finegrained", "category", "zeroshot"))
    assert (fg.model, fg.loss_kind, fg.split_policy) == ("fgsbir", "pairs", "photo")
    assert (cat.model, cat.loss_kind, cat.split_policy) == ("category", "classes", "class")
    assert zs.split_policy == "unseen" and zs.task_class is cat.task_class


def test_validate_checks_without_rewriting():
    cfg = TrainConfig(task="category")
    before = copy.deepcopy(cfg)
    cfg.validate()
    tasks.check_config(cfg)
    assert cfg == before  # nothing filled in or changed
    assert cfg.loss.name is None and cfg.select_metric is None and cfg.eval.distance == "auto"
    filled = tasks.with_defaults(cfg)
    assert cfg == before and filled is not cfg
    assert (filled.loss.name, filled.select_metric) == ("mems", "map@all")
    assert tasks.resolve_distance(filled) == "euclidean" and tasks.resolve_flip_mode(filled) == "pairings"
    fg = tasks.with_defaults(TrainConfig())
    assert (fg.loss.name, fg.select_metric, tasks.resolve_distance(fg)) == ("ntxent", "acc@1", "cosine")
    cos = TrainConfig(task="zeroshot", loss=LossConfig(name="cosface"))
    assert tasks.resolve_distance(cos) == "angular"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=category", "loss.name=ntxent"], "this task needs a loss on classes"),
        (["loss.name=mems"], "this task needs a loss on pairs"),
        (["task=category", "select_metric=acc@1"], "not a category metric"),
        (["select_metric=map@all"], "not a finegrained metric"),
        (["eval.hash_bits=[32]"], "eval.hash_bits is for category"),
        (["task=zeroshot", "eval.hash_bits=[32,32]"], "twice"),
    ],
)
def test_task_rules_are_checked_when_the_config_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_new_loss_is_one_registration(tmp_path):
    """A loss registered in its own module is usable by every task of its kind, by name."""

    class CentreLoss(nn.Module):
        """``mean_i ||z_i - c_{y_i}||^2`` (no margin): a toy classes-kind loss."""

        def __init__(self, num_classes: int, embed_dim: int, scale: float = 1.0):
            super().__init__()
            self.centers = nn.Parameter(torch.zeros(num_classes, embed_dim))
            self.scale = scale

        def forward(self, z, labels):
            return self.scale * (z - self.centers[labels]).pow(2).sum(1).mean()

        def predict(self, z):
            return torch.cdist(z, self.centers).argmin(1)

        def current_margin(self):
            return 0.0

    @register_loss("centre", kind="classes", distance="euclidean", normalized=False)
    def _build(cfg, num_classes, embed_dim):
        return CentreLoss(num_classes, embed_dim, **({"scale": cfg.scale} if cfg.scale is not None else {}))

    try:
        cfg = TrainConfig(task="category", loss=LossConfig(name="centre", scale=2.0))
        cfg.model = ModelConfig(backbone="resnet18", pretrained=False, embed_dim=4, num_classes=3)
        crit = tasks.build_criterion(cfg, num_classes=3, embed_dim=4)
        z = torch.ones(2, 4)
        assert crit(z, torch.tensor([0, 2])).item() == pytest.approx(2.0 * 4.0)
        assert tasks.resolve_distance(cfg) == "euclidean"
        assert tasks.build_model(cfg).normalize is False
        with pytest.raises(ConfigError, match="needs a loss on pairs"):
            tasks.check_config(TrainConfig(loss=LossConfig(name="centre")))
    finally:
        _LOSSES.pop("centre", None)
