"""Seeded batch samplers for contrastive training.

:class:`UniquePhotoBatchSampler` (fine-grained): no batch holds two sketches of
the same photo, so two sketches of one photo are never each other's negatives
(and a photo is never its own negative).

:class:`ClassBalancedBatchSampler` (category-level): P classes x K samples per
batch.

Both are deterministic given ``(seed, epoch)``: call ``set_epoch(epoch)``
before iterating (as with ``DistributedSampler``); iterating twice in one
epoch yields the same batches. Pass them as ``DataLoader(ds, batch_sampler=...)``.

The planning core, :func:`plan_distinct_batches`, packs *units* that carry a
*group* (sketches/photo, chunks/class) into batches of distinct groups. With
``n_g`` units in group ``g``, ``k`` batches of size ``B`` with distinct groups
exist iff ``Σ_g min(n_g, k) >= k·B``; the planner always reaches the largest
such ``k`` (:func:`max_full_batches`). Each batch is drawn at random: groups
whose remaining quota equals the number of batches still to fill must be taken
(otherwise the plan could fail later); the rest are drawn without replacement
with probability proportional to their remaining quota (Gumbel top-k), which
mimics a shuffled pass over the units while never repeating a group.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from sbir.errors import ConfigError, DataError


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _encode_groups(keys: Sequence[Hashable], what: str) -> np.ndarray:
    """Map arbitrary hashable keys to dense ints 0..G-1 in order of first appearance."""
    if len(keys) == 0:
        raise DataError(f"no {what} to sample from: the list is empty")
    codes: dict[Hashable, int] = {}
    try:
        return np.fromiter((codes.setdefault(k, len(codes)) for k in keys), dtype=np.int64, count=len(keys))
    except TypeError as exc:
        raise ConfigError(f"{what} must be hashable ids (str or int): {exc}") from None


def max_full_batches(counts: np.ndarray, batch_size: int) -> int:
    """Largest ``k`` with ``Σ_g min(counts_g, k) >= k·batch_size`` (0 if fewer groups than ``batch_size``)."""
    counts = np.asarray(counts, dtype=np.int64)
    lo, hi = 0, int(counts.sum()) // batch_size
    # f(k) = Σ min(n_g, k) - k·B is concave with f(0) = 0, so {k : f(k) >= 0} = [0, k*].
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() >= mid * batch_size:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _gumbel_top(weights: np.ndarray, forced: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` distinct indices: all ``forced`` ones, the rest drawn proportionally to ``weights`` (> 0 only)."""
    with np.errstate(divide="ignore"):
        keys = np.log(weights.astype(np.float64)) + rng.gumbel(size=weights.shape)
    keys[weights <= 0] = -np.inf
    keys[forced] = np.inf
    if m >= len(keys):
        return np.flatnonzero(keys > -np.inf)
    idx = np.argpartition(-keys, m - 1)[:m]
    return idx[keys[idx] > -np.inf]


def plan_distinct_batches(
    groups: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool = True
) -> list[list[int]]:
    """Batches of unit indices (into ``groups``) with no group repeated inside a batch.

    Always ``max_full_batches(counts, batch_size)`` full batches, in random
    order; which units fill them is random (each group's units are shuffled and
    used in that order). Units that cannot be placed — a group with more units
    than there are batches, or the < ``batch_size`` remainder — are left out
    when ``drop_last``; otherwise they form extra, possibly smaller batches
    (still distinct groups, largest leftovers first), keeping only those with
    at least ``min(2, batch_size)`` units (a contrastive batch needs a negative).
    """
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    counts = np.bincount(groups, minlength=n_groups)
    k = max_full_batches(counts, batch_size)

    # Each group's units in random order, contiguous: order[starts[g] : starts[g] + counts[g]].
    perm = rng.permutation(len(groups))
    order = perm[np.argsort(groups[perm], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    used = np.zeros(n_groups, dtype=np.int64)

    batches: list[np.ndarray] = []
    if k > 0:
        quota = np.minimum(counts, k)
        excess = int(quota.sum()) - k * batch_size  # < batch_size; trim that many groups by one unit
        if excess > 0:
            trim = _gumbel_top(quota, np.zeros(n_groups, dtype=bool), excess, rng)
            quota[trim] -= 1
        for remaining in range(k, 0, -1):
            pick = _gumbel_top(quota, quota == remaining, batch_size, rng)
            if len(pick) != batch_size:  # cannot happen: the invariant below guarantees it
                raise RuntimeError("batch planning failed; please report this as a bug")
            batches.append(order[starts[pick] + used[pick]])
            used[pick] += 1
            quota[pick] -= 1
            # Invariant: quota.sum() == (remaining - 1) * batch_size and quota.max() <= remaining - 1.
        rng.shuffle(batches)  # forced picks cluster late in the plan; spread them over the epoch

    if not drop_last:
        left = counts - used
        min_size = min(2, batch_size)
        while left.sum() > 0:
            # Largest leftovers first (random tie-break) needs the fewest extra batches.
            keys = left + rng.random(n_groups) * 0.5
            keys[left == 0] = -1
            take = min(batch_size, int((left > 0).sum()))
            pick = np.argpartition(-keys, take - 1)[:take]
            if take >= min_size:
                batches.append(order[starts[pick] + used[pick]])
            used[pick] += 1
            left[pick] -= 1

    out = []
    for b in batches:
        b = b.copy()
        rng.shuffle(b)
        out.append([int(i) for i in b])
    return out


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch]))


