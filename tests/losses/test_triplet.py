"""Batch-hard triplet loss and the loss factory."""

from __future__ import annotations

import math

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
    p.requires_grad_()
    out = HardTripletLoss(0.2)(s, p, torch.zeros(4, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    # Connected to the graph (backward works) but pushes nothing anywhere.
    assert torch.equal(s.grad, torch.zeros_like(s)) and torch.equal(p.grad, torch.zeros_like(p))


def ref_triplet_grads(s, p, margin, groups=None):
    """Hand-derived gradients of the batch-hard loss w.r.t. sketches and photos (float64 numpy).

    With ``c(x, y) = x·y / (|x||y|)``, ``d = 1 - c`` and ``dc/dx = y/(|x||y|) - c x/|x|²``, an anchor
    ``i`` violating the margin adds ``(dd(s_i, p_pos) - dd(s_i, p_neg)) / B`` to the gradients
    (hardest positive and hardest negative held fixed, as the miner picks them).
    """
    s = s.detach().double().numpy()
    p = p.detach().double().numpy()
    n = len(s)
    g = np.arange(n) if groups is None else np.asarray(groups)

    def dcos(x, y):  # (d cos / d x, d cos / d y)
        c = x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        return y / (nx * ny) - c * x / nx**2, x / (nx * ny) - c * y / ny**2

    gs, gp = np.zeros_like(s), np.zeros_like(p)
    for i in range(n):
        d = [1.0 - s[i] @ p[j] / (np.linalg.norm(s[i]) * np.linalg.norm(p[j])) for j in range(n)]
        same = [j for j in range(n) if g[j] == g[i]]
        other = [j for j in range(n) if g[j] != g[i]]
        jp = max(same, key=lambda j: d[j])
        jn = min(other, key=lambda j: d[j])
        if d[jp] - d[jn] + margin <= 0:
            continue
        ds_p, dp_p = dcos(s[i], p[jp])
        ds_n, dp_n = dcos(s[i], p[jn])
        # loss_i = d_pos - d_neg + m = -c_pos + c_neg + m
        gs[i] += (-ds_p + ds_n) / n
        gp[jp] += -dp_p / n
        gp[jn] += dp_n / n
    return gs, gp


@pytest.mark.parametrize("groups", [None, [0, 0, 1, 1, 1, 2, 3, 3]])
def test_triplet_gradient_matches_hand_derivation(groups):
    # Not unit length: the gradient must also go through the cosine's normalisation.
    g = torch.Generator().manual_seed(11)
    s = (torch.randn(8, 5, generator=g) * 2.0).requires_grad_()
    p = (torch.randn(8, 5, generator=g) * 0.5).requires_grad_()
    gt = None if groups is None else torch.tensor(groups)
    HardTripletLoss(0.3)(s, p, gt).backward()
    want_s, want_p = ref_triplet_grads(s, p, 0.3, groups)
    assert (np.abs(want_s).sum(1) > 0).all()  # every anchor violates the margin: all rows are checked
    np.testing.assert_allclose(s.grad.numpy(), want_s, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p.grad.numpy(), want_p, rtol=1e-4, atol=1e-6)
    # and against central finite differences of the loss itself (computed in float32, hence eps and atol)
    f = lambda x: HardTripletLoss(0.3)(x, p.detach(), gt).item()  # noqa: E731
    x = s.detach()
    eps = 1e-2
    num = torch.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        e = torch.zeros_like(x)
        e[idx] = eps
        num[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    np.testing.assert_allclose(num.numpy(), want_s, rtol=1e-2, atol=2e-4)


def test_triplet_gradient_pulls_positive_and_pushes_hardest_negative():
    """Three unit vectors: anchor 0's positive p0 lies 60° off along e2, its hardest negative p1
    50° off along e3 (closer: violates the margin), p2 is further away. Anchors 1 and 2 sit on
    their own photos and satisfy the margin."""
    a, b = math.radians(60), math.radians(50)
    e = torch.eye(3, dtype=torch.float64)
    p = torch.stack(
        [
            math.cos(a) * e[0] + math.sin(a) * e[1],
            math.cos(b) * e[0] + math.sin(b) * e[2],
            F.normalize(-e[0] - e[1] - e[2], dim=0),
        ]
    )
    s = torch.stack([e[0], p[1], p[2]])
    s.requires_grad_()
    p.requires_grad_()
    margin = 0.2
    loss = HardTripletLoss(margin)(s, p)
    # only anchor 0 is active: (1 - cos a) - (1 - cos b) + margin, averaged over all 3 anchors
    assert loss.item() == pytest.approx((math.cos(b) - math.cos(a) + margin) / 3, rel=1e-6)
    loss.backward()
    # Hand derivation (unit vectors, d(1 - x·y)/dx = -(y - (x·y) x)):
    #   dL/ds0 = (-(p0 - cos a s0) + (p1 - cos b s0)) / 3 = (0, -sin a, sin b) / 3
    #   dL/dp0 = -(s0 - cos a p0) / 3,   dL/dp1 = (s0 - cos b p1) / 3,   everything else 0.
    want_s = torch.zeros(3, 3, dtype=torch.float64)
    want_s[0] = torch.tensor([0.0, -math.sin(a), math.sin(b)]) / 3
    want_p = torch.zeros(3, 3, dtype=torch.float64)
    want_p[0] = -(s[0] - math.cos(a) * p[0]).detach() / 3
    want_p[1] = (s[0] - math.cos(b) * p[1]).detach() / 3
    torch.testing.assert_close(s.grad.double(), want_s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(p.grad.double(), want_p, rtol=1e-5, atol=1e-7)
    # Direction: descending moves the anchor towards its photo (+e2) and away from the negative (-e3),
    # the positive photo towards the anchor and the hardest negative away from it; p2 (not the
    # hardest negative) and the satisfied anchors are left alone.
    step = 0.1
    with torch.no_grad():
        s1, p1 = s - step * s.grad, p - step * p.grad
        cos = lambda x, y: float(F.cosine_similarity(x, y, dim=0))  # noqa: E731
        assert cos(s1[0], p[0]) > cos(s[0], p[0]) and cos(s1[0], p[1]) < cos(s[0], p[1])
        assert cos(s[0], p1[0]) > cos(s[0], p[0]) and cos(s[0], p1[1]) < cos(s[0], p[1])
        after = HardTripletLoss(margin)(s1, p1).item()
    assert after < loss.item()
    assert torch.equal(p.grad[2], torch.zeros(3, dtype=p.grad.dtype))


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
    want, want_parts = DoubleSiameseNTXent(0.1, 1.0, 0.5, 0.25)(
        b["sketch"], b["sketch_aug"], b["photo"], b["photo_aug"], b["groups"]
    )
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
        build_loss(LossConfig(name="ntxent", temperature=0))
    with pytest.raises(ConfigError, match="weight_cross"):
        build_loss(LossConfig(name="ntxent", weight_cross=0))
    with pytest.raises(ConfigError, match="weight_triplet"):
        build_loss(LossConfig(name="ntxent+triplet", weight_triplet=0))
    with pytest.raises(ConfigError, match="LossConfig"):
        build_loss({"name": "ntxent"})
    b = _batch()
    del b["photo_aug"]
    with pytest.raises(ValueError, match="photo_aug"):
        build_loss(LossConfig(name="ntxent"))(b)
    # With the photo term switched off, the photo views are not needed.
    loss, parts = build_loss(LossConfig(name="ntxent", weight_photo=0))(b)
    assert "ntxent_photo" not in parts and torch.isfinite(loss)
