"""Seeded batch samplers: unique photos per batch, coverage, determinism, exact length."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sbir.data.sampler import (
    ClassBalancedBatchSampler,
    UniquePhotoBatchSampler,
    max_full_batches,
    plan_distinct_batches,
)
from sbir.errors import ConfigError, DataError


def photo_ids(n_photos=40, max_sketches=4, seed=0):
    """String photo ids, 1..max_sketches sketches each, shuffled."""
    rng = np.random.default_rng(seed)
    ids = [f"p{p:03d}" for p in range(n_photos) for _ in range(rng.integers(1, max_sketches + 1))]
    rng.shuffle(ids)
    return ids


def assert_unique_photos(batches, ids):
    for b in batches:
        photos = [ids[i] for i in b]
        assert len(set(photos)) == len(photos), photos


def test_no_duplicate_photos_and_full_coverage():
    ids = photo_ids()
    s = UniquePhotoBatchSampler(ids, batch_size=8, seed=3)
    batches = list(s)
    assert_unique_photos(batches, ids)
    assert all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # no sketch twice in an epoch
    # Balanced enough that only the < batch_size remainder is left out.
    assert len(flat) == len(ids) - len(ids) % 8
    assert len(s) == len(batches) == len(ids) // 8


def test_every_sketch_visited_when_drop_last_false():
    ids = photo_ids(seed=1)
    s = UniquePhotoBatchSampler(ids, batch_size=8, seed=0, drop_last=False)
    batches = list(s)
    assert_unique_photos(batches, ids)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(ids)))
    assert len(s) == len(batches)
    assert sum(len(b) < 8 for b in batches) <= 1


def test_deterministic_per_seed_and_epoch():
    ids = photo_ids(seed=2)
    a = UniquePhotoBatchSampler(ids, 6, seed=11)
    b = UniquePhotoBatchSampler(ids, 6, seed=11)
    for epoch in (0, 1, 5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert list(a) == list(a)  # re-iterating an epoch repeats it
    a.set_epoch(0)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    assert sorted(map(sorted, a.batches(0))) == sorted(map(sorted, e0))
    c = UniquePhotoBatchSampler(ids, 6, seed=12)
    assert list(c) != e0


def test_photo_with_many_sketches():
    # One photo with 100 sketches and 10 photos with one each, batches of 4:
    # at most 3 full batches exist (photo 0 can sit in each batch once).
    ids = [0] * 100 + list(range(1, 11))
    s = UniquePhotoBatchSampler(ids, batch_size=4, seed=0)
    assert len(s) == 3 == max_full_batches(np.bincount(ids), 4)
    seen = set()
    for epoch in range(40):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == 3 and all(len(b) == 4 for b in batches)
        assert_unique_photos(batches, ids)
        # 13 placeable sketches for 12 slots: one random unit is trimmed, maybe one of photo 0's.
        assert sum(ids[i] == 0 for b in batches for i in b) in (2, 3)
        seen.update(i for b in batches for i in b)
    # Which of photo 0's sketches are used rotates over epochs.
    assert len(seen & set(range(100))) > 50


def test_epochs_visit_all_sketches_over_time():
    ids = [0] * 30 + [1] * 30 + list(range(2, 8))
    s = UniquePhotoBatchSampler(ids, batch_size=3, seed=4)
    seen = set()
    for epoch in range(30):
        s.set_epoch(epoch)
        b = list(s)
        assert len(b) == len(s)
        assert_unique_photos(b, ids)
        seen.update(i for x in b for i in x)
    assert seen == set(range(len(ids)))


@pytest.mark.parametrize("seed", range(20))
def test_planner_reaches_the_maximum(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, rng.integers(2, 12), size=rng.integers(3, 30))
    groups = np.repeat(np.arange(len(counts)), counts)
    bs = int(rng.integers(1, len(counts) + 1))
    k = max_full_batches(counts, bs)
    # brute-force check of the bound
    assert sum(min(c, k) for c in counts) >= k * bs
    assert sum(min(c, k + 1) for c in counts) < (k + 1) * bs
    plan = plan_distinct_batches(groups, bs, rng, drop_last=True)
    assert len(plan) == k
    assert_unique_photos(plan, groups)
    assert all(len(b) == bs for b in plan)


def test_len_matches_iteration_and_works_with_dataloader():
    ids = photo_ids(n_photos=12, seed=5)
    s = UniquePhotoBatchSampler(ids, 4, seed=0)
    data = torch.arange(len(ids))
    batches = [b.tolist() for b in DataLoader(data, batch_sampler=s)]
    assert batches == list(s)
    assert len(DataLoader(data, batch_sampler=s)) == len(s)


def test_validation_errors():
    with pytest.raises(ConfigError, match=r"larger than the number of distinct photos \(3\).*at most 3"):
        UniquePhotoBatchSampler(["a", "a", "b", "c", "c"], batch_size=4, seed=0)
    with pytest.raises(ConfigError, match="batch_size"):
        UniquePhotoBatchSampler(["a", "b"], batch_size=0)
    with pytest.raises(ConfigError, match="seed"):
        UniquePhotoBatchSampler(["a", "b"], batch_size=2, seed=-1)
    with pytest.raises(ConfigError, match="epoch"):
        UniquePhotoBatchSampler(["a", "b"], batch_size=2).set_epoch(-1)
    with pytest.raises(DataError, match="empty"):
        UniquePhotoBatchSampler([], batch_size=2)


def test_class_balanced_batches():
    rng = np.random.default_rng(0)
    labels = [f"c{c}" for c in rng.integers(0, 10, size=300)]
    s = ClassBalancedBatchSampler(labels, classes_per_batch=4, samples_per_class=3, seed=1)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        assert len(b) == 12
        counts = Counter(labels[i] for i in b)
        assert len(counts) == 4 and set(counts.values()) == {3}
        assert len(set(b)) == 12  # every class here has >= 3 items: no repeats
    covered = {i for b in batches for i in b}
    assert len(covered) > 0.9 * len(labels)
    # determinism and epoch dependence
    s2 = ClassBalancedBatchSampler(labels, 4, 3, seed=1)
    assert list(s2) == batches
    s2.set_epoch(1)
    assert list(s2) != batches


def test_class_balanced_small_class_and_errors():
    labels = [0] * 10 + [1] * 10 + [2]  # class 2 has one item: repeated to fill K
    s = ClassBalancedBatchSampler(labels, classes_per_batch=3, samples_per_class=2, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 1  # class 2 has a single chunk, so one batch with 3 classes
    assert Counter(labels[i] for i in batches[0]) == {0: 2, 1: 2, 2: 2}
    with pytest.raises(ConfigError, match="classes_per_batch 4 is larger than the number of classes \\(3\\)"):
        ClassBalancedBatchSampler(labels, 4, 2)
    with pytest.raises(ConfigError, match="samples_per_class"):
        ClassBalancedBatchSampler(labels, 2, 0)