class UniquePhotoBatchSampler(Sampler[list[int]]):
    """Batches of sketch indices in which every sketch belongs to a different photo.

    Args:
        photo_ids_of_items: the photo (id or index) of each sketch, item ``i``
            being dataset index ``i``.
        batch_size: sketches (= distinct photos) per batch.
        seed: with the epoch, fixes the batches.
        drop_last: see below.

    Per epoch there are exactly ``k = max{k : Σ_photos min(n_p, k) >= k·B}``
    full batches (``n_p`` sketches of photo ``p``): every sketch is visited
    once, except (a) a photo with more than ``k`` sketches contributes ``k`` of
    them (one per batch; a random subset each epoch, so all are seen over
    epochs) and (b) the fewer than ``batch_size`` sketches left over. With
    ``drop_last=True`` those are skipped this epoch and ``len()`` is the same
    every epoch. With ``drop_last=False`` they form extra smaller batches of
    distinct photos, so every sketch is visited except those that would sit
    alone in a batch (surplus sketches of one dominant photo); ``len()`` may
    then vary slightly between epochs (it is exact for the current epoch).
    """

    def __init__(self, photo_ids_of_items: Sequence[Hashable], batch_size: int, seed: int = 0, drop_last: bool = True):
        super().__init__()
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.drop_last = bool(drop_last)
        self.groups = _encode_groups(photo_ids_of_items, "sketches")
        self.counts = np.bincount(self.groups)
        n_photos = len(self.counts)
        if self.batch_size > n_photos:
            raise ConfigError(
                f"batch_size {self.batch_size} is larger than the number of distinct photos ({n_photos}) "
                f"among the {len(self.groups)} training sketches, so no batch can hold {self.batch_size} different "
                f"photos. Lower optim.batch_size to at most {n_photos} (or add photos)."
            )
        self.num_full_batches = max_full_batches(self.counts, self.batch_size)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("epoch", epoch, 0)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The plan for ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1]
        plan = plan_distinct_batches(self.groups, self.batch_size, _epoch_rng(self.seed, e), self.drop_last)
        self._cache = (e, plan)
        return plan

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.batches()])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_full_batches
        return len(self.batches())


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` (P) distinct classes x ``samples_per_class`` (K) items each.

    Per epoch each class's items are shuffled and cut into chunks of K; the last
    chunk of a class (and a class with fewer than K items) is completed with
    items of the same class drawn at random (without repeats when the class
    has at least K items). Chunks are then packed P per batch with distinct
    classes by :func:`plan_distinct_batches`, so every item is visited about
    once per epoch; chunks of a class with far more items than the others
    that do not fit are left for later epochs. ``len()`` is the same every
    epoch; batches have exactly ``P·K`` indices, grouped by class.
    """

    def __init__(self, labels: Sequence[Hashable], classes_per_batch: int, samples_per_class: int, seed: int = 0):
        super().__init__()
        self.classes_per_batch = _check_int("classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = _check_int("samples_per_class", samples_per_class, 1)
        self.seed = _check_int("seed", seed, 0)
        self.labels = _encode_groups(labels, "labelled items")
        self.counts = np.bincount(self.labels)
        n_classes = len(self.counts)
        if self.classes_per_batch > n_classes:
            raise ConfigError(
                f"classes_per_batch {self.classes_per_batch} is larger than the number of classes ({n_classes}); "
                f"lower it to at most {n_classes}."
            )
        self.members = [np.flatnonzero(self.labels == c) for c in range(n_classes)]
        chunks_per_class = -(-self.counts // self.samples_per_class)  # ceil
        self.chunk_class = np.repeat(np.arange(n_classes), chunks_per_class)
        self.num_batches = max_full_batches(chunks_per_class, self.classes_per_batch)
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("epoch", epoch, 0)

    def _chunks(self, rng: np.random.Generator) -> list[np.ndarray]:
        k = self.samples_per_class
        chunks: list[np.ndarray] = []
        for idx in self.members:
            items = rng.permutation(idx)
            short = (-len(items)) % k
            if short:
                if len(items) >= k:
                    pool = items[: len(items) - (len(items) % k)]  # not in the last chunk: no repeats in it
                    fill = rng.choice(pool, size=short, replace=False)
                else:
                    fill = rng.choice(items, size=short, replace=True)
                items = np.concatenate([items, fill])
            chunks.extend(items.reshape(-1, k))
        return chunks

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        e = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        rng = _epoch_rng(self.seed, e)
        chunks = self._chunks(rng)
        plan = plan_distinct_batches(self.chunk_class, self.classes_per_batch, rng, drop_last=True)
        return [[int(i) for c in batch for i in chunks[c]] for batch in plan]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return self.num_batches
