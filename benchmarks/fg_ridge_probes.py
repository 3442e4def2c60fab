"""Variants of the fine-grained recipe's ridge fit that are not sbir options, on the recipe's own folds.

Each probe changes only how the ridge map of ``configs/fg_qmul_v1.yaml`` is fitted
(the features, the centring, CSLS against the training sketches and the folds
are the recipe's: ``hold_out_fold`` then ``carve_validation`` with the config's
seed and ``data.val_fraction``, as ``sbir cv`` splits them), so a probe's
``recipe`` row reproduces ``fg_qmul_v1-cv.json``. The features are computed
once per category with the recipe's frozen encoder (no gradient training).

* ``pool-size``: the map fitted on the whole training pool (no validation
  carve) or on 70% of it, over 5 and 3 folds: how much more pairs would give.
* ``jitter``: the map fitted on the training pairs plus ``--copies`` jittered
  copies of every training sketch (random scale, rotation and shift of up to
  ``--jitter`` times 10%, 6 degrees and 8%, white outside), each paired with its
  photo; ``joint`` jitters sketch and photo with the same transform.
* ``drawer``: the directions in which sketches of one Sketchy photo by
  different people differ (``sketchy_mini``: photos with two or more sketches;
  the top right singular vectors of each sketch minus its group's mean, in the
  recipe's centred, normalised features) projected out of sketches and photos
  before the map.

Reports Acc@1/5/10 (``sbir.metrics``: ties count against the query) per fold,
mean and spread, pooled Acc@1 over the categories and the difference to the
recipe against the adoption bar (the recipe's pooled spread), in
``benchmarks/results/fg_ridge_probes[-<tag>].json``.

    python benchmarks/fg_ridge_probes.py                       # all probes, all categories (~15 min on 2 cores)
    python benchmarks/fg_ridge_probes.py --probes drawer --categories shoes
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SHARED_DATA, fold_stats, resolve_path, run_main, write_result  # noqa: E402

from sbir.config import load_config  # noqa: E402
from sbir.data.formats import load_dataset  # noqa: E402
from sbir.data.splits import carve_validation, hold_out_fold  # noqa: E402
from sbir.engine.embed import PooledFeatures, embed_images  # noqa: E402
from sbir.errors import ConfigError, DataError  # noqa: E402
from sbir.index.hubness import Hubness, SketchStats  # noqa: E402
from sbir.metrics.retrieval import acc_at_k, true_match_ranks  # noqa: E402
from sbir.models.fgsbir import build_model  # noqa: E402
from sbir.models.heads import ridge_map  # noqa: E402

CATEGORIES = ("shoes", "chairs", "handbags")
PROBES = ("pool-size", "jitter", "drawer")


def jitter_images(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seeds: list[int], magnitude: float):
    """Each normalised image of ``x`` ``(B, 3, H, W)`` scaled by up to ``1 +- 0.1 m``, rotated by up to ``6 m``
    degrees and shifted by up to ``8 m`` % of its side (``m = magnitude``), drawn from its own seed; the area
    brought in is white. The same seed gives the same transform, whatever the batch."""
    r = torch.stack([torch.rand(4, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in seeds]).to(x)
    scale = 1 + 0.1 * magnitude * r[:, 0]
    angle = math.radians(6) * magnitude * r[:, 1]
    theta = torch.zeros(len(seeds), 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 1], theta[:, 1, 0] = -torch.sin(angle) / scale, torch.sin(angle) / scale
    theta[:, 0, 2], theta[:, 1, 2] = 0.16 * magnitude * r[:, 2], 0.16 * magnitude * r[:, 3]
    white = ((1 - mean) / std).view(1, 3, 1, 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - white, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + white


class JitteredFeatures(torch.nn.Module):
    """:class:`PooledFeatures` (raw) of jittered images; image ``i`` of a pass gets seed ``seed * 1_000_003 + i``."""

    def __init__(self, model: torch.nn.Module, seed: int, magnitude: float):
        super().__init__()
        self.features = PooledFeatures(model, normalize=False)
        self.mean, self.std = model.mean, model.std
        self.seed, self.magnitude, self.seen = seed, magnitude, 0
        self.mean_t, self.std_t = torch.tensor(self.mean), torch.tensor(self.std)

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        seeds = [self.seed * 1_000_003 + self.seen + i for i in range(len(x))]
        self.seen += len(x)
        return self.features.embed(jitter_images(x, self.mean_t, self.std_t, seeds, self.magnitude), domain)


def embed(model, refs, domain: str, size: int, progress: bool, desc: str) -> torch.Tensor:
    r = embed_images(model, refs, domain, size, batch_size=32, progress=progress, desc=desc)
    return torch.from_numpy(np.asarray(r.embeddings)).double()


def drawer_directions(features: torch.Tensor, groups: list[str], k: int) -> torch.Tensor:
    """``(k, D)`` orthonormal directions of largest variation among sketches of one group (one photo):
    features centred on their mean and normalised, each minus its group's mean; groups of one are skipped."""
    z = F.normalize(features - features.mean(0), dim=-1)
    rows = defaultdict(list)
    for i, g in enumerate(groups):
        rows[g].append(i)
    diffs = [z[idx] - z[idx].mean(0) for idx in rows.values() if len(idx) > 1]
    if not diffs:
        raise DataError("drawer_directions: no group has two sketches")
    _, _, vh = torch.linalg.svd(torch.cat(diffs), full_matrices=False)
    if k > len(vh):
        raise ConfigError(f"drawer_directions: {k} directions asked, the groups give {len(vh)}")
    return vh[:k]


