"""NT-Xent losses against independent references (numpy loops and pytorch-metric-learning)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from sbir.errors import ConfigError
from sbir.losses import CrossModalNTXent, DoubleSiameseNTXent, NTXent


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1).float()


def ref_cross(a, b, t, groups=None):
    """Row-by-row numpy version of 1/2 [CE(a b^T/t, diag) + CE(b a^T/t, diag)] with same-group masking."""
    a = a.double().numpy()
    b = b.double().numpy()
    n = len(a)
    g = np.arange(n) if groups is None else np.asarray(groups)

    def one_way(x, y):
        total = 0.0
        for i in range(n):
            logits = [float(x[i] @ y[j]) / t for j in range(n) if j == i or g[j] != g[i]]
            pos = float(x[i] @ y[i]) / t
            total += -(pos - math.log(sum(math.exp(v) for v in logits)))
        return total / n

    return 0.5 * (one_way(a, b) + one_way(b, a))


def ref_all(a, b, t, groups=None):
    """Row-by-row numpy version of the SimCLR form over z = [a; b]."""
    z = np.concatenate([a.double().numpy(), b.double().numpy()])
    n = len(a)
    g = np.arange(n) if groups is None else np.asarray(groups)
    g2 = np.concatenate([g, g])
    total = 0.0
    for r in range(2 * n):
        partner = r + n if r < n else r - n
        den = [float(z[r] @ z[c]) / t for c in range(2 * n) if c != r and (c == partner or g2[c] != g2[r])]
        pos = float(z[r] @ z[partner]) / t
        total += -(pos - math.log(sum(math.exp(v) for v in den)))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_cross_matches_reference(t):
    a, b = unit(9, 16, seed=1), unit(9, 16, seed=2)
    got = CrossModalNTXent(t)(a, b).item()
    assert got == pytest.approx(ref_cross(a, b, t), rel=1e-5)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_all_form_matches_reference_and_pml(t):
    a, b = unit(9, 16, seed=3), unit(9, 16, seed=4)
    got = NTXent(t)(a, b).item()
    assert got == pytest.approx(ref_all(a, b, t), rel=1e-5)
    # pytorch-metric-learning's NTXentLoss on the concatenated views with labels = pair ids.
    pml = NTXentLoss(temperature=t)(torch.cat([a, b]), torch.arange(9).repeat(2)).item()
    assert got == pytest.approx(pml, rel=1e-5)


def test_groups_masking_matches_reference_and_changes_loss():
    a, b = unit(8, 12, seed=5), unit(8, 12, seed=6)
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    for t in (0.1, 0.3):
        plain_cross = CrossModalNTXent(t)(a, b).item()
        masked_cross = CrossModalNTXent(t)(a, b, groups).item()
        assert masked_cross == pytest.approx(ref_cross(a, b, t, groups.numpy()), rel=1e-5)
        # Removing terms from every affected denominator can only lower the loss.
        assert masked_cross < plain_cross - 1e-4
        masked_all = NTXent(t)(a, b, groups).item()
        assert masked_all == pytest.approx(ref_all(a, b, t, groups.numpy()), rel=1e-5)
        assert masked_all < NTXent(t)(a, b).item() - 1e-4
    # Distinct groups are the same as no groups.
    assert CrossModalNTXent(0.1)(a, b, torch.arange(8) * 7).item() == pytest.approx(CrossModalNTXent(0.1)(a, b).item())


def test_perfectly_separated_is_near_zero():
    e = torch.eye(6, 8)  # orthogonal unit vectors, identical across views
    assert CrossModalNTXent(0.01)(e, e).item() < 1e-6
    assert NTXent(0.01)(e, e).item() < 1e-6
    # ...and wrong pairings at the same temperature are heavily penalised.
    assert CrossModalNTXent(0.01)(e, e.roll(1, 0)).item() > 50


def test_identical_embeddings_give_log_batch_size():
    v = F.normalize(torch.ones(5, 4), dim=1)
    assert CrossModalNTXent(0.07)(v, v).item() == pytest.approx(math.log(5), rel=1e-6)
    assert NTXent(0.07)(v, v).item() == pytest.approx(math.log(2 * 5 - 1), rel=1e-6)


def test_symmetric_and_scale_invariant():
    a, b = unit(7, 10, seed=7), unit(7, 10, seed=8)
    for loss in (CrossModalNTXent(0.2), NTXent(0.2)):
        assert loss(a, b).item() == pytest.approx(loss(b, a).item(), rel=1e-6)
        # Inputs are re-normalised: scaling rows does not change the loss.
        assert loss(3 * a, b).item() == pytest.approx(loss(a, b).item(), rel=1e-5)


def test_gradients_flow_to_both_inputs():
    a = unit(6, 8, seed=9).requires_grad_()
    b = unit(6, 8, seed=10).requires_grad_()
    for loss in (CrossModalNTXent(0.1), NTXent(0.1)):
        a.grad = b.grad = None
        loss(a, b, torch.tensor([0, 0, 1, 2, 3, 3])).backward()
        assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
        assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_gradient_matches_autograd_of_reference_formula():
    """The -inf masking must give the same gradient as dropping the masked terms."""
    a = unit(5, 6, seed=11).double().requires_grad_()
    b = unit(5, 6, seed=12).double()
    g = torch.tensor([0, 1, 1, 2, 3])
    CrossModalNTXent(0.2)(a, b, g).backward()
    got = a.grad.clone()

    a2 = a.detach().clone().requires_grad_()
    total = 0
    for x, y, _wrt_rows in ((a2, b, True), (b, a2, False)):
        for i in range(5):
            keep = [j for j in range(5) if j == i or g[j] != g[i]]
            logits = torch.stack([x[i] @ y[j] for j in keep]) / 0.2
            total = total - (x[i] @ y[i] / 0.2 - torch.logsumexp(logits, 0)) / 5
    (0.5 * total).backward()
    # Our loss re-normalises (a no-op at unit norm, but it projects the gradient
    # onto the tangent space); compare the tangential parts.
    proj = lambda v: v - (v * a.detach()).sum(1, keepdim=True) * a.detach()  # noqa: E731
    assert torch.allclose(got, proj(a2.grad), atol=1e-6)


def test_float16_inputs_computed_in_float32():
    a, b = unit(4, 8, seed=13), unit(4, 8, seed=14)
    full = CrossModalNTXent(0.07)(a, b)
    half = CrossModalNTXent(0.07)(a.half(), b.half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), abs=5e-3)


def test_double_siamese_is_weighted_sum_of_terms():
    s1, s2, p1, p2 = (unit(6, 8, seed=s) for s in (20, 21, 22, 23))
    g = torch.tensor([0, 1, 1, 2, 3, 4])
    loss = DoubleSiameseNTXent(0.1, weight_cross=1.0, weight_sketch=0.5, weight_photo=2.0)
    total, parts = loss(s1, s2, p1, p2, g)
    nt = NTXent(0.1)
    expect = {"ntxent_cross": nt(s1, p1, g), "ntxent_sketch": nt(s1, s2, g), "ntxent_photo": nt(p1, p2, g)}
    assert set(parts) == set(expect)
    for k, v in expect.items():
        assert isinstance(parts[k], float)
        assert parts[k] == pytest.approx(v.item(), rel=1e-6)
    want = expect["ntxent_cross"] + 0.5 * expect["ntxent_sketch"] + 2.0 * expect["ntxent_photo"]
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert total.item() == pytest.approx(
        ref_all(s1, p1, 0.1, g.numpy()) + 0.5 * ref_all(s1, s2, 0.1, g.numpy()) + 2.0 * ref_all(p1, p2, 0.1, g.numpy()),
        rel=1e-5,
    )


def test_double_siamese_cross_form_and_zero_weights_skip_views():
    s1, p1 = unit(5, 8, seed=30), unit(5, 8, seed=31)
    loss = DoubleSiameseNTXent(0.2, weight_cross=1.0, weight_sketch=0.0, weight_photo=0.0, negatives="cross")
    total, parts = loss(s1, None, p1, None)
    assert list(parts) == ["ntxent_cross"]
    assert total.item() == pytest.approx(ref_cross(s1, p1, 0.2), rel=1e-5)
    with pytest.raises(ValueError, match="ntxent_sketch"):
        DoubleSiameseNTXent(0.2)(s1, None, p1, p1)


@pytest.mark.parametrize("t", [0, -1, float("nan"), float("inf"), "x"])
def test_bad_temperature(t):
    with pytest.raises(ConfigError, match="temperature"):
        CrossModalNTXent(t)


def test_bad_parameters_and_shapes():
    with pytest.raises(ConfigError, match="negatives"):
        NTXent(0.1, negatives="some")
    with pytest.raises(ConfigError, match="weight_photo"):
        DoubleSiameseNTXent(weight_photo=-1)
    with pytest.raises(ConfigError, match="all 0"):
        DoubleSiameseNTXent(weight_cross=0, weight_sketch=0, weight_photo=0)
    a = unit(4, 8)
    with pytest.raises(ValueError, match="same shape"):
        CrossModalNTXent()(a, unit(5, 8))
    with pytest.raises(ValueError, match="groups must have shape"):
        CrossModalNTXent()(a, a, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        CrossModalNTXent()(a, a, torch.zeros(4))
