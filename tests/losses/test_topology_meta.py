"""``loss.topology_meta``: the first-order meta update of the topology term against a hand computation."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses import build_loss
from sbir.losses.topology import NeighbourhoodTopologyLoss, first_order_meta_step


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.sketch = nn.Linear(4, 3)
        self.photo = nn.Linear(4, 3)


def _data():
    g = torch.Generator().manual_seed(1)
    xs, xp = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    ref = torch.rand(6, 6, generator=g)
    return xs, xp, (ref + ref.t()) / 2


def _main(m: Tiny, xs, xp) -> torch.Tensor:  # a retrieval-like loss: pull each sketch to its photo
    return ((m.sketch(xs) - m.photo(xp)) ** 2).sum(1).mean()


TOPO = NeighbourhoodTopologyLoss(margin=0.05, pairs=None)  # all pairs: deterministic


def _topo(m: Tiny, xs, xp, ref) -> torch.Tensor:
    return TOPO(m.sketch(xs), m.photo(xp), ref)


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_meta_gradient_equals_g_plus_w_h_by_hand(scale: float):
    xs, xp, ref = _data()
    lr, w = 0.5, 0.7
    model = Tiny()
    theta = {k: v.clone() for k, v in model.state_dict().items()}

    # By hand: g at θ; a deep copy stepped by -lr * g; h at the copy.
    ref_model = copy.deepcopy(model)
    g = torch.autograd.grad(_main(ref_model, xs, xp), list(ref_model.parameters()))
    stepped = copy.deepcopy(ref_model)
    with torch.no_grad():
        for p, gi in zip(stepped.parameters(), g, strict=True):
            p -= lr * gi
    topo_expected = _topo(stepped, xs, xp, ref)
    h = torch.autograd.grad(topo_expected, list(stepped.parameters()))
    assert any(float(x.abs().sum()) > 0 for x in h)  # the term is active

    topo = first_order_meta_step(
        list(model.parameters()), _main(model, xs, xp), lambda: _topo(model, xs, xp, ref), lr, w, scale=scale
    )
    assert torch.allclose(topo, topo_expected.detach(), atol=1e-6)
    for p, gi, hi in zip(model.parameters(), g, h, strict=True):
        assert torch.allclose(p.grad, scale * (gi + w * hi), atol=1e-5)
    # θ is restored: only .grad changed.
    assert all(torch.equal(v, theta[k]) for k, v in model.state_dict().items())


def test_meta_gradient_differs_from_the_plain_sum():
    xs, xp, ref = _data()
    model, plain = Tiny(), Tiny()
    first_order_meta_step(list(model.parameters()), _main(model, xs, xp), lambda: _topo(model, xs, xp, ref), 0.5, 1.0)
    (_main(plain, xs, xp) + _topo(plain, xs, xp, ref)).backward()
    assert not all(torch.allclose(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters(), strict=True))


def test_option_off_keeps_the_term_in_the_loss_and_on_leaves_it_to_the_meta_step():
    g = torch.Generator().manual_seed(0)
    emb = {k: nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1) for k in ("sketch", "photo")}
    batch = {**emb, "sketch_aug": emb["sketch"], "photo_aug": emb["photo"], "groups": torch.arange(6)}
    batch["ref_photo_dist"] = torch.rand(6, 6, generator=g)
    plain = build_loss(LossConfig(name="ntxent"))
    off = build_loss(LossConfig(name="ntxent", weight_topology=2.0))
    on = build_loss(LossConfig(name="ntxent", weight_topology=2.0, topology_meta=True))
    assert not off.topology_meta and on.topology_meta
    torch.manual_seed(0)
    total_off, parts_off = off(batch)
    assert "topology" in parts_off
    assert torch.allclose(total_off, plain(batch)[0] + 2.0 * parts_off["topology"])
    total_on, parts_on = on(batch)
    assert "topology" not in parts_on and torch.allclose(total_on, plain(batch)[0])


def test_topology_meta_config_is_checked_early():
    with pytest.raises(ConfigError, match="loss.weight_topology > 0"):
        LossConfig(name="ntxent", topology_meta=True).validate()
    with pytest.raises(ConfigError, match="loss.topology_meta_lr must be > 0"):
        LossConfig(name="ntxent", weight_topology=1.0, topology_meta=True, topology_meta_lr=0.0).validate()


def test_training_with_the_meta_update(tiny_paired_dataset: Path, tmp_path: Path):
    from sbir.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_paired_dataset), "--out", str(run), "--epochs", "1", "--image-size", "64",
                 "--batch-size", "8", "--workers", "0", "--no-progress", "--set", "model.pretrained=false",
                 "model.backbone=resnet18", "model.embed_dim=16", "optim.max_steps_per_epoch=2",
                 "loss.weight_topology=1.0", "loss.topology_meta=true", "loss.topology_meta_lr=0.01"]) == 0  # fmt: skip
    with open(run / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["train_topology"]) > 0 and float(row["train_loss"]) > 0


def test_meta_update_refuses_several_processes(tmp_path: Path, monkeypatch):
    from sbir.config import TrainConfig
    from sbir.engine import distributed
    from sbir.engine.tasks import build_task

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    cfg = TrainConfig()
    cfg.loss.weight_topology = 1.0
    cfg.loss.topology_meta = True
    with pytest.raises(ConfigError, match="one process") as err:
        build_task(cfg, tmp_path)
    assert "\n" not in str(err.value)
