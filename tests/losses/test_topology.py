"""Neighbourhood-topology loss against hand-computed values, its sampling, and its place in training."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sbir.config import LossConfig
from sbir.losses import build_loss
from sbir.losses.topology import NeighbourhoodTopologyLoss


def _reference(s: np.ndarray, p: np.ndarray, ref: np.ndarray, margin: float) -> float:
    """The docstring formula with all pairs, written out with loops."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    d = 1.0 - unit(s) @ unit(p).T
    per_anchor = []
    for i in range(len(s)):
        terms = []
        for j, k in itertools.combinations([x for x in range(len(s)) if x != i], 2):
            if ref[i, j] == ref[i, k]:
                continue
            near, far = (j, k) if ref[i, j] < ref[i, k] else (k, j)
            terms.append(max(0.0, d[i, near] - d[i, far] + margin))
        if terms:
            per_anchor.append(np.mean(terms))
    return float(np.mean(per_anchor))


def test_all_pairs_match_the_formula():
    rng = np.random.default_rng(0)
    s, p = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    ref = rng.uniform(size=(5, 5))
    ref[1, 2] = ref[1, 3]  # a tie carries no order and is skipped
    loss = NeighbourhoodTopologyLoss(margin=0.05, pairs=None)
    got = loss(torch.tensor(s), torch.tensor(p), torch.tensor(ref)).item()
    assert got == pytest.approx(_reference(s, p, ref, 0.05), rel=1e-5)


def test_a_two_photo_case_by_hand():
    # Anchor 0's photo is nearer photo 1 than photo 2 in the pretrained space, but the sketch is nearer photo 2.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[0.0, 0.1, 0.9], [0.1, 0.0, 0.5], [0.9, 0.5, 0.0]])
    loss = NeighbourhoodTopologyLoss(margin=0.01, pairs=None)
    # anchor 0: d(s0,p1) = 2, d(s0,p2) = 1 -> max(0, 2 - 1 + 0.01) = 1.01
    # anchor 1: photos 0, 2 with ref 0.1 < 0.5: d(s1,p0) = 1, d(s1,p2) = 0 -> 1.01
    # anchor 2: photos 0, 1 with ref 0.9 > 0.5: near = 1, far = 0: d(s2,p1) = 1, d(s2,p0) = 1 -> 0.01
    assert loss(s, p, ref).item() == pytest.approx((1.01 + 1.01 + 0.01) / 3, rel=1e-6)
    s.requires_grad_(True)
    loss(s, p, ref).backward()
    # anchor 0 is pushed away from p2 = (0, 1); towards p1 = (-1, 0), exactly opposite s0, the cosine is flat
    step = -s.grad[0]
    assert step[1] == pytest.approx(-1 / 3, rel=1e-5) and abs(step[0]) < 1e-6


def test_sampled_pairs_skip_the_anchor_and_are_seeded():
    torch.manual_seed(0)
    s, p, ref = torch.randn(6, 4), torch.randn(6, 4), torch.rand(6, 6)
    loss = NeighbourhoodTopologyLoss(pairs=10)
    j, k = loss._pairs(6, torch.device("cpu"))
    assert j.shape == k.shape == (6, 10)
    torch.manual_seed(3)
    a = loss(s, p, ref)
    torch.manual_seed(3)
    assert loss(s, p, ref) == a
    # with every pair drawn many times, the sampled loss approaches the all-pairs loss
    many = NeighbourhoodTopologyLoss(pairs=20000)
    assert many(s, p, ref).item() == pytest.approx(NeighbourhoodTopologyLoss(pairs=None)(s, p, ref).item(), rel=0.05)


def test_factory_adds_the_term_and_needs_the_reference():
    loss = build_loss(LossConfig(name="ntxent", weight_topology=0.5, topology_pairs=3, topology_margin=0.02))
    assert loss.topology.pairs == 3 and loss.topology.margin == 0.02 and loss.weight_topology == 0.5
    b = {
        k: torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        for k in ("sketch", "sketch_aug", "photo", "photo_aug")
    }
    with pytest.raises(ValueError, match="ref_photo_dist"):
        loss(b)
    total, parts = loss({**b, "ref_photo_dist": torch.rand(4, 4)})
    base, _ = build_loss(LossConfig(name="ntxent"))(b)
    assert total.item() == pytest.approx(base.item() + 0.5 * parts["topology"], rel=1e-5)
    assert build_loss(LossConfig(name="ntxent")).topology is None


def test_training_with_the_topology_term(tiny_paired_dataset: Path, tmp_path: Path):
    from sbir.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_paired_dataset), "--out", str(run), "--epochs", "1", "--image-size", "64",
                 "--batch-size", "8", "--workers", "0", "--no-progress", "--set", "model.pretrained=false",
                 "model.backbone=resnet18", "model.embed_dim=16", "optim.max_steps_per_epoch=2",
                 "loss.weight_topology=1.0"]) == 0  # fmt: skip
    with open(run / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["train_topology"]) > 0
