"""Category-level and zero-shot SBIR task (SBIR-DASE-MEMS) and its evaluation.

Any photo of the sketch's class is a match. One shared encoder with
domain-aware squeeze-and-excitation blocks (:mod:`sbir.models.category`,
:mod:`sbir.models.dase`) embeds sketches and photos; the loss is MEMS
(default; euclidean test distance) or CosFace (angular test distance), whose
class centres / weights are shared by both domains.

Data and splits
---------------
The dataset comes from :func:`sbir.data.formats.load_dataset` (category layout
``photos/<class>/`` + ``sketches/<class>/``, Sketchy ``photo/`` + ``sketch/``,
Quick, Draw! ``.ndjson`` + ``photos/``, ...); every record needs its class label.
Training uses the dataset's ``train`` split:

* ``task=category``: a class-stratified validation split is carved from it
  (per class, ``data.val_fraction`` of the photos and of the sketches;
  :func:`sbir.data.splits.carve_validation` with ``by="class-stratified"``).
  Validation classes are training classes.
* ``task=zeroshot``: the unseen classes (``data.unseen``: a built-in list such
  as ``sketchy_unseen21``, a class-list file or a comma list; unset = the
  standard Sketchy split ``sketchy_unseen21`` when the data has all of its
  classes) are removed first; training **and** validation only ever see seen
  classes. Validation holds out whole seen classes (``data.val_fraction`` of
  them, at least 2, seeded), so model selection measures retrieval of classes
  the network did not train on, as zero-shot testing does.

``split.json`` records the validation ids (and, for zero-shot, the unseen,
training and validation classes); resume and ``sbir eval --split val`` replay
it. The zero-shot record uses the split module's id-list format with
``by="class-stratified"`` plus ``"class_disjoint": true``.

Test protocol (:func:`category_test_split`, used by ``sbir eval --split test``):

* the dataset the run trained on: ``task=category`` evaluates its ``test``
  split, and a dataset without one is an error (its ``train`` split was
  trained on; use ``--split val`` or a held-out dataset); ``task=zeroshot``
  evaluates the unseen classes' sketches against the unseen classes' photos
  (of the ``test`` split when there is one, else of ``train``);
* any other dataset (``--data OTHER``): its ``test`` split, or all of it when
  it has only one split -- a held-out evaluation set. Its classes need not be
  the training classes: retrieval only embeds and ranks.

Training batches
----------------
Class-balanced: ``optim.batch_size // optim.samples_per_class`` classes x
``optim.samples_per_class`` sketches, each sketch with a photo of its class
drawn at random (seeded by seed, epoch and item). Sketches and photos go
through the encoder as one mixed batch with per-sample domain ids (so the
shared BatchNorm sees both domains, as at test time), and both domains'
embeddings enter the classification loss against the same class centres.

Evaluation
----------
:func:`evaluate_category`: :func:`sbir.metrics.category_report` over the
split's sketches (queries) and photos (gallery): ``map@all``, ``map@200``,
``p@100``, ``p@200`` and the ``_voc`` / ``_allrel`` / ``_minkr`` / ``_zse``
variants. Distance ``eval.distance`` (``auto``: euclidean for MEMS, angular for
CosFace). Flip TTA (``eval.flip_tta``) takes the minimum distance over the
four (sketch, photo) flip pairings, as DASE-MEMS does (``eval.flip_mode``
``average`` averages embeddings instead). With hash heads
(``eval.hash_bits``, :mod:`sbir.engine.hashcodes`) the Hamming metrics
``<metric>_hash<bits>`` are added. A retrieval grid (top 5 photos of 8
sketches, the first same-class photo outlined) goes next to the metrics.
Validation selects the best epoch on ``map@all`` by default.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from sbir.config import TrainConfig
from sbir.data.formats import load_dataset
from sbir.data.records import Split
from sbir.data.splits import (
    BY_CLASS,
    apply_split_record,
    carve_validation,
    make_split_record,
    save_split_record,
)
from sbir.data.transforms import train_transform
from sbir.engine.batches import SampledBatchesMixin
from sbir.engine.embed import embed_images
from sbir.errors import ConfigError, DataError

GRID_QUERIES = 8
GRID_TOPK = 5
DEFAULT_SKETCHY_UNSEEN = "sketchy_unseen21"
KS_MAP = (200,)
KS_PREC = (100, 200)
# The keys every category evaluation reports (plus variants and counts).
MAIN_KEYS = ("map@all", "map@200", "p@100", "p@200")


# ---------------------------------------------------------------- splits


def require_labels(split: Split, where: str) -> None:
    """Every photo and sketch of ``split`` must carry its class label."""
    for kind, recs in (("photo", split.photos), ("sketch", split.sketches)):
        bad = next((r for r in recs if r.label is None), None)
        if bad is not None:
            raise DataError(
                f"{kind} {bad.id} ({bad.image.describe()}) in split '{split.name}' of {where} has no class label; "
                "category-level and zero-shot SBIR need classes: use a class-folder layout "
                "(photos/<class>/ + sketches/<class>/, or Sketchy's photo/<class>/ + sketch/<class>/)"
            )


def _subset(split: Split, name: str, classes: set[str]) -> Split:
    return Split(
        name=name,
        photos=[p for p in split.photos if p.label in classes],
        sketches=[s for s in split.sketches if s.label in classes],
    )


def default_unseen(split: Split) -> Optional[str]:
    """``sketchy_unseen21`` when ``split`` has every class of it (Sketchy-like data), else None."""
    from sbir.data.zeroshot import load_class_list, normalize_class_name

    have = {normalize_class_name(c) for c in split.labels()}
    wanted = {normalize_class_name(c) for c in load_class_list(DEFAULT_SKETCHY_UNSEEN)}
    return DEFAULT_SKETCHY_UNSEEN if wanted <= have and len(have) > len(wanted) else None


def resolve_unseen(cfg: TrainConfig, split: Split) -> str:
    """The unseen-class spec of a zero-shot run; fills ``cfg.data.unseen`` when it was unset."""
    if cfg.data.unseen:
        return cfg.data.unseen
    guess = default_unseen(split)
    if guess is None:
        raise ConfigError(
            f"task zeroshot needs the unseen classes: pass --unseen (data.unseen) with a built-in split "
            f"(sketchy_unseen21, sketchy_unseen25, tuberlin_unseen30, quickdraw_unseen30), a class-list file "
            f"or a comma-separated list of classes of {cfg.data.path}"
        )
    cfg.data.unseen = guess
    return guess


def carve_heldout_classes(split: Split, fraction: float, seed: int) -> tuple[Split, Split, dict]:
    """Hold out whole classes of ``split`` for validation (zero-shot model selection).

    ``round(fraction * n)`` of the classes that have both photos and sketches
    (at least 2, and at least 2 classes stay for training) are drawn with
    ``seed``; all their photos and sketches go to validation.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction is {fraction}; zero-shot model selection holds out that fraction of the seen "
            "classes, so it must be in (0, 1) (e.g. 0.1)"
        )
    photo_classes = {p.label for p in split.photos}
    eligible = sorted({s.label for s in split.sketches} & photo_classes)
    if len(eligible) < 4:
        raise DataError(
            f"zero-shot training needs at least 4 seen classes with photos and sketches (2 to train, 2 held out "
            f"for validation); split '{split.name}' has {len(eligible)}: {', '.join(eligible)}. "
            "Use fewer unseen classes or more data."
        )
    k = int(np.floor(fraction * len(eligible) + 0.5))
    k = min(max(k, 2), len(eligible) - 2)
    rng = np.random.default_rng(int(seed))
    val_classes = sorted(eligible[i] for i in rng.permutation(len(eligible))[:k])
    vset = set(val_classes)
    train = Split(
        name=split.name,
        photos=[p for p in split.photos if p.label not in vset],
        sketches=[s for s in split.sketches if s.label not in vset],
    )
    val = _subset(split, "val", vset)
    record = {
        **make_split_record(split, train, val, float(fraction), int(seed), BY_CLASS),
        "class_disjoint": True,
        "val_classes": val_classes,
    }
    return train, val, record


