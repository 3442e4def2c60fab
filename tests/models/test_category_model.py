"""CategorySBIRModel: one shared domain-aware encoder, the SBIRModel interface, and training with MEMS."""

from __future__ import annotations

import pytest
import torch

from sbir.config import ModelConfig
from sbir.errors import ConfigError
from sbir.losses.mems import MEMSLoss
from sbir.models.category import CategorySBIRModel, build_category_model
from sbir.models.dase import dase_modules
from tests.models.test_dase import randomize_batchnorm


def make(normalize=False, dase=True, backbone="resnet18", **cfg_kw) -> CategorySBIRModel:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, pretrained=False, embed_dim=16, **cfg_kw)
    m = CategorySBIRModel(cfg, num_classes=3, dase=dase, normalize=normalize)
    randomize_batchnorm(m)
    return m


def test_interface_and_normalisation():
    m = make(normalize=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        s, p = m.embed_sketch(x), m.embed_photo(x)
        assert s.shape == (2, 16) and m.embed_dim == 16
        # DASE starts as the identity: both domains give the same embedding of the same input.
        assert torch.allclose(s, p, atol=1e-5)
        assert not torch.allclose(s.norm(dim=1), torch.ones(2), atol=1e-3)  # euclidean (MEMS) features
        n = make(normalize=True).eval()
        z = n.embed(x, "photo")
        assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
        assert torch.allclose(n.embed(x, torch.tensor([0, 1])), n.embed(x, "sketch"), atol=1e-5)
    assert len(m.mean) == 3 and len(m.std) == 3
    assert len(dase_modules(m)) == 4


def test_param_groups_cover_every_trainable_parameter_once():
    m = make()
    groups = m.param_groups(lr=1e-3, backbone_lr_mult=0.1, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "dase", "heads"}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4) and by_name["dase"]["lr"] == 1e-3
    dase_ids = {id(p) for blk in dase_modules(m) for p in blk.parameters()}
    assert {id(p) for p in by_name["dase"]["params"]} == dase_ids


def test_freezing_keeps_new_dase_layers_trainable():
    m = make(freeze_stages=3)
    stages = m.backbone.stages()
    frozen = [p for s in stages[:3] for n, p in s.named_parameters() if "dase" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for blk in dase_modules(m) for p in blk.parameters())


def test_without_dase_the_domain_is_ignored():
    m = make(dase=False).eval()
    assert not dase_modules(m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.embed_sketch(x), m.embed_photo(x))
    assert {g["name"] for g in m.param_groups(1e-3, 0.1, 0.0)} == {"backbone", "heads"}


def test_mems_training_step_makes_the_encoder_domain_aware():
    m = make()
    loss_fn = MEMSLoss(num_classes=3, embed_dim=16, margin=2.0, anneal_steps=10)
    opt = torch.optim.SGD(m.param_groups(0.1, 1.0, 0.0) + [{"params": loss_fn.parameters(), "lr": 0.1}], lr=0.1)
    torch.manual_seed(2)
    sketches, photos = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    m.train()
    x = torch.cat([sketches, photos])
    dom = torch.tensor([0, 0, 0, 1, 1, 1])
    for _ in range(2):
        loss = loss_fn(m.embed(x, dom), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(loss_fn.num_steps) == 2
    m.eval()
    with torch.no_grad():
        assert (m.embed_sketch(photos) - m.embed_photo(photos)).abs().max() > 1e-4


def test_the_task_picks_normalisation_from_the_loss():
    from sbir.config import LossConfig, TrainConfig
    from sbir.engine.tasks import build_model

    model_cfg = ModelConfig(backbone="resnet18", pretrained=False, embed_dim=8, num_classes=4)
    cosface = build_model(TrainConfig(task="category", model=model_cfg, loss=LossConfig(name="cosface")))
    mems = build_model(TrainConfig(task="zeroshot", model=model_cfg, loss=LossConfig(name="mems")))
    default = build_model(TrainConfig(task="category", model=model_cfg))  # MEMS
    assert cosface.normalize is True and mems.normalize is False and default.normalize is False
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(cosface.eval().embed(x, "photo").norm(dim=1), torch.ones(2), atol=1e-5)
    assert cosface.num_classes == 4
    with pytest.raises(ConfigError, match="loss.name"):
        build_model(TrainConfig(task="category", model=model_cfg, loss=LossConfig(name="ntxent")))
    assert isinstance(build_category_model(model_cfg, normalize=True), CategorySBIRModel)


@pytest.mark.parametrize("task", ["category", "finegrained"])
def test_extra_backbones_are_built_with_the_backbone_kwargs_too(task):
    # model.backbone_kwargs is passed to timm for every backbone of the concatenation, not the first one only.
    from sbir.models.fgsbir import SBIRModel

    kw = dict(backbone="efficientnet_lite0", extra_backbones=["efficientnet_lite1"])
    kw["backbone_kwargs"] = {"drop_path_rate": 0.2}
    if task == "category":
        members = make(dase=False, **kw).backbone.members
    else:
        cfg = ModelConfig(pretrained=False, shared_encoder=True, feature_level=3, pool_grid=2, head="identity", **kw)
        members = SBIRModel(cfg).sketch_encoder.members
    assert len(members) == 2
    for member in members:
        rates = [m.drop_prob for m in member.modules() if type(m).__name__ == "DropPath"]
        assert rates and 0.1 < max(rates) < 0.2  # timm spreads the rate over the blocks, rising to 0.2
