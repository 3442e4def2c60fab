"""The clip-prompt losses against hand-computed values (sbir.losses.{cosine_triplet, text_classifier,
patch_shuffle, relative_distance, clip_prompt})."""

from __future__ import annotations

import math

import pytest
import torch

from sbir.config import LossConfig
from sbir.errors import ConfigError
from sbir.losses import build_loss
from sbir.losses.clip_prompt import ClipPromptLoss
from sbir.losses.cosine_triplet import CosineTripletLoss
from sbir.losses.patch_shuffle import PatchShuffleLoss, random_permutation_pair, shuffle_patches
from sbir.losses.relative_distance import RelativeDistanceLoss
from sbir.losses.text_classifier import TextClassifierLoss


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_cosine_triplet_hand_computed():
    # anchor (1,0); positive at 60° (d = 0.5), negative at 90° (d = 1): max(0, 0.5 - 1 + 0.2) = 0
    # anchor (1,0); positive at 90° (d = 1),  negative (2,0) (d = 0):  max(0, 1 - 0 + 0.2) = 1.2
    a = t([[1, 0], [1, 0]])
    p = t([[0.5, math.sqrt(3) / 2], [0, 3]])
    n = t([[0, 1], [2, 0]])
    loss = CosineTripletLoss()(a, p, n)
    assert loss.item() == pytest.approx((0.0 + 1.2) / 2, abs=1e-6)
    assert CosineTripletLoss(margin=0.6)(a[:1], p[:1], n[:1]).item() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ConfigError):
        CosineTripletLoss(margin=-1)
    with pytest.raises(ValueError):
        CosineTripletLoss()(a, p, n[:1])


def test_text_classifier_hand_computed():
    loss = TextClassifierLoss(num_classes=2, embed_dim=2)
    with pytest.raises(RuntimeError, match="set_class_embeddings"):
        loss(t([[1, 0]]), torch.tensor([0]))
    loss.set_class_embeddings(t([[2, 0], [0, 5]]), scale=10.0)  # normalised to e1, e2
    # f = (3, 4)/5: logits = 10 * (0.6, 0.8) = (6, 8); CE for class 0 = -6 + log(e^6 + e^8)
    f = t([[3, 4]])
    expected = -6 + math.log(math.exp(6) + math.exp(8))
    assert loss(f, torch.tensor([0])).item() == pytest.approx(expected, abs=1e-5)
    assert loss(f, torch.tensor([1])).item() == pytest.approx(-8 + math.log(math.exp(6) + math.exp(8)), abs=1e-5)
    assert loss.predict(f).tolist() == [1]


def test_shuffle_patches_moves_whole_patches():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # 2x2 grid of 2x2 patches
    perm = torch.tensor([3, 2, 1, 0])  # output patch k = input patch perm[k]
    y = shuffle_patches(x, 2, perm)
    expected = torch.tensor([[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]], dtype=torch.float32)
    assert torch.equal(y[0, 0], expected)
    assert torch.equal(shuffle_patches(x, 2, torch.arange(4)), x)
    per_image = shuffle_patches(torch.cat([x, x]), 2, torch.stack([torch.arange(4), perm]))
    assert torch.equal(per_image[0], x[0]) and torch.equal(per_image[1], y[0])
    with pytest.raises(ValueError):
        shuffle_patches(x, 3, torch.arange(9))
    with pytest.raises(ValueError):
        shuffle_patches(x, 2, torch.tensor([0, 0, 1, 2]))
    same, other = random_permutation_pair(4, 50, torch.Generator().manual_seed(0))
    assert not (same == other).all(dim=1).any()


def test_patch_shuffle_loss_hand_computed():
    # d(ψ(s), ψ(p)) = 1 - cos 0 = 0, d(ψ(s), ψ'(p)) = 1 - cos 90° = 1: max(0, 0 - 1 + 0.2) = 0
    # swapped: max(0, 1 - 0 + 0.2) = 1.2
    s, p_same, p_other = t([[1, 0]]), t([[2, 0]]), t([[0, 1]])
    assert PatchShuffleLoss()(s, p_same, p_other).item() == pytest.approx(0.0)
    assert PatchShuffleLoss()(s, p_other, p_same).item() == pytest.approx(1.2, abs=1e-6)


def test_relative_distance_hand_computed():
    # class 0: δ = d(s, n) - d(s, p) = (1 - 0) - 0 = 1 (negative at 90°, positive on top of the sketch)
    # class 1: two triplets, δ = 0 and δ = 2 - 1 = 1 -> Δ_1 = 0.5
    s = t([[1, 0], [1, 0], [1, 0]])
    p = t([[1, 0], [1, 0], [0, 1]])
    n = t([[0, 1], [1, 0], [-1, 0]])
    y = torch.tensor([0, 1, 1])
    q0 = math.exp(1) / (math.exp(1) + math.exp(0.5))
    q1 = 1 - q0
    expected = q0 * math.log(2 * q0) + q1 * math.log(2 * q1)
    assert RelativeDistanceLoss()(s, p, n, y).item() == pytest.approx(expected, abs=1e-6)
    # uniform relative distances across classes: 0; a single class: 0
    assert RelativeDistanceLoss()(s[:2], p[:2], t([[0, 1], [0, 1]]), torch.tensor([0, 1])).item() == pytest.approx(0)
    assert RelativeDistanceLoss()(s, p, n, torch.tensor([4, 4, 4])).item() == 0.0


def test_clip_prompt_loss_sums_its_weighted_terms():
    loss = build_loss(LossConfig(name="clip-prompt", weight_text=0.5, weight_rel_distance=2.0), 2, 2)
    assert isinstance(loss, ClipPromptLoss) and loss.patch_grid == 2 and loss.triplet.margin == 0.2
    loss.set_class_embeddings(t([[1, 0], [0, 1]]), scale=10.0)
    s, p, n = t([[1, 0], [0, 1]]), t([[1, 1], [0, 1]]), t([[0, 1], [1, 0]])
    y = torch.tensor([0, 1])
    total, parts = loss({"sketch": s, "photo": p, "negative": n, "labels": y})
    trip = CosineTripletLoss()(s, p, n).item()
    text = TextClassifierLoss(2, 2)
    text.set_class_embeddings(t([[1, 0], [0, 1]]), 10.0)
    ce = 0.5 * (text(s, y) + text(p, y)).item()
    assert set(parts) == {"triplet", "text"}
    assert parts["triplet"] == pytest.approx(trip) and parts["text"] == pytest.approx(ce)
    assert total.item() == pytest.approx(trip + 0.5 * ce, abs=1e-5)
    fg = {
        "sketch": s,
        "photo": p,
        "negative": n,
        "labels": y,
        "fine_grained": True,
        "shuffled_sketch": s,
        "shuffled_photo": n,
        "shuffled_other": p,
    }
    total, parts = loss(fg)
    rd = RelativeDistanceLoss()(s, p, n, y).item()
    ps = PatchShuffleLoss()(s, n, p).item()
    assert parts["patch_shuffle"] == pytest.approx(ps) and parts["rel_distance"] == pytest.approx(rd)
    assert total.item() == pytest.approx(trip + 0.5 * ce + ps + 2.0 * rd, abs=1e-5)
    with pytest.raises(ConfigError):
        build_loss(LossConfig(name="clip-prompt", weight_triplet=0, weight_text=0), 2, 2)
    with pytest.raises(ConfigError, match="trains on clip"):
        build_loss(LossConfig(name="clip-prompt"), 2, 2, kind="classes")
