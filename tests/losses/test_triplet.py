"""Batch-hard triplet loss and the loss factory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses import DoubleSiameseNTXent, HardTripletLoss, build_loss


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=1)


def ref_triplet(s, p, margin, groups=None):
    """Explicit loop: hardest same-group photo vs hardest other-group photo, cosine distance."""
    s = s.double().numpy()
    p = p.double().numpy()
    n = len(s)
    g = np.arange(n) if groups is None else np.asarray(groups)
    losses = []
    for i in range(n):
        d = [1.0 - float(s[i] @ p[j]) / (np.linalg.norm(s[i]) * np.linalg.norm(p[j])) for j in range(n)]
        pos = max(d[j] for j in range(n) if g[j] == g[i])
        negs = [d[j] for j in range(n) if g[j] != g[i]]
        if negs:
            losses.append(max(0.0, pos - min(negs) + margin))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("margin", [0.05, 0.2, 0.5])
def test_triplet_matches_reference(margin):
    s, p = unit(10, 16, seed=1), unit(10, 16, seed=2)
    want = ref_triplet(s, p, margin)
    assert want > 0  # random embeddings violate the margin
    assert HardTripletLoss(margin)(s, p).item() == pytest.approx(want, rel=1e-5)


def test_triplet_with_groups_matches_reference():
    s, p = unit(9, 8, seed=3), unit(9, 8, seed=4)
    g = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])
    got = HardTripletLoss(0.2)(s, p, g).item()
    assert got == pytest.approx(ref_triplet(s, p, 0.2, g.numpy()), rel=1e-5)
    assert got != pytest.approx(HardTripletLoss(0.2)(s, p).item(), rel=1e-3)


def test_triplet_zero_when_margin_satisfied():
    e = torch.eye(5, 8)
    # positive at distance 0, every negative at distance 1 >= margin
    assert HardTripletLoss(0.5)(e, e).item() == 0.0
    assert HardTripletLoss(0.99)(e, e).item() == 0.0
    # margin larger than the gap: positive loss of exactly margin - 1
    assert HardTripletLoss(1.25)(e, e).item() == pytest.approx(0.25, abs=1e-6)


def test_triplet_single_group_is_zero_and_differentiable():
    s = unit(4, 6, seed=5).requires_grad_()
    p = unit(4, 6, seed=6)
    out = HardTripletLoss(0.2)(s, p, torch.zeros(4, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert s.grad is not None


def test_triplet_gradient_pulls_positive_and_pushes_negative():
    s = unit(6, 8, seed=7).requires_grad_()
    p = unit(6, 8, seed=8)
    HardTripletLoss(0.3)(s, p).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # A small step against the gradient lowers the loss.
    with torch.no_grad():
        before = HardTripletLoss(0.3)(s, p).item()
        after = HardTripletLoss(0.3)(s - 0.05 * s.grad, p).item()
    assert after < before


@pytest.mark.parametrize("m", [-0.1, float("nan"), "a"])
def test_triplet_bad_margin(m):
    with pytest.raises(ConfigError, match="triplet_margin"):
        HardTripletLoss(m)


def _batch(n=6, d=8, groups=True):
    s1, s2, p1, p2 = (unit(n, d, seed=s) for s in (40, 41, 42, 43))
    b = {"sketch": s1, "sketch_aug": s2, "photo": p1, "photo_aug": p2}
    if groups:
        b["groups"] = torch.tensor([0, 1, 1, 2, 3, 4])[:n]
    return b


def test_factory_ntxent():
    cfg = LossConfig(name="ntxent", temperature=0.1, weight_cross=1.0, weight_sketch=0.5, weight_photo=0.25)
    b = _batch()
    loss, parts = build_loss(cfg)(b)
    want, want_parts = DoubleSiameseNTXent(0.1, 1.0, 0.5, 0.25)(b["sketch"], b["sketch_aug"], b["photo"], b["photo_aug"], b["groups"])
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts == pytest.approx(want_parts)
    assert "loss" not in parts  # the trainer adds the total itself


def test_factory_triplet_needs_no_aug_views():
    cfg = LossConfig(name="triplet", triplet_margin=0.3)
    b = _batch()
    loss, parts = build_loss(cfg)({"sketch": b["sketch"], "photo": b["photo"], "groups": b["groups"]})
    want = ref_triplet(b["sketch"], b["photo"], 0.3, b["groups"].numpy())
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert parts == pytest.approx({"triplet": want}, rel=1e-5)


def test_factory_combined():
    cfg = LossConfig(name="ntxent+triplet", temperature=0.2, weight_triplet=3.0, triplet_margin=0.2)
    b = _batch(groups=False)
    loss, parts = build_loss(cfg)(b)
    assert set(parts) == {"ntxent_cross", "ntxent_sketch", "ntxent_photo", "triplet"}
    expect = parts["ntxent_cross"] + parts["ntxent_sketch"] + parts["ntxent_photo"] + 3.0 * parts["triplet"]
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    assert parts["triplet"] == pytest.approx(ref_triplet(b["sketch"], b["photo"], 0.2), rel=1e-5)


def test_factory_gradients_reach_all_four_views():
    b = {k: v.clone().requires_grad_() for k, v in _batch(groups=False).items()}
    loss, _ = build_loss(LossConfig(name="ntxent+triplet"))(b)
    loss.backward()
    for k, v in b.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k


def test_factory_validates():
    with pytest.raises(ConfigError, match="loss.name"):
        build_loss(LossConfig(name="arcface"))
    with pytest.raises(ConfigError, match="temperature"):
        build_loss(LossConfig(temperature=0))
    with pytest.raises(ConfigError, match="weight_cross"):
        build_loss(LossConfig(name="ntxent", weight_cross=0))
    with pytest.raises(ConfigError, match="weight_triplet"):
        build_loss(LossConfig(name="ntxent+triplet", weight_triplet=0))
    with pytest.raises(ConfigError, match="LossConfig"):
        build_loss({"name": "ntxent"})
    b = _batch()
    del b["photo_aug"]
    with pytest.raises(ValueError, match="photo_aug"):
        build_loss(LossConfig())(b)
    # With the photo term switched off, the photo views are not needed.
    loss, parts = build_loss(LossConfig(weight_photo=0))(b)
    assert "ntxent_photo" not in parts and torch.isfinite(loss)
