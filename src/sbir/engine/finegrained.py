"""Fine-grained SBIR task (EffNet/ARNet double-siamese training) and its evaluation.

Training pairs each sketch with its photo; every item yields two augmented
views of the sketch and two of the photo for the double-siamese NT-Xent. The
batch sampler keeps sketches of the same photo out of one batch, so they are
never each other's negatives. Validation = Acc@K with the split's unique
photos as the gallery.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sbir.config import TrainConfig
from sbir.data.formats import load_dataset
from sbir.data.records import Split
from sbir.data.splits import apply_split_record, carve_validation, save_split_record
from sbir.data.transforms import train_transform
from sbir.engine.batches import SampledBatchesMixin
from sbir.engine.embed import embed_images
from sbir.errors import DataError

# Retrieval-grid size written with the best epoch and by `sbir eval`.
GRID_QUERIES = 8
GRID_TOPK = 5
# Training sets up to this many images are decoded into memory once.
PRELOAD_MAX_IMAGES = 20_000


def prepare_splits(cfg: TrainConfig, run_dir: Path, split_record: Optional[dict], progress: bool):
    """Load the dataset and carve (or re-apply) the seeded validation split; records it in ``split.json``."""
    if not cfg.data.path:
        raise DataError("no dataset given: pass --data PATH (or data.path in the config)")
    dataset = load_dataset(cfg.data.path, cfg.data.format, skip_orphans=cfg.data.skip_orphans)
    if dataset.skipped and progress:
        print(f"skipped {len(dataset.skipped)} sketch(es) with no photo (--skip-orphans)", file=sys.stderr)
    full = dataset.split("train")
    if split_record is None:
        train, val, record = carve_validation(full, cfg.data.val_fraction, cfg.data.split_seed)
        record = {**record, "dataset": str(Path(cfg.data.path).resolve()), "format": dataset.format}
        save_split_record(run_dir / "split.json", record)
    else:
        train, val = apply_split_record(full, split_record)
    if len(val.sketches) == 0:
        raise DataError(
            f"the validation split carved from {cfg.data.path} is empty; model selection needs one: "
            "raise data.val_fraction (default 0.15) or add data"
        )
    return dataset, train, val


def evaluate_finegrained(
    model,
    split: Split,
    image_size: int,
    flip_tta: bool = False,
    distance: str = "cosine",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    keep_embeddings: bool = False,
) -> dict[str, Any]:
    """Acc@1/5/10 (and %corr when the split has triplets); the gallery is the split's unique photos."""
    from sbir.metrics import finegrained_report, percent_correct

    photo_index = split.photo_index()
    sketches = [s for s in split.sketches if s.photo_id is not None]
    if not sketches:
        raise DataError(f"split '{split.name}' has no sketches paired with photos; fine-grained evaluation needs pairs")
    true_index = np.array([photo_index[s.photo_id] for s in sketches])
    kw = dict(image_size=image_size, batch_size=batch_size, flip_tta=flip_tta, num_workers=num_workers, progress=progress)
    s_emb = embed_images(model, [s.image for s in sketches], "sketch", **kw).embeddings
    p_emb = embed_images(model, [p.image for p in split.photos], "photo", **kw).embeddings
    report = finegrained_report(s_emb, p_emb, true_index, ks=(1, 5, 10), distance=distance)
    if split.triplets is not None and len(split.triplets):
        report["%corr"] = percent_correct(s_emb, p_emb, split.triplets, distance=distance)
    if keep_embeddings:
        report["_embeddings"] = (s_emb, p_emb, true_index, sketches)
    return report