def prepare_category_splits(cfg: TrainConfig, run_dir: Path, split_record: Optional[dict], progress: bool):
    """Load the dataset and build (or replay) the train / validation splits; writes ``split.json``.

    Returns ``(dataset, train, val)``; see the module docstring for the rules.
    """
    from sbir.data.zeroshot import load_class_list, split_seen_unseen

    if not cfg.data.path:
        raise DataError("no dataset given: pass --data PATH (or data.path in the config)")
    dataset = load_dataset(cfg.data.path, cfg.data.format, skip_orphans=cfg.data.skip_orphans)
    if dataset.skipped and progress:
        print(f"skipped {len(dataset.skipped)} sketch(es) with no photo (--skip-orphans)", file=sys.stderr)
    full = dataset.split("train")
    require_labels(full, str(dataset.root))
    extra: dict[str, Any] = {"dataset": str(Path(cfg.data.path).resolve()), "format": dataset.format, "task": cfg.task}
    if cfg.task == "zeroshot":
        spec = resolve_unseen(cfg, full)
        classes = load_class_list(spec)
        seen, unseen = split_seen_unseen(full, classes)
        extra.update(
            unseen=spec,
            unseen_source=getattr(classes, "source", spec),
            unseen_classes=unseen.labels(),
        )
        if split_record is None:
            train, val, record = carve_heldout_classes(seen, cfg.data.val_fraction, cfg.data.split_seed)
            record.update(extra)
            record["train_classes"] = train.labels()
        else:
            if sorted(split_record.get("unseen_classes", [])) != unseen.labels():
                raise DataError(
                    f"the run's split.json lists unseen classes {split_record.get('unseen_classes')} but "
                    f"data.unseen={spec!r} gives {unseen.labels()} on {cfg.data.path}; the data or the list changed. "
                    "Restore them, or start a new run."
                )
            train, val = apply_split_record(seen, split_record)
            val.name = "val"
    else:
        if split_record is None:
            train, val, record = carve_validation(full, cfg.data.val_fraction, cfg.data.split_seed, by=BY_CLASS)
            record.update(extra)
        else:
            train, val = apply_split_record(full, split_record)
    if split_record is None:
        save_split_record(Path(run_dir) / "split.json", record)
    if len(val.sketches) == 0 or len(val.photos) == 0:
        raise DataError(
            f"the validation split carved from {cfg.data.path} is empty; model selection needs one: "
            "raise data.val_fraction (default 0.15) or add data (each class needs >= 2 photos and >= 2 sketches)"
        )
    return dataset, train, val