class Category:
    """One category's training split and its recipe features (raw, uncentred), by record id."""

    def __init__(self, name: str, cfg, model, progress: bool):
        self.name, self.cfg, self.model = name, cfg, model
        self.split = load_dataset(str(SHARED_DATA / "qmul_v1" / name)).split("train")
        self.size = cfg.data.image_size
        self.progress = progress
        plain = PooledFeatures(model, normalize=False)
        self.sketch = self._features(plain, "sketch", f"{name} sketches")
        self.photo = self._features(plain, "photo", f"{name} photos")

    def _features(self, encoder, domain: str, desc: str) -> dict:
        items = self.split.sketches if domain == "sketch" else self.split.photos
        feats = embed(encoder, [x.image for x in items], domain, self.size, self.progress, desc)
        return dict(zip([x.id for x in items], feats, strict=True))

    def jittered(self, domain: str, seed: int, magnitude: float) -> dict:
        encoder = JitteredFeatures(self.model, seed, magnitude)
        return self._features(encoder, domain, f"{self.name} {domain}s, jitter {seed}")

    def folds(self, folds: int, val_fraction: float):
        for fold in range(folds):
            pool, held, _ = hold_out_fold(self.split, folds, fold, self.cfg.data.split_seed)
            if val_fraction > 0:
                pool, _, _ = carve_validation(pool, val_fraction, self.cfg.data.split_seed, by="photo")
            yield pool, held


def evaluate(cat: Category, train, held, lam: float, extra_pairs=(), project: torch.Tensor | None = None) -> dict:
    """The recipe's ridge head (``ridge_lambda`` ``lam``) and CSLS on one fold: the map fitted on ``train``'s pairs
    plus ``extra_pairs`` (``(sketch_feats, photo_feats)`` raw rows, paired by row), with the ``project``
    directions removed from every centred, normalised feature first. Returns Acc@1/5/10 on ``held``."""
    sketches = [s for s in train.sketches if s.photo_id is not None]
    s_raw = torch.stack([cat.sketch[s.id] for s in sketches])
    s_mean = s_raw.mean(0)
    p_mean = torch.stack([cat.photo[p.id] for p in train.photos]).mean(0)

    def norm(x, mean):
        z = F.normalize(x - mean, dim=-1)
        return z if project is None else F.normalize(z - (z @ project.T) @ project, dim=-1)

    a = [norm(s_raw, s_mean)]
    b = [norm(torch.stack([cat.photo[s.photo_id] for s in sketches]), p_mean)]
    for extra_s, extra_p in extra_pairs:
        a.append(norm(extra_s, s_mean))
        b.append(norm(extra_p, p_mean))
    left, right = ridge_map(torch.cat(a), torch.cat(b), lam)

    def mapped(x):
        z = norm(x, s_mean)
        return F.normalize(z + (z @ left) @ right, dim=-1).float().numpy()

    queries = mapped(torch.stack([cat.sketch[s.id] for s in held.sketches]))
    gallery = norm(torch.stack([cat.photo[p.id] for p in held.photos]), p_mean).float().numpy()
    hub = Hubness.fit("csls", gallery, SketchStats(mapped(s_raw), "training sketches"))
    index = held.photo_index()
    ranks = true_match_ranks(hub.scores(queries, gallery), np.array([index[s.photo_id] for s in held.sketches]))
    return acc_at_k(ranks, (1, 5, 10))


def cross_validate(cat: Category, folds: int, val_fraction: float, pairs_for=None, project=None, lam=None) -> dict:
    """Fold statistics of :func:`evaluate` (``lam`` None: the config's ``ridge_lambda``); ``pairs_for(train)``
    gives each fold's extra pairs."""
    lam = cat.cfg.model.ridge_lambda if lam is None else lam
    per_fold = [
        evaluate(cat, train, held, lam, pairs_for(train) if pairs_for else (), project)
        for train, held in cat.folds(folds, val_fraction)
    ]
    return fold_stats(per_fold)


def extra_sketch_pairs(copies: list[dict], photo_copies: list[dict] | None, cat: Category):
    """Each fold's jittered pairs: copy ``k`` of every training sketch with its photo (or the photo's copy ``k``)."""

    def pairs(train):
        sketches = [s for s in train.sketches if s.photo_id is not None]
        out = []
        for k, copy in enumerate(copies):
            photos = photo_copies[k] if photo_copies else cat.photo
            jittered = torch.stack([copy[s.id] for s in sketches])
            out.append((jittered, torch.stack([photos[s.photo_id] for s in sketches])))
        return out

    return pairs