def write_retrieval_grid(split: Split, sketches, s_emb, p_emb, true_index, out_path: Path, title: str) -> Path:
    """Query sketch, its top-5 photos, the true match outlined, for the first few queries."""
    from sbir.metrics import similarity_matrix, true_match_ranks
    from sbir.viz.grid import retrieval_grid

    n = min(GRID_QUERIES, len(sketches))
    if n == 0:
        return out_path
    # Spread the shown queries over the split rather than the first few photos.
    rows = np.linspace(0, len(sketches) - 1, n).round().astype(int)
    scores = np.asarray(similarity_matrix(s_emb[rows], p_emb))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :GRID_TOPK]
    ranks = [int(r) for r in true_match_ranks(scores, true_index[rows])]
    queries = [sketches[r].image.load() for r in rows]
    results = [[split.photos[j].image.load() for j in order[i]] for i in range(n)]
    true_pos = [
        (int(np.where(order[i] == true_index[r])[0][0]) if true_index[r] in order[i] else None) for i, r in enumerate(rows)
    ]
    top_scores = [[float(scores[i, j]) for j in order[i]] for i in range(n)]
    return retrieval_grid(queries, results, true_pos, out_path, scores=top_scores, title=title, true_ranks=ranks)


class FineGrainedTask(SampledBatchesMixin):
    def __init__(self, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: Optional[dict] = None):
        from sbir.data.pairs import FineGrainedPairs
        from sbir.data.sampler import UniquePhotoBatchSampler
        from sbir.losses.factory import build_loss
        from sbir.models.fgsbir import build_model

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dataset, self.train_split, self.val_split = prepare_splits(cfg, self.run_dir, split_record, progress)
        self.model = build_model(cfg.model)
        size = cfg.data.image_size
        mean, std = self.model.mean, self.model.std
        self.pairs = FineGrainedPairs(
            self.train_split,
            train_transform(size, mean, std, cfg.augment, "sketch"),
            train_transform(size, mean, std, cfg.augment, "photo"),
            two_views=True,
        )
        # Decode once up front for small datasets, so forked loader workers share the images
        # instead of each decoding (and caching) its own copy every epoch.
        if len(self.train_split.sketches) + len(self.train_split.photos) <= PRELOAD_MAX_IMAGES:
            self.pairs.preload()
        groups = self.pairs.photo_ids_for_sampler()
        self.sampler = UniquePhotoBatchSampler(groups, cfg.optim.batch_size, seed=cfg.seed, drop_last=True)
        self.criterion = build_loss(cfg.loss)
        self._last_eval: Optional[dict] = None

    def compute_loss(self, batch: dict, device: torch.device):
        model = self.model
        b = batch["sketch"].shape[0]
        # One forward per encoder over both views keeps BatchNorm statistics per domain.
        sketches = model.embed(torch.cat([batch["sketch"], batch["sketch_aug"]]).to(device, non_blocking=True), "sketch")
        photos = model.embed(torch.cat([batch["photo"], batch["photo_aug"]]).to(device, non_blocking=True), "photo")
        embs = {
            "sketch": sketches[:b],
            "sketch_aug": sketches[b:],
            "photo": photos[:b],
            "photo_aug": photos[b:],
            "groups": batch["group"].to(device),
        }
        return self.criterion(embs)

    def evaluate(self, split: str = "val") -> dict[str, Any]:
        target = self.val_split if split == "val" else self.dataset.split(split)
        report = evaluate_finegrained(
            self.model,
            target,
            self.cfg.data.image_size,
            flip_tta=self.cfg.eval.flip_tta,
            distance=self.cfg.eval.distance,
            batch_size=self.cfg.eval.batch_size,
            progress=self.progress,
            keep_embeddings=True,
        )
        self._last_eval = {"split": target, "emb": report.pop("_embeddings")}
        return {k: v for k, v in report.items() if k != "ranks"}

    def on_best(self, run_dir: Path) -> None:
        if self._last_eval is None:
            return
        s_emb, p_emb, true_index, sketches = self._last_eval["emb"]
        write_retrieval_grid(
            self._last_eval["split"], sketches, s_emb, p_emb, true_index, run_dir / "val_retrieval.png",
            title="validation retrieval (best epoch)",
        )