def _same_dataset(data_path: str | Path, cfg: TrainConfig, run_dir: Optional[Path]) -> bool:
    here = Path(data_path).expanduser().resolve()
    paths = []
    if cfg.data.path:
        paths.append(Path(cfg.data.path).expanduser().resolve())
    if run_dir is not None and (Path(run_dir) / "split.json").is_file():
        try:
            from sbir.data.splits import load_split_record

            ds = load_split_record(Path(run_dir) / "split.json").get("dataset")
            if ds:
                paths.append(Path(ds))
        except DataError:
            pass
    return here in paths


def category_test_split(
    dataset, cfg: TrainConfig, data_path: str | Path, run_dir: Optional[Path] = None, announce: bool = True
) -> Split:
    """The split ``sbir eval --split test`` evaluates for a category / zero-shot run (see the module docstring)."""
    from sbir.data.zeroshot import split_seen_unseen

    same = _same_dataset(data_path, cfg, run_dir)
    has_test = "test" in dataset.splits
    if not same:
        if has_test:
            target, what = dataset.split("test"), "its test split"
        elif len(dataset.splits) == 1:
            (name,) = dataset.splits
            target, what = dataset.split(name), f"all of it (a held-out dataset with the single split '{name}')"
        else:
            raise DataError(
                f"dataset {dataset.root} has splits {', '.join(sorted(dataset.splits))} but no 'test'; "
                "add a test/ folder or evaluate another dataset"
            )
    elif cfg.task == "zeroshot":
        base = dataset.split("test") if has_test else dataset.split("train")
        if not cfg.data.unseen:
            raise ConfigError("this zero-shot run records no unseen classes (data.unseen); it cannot be tested")
        _, target = split_seen_unseen(base, cfg.data.unseen)
        what = f"the unseen classes ({cfg.data.unseen}) of its '{base.name}' split"
    elif has_test:
        target, what = dataset.split("test"), "its test split"
    else:
        raise DataError(
            f"dataset {dataset.root} has no test split, and the run trained on its train split, so testing on it "
            "would measure training data. Evaluate the validation split (--split val), give a held-out dataset "
            "(--data OTHER), or add train/ and test/ folders."
        )
    target = Split(name="test", photos=target.photos, sketches=target.sketches)
    require_labels(target, str(dataset.root))
    if announce:
        n_cls = len({s.label for s in target.sketches})
        print(
            f"evaluating {dataset.root}: {what}: {len(target.sketches)} sketches of {n_cls} classes "
            f"against {len(target.photos)} photos",
            file=sys.stderr,
        )
    return target