def sketchy_sketch_features(model, size: int, progress: bool) -> tuple[torch.Tensor, list[str]]:
    """Raw recipe features of the ``sketchy_mini`` sketches and the photo each one names (its group)."""
    sketches = load_dataset(str(SHARED_DATA / "sketchy_mini")).split("train").sketches
    refs = [s.image for s in sketches]
    feats = embed(PooledFeatures(model, normalize=False), refs, "sketch", size, progress, "sketchy sketches")
    return feats, [s.photo_id for s in sketches]


def pooled(rows: dict) -> float:
    return statistics.mean(r["acc@1_mean"] for r in rows.values())


def pooled_spread(rows: dict) -> float:
    return math.sqrt(statistics.mean(r["acc@1_std"] ** 2 for r in rows.values()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    ap.add_argument("--config", type=resolve_path, default=REPO_ROOT / "configs" / "fg_qmul_v1.yaml")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--copies", type=int, default=4, help="jittered copies of each training sketch (jitter probe)")
    ap.add_argument("--jitter", type=float, default=1.0, help="jitter magnitude (1: 10%% scale, 6 deg, 8%% shift)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 10.0], help="ridge_lambda values (jitter probe)")
    ap.add_argument("--directions", type=int, nargs="+", default=[8, 32, 128, 512], help="drawer probe")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for flag, bad, need in (
        ("--folds", args.folds < 2, "a whole number >= 2"),
        ("--copies", args.copies < 1, "a whole number >= 1"),
        ("--jitter", not args.jitter > 0, "a number > 0"),
        ("--lambdas", not min(args.lambdas) > 0, "numbers > 0"),
        ("--directions", min(args.directions) < 1, "whole numbers >= 1"),
    ):
        if bad:
            value = getattr(args, flag[2:])
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise ConfigError(f"{flag} needs {need}, got {shown}")
    cfg = load_config(args.config)
    if cfg.model.head != "ridge" or cfg.optim.epochs != 0 or cfg.eval.hubness != "csls":
        raise ConfigError(
            f"{args.config} is not a closed-form recipe (model.head ridge, optim.epochs 0, eval.hubness csls)"
        )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).eval()
    progress = not args.no_progress
    cats = {name: Category(name, cfg, model, progress) for name in args.categories}
    val = cfg.data.val_fraction
    recipe = {name: cross_validate(cat, args.folds, val) for name, cat in cats.items()}
    bar = pooled(recipe) + pooled_spread(recipe)
    variants: dict[str, dict] = {}

    def record(label: str, rows: dict, folds: int = args.folds, reference: dict | None = None):
        reference = reference or recipe
        variants[label] = {
            "categories": rows,
            "pooled_acc@1": pooled(rows),
            "vs_reference": pooled(rows) - pooled(reference),
            "reference_spread": pooled_spread(reference),
            "folds": folds,
        }
        line = " / ".join(f"{n} {r['acc@1_mean']:.1f}" for n, r in rows.items())
        print(f"{label}: {line}; pooled {pooled(rows):.1f} ({pooled(rows) - pooled(reference):+.1f})", file=sys.stderr)

    record("recipe", recipe)
    if "pool-size" in args.probes:
        for folds in sorted({args.folds, 3}, reverse=True):
            reference = recipe if folds == args.folds else {n: cross_validate(c, folds, val) for n, c in cats.items()}
            if folds != args.folds:
                record(f"recipe, {folds} folds", reference, folds, reference)
            for fraction, what in ((0.0, "whole training pool"), (0.3, "70% of the pool")):
                rows = {n: cross_validate(c, folds, fraction) for n, c in cats.items()}
                record(f"pool-size: {what}, {folds} folds", rows, folds, reference)
    if "jitter" in args.probes:
        copies = {n: [c.jittered("sketch", k + 1, args.jitter) for k in range(args.copies)] for n, c in cats.items()}
        photos = {n: [c.jittered("photo", k + 1, args.jitter) for k in range(args.copies)] for n, c in cats.items()}
        for joint in (False, True):
            for lam in args.lambdas:
                rows = {}
                for n, c in cats.items():
                    pairs = extra_sketch_pairs(copies[n], photos[n] if joint else None, c)
                    rows[n] = cross_validate(c, args.folds, val, pairs, lam=lam)
                what = "sketch and photo jittered together" if joint else "sketches jittered"
                record(f"jitter: {args.copies} copies, {what}, ridge_lambda {lam:g}", rows)
    if "drawer" in args.probes:
        feats, groups = sketchy_sketch_features(model, cfg.data.image_size, progress)
        for k in args.directions:
            directions = drawer_directions(feats, groups, k)
            rows = {n: cross_validate(c, args.folds, val, project=directions) for n, c in cats.items()}
            record(f"drawer: {k} directions projected out", rows)
    write_result(
        "fg_ridge_probes" + (f"-{args.tag}" if args.tag else ""),
        {
            "config": str(args.config),
            "data": str(SHARED_DATA / "qmul_v1"),
            "bar_pooled_acc@1": bar,
            "note": "probes of the ridge fit outside sbir's options; adopt only above the bar (recipe pooled + spread)",
            "variants": variants,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
