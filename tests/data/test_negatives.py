"""Annotation-driven negatives: the sampler, the loss term, and training with them."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sbir.data.pairs import FineGrainedPairs, annotated_negatives
from sbir.data.records import FileRef, PhotoRecord, SketchRecord, Split
from sbir.errors import DataError
from sbir.losses.triplet import NegativeTripletLoss


def _split(triplets=True) -> Split:
    photos = [PhotoRecord(id=f"p{i}", image=FileRef(Path(f"p{i}.png"))) for i in range(6)]
    sketches = [SketchRecord(id=f"s{i}", image=FileRef(Path(f"s{i}.png")), photo_id=f"p{i}") for i in range(4)]
    tri = np.array([[0, 0, 3], [0, 3, 4], [1, 2, 1], [2, 5, 2]]) if triplets else None
    return Split(name="train", photos=photos, sketches=sketches, triplets=tri)


def test_annotated_negatives_are_the_ranked_photos_but_the_own_one():
    assert annotated_negatives(_split()) == [[3, 4], [2], [5], []]
    with pytest.raises(DataError, match="annotation"):
        annotated_negatives(_split(triplets=False))


def test_negative_draws_follow_the_ratio_and_the_seed():
    split = _split()
    ident = lambda img: img  # noqa: E731
    pairs = FineGrainedPairs(split, ident, ident, negatives=annotated_negatives(split), hard_ratio=0.75, seed=1)
    draws = Counter()
    for epoch in range(400):
        pairs.set_epoch(epoch)
        draws.update(pairs.negative_for(0) for _ in range(1))
    assert 0 not in draws  # never the sketch's own photo
    hard = draws[3] + draws[4]
    # 75% annotated, and the random quarter also hits photos 3 and 4 two times in five
    assert hard / 400 == pytest.approx(0.75 + 0.25 * 2 / 5, abs=0.06)
    assert set(draws) <= {1, 2, 3, 4, 5} and draws[1] > 0
    pairs.set_epoch(7)
    again = FineGrainedPairs(split, ident, ident, negatives=annotated_negatives(split), hard_ratio=0.75, seed=1)
    again.set_epoch(7)
    assert [pairs.negative_for(i) for i in range(4)] == [again.negative_for(i) for i in range(4)]
    only_hard = FineGrainedPairs(split, ident, ident, negatives=annotated_negatives(split), hard_ratio=1.0)
    assert {only_hard.negative_for(1) for only_hard.epoch in range(30)} == {2}
    # a sketch without annotations falls back to random photos
    assert {only_hard.negative_for(3) for only_hard.epoch in range(60)} == {0, 1, 2, 4, 5}


def test_real_qmul_annotations_give_hard_negatives():
    from sbir.data.formats import load_dataset
    from tests.conftest import shared_data

    split = load_dataset(str(shared_data("qmul_v1", "shoes"))).split("train")
    negs = annotated_negatives(split)
    index = split.photo_index()
    assert len(negs) == len(split.sketches) and np.mean([len(n) for n in negs]) > 3
    for s, n in zip(split.sketches, negs, strict=True):
        assert index[s.photo_id] not in n


def test_negative_triplet_loss_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    n = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: d_pos = 1 - 1/sqrt(2), d_neg = 0 -> 0.2929 + 0.2; row 1: d_pos = 0, d_neg = 1 -> max(0, -0.8) = 0
    want = (1 - 2**-0.5 + 0.2) / 2
    assert NegativeTripletLoss(0.2)(s, p, n).item() == pytest.approx(want, rel=1e-6)


def test_training_with_negatives(tiny_paired_dataset: Path, tmp_path: Path, capsys):
    from sbir.cli import main

    args = ["--data", str(tiny_paired_dataset), "--epochs", "1", "--image-size", "64", "--batch-size", "8",
            "--workers", "0", "--no-progress", "--set", "model.pretrained=false", "model.backbone=resnet18",
            "model.embed_dim=16", "optim.max_steps_per_epoch=2", "loss.weight_negative_triplet=1"]  # fmt: skip
    # the generated data has no human annotations: asking for annotated negatives is a one-line error
    assert main(["train", "--out", str(tmp_path / "a"), *args]) == 2
    assert "annotation" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "b"), *args, "data.annotation_negatives=0"]) == 0
    with open(tmp_path / "b" / "metrics.csv") as fh:
        assert float(next(csv.DictReader(fh))["train_negative_triplet"]) >= 0