# ---------------------------------------------------------------- training data


class CategoryPairs(TorchDataset):
    """Item ``i``: training sketch ``i``, a random photo of its class, and the class index.

    ``{"sketch": T_s(sketch), "photo": T_p(photo), "label": class index}``. The
    photo is drawn with a generator seeded by ``(seed, epoch, i)`` (call
    :meth:`set_epoch` before building the DataLoader), so runs and resumes draw
    the same pairs whatever the number of loader workers.
    """

    def __init__(self, split: Split, classes: list[str], sketch_transform, photo_transform, seed: int = 0):
        self.split = split
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.sketch_transform = sketch_transform
        self.photo_transform = photo_transform
        self.seed = int(seed)
        self.epoch = 0
        self.labels = [self.class_index[s.label] for s in split.sketches]
        by_class: dict[int, list[int]] = {}
        for j, p in enumerate(split.photos):
            if p.label in self.class_index:
                by_class.setdefault(self.class_index[p.label], []).append(j)
        missing = sorted({classes[c] for c in self.labels if c not in by_class})
        if missing:
            raise DataError(
                f"training split '{split.name}' has sketches of class(es) with no training photo: "
                f"{', '.join(missing[:10])}. Add photos of these classes (each class needs photos and sketches)."
            )
        self.photos_of = by_class

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split.sketches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c = self.labels[i]
        pool = self.photos_of[c]
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        j = pool[int(rng.integers(len(pool)))]
        return {
            "sketch": self.sketch_transform(self.split.sketches[i].image.load()),
            "photo": self.photo_transform(self.split.photos[j].image.load()),
            "label": c,
        }


def build_criterion(cfg: TrainConfig, num_classes: int, embed_dim: int) -> torch.nn.Module:
    """MEMS or CosFace over ``num_classes`` shared (sketch and photo) class centres.

    Defaults (``loss.margin`` / ``scale`` / ``anneal_steps`` unset) are the published ones: MEMS
    ``m = 4``, ``s = 1``, margin annealed over 100000 steps; CosFace ``m = 0.35``, ``s = 32``, no ramp.
    """
    from sbir.losses.cosface import CosFaceLoss
    from sbir.losses.mems import MEMSLoss

    margin, scale = cfg.loss.resolved()
    if cfg.loss.name == "cosface":
        anneal = 0 if cfg.loss.anneal_steps is None else cfg.loss.anneal_steps
        return CosFaceLoss(num_classes, embed_dim, margin=margin, scale=scale, anneal_steps=anneal)
    # The published 100k-step ramp; a margin reaching 4 within a short run collapses the embedding.
    anneal = 100_000 if cfg.loss.anneal_steps is None else cfg.loss.anneal_steps
    return MEMSLoss(num_classes, embed_dim, margin=margin, anneal_steps=anneal, scale=scale)


