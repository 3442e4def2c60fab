"""MEMS and CosFace: hand-computed values, margin annealing, gradients, checkpointed step counters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbir.losses.cosface import CosFaceLoss
from sbir.losses.mems import MEMSLoss


def test_mems_hand_computed_case():
    loss_fn = MEMSLoss(num_classes=2, embed_dim=2, margin=2.0, anneal_steps=0)  # full margin at once
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    f = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([0])
    # ||f-c0||^2 = 1 (true class, times m^2 = 4), ||f-c1||^2 = 4  -> logits [-4, -4] -> CE = log 2
    assert loss_fn.logits(f, y).tolist() == [[-4.0, -4.0]]
    assert loss_fn(f, y).item() == pytest.approx(math.log(2.0), abs=1e-6)
    # Label 1: ||f-c1||^2 * 4 = 16, other class 1 -> logits [-1, -16]: CE = log(1 + e^15)
    assert loss_fn(f, torch.tensor([1])).item() == pytest.approx(math.log1p(math.exp(15.0)), rel=1e-6)


def test_mems_matches_explicit_formula_with_scale_and_batch():
    torch.manual_seed(0)
    loss_fn = MEMSLoss(num_classes=5, embed_dim=8, margin=3.0, anneal_steps=0, scale=0.5)
    f, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    d2 = ((f[:, None, :] - loss_fn.centers[None]) ** 2).sum(-1)
    d2 = d2 + (9.0 - 1.0) * d2 * F.one_hot(y, 5)
    expected = F.cross_entropy(-0.5 * d2, y)
    assert torch.allclose(loss_fn(f, y), expected, atol=1e-5)


def test_mems_margin_annealing_schedule():
    loss_fn = MEMSLoss(num_classes=3, embed_dim=4, margin=4.0, anneal_steps=100)
    values = {}
    for step in (0, 50, 100, 150):
        loss_fn.num_steps.fill_(step)
        values[step] = loss_fn.current_margin()
    assert values == {0: 1.0, 50: pytest.approx(2.5), 100: 4.0, 150: 4.0}


def test_mems_counts_training_forwards_only():
    loss_fn = MEMSLoss(num_classes=3, embed_dim=4, anneal_steps=10)
    f, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    loss_fn(f, y)
    loss_fn(f, y)
    assert int(loss_fn.num_steps) == 2
    loss_fn.eval()
    loss_fn(f, y)
    assert int(loss_fn.num_steps) == 2
    manual = MEMSLoss(num_classes=3, embed_dim=4, anneal_steps=10, auto_step=False)
    manual(f, y)
    assert int(manual.num_steps) == 0
    manual.step()
    assert int(manual.num_steps) == 1 and manual.current_margin() == pytest.approx(1.3)


def test_mems_first_step_is_plain_distance_softmax():
    """At step 0 the margin is 1: logits are just negative squared distances."""
    torch.manual_seed(1)
    loss_fn = MEMSLoss(num_classes=4, embed_dim=3, margin=4.0, anneal_steps=1000)
    f, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    expected = F.cross_entropy(-(torch.cdist(f, loss_fn.centers) ** 2), y)
    assert torch.allclose(loss_fn(f, y), expected, atol=1e-5)


def test_mems_gradients_reach_features_and_centres_and_training_separates_classes():
    torch.manual_seed(0)
    loss_fn = MEMSLoss(num_classes=3, embed_dim=2, margin=2.0, anneal_steps=20)
    f = torch.randn(30, 2, requires_grad=True)
    y = torch.arange(30) % 3
    loss = loss_fn(f, y)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert loss_fn.centers.grad is not None and loss_fn.centers.grad.abs().sum() > 0
    opt = torch.optim.Adam([f, *loss_fn.parameters()], lr=0.05)
    first = loss.item()
    for _ in range(100):
        loss = loss_fn(f, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    assert (loss_fn.predict(f.detach()) == y).float().mean() == 1.0


def test_mems_state_dict_round_trip_keeps_the_step():
    a = MEMSLoss(num_classes=3, embed_dim=4, margin=4.0, anneal_steps=100)
    a.step(37)
    b = MEMSLoss(num_classes=3, embed_dim=4, margin=4.0, anneal_steps=100)
    b.load_state_dict(a.state_dict())
    assert int(b.num_steps) == 37 and b.current_margin() == pytest.approx(a.current_margin())
    assert torch.equal(a.centers, b.centers)
    assert "num_steps" in a.state_dict()


def test_mems_rejects_bad_arguments():
    with pytest.raises(ValueError):
        MEMSLoss(num_classes=3, embed_dim=4, margin=0.5)
    loss_fn = MEMSLoss(num_classes=3, embed_dim=4)
    with pytest.raises(ValueError, match="features must be"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]))


def explicit_cosface(f, w, y, m, s):
    cos = F.normalize(f, dim=1) @ F.normalize(w, dim=1).t()
    return F.cross_entropy(s * (cos - m * F.one_hot(y, w.shape[0])), y)


def test_cosface_equals_explicit_formula():
    torch.manual_seed(0)
    loss_fn = CosFaceLoss(num_classes=7, embed_dim=12, margin=0.35, scale=32.0)
    f, y = torch.randn(9, 12), torch.randint(0, 7, (9,))
    expected = explicit_cosface(f, loss_fn.weight.detach(), y, 0.35, 32.0)
    assert torch.allclose(loss_fn(f, y), expected, atol=1e-4)
    assert torch.allclose(F.cross_entropy(loss_fn.logits(f, y), y), expected, atol=1e-4)


def test_cosface_hand_computed_case():
    loss_fn = CosFaceLoss(num_classes=2, embed_dim=2, margin=0.5, scale=2.0)
    with torch.no_grad():
        loss_fn.impl.W.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t())  # class 0 along x, class 1 along y
    f, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    # cos = [1, 0] -> logits [2*(1-0.5), 0] = [1, 0] -> CE = log(1 + e^-1)
    assert loss_fn(f, y).item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)


def test_cosface_annealing_gradients_and_state():
    torch.manual_seed(0)
    loss_fn = CosFaceLoss(num_classes=4, embed_dim=6, margin=0.4, scale=16.0, anneal_steps=10)
    assert loss_fn.current_margin() == 0.0
    f = torch.randn(5, 6, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0])
    w = loss_fn.weight.detach().clone()
    loss = loss_fn(f, y)  # step 0: no margin yet
    assert torch.allclose(loss, explicit_cosface(f.detach(), w, y, 0.0, 16.0), atol=1e-4)
    loss.backward()
    assert f.grad.abs().sum() > 0 and loss_fn.impl.W.grad.abs().sum() > 0
    loss_fn.num_steps.fill_(5)
    assert loss_fn.current_margin() == pytest.approx(0.2)
    loss_fn.num_steps.fill_(50)
    assert loss_fn.current_margin() == pytest.approx(0.4)
    other = CosFaceLoss(num_classes=4, embed_dim=6, margin=0.4, scale=16.0, anneal_steps=10)
    other.load_state_dict(loss_fn.state_dict())
    assert int(other.num_steps) == 50 and torch.equal(other.weight, loss_fn.weight)
