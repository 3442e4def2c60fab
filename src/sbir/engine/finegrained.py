"""The fine-grained task (EffNet/ARNet double-siamese training).

Training pairs each sketch with its photo; every item yields two augmented
views of the sketch and two of the photo for the double-siamese NT-Xent. The
batch sampler keeps sketches of the same photo out of one batch, so they are
never each other's negatives. Validation = Acc@K with the split's unique
photos as the gallery (:func:`sbir.engine.evaluate.evaluate_finegrained`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import TrainConfig
from sbir.engine import distributed
from sbir.engine.batches import SplitTask
from sbir.engine.distributed import gather_batch
from sbir.engine.evaluate import evaluate_finegrained
from sbir.engine.tasks import TaskSpec, build_criterion, build_model, register_task
from sbir.errors import ConfigError
from sbir.losses.rerank import rerank_loss
from sbir.models.heads import CrossFitMaps

# Training sets up to this many images are decoded into memory once.
PRELOAD_MAX_IMAGES = 20_000


def unique_photo_sampler(task) -> Any:
    """Batches in which no two sketches share a photo (they would be each other's false negatives)."""
    from sbir.data.sampler import UniquePhotoBatchSampler

    groups = task.pairs.photo_ids_for_sampler()
    return UniquePhotoBatchSampler(groups, task.cfg.optim.batch_size, seed=task.cfg.seed, drop_last=True)


def batchnorm_eval(model: nn.Module) -> None:
    """Put ``model``'s BatchNorm layers in eval mode (running statistics used and kept; their affine
    parameters still train)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def pretrained_photo_distances(model: nn.Module, photos, cfg: TrainConfig, progress: bool = True) -> torch.Tensor:
    """(P, P) cosine distances ``1 - cos`` between ``photos`` under ``model``'s photo backbone as it is now."""
    from sbir.engine.embed import PooledFeatures, embed_images

    emb = embed_images(
        PooledFeatures(model),
        [p.image for p in photos],
        "photo",
        cfg.data.image_size,
        batch_size=cfg.eval.batch_size,
        progress=progress,
        desc="pretrained photo distances",
    ).embeddings
    e = torch.from_numpy(emb)
    return (1.0 - e @ e.t()).clamp_(min=0.0)


class FineGrainedTask(SplitTask):
    """The :class:`sbir.engine.trainer.Task` of ``task=finegrained``."""

    def __init__(
        self, spec: TaskSpec, cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: dict | None = None
    ):
        from sbir.data.pairs import FineGrainedPairs, annotated_negatives

        if cfg.loss.topology_meta and distributed.world_size() > 1:
            raise ConfigError(
                "loss.topology_meta takes its gradients outside DistributedDataParallel: train it in one process "
                "(drop --nproc) or set loss.topology_meta=false"
            )
        super().__init__(spec, cfg, run_dir, progress, split_record)
        self.criterion = build_criterion(cfg)
        negatives = None
        if getattr(self.criterion, "negative_triplet", None) is not None:
            # Random negatives only: no annotations needed; otherwise the split's human rankings.
            negatives = (
                annotated_negatives(self.train_split)
                if cfg.data.annotation_negatives > 0
                else [[] for _ in self.train_split.sketches]
            )
        self.model = build_model(cfg)
        # Second, augmented views only for the loss terms that compare a view with its augmented twin.
        self.pairs = FineGrainedPairs(
            self.train_split,
            *self.train_transforms(),
            two_views=any(k.endswith("_aug") for k in self.criterion.required_keys()),
            negatives=negatives,
            hard_ratio=cfg.data.annotation_negatives,
            seed=cfg.seed,
        )
        # Decode once up front for small datasets, so forked loader workers share the images
        # instead of each decoding (and caching) its own copy every epoch.
        if len(self.train_split.sketches) + len(self.train_split.photos) <= PRELOAD_MAX_IMAGES:
            self.pairs.preload()
        self.sampler = spec.make_sampler(self)
        # The topology term ranks photos as the frozen pretrained photo encoder does: measure that once,
        # before training (a resumed run rebuilds the same pretrained model first, so it gets the same matrix).
        self.ref_photo_dist = (
            pretrained_photo_distances(self.model, self.train_split.photos, cfg, progress)
            if getattr(self.criterion, "topology", None) is not None
            else None
        )
        # loss.topology_meta: the trainer calls train_step instead of one backward of compute_loss.
        self.train_step = self._topology_meta_step if cfg.loss.topology_meta else None
        # model.head=ridge: the trainer calls fit_closed_form before every validation.
        self.fit_closed_form = self._fit_ridge_heads if cfg.model.head == "ridge" else None
        # model.ridge_crossfit: the two half-split maps the epoch's loss goes through (set in train_batches).
        self.crossfit: CrossFitMaps | None = None

    @torch.no_grad()
    def _fit_ridge_heads(self) -> None:
        """Fit the ``ridge`` heads (:class:`sbir.models.heads.CentredMap`) on the training pairs as the encoders
        are now: each domain's mean, and the sketch map ``W`` (:func:`sbir.models.heads.ridge_map`, shrunk
        towards the identity by ``model.ridge_lambda``) that takes a centred sketch to its centred photo. The
        photo map stays the identity. Eval transforms, no augmentation: the map sees what search sees."""
        from sbir.models.heads import ridge_map

        s_raw, p_raw, owner = self._training_pair_features()
        s_mean, p_mean = s_raw.mean(0), p_raw.mean(0)
        a = F.normalize(s_raw - s_mean, dim=-1)
        b = F.normalize(p_raw - p_mean, dim=-1)[owner]
        left, right = ridge_map(a, b, self.cfg.model.ridge_lambda)
        self.model.sketch_head.proj.set_map(s_mean, left, right)
        self.model.photo_head.proj.set_map(p_mean)  # photos: centring only

    def _training_pair_features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw pooled features (eval mode, eval transforms) of the training sketches that have a photo and of
        the training photos, and each sketch's photo row: ``(S, D)``, ``(P, D)``, ``(S,)``."""
        from sbir.engine.embed import PooledFeatures

        split = self.train_split
        sketches = [s for s in split.sketches if s.photo_id is not None]
        photo_index = split.photo_index()
        s_raw, p_raw = self.features_for_fit(PooledFeatures(self.model, normalize=False), sketches, split.photos)
        return s_raw, p_raw, torch.tensor([photo_index[s.photo_id] for s in sketches])

    def train_batches(self, epoch: int):
        if self.cfg.model.ridge_crossfit:
            self.crossfit = self._fit_crossfit_maps(epoch)
            batchnorm_eval(self.model)  # the maps were fitted on eval-mode features: train on the same
        yield from super().train_batches(epoch)

    @torch.no_grad()
    def _fit_crossfit_maps(self, epoch: int) -> CrossFitMaps:
        """``model.ridge_crossfit``: this epoch's random halves of the training photos and a ridge map fitted
        on each half's pairs, as the encoders are now (seeded by ``seed`` and ``epoch``, so a resumed run
        draws the same halves)."""
        s_raw, p_raw, owner = self._training_pair_features()
        n_photos = len(p_raw)
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        half = torch.zeros(n_photos, dtype=torch.long)
        half[torch.randperm(n_photos, generator=generator)[n_photos // 2 :]] = 1
        return CrossFitMaps.fit(s_raw, p_raw, owner, half, self.cfg.model.ridge_lambda)

    def _trainable(self) -> list[torch.Tensor]:
        seen: set[int] = set()
        out = []
        for p in [*self.model.parameters(), *self.criterion.parameters()]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def _embed(self, x: torch.Tensor, domain: str, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Training-time embeddings of images ``x``: through this epoch's cross-fitted maps under
        ``model.ridge_crossfit`` (a sketch needs its photo's row ``groups`` to pick the other half's map),
        else the model's own embedding."""
        if self.crossfit is None:
            return self.model.embed(x, domain)
        feats = self.model.features(x, domain)
        return self.crossfit.sketches(feats, groups) if domain == "sketch" else self.crossfit.photos(feats)

    def topology_loss(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The topology term of the batch's first views under the model's current parameters (through the
        cross-fitted maps when training through them, like the retrieval loss)."""
        groups = batch["group"].to(device)
        embs = gather_batch(
            {
                "sketch": self._embed(batch["sketch"].to(device, non_blocking=True), "sketch", groups),
                "photo": self._embed(batch["photo"].to(device, non_blocking=True), "photo"),
                "groups": groups,
            }
        )
        g = embs["groups"].cpu()
        return self.criterion.topology(embs["sketch"], embs["photo"], self.ref_photo_dist[g][:, g].to(device))

    def _topology_meta_step(self, batch: dict, device: torch.device, scaler) -> tuple[torch.Tensor, dict]:
        """``loss.topology_meta``: the first-order meta update (:func:`sbir.losses.topology.first_order_meta_step`).

        Leaves ``g + w h`` in ``.grad`` (scaled like ``scaler.scale(loss).backward()``); the trainer clips and steps.
        The forward at the virtual parameters must not count twice in BatchNorm's running statistics, so the
        model's buffers are restored after it. Returns the retrieval loss plus ``w`` times the topology loss at
        the virtual parameters (comparable with the plain sum), and the parts.
        """
        from sbir.losses.topology import first_order_meta_step

        loss, parts = self.compute_loss(batch, device)
        if not torch.isfinite(loss):
            return loss, parts
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        cfg = self.cfg
        w = float(cfg.loss.weight_topology)
        try:
            topo = first_order_meta_step(
                self._trainable(),
                loss,
                lambda: self.topology_loss(batch, device),
                lr=cfg.loss.topology_meta_lr or cfg.optim.lr,
                weight=w,
                scale=scaler.get_scale() if scaler.is_enabled() else 1.0,
            )
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        parts = {**parts, "topology": float(topo)}
        return loss.detach() + w * topo, parts

    def compute_loss(self, batch: dict, device: torch.device):
        model = self.model
        b = batch["sketch"].shape[0]
        groups = batch["group"].to(device)
        # One forward per encoder over both views keeps BatchNorm statistics per domain.
        x_sketch = torch.cat([batch[k] for k in ("sketch", "sketch_aug") if k in batch]).to(device, non_blocking=True)
        x_photo = torch.cat([batch[k] for k in ("photo", "photo_aug") if k in batch]).to(device, non_blocking=True)
        reranker = getattr(model, "reranker", None)
        if reranker is not None:
            sketches, s_tok = model.embed_with_tokens(x_sketch, "sketch")
            photos, p_tok = model.embed_with_tokens(x_photo, "photo")
        else:
            sketches = self._embed(x_sketch, "sketch", groups.repeat(len(x_sketch) // b))
            photos = self._embed(x_photo, "photo")
        embs = {"sketch": sketches[:b], "photo": photos[:b], "groups": groups}
        if len(sketches) > b:
            embs["sketch_aug"] = sketches[b:]
        if len(photos) > b:
            embs["photo_aug"] = photos[b:]
        if "negative" in batch:
            embs["negative"] = self._embed(batch["negative"].to(device, non_blocking=True), "photo")
        # Under torchrun the batch-wise losses (NT-Xent, batch-hard triplet, topology) see the global batch:
        # every rank's rows, gathered with gradients (sbir.engine.distributed); a no-op in one process.
        embs = gather_batch(embs)
        if self.ref_photo_dist is not None:
            g = embs["groups"].cpu()
            embs["ref_photo_dist"] = self.ref_photo_dist[g][:, g].to(device)
        loss, parts = self.criterion(embs)
        if reranker is not None:  # the re-ranker learns on the first views: true photo vs hard negatives
            r_loss, r_parts = rerank_loss(
                reranker,
                s_tok[:b],
                p_tok[:b],
                sketches[:b],
                photos[:b],
                batch["group"].to(device),  # this rank's rows (the re-ranker's negatives are local)
                self.cfg.model.rerank_negatives,
            )
            loss = loss + self.cfg.loss.weight_rerank * r_loss
            parts = {**parts, **r_parts}
        return loss, parts


register_task(
    TaskSpec(
        name="finegrained",
        model="fgsbir",
        loss_kind="pairs",
        default_loss="ntxent",
        select_metric="acc@1",
        metric_keys=("acc@1", "acc@5", "acc@10", "%corr"),
        flip_mode="average",
        split_policy="photo",
        task_class=FineGrainedTask,
        evaluate=evaluate_finegrained,
        make_sampler=unique_photo_sampler,
        rerank=True,
        grid_features=True,
        ridge_head=True,
        hubness_eval=True,
    )
)