def predict_classes(criterion: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Margin-free class prediction: nearest MEMS centre, or largest CosFace cosine."""
    if hasattr(criterion, "predict"):
        return criterion.predict(z)
    w = torch.nn.functional.normalize(criterion.weight.to(z.dtype), dim=1)
    return (torch.nn.functional.normalize(z, dim=1) @ w.t()).argmax(dim=1)


# ---------------------------------------------------------------- evaluation


def _labels(records) -> np.ndarray:
    return np.array([r.label for r in records], dtype=object)


def evaluate_category(
    model,
    cfg: TrainConfig,
    split: Split,
    flip_tta: bool = False,
    progress: bool = True,
    out_dir: Optional[str | Path] = None,
    distance: Optional[str] = None,
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    keep_embeddings: bool = False,
    grid_name: str = "retrieval.png",
    title: Optional[str] = None,
) -> dict[str, Any]:
    """Category-level metrics of ``split``: its sketches against its photos (same class = relevant).

    ``distance`` defaults to ``cfg``'s (``auto`` resolved by the loss);
    ``flip_tta`` follows ``cfg.eval.flip_mode`` (category: minimum over the
    four flip pairings). Hash metrics are added for the heads in
    ``model.hash_heads``. With ``out_dir`` a retrieval grid is written there.
    Returns a JSON-serialisable dict (``_embeddings`` added with ``keep_embeddings``).
    """
    from sbir.engine.hashcodes import hash_metrics
    from sbir.metrics import category_report

    require_labels(split, "the evaluation data")
    if not split.sketches or not split.photos:
        raise DataError(
            f"split '{split.name}' has {len(split.sketches)} sketches and {len(split.photos)} photos; "
            "evaluation needs both"
        )
    dist = distance or cfg.resolved_distance()
    mode = cfg.resolved_flip_mode() if flip_tta else None
    kw = dict(
        image_size=cfg.data.image_size,
        batch_size=batch_size or cfg.eval.batch_size,
        num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        progress=progress,
    )
    s_res = embed_images(model, [s.image for s in split.sketches], "sketch", flip_tta=mode == "average",
                         return_flipped=mode == "pairings", **kw)
    p_res = embed_images(model, [p.image for p in split.photos], "photo", flip_tta=mode == "average",
                         return_flipped=mode == "pairings", **kw)
    s_emb, s_flip = s_res.embeddings, s_res.flipped
    p_emb, p_flip = p_res.embeddings, p_res.flipped
    s_lab, p_lab = _labels(split.sketches), _labels(split.photos)
    report: dict[str, Any] = category_report(
        s_emb, s_lab, p_emb, p_lab, distance=dist, ks_map=KS_MAP, ks_prec=KS_PREC,
        sketch_flip=s_flip, photo_flip=p_flip,
    )
    report["n_classes"] = int(len(set(s_lab.tolist())))
    report["distance"] = dist
    report["flip"] = mode or "none"
    heads = getattr(model, "hash_heads", None) or {}
    if heads:
        report.update(hash_metrics(heads, s_emb, s_lab, p_emb, p_lab, s_flip, p_flip))
    if out_dir is not None:
        write_category_grid(split, s_emb, p_emb, dist, Path(out_dir) / grid_name, s_flip, p_flip,
                            title=title or f"{split.name} retrieval")
    if keep_embeddings:
        report["_embeddings"] = (s_emb, p_emb, s_flip, p_flip, dist)
    return report


def write_category_grid(
    split: Split, s_emb, p_emb, distance: str, out_path: Path, s_flip=None, p_flip=None, title: str = ""
) -> Optional[Path]:
    """Query sketch, its top-5 photos; the first photo of the sketch's class is outlined."""
    from sbir.metrics import iter_score_chunks
    from sbir.viz.grid import retrieval_grid

    n = min(GRID_QUERIES, len(split.sketches))
    if n == 0 or len(split.photos) == 0:
        return None
    rows = np.linspace(0, len(split.sketches) - 1, n).round().astype(int)
    _, scores = next(iter_score_chunks(
        s_emb[rows], p_emb, distance, chunk_size=n,
        queries_flip=None if s_flip is None else s_flip[rows], gallery_flip=p_flip,
    ))
    p_lab = _labels(split.photos)
    queries, results, true_pos, ranks, top_scores, names = [], [], [], [], [], []
    for i, r in enumerate(rows):
        order = np.argsort(-scores[i], kind="stable")
        label = split.sketches[r].label
        hits = np.flatnonzero(p_lab[order] == label)
        rank = int(hits[0]) + 1 if hits.size else None
        top = order[:GRID_TOPK]
        queries.append(split.sketches[r].image.load())
        results.append([split.photos[j].image.load() for j in top])
        true_pos.append(rank - 1 if rank is not None and rank <= len(top) else None)
        ranks.append(rank)
        top_scores.append([float(scores[i, j]) for j in top])
        names.append(str(label))
    return retrieval_grid(queries, results, true_pos, out_path, scores=top_scores, title=title,
                          true_ranks=ranks, query_labels=names)


# ---------------------------------------------------------------- the task


class CategoryTask(SampledBatchesMixin):
    """The :class:`sbir.engine.trainer.Task` of ``task=category`` and ``task=zeroshot``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: Optional[dict] = None):
        from sbir.data.sampler import ClassBalancedBatchSampler
        from sbir.engine.checkpoint import build_model_for

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dataset, self.train_split, self.val_split = prepare_category_splits(cfg, self.run_dir, split_record, progress)
        self.classes = sorted({s.label for s in self.train_split.sketches})
        if len(self.classes) < 2:
            raise DataError(
                f"the training split of {cfg.data.path} has sketches of {len(self.classes)} class(es); "
                "category-level training needs at least 2"
            )
        if split_record is not None and cfg.model.num_classes not in (None, len(self.classes)):
            raise DataError(
                f"the run was trained on {cfg.model.num_classes} classes but its data now gives {len(self.classes)}; "
                "the dataset changed since the run started. Restore it or start a new run."
            )
        cfg.model.num_classes = len(self.classes)  # recorded in config.yaml and every checkpoint
        self.model = build_model_for(cfg)
        size = cfg.data.image_size
        mean, std = self.model.mean, self.model.std
        self.pairs = CategoryPairs(
            self.train_split,
            self.classes,
            train_transform(size, mean, std, cfg.augment, "sketch"),
            train_transform(size, mean, std, cfg.augment, "photo"),
            seed=cfg.seed,
        )
        k = cfg.optim.samples_per_class
        b = cfg.optim.batch_size
        if b % k:
            raise ConfigError(
                f"optim.batch_size ({b}) must be a multiple of optim.samples_per_class ({k}): a batch holds "
                "batch_size / samples_per_class classes with samples_per_class sketches each"
            )
        p = b // k
        if p > len(self.classes):
            raise ConfigError(
                f"a batch of optim.batch_size={b} with optim.samples_per_class={k} needs {p} classes, but the "
                f"training split has {len(self.classes)}; lower optim.batch_size or raise optim.samples_per_class"
            )
        self.sampler = ClassBalancedBatchSampler(self.pairs.labels, p, k, seed=cfg.seed)
        if len(self.sampler) == 0:
            raise DataError(f"the training split is too small for one batch of {b} sketches; lower optim.batch_size")
        self.criterion = build_criterion(cfg, len(self.classes), self.model.embed_dim)
        self._last_eval: Optional[dict] = None

    def compute_loss(self, batch: dict, device: torch.device):
        s = batch["sketch"].to(device, non_blocking=True)
        p = batch["photo"].to(device, non_blocking=True)
        b = s.shape[0]
        x = torch.cat([s, p]).contiguous(memory_format=torch.channels_last)
        domain = torch.cat([torch.zeros(b, dtype=torch.long), torch.ones(b, dtype=torch.long)]).to(device)
        y = batch["label"].to(device)
        labels = torch.cat([y, y])
        z = self.model.embed(x, domain).float()
        loss = self.criterion(z, labels)
        with torch.no_grad():
            correct = (predict_classes(self.criterion, z.detach()) == labels).float()
        parts = {
            "acc_sketch": float(correct[:b].mean()),
            "acc_photo": float(correct[b:].mean()),
            "margin": float(self.criterion.current_margin()),
        }
        return loss, parts

    def evaluate(self, split: str = "val") -> dict[str, Any]:
        if split != "val":
            raise ConfigError(f"the category task evaluates its validation split during training, not {split!r}")
        report = evaluate_category(
            self.model, self.cfg, self.val_split, flip_tta=self.cfg.eval.flip_tta, progress=self.progress,
            keep_embeddings=True,
        )
        self._last_eval = {"emb": report.pop("_embeddings")}
        return {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def on_best(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        if self._last_eval is not None:
            s_emb, p_emb, s_flip, p_flip, dist = self._last_eval["emb"]
            write_category_grid(self.val_split, s_emb, p_emb, dist, run_dir / "val_retrieval.png", s_flip, p_flip,
                                title="validation retrieval (best epoch)")
        if self.cfg.eval.hash_bits:
            self._train_hash_codes(run_dir)

    def _train_hash_codes(self, run_dir: Path) -> None:
        """Fit the hash heads on the training split's embeddings of the new best weights; save them."""
        from sbir.engine.checkpoint import file_digest
        from sbir.engine.hashcodes import (
            hash_file_name,
            save_hash_head,
            train_hash_heads,
        )

        digest = file_digest(run_dir / "best.safetensors")
        heads = train_hash_heads(
            self.model, self.train_split, self.cfg.eval.hash_bits, self.cfg.data.image_size,
            batch_size=self.cfg.eval.batch_size, num_workers=self.cfg.data.num_workers, seed=self.cfg.seed,
            progress=self.progress,
        )
        for bits, head in heads.items():
            save_hash_head(head, run_dir / hash_file_name(bits), digest, {"trained_on": "train split"})


__all__ = [
    "CategoryPairs",
    "CategoryTask",
    "MAIN_KEYS",
    "build_criterion",
    "carve_heldout_classes",
    "category_test_split",
    "evaluate_category",
    "prepare_category_splits",
    "write_category_grid",
]
