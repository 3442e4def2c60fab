"""Typed run configuration.

Configs are nested dataclasses, loadable from YAML, overridable from the command
line with dotted keys (``--set optim.lr=3e-4 model.embed_dim=256``) and saved
as ``config.yaml`` with every run and inside every checkpoint, so any result can
be reproduced. Values are validated when the config is built, with messages
naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sbir.errors import ConfigError


@dataclass
class DataConfig:
    path: str | None = None
    format: str | None = None  # auto-detected when None
    skip_orphans: bool = False
    val_fraction: float = 0.15
    split_seed: int = 0
    image_size: int = 224
    num_workers: int = 2
    # Zero-shot: unseen classes as a built-in split name (e.g. sketchy_unseen21), a class-list file or a
    # comma list. None: sketchy_unseen21 when the data has all of its classes (Sketchy), else an error.
    unseen: str | None = None
    # Cross-validation (sbir cv): hold out fold cv_fold of cv_folds folds of the training photos (with their
    # sketches; seeded by split_seed) as this run's test split; the validation split is carved from the rest.
    # Zero-shot runs hold out a fold of the classes instead: they become data.unseen.
    cv_folds: int | None = None
    cv_fold: int = 0
    # With loss.weight_negative_triplet: the share of negatives drawn from the human triplet annotations
    # (QMUL-V1 <cat>_annotation.json: the photos ranked for each sketch; Deep_SBIR_tf uses 0.75); the rest
    # are random photos.
    annotation_negatives: float = 0.75

    def validate(self) -> None:
        if not 0.0 <= self.annotation_negatives <= 1.0:
            raise ConfigError(f"data.annotation_negatives must be in [0, 1], got {self.annotation_negatives}")
        if self.cv_folds is not None and self.cv_folds < 2:
            raise ConfigError(f"data.cv_folds must be >= 2 (or unset), got {self.cv_folds}")
        if self.cv_folds is not None and not 0 <= self.cv_fold < self.cv_folds:
            raise ConfigError(f"data.cv_fold must be in [0, {self.cv_folds}), got {self.cv_fold}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.image_size < 32:
            raise ConfigError(f"data.image_size must be >= 32, got {self.image_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class AugmentConfig:
    """Training augmentation; strength in [0, 1] scales crop/rotation/jitter."""

    hflip: bool = True
    crop_scale_min: float = 0.8
    rotation_deg: float = 10.0
    color_jitter: float = 0.2
    # Random stroke/edge erasing on sketches (partial sketches).
    erase_prob: float = 0.3
    # "resized": random resized crop (scale crop_scale_min..1, aspect 0.85..1.15); "fixed": the published
    # systems' crops (Triplet-SN, DSSA: 225 of 256 px): resize to image_size * fixed_crop_scale, random crop.
    crop: str = "resized"
    fixed_crop_scale: float = 256 / 224

    def validate(self) -> None:
        if not 0.05 <= self.crop_scale_min <= 1.0:
            raise ConfigError(f"augment.crop_scale_min must be in [0.05, 1], got {self.crop_scale_min}")
        if self.crop not in ("resized", "fixed"):
            raise ConfigError(f"augment.crop must be 'resized' or 'fixed', got {self.crop!r}")
        if not 1.0 <= self.fixed_crop_scale <= 2.0:
            raise ConfigError(f"augment.fixed_crop_scale must be in [1, 2], got {self.fixed_crop_scale}")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ConfigError(f"augment.erase_prob must be in [0, 1], got {self.erase_prob}")


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: str | None = None  # local weights file (.safetensors, .pth; ViTs also big_vision .npz)
    # Start the backbone(s) from another run's (a run folder or an sbir .safetensors), e.g. a sketch-domain
    # pretraining run (sbir train --task pretrain): backbones only, loaded strictly; heads stay fresh.
    init_from: str | None = None
    # Extra keyword arguments of the timm constructor, e.g. {img_size: 64, depth: 2} for a small ViT.
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    shared_encoder: bool = False  # ARNet: separate sketch and photo encoders
    embed_dim: int = 512
    head: str = "linear"  # linear | mlp | identity (no projection: off-the-shelf features) | ridge (see below)
    # head=ridge (fine-grained): each domain's features are centred on that domain's training mean and the
    # sketch side is mapped by W = argmin ||a W^T - b||^2 + ridge_lambda ||W - I||^2 over the training pairs,
    # in closed form before every validation (sbir.models.heads.ridge_map), not by gradients.
    # Category / zero-shot (one shared encoder): the same map, each training sketch's target being the mean of
    # its class's centred photos, solved in the primal (sbir.models.heads.ridge_map_low_rank).
    ridge_lambda: float = 1.0
    # Fine-grained ridge head trained by gradient (optim.epochs > 0): a map fitted on the training pairs matches
    # them all, so a loss through it has almost nothing to learn from. With ridge_crossfit each epoch splits the
    # training photos into two random halves, fits one ridge map on each half's pairs (eval-mode features) and
    # sends every training pair through the map fitted on the *other* half; BatchNorm keeps its statistics in
    # training, as the maps were fitted in eval mode. Validation and search use the map fitted on all pairs.
    ridge_crossfit: bool = False
    # Category / zero-shot ridge head: keep the map's correction W - I to its ridge_rank largest singular
    # directions (2 * rank * D numbers instead of D^2, for a small shipped file); unset keeps all.
    ridge_rank: int | None = None
    dropout: float = 0.0
    # Freeze the first N backbone stages ("blocks") to train faster on CPU; 0 trains all.
    freeze_stages: int = 0
    # Fine-grained: embed from an intermediate timm feature level (EfficientNet-Lite: 3 = block 4, stride 16)
    # instead of the last layer, average-pooled to a pool_grid x pool_grid grid that keeps where strokes are
    # (sbir.models.grid_features). Unset: the last layer, globally pooled.
    feature_level: int | None = None
    pool_grid: int = 1
    # Fine-grained: crop every image to the square box around its ink (pixels darker than 200/255), widened by
    # this margin (a fraction of the box's side on each side), before the encoder, so that sketches drawn at any
    # size or place and photos with their own margins meet in one frame (sbir.models.content_crop). Part of
    # the model: evaluation, indexes, the service and exported graphs crop the same way. Unset: no crop.
    content_crop: float | None = None
    # More timm backbones on the same input, their features concatenated after `backbone`'s: an ensemble in
    # one embedding (sbir.models.grid_features.ConcatFeatures), e.g. [efficientnet_lite1, efficientnet_lite2].
    # Fine-grained: each cut at feature_level and pooled to pool_grid like `backbone` (needs feature_level).
    # Category / zero-shot: their globally pooled last layers (no DASE blocks, no loss.weight_distill).
    extra_backbones: list[str] = field(default_factory=list)
    # Category / zero-shot models only (one shared encoder; see sbir.models.category):
    dase: bool = True  # domain-aware squeeze-and-excitation blocks
    dase_where: str = "auto"  # auto | se | stages (sbir.models.dase.insert_dase)
    # Number of training classes; set by the category task when training starts (recorded in checkpoints).
    num_classes: int | None = None
    # CLIP prompt learning (method clip-prompt; sbir.models.clip_prompt). clip_model: an open_clip model name
    # or the path of an open_clip model-config JSON; weights: weights_path when set, else clip_pretrained
    # (an open_clip tag, downloaded) when pretrained is true. The CLIP towers stay frozen.
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    prompts: int = 3  # learnable visual prompt tokens per domain (sketch, photo)
    prompt_lr: float = 1e-4  # the prompts' learning rate (clip-prompt ignores optim.lr / backbone_lr_mult)
    clip_lr: float = 1e-6  # learning rate of unfrozen CLIP weights (only with clip_train_norms)
    clip_train_norms: bool = False  # also train the image tower's LayerNorms (at clip_lr)
    # Fine-grained: ARNet's token module as a trained re-ranker (sbir.models.rerank): it re-scores the
    # embedding top-K photos of each sketch pairwise from the encoders' token sequences.
    rerank: bool = False
    rerank_dim: int = 256  # width of the re-ranker's attention layers
    rerank_heads: int = 4
    rerank_top_k: int = 10  # photos re-scored per query (evaluation, index search)
    rerank_negatives: int = 7  # training: hard negatives per sketch from the in-batch embedding top-K

    def validate(self) -> None:
        if not isinstance(self.backbone_kwargs, dict) or not all(isinstance(k, str) for k in self.backbone_kwargs):
            raise ConfigError(
                f"model.backbone_kwargs must be a mapping of timm keyword arguments (e.g. "
                f"model.backbone_kwargs={{img_size: 64}}), got {self.backbone_kwargs!r}"
            )
        if self.rerank_dim < 8 or self.rerank_heads < 1 or self.rerank_dim % self.rerank_heads:
            raise ConfigError(
                f"model.rerank_dim ({self.rerank_dim}) must be >= 8 and divisible by model.rerank_heads "
                f"({self.rerank_heads})"
            )
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ConfigError(
                f"model.init_from must be a run folder or a .safetensors file (or unset), got {self.init_from!r}"
            )
        if self.rerank_top_k < 2:
            raise ConfigError(f"model.rerank_top_k must be >= 2, got {self.rerank_top_k}")
        if self.rerank_negatives < 1:
            raise ConfigError(f"model.rerank_negatives must be >= 1, got {self.rerank_negatives}")
        if self.embed_dim < 2:
            raise ConfigError(f"model.embed_dim must be >= 2, got {self.embed_dim}")
        if self.head not in ("linear", "mlp", "identity", "ridge"):
            raise ConfigError(f"model.head must be 'linear', 'mlp', 'identity' or 'ridge', got {self.head!r}")
        if not self.ridge_lambda > 0:
            raise ConfigError(f"model.ridge_lambda must be > 0, got {self.ridge_lambda}")
        if self.ridge_crossfit and self.head != "ridge":
            raise ConfigError(
                f"model.ridge_crossfit trains through the ridge head's maps: set model.head=ridge with it "
                f"(model.head is {self.head!r}), or unset model.ridge_crossfit"
            )
        if self.ridge_crossfit and self.rerank:
            raise ConfigError("model.ridge_crossfit cannot train model.rerank's token re-ranker: unset one of them")
        if self.freeze_stages < 0:
            raise ConfigError(f"model.freeze_stages must be >= 0, got {self.freeze_stages}")
        if self.feature_level is not None and self.feature_level < 0:
            raise ConfigError(f"model.feature_level must be >= 0 (or unset), got {self.feature_level}")
        if self.pool_grid < 1:
            raise ConfigError(f"model.pool_grid must be >= 1, got {self.pool_grid}")
        if self.pool_grid > 1 and self.feature_level is None:
            raise ConfigError(
                "model.pool_grid needs model.feature_level (the feature map to pool); set both, e.g. "
                "model.feature_level=3 model.pool_grid=4"
            )
        if self.content_crop is not None and (
            isinstance(self.content_crop, bool)
            or not isinstance(self.content_crop, (int, float))
            or not 0 <= self.content_crop <= 1
        ):
            raise ConfigError(
                f"model.content_crop is the margin around the ink box, a number in [0, 1] (e.g. 0.1), or unset; "
                f"got {self.content_crop!r}"
            )
        if self.ridge_rank is not None and self.ridge_rank < 1:
            raise ConfigError(f"model.ridge_rank must be >= 1 (or unset: full rank), got {self.ridge_rank}")
        if self.extra_backbones:
            if self.rerank or self.weights_path:
                raise ConfigError(
                    "model.extra_backbones cannot be combined with model.rerank or model.weights_path (they "
                    "concern one backbone); unset model.extra_backbones or those keys"
                )
            if len(set([self.backbone, *self.extra_backbones])) != len(self.extra_backbones) + 1:
                raise ConfigError(
                    f"model.extra_backbones repeats a backbone ({self.backbone}, {', '.join(self.extra_backbones)}): "
                    "each one once"
                )
        if self.dase_where not in ("auto", "se", "stages"):
            raise ConfigError(f"model.dase_where must be 'auto', 'se' or 'stages', got {self.dase_where!r}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2 (or unset), got {self.num_classes}")
        if not self.clip_model:
            raise ConfigError("model.clip_model must be an open_clip model name (e.g. ViT-B-32) or a config JSON")
        if self.prompts < 1:
            raise ConfigError(f"model.prompts must be >= 1, got {self.prompts}")
        for k in ("prompt_lr", "clip_lr"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"model.{k} must be > 0, got {getattr(self, k)}")


@dataclass
class LossConfig:
    """The training loss. Unset (None) values take the loss's own defaults (its constructor's signature).

    ``name`` unset: the task's default loss (fine-grained ``ntxent``, category / zero-shot ``mems``).
    Fine-grained losses: ``ntxent | triplet | ntxent+triplet``; category / zero-shot: ``mems | cosface``
    (see ``sbir.losses`` for every registered name).
    """

    name: str | None = None
    temperature: float | None = None  # NT-Xent
    weight_cross: float | None = None  # sketch <-> photo
    weight_sketch: float | None = None  # sketch <-> augmented sketch
    weight_photo: float | None = None  # photo <-> augmented photo
    triplet_margin: float | None = None
    weight_triplet: float | None = None
    # Re-ranker (model.rerank): weight of its listwise loss (true photo vs hard negatives).
    weight_rerank: float = 1.0
    # MEMS / CosFace margin and scale.
    margin: float | None = None
    scale: float | None = None
    # Steps over which the margin ramps up (MEMS: 100000 as published; CosFace: 0, full margin at once).
    # A MEMS margin that grows within a short run collapses the embedding: keep it slow.
    anneal_steps: int | None = None
    # Fine-grained: the neighbourhood-topology term (sbir.losses.topology), added with this weight (unset/0: off);
    # its margin (0.01) and pairs per sketch (10) default to the loss's.
    weight_topology: float | None = None
    topology_margin: float | None = None
    topology_pairs: int | None = None
    # Apply the topology term as the paper does, as a first-order meta update (sbir.losses.topology.
    # first_order_meta_step): its gradient is taken after a virtual SGD step of topology_meta_lr (unset: optim.lr)
    # along the retrieval loss's gradient. One process only (not with --nproc > 1).
    topology_meta: bool = False
    topology_meta_lr: float | None = None
    # Fine-grained: a triplet term on explicit negative photos (data.annotation_negatives decides how they are
    # drawn), added with this weight (unset/0: off); its margin is loss.triplet_margin.
    weight_negative_triplet: float | None = None
    # Category / zero-shot: knowledge preservation (sbir.losses.distill), added with this weight (unset/0: off):
    # the backbone's own ImageNet classifier keeps agreeing with the frozen ImageNet model on every training
    # image, at distill_temperature (unset: the loss's 2.0).
    weight_distill: float | None = None
    distill_temperature: float | None = None
    # CLIP prompt learning (clip-prompt): weights of the text-classifier cross-entropy, the patch-shuffle
    # triplet and the relative-distance regulariser (fine-grained), and the patch-shuffle grid (n x n).
    weight_text: float | None = None
    weight_patch_shuffle: float | None = None
    weight_rel_distance: float | None = None
    patch_grid: int | None = None

    def validate(self) -> None:
        if self.name is not None and not self.name:
            raise ConfigError("loss.name must be a loss name (or unset for the task's default)")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"loss.scale must be > 0, got {self.scale}")
        if self.anneal_steps is not None and self.anneal_steps < 0:
            raise ConfigError(f"loss.anneal_steps must be >= 0 (or unset), got {self.anneal_steps}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.distill_temperature is not None and self.distill_temperature <= 0:
            raise ConfigError(f"loss.distill_temperature must be > 0, got {self.distill_temperature}")
        if self.topology_pairs is not None and self.topology_pairs < 1:
            raise ConfigError(f"loss.topology_pairs must be >= 1, got {self.topology_pairs}")
        if self.topology_meta and not self.weight_topology:
            raise ConfigError("loss.topology_meta applies the topology term: set loss.weight_topology > 0 with it")
        if self.topology_meta_lr is not None and self.topology_meta_lr <= 0:
            raise ConfigError(f"loss.topology_meta_lr must be > 0 (or unset for optim.lr), got {self.topology_meta_lr}")
        if self.patch_grid is not None and self.patch_grid < 2:
            raise ConfigError(f"loss.patch_grid must be >= 2 (or unset), got {self.patch_grid}")
        for k in (
            "weight_cross",
            "weight_sketch",
            "weight_photo",
            "weight_triplet",
            "triplet_margin",
            "weight_topology",
            "topology_margin",
            "weight_negative_triplet",
            "weight_distill",
            "weight_text",
            "weight_patch_shuffle",
            "weight_rel_distance",
            "weight_rerank",
        ):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                raise ConfigError(f"loss.{k} must be >= 0, got {getattr(self, k)}")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw (decoupled weight decay) | adam (weight_decay as an L2 term; ARNet)
    # 0 trains nothing: the run validates and keeps its starting weights (ImageNet or model.init_from) as
    # best.safetensors, for a recipe whose cross-validation says training does not help (fg_qmul_v1.yaml).
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    scheduler: str = "cosine"  # cosine | constant
    grad_clip: float = 5.0
    max_steps_per_epoch: int | None = None  # cap for quick runs
    # Category / zero-shot: each batch holds batch_size sketches (+ one photo of the same class each),
    # batch_size // samples_per_class classes x samples_per_class sketches (class-balanced sampling).
    samples_per_class: int = 4
    # Stop before an epoch that would end past this many minutes of training (None: no limit).
    time_budget_minutes: float | None = None
    # Keep the last N epochs' checkpoints and write their averaged weights as averaged.safetensors (with its
    # validation metrics in summary.json); `sbir eval RUN/averaged.safetensors` evaluates it.
    average_last: int | None = None
    # With time_budget_minutes: after every epoch, fit the schedule (cosine horizon included) to the epochs
    # that the mean epoch time so far leaves room for in the budget, so the learning rate decays fully instead
    # of being cut off; optim.epochs is then the most it may run.
    epochs_from_budget: bool = False
    # Which epoch's weights become best.safetensors: "best" (highest validation select_metric) or "last" (the
    # final epoch, whatever validation says; it is still run and reported). On a small validation split the
    # best epoch is mostly noise; a schedule whose length cross-validation chose keeps its last epoch.
    keep_epoch: str = "best"

    def validate(self) -> None:
        if self.keep_epoch not in ("best", "last"):
            raise ConfigError(f"optim.keep_epoch must be 'best' or 'last', got {self.keep_epoch!r}")
        if self.epochs_from_budget and self.time_budget_minutes is None:
            raise ConfigError("optim.epochs_from_budget needs optim.time_budget_minutes")
        if self.average_last is not None and self.average_last < 2:
            raise ConfigError(f"optim.average_last must be >= 2 (or unset), got {self.average_last}")
        if self.name not in ("adamw", "adam"):
            raise ConfigError(f"optim.name must be 'adamw' or 'adam', got {self.name!r}")
        if self.epochs < 0:
            raise ConfigError(f"optim.epochs must be >= 0 (0: keep the starting weights), got {self.epochs}")
        if self.epochs == 0 and (self.average_last or self.epochs_from_budget):
            raise ConfigError("optim.epochs=0 trains nothing: unset optim.average_last and optim.epochs_from_budget")
        if self.batch_size < 2:
            raise ConfigError(
                f"optim.batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}"
            )
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            raise ConfigError(f"optim.time_budget_minutes must be > 0, got {self.time_budget_minutes}")
        if self.scheduler not in ("cosine", "constant"):
            raise ConfigError(f"optim.scheduler must be 'cosine' or 'constant', got {self.scheduler!r}")
        if self.samples_per_class < 1:
            raise ConfigError(f"optim.samples_per_class must be >= 1, got {self.samples_per_class}")


HASH_BITS = (32, 64, 128)


@dataclass
class EvalConfig:
    # Flip test-time augmentation: fine-grained averages the embeddings of the image and its mirror;
    # category / zero-shot take the minimum distance over the four (sketch, photo) flip pairings
    # (DASE-MEMS). flip_mode picks explicitly: auto | average | pairings.
    flip_tta: bool = False
    flip_mode: str = "auto"
    # cosine | euclidean | angular | auto (the distance the loss trains for: cosine for NT-Xent and
    # triplet, euclidean for MEMS, angular for CosFace).
    distance: str = "auto"
    batch_size: int = 64
    # Fine-grained multi-view testing (Triplet-SN, DSSA): 4 corner crops and the centre crop of the image
    # enlarged by multiview_scale, each also mirrored; the view scores are averaged (sbir.metrics.multiview_scores).
    multiview: bool = False
    multiview_scale: float = 256 / 224
    # Fine-grained: hubness correction of the scores (sbir.metrics.hubness), as `sbir index build --hubness`
    # applies it: none | center | csls. The sketch statistics set is the run's training sketches (validation:
    # the training split; `sbir eval`: its split.json replayed on the data), never the queries; an index built
    # from the run defaults to the same correction.
    hubness: str = "none"
    # Category / zero-shot: hash-code lengths (any of 32, 64, 128) learned on the training split's
    # embeddings after the best epoch; evaluation then also reports Hamming-distance metrics.
    hash_bits: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if self.distance not in ("cosine", "euclidean", "angular", "auto"):
            raise ConfigError(f"eval.distance must be cosine, euclidean, angular or auto, got {self.distance!r}")
        if self.flip_mode not in ("auto", "average", "pairings"):
            raise ConfigError(f"eval.flip_mode must be auto, average or pairings, got {self.flip_mode!r}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.hubness not in ("none", "center", "csls"):
            raise ConfigError(f"eval.hubness must be none, center or csls, got {self.hubness!r}")
        if self.hubness != "none" and self.multiview:
            raise ConfigError(
                f"eval.hubness={self.hubness} corrects one view's scores; unset eval.multiview or set eval.hubness=none"
            )
        if not 1.0 <= self.multiview_scale <= 2.0:
            raise ConfigError(f"eval.multiview_scale must be in [1, 2], got {self.multiview_scale}")
        bits = self.hash_bits
        if not isinstance(bits, list) or any(isinstance(b, bool) or b not in HASH_BITS for b in bits):
            raise ConfigError(
                f"eval.hash_bits must list code lengths from {HASH_BITS} (e.g. eval.hash_bits=[32,64,128]), "
                f"got {bits!r}"
            )
        if len(set(bits)) != len(bits):
            raise ConfigError(f"eval.hash_bits lists a code length twice: {bits!r}")


@dataclass
class TrainConfig:
    # A registered task (sbir.engine.tasks): finegrained | category | zeroshot.
    task: str = "finegrained"
    # The task's method when it has several (sbir.engine.tasks): unset = the task's default method;
    # e.g. zeroshot + clip-prompt (CLIP prompt learning, sbir.engine.clip_prompt).
    method: str | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]
    amp: bool = True  # mixed precision, used on GPU only
    # Validation metric for the best epoch; unset: the task's (acc@1 fine-grained, map@all category).
    select_metric: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> TrainConfig:
        """Check every value; never changes one. Task-specific rules: ``sbir.engine.tasks.check_config``."""
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(f"task must be a task name such as finegrained, category or zeroshot, got {self.task!r}")
        if self.method is not None and (not isinstance(self.method, str) or not self.method):
            raise ConfigError(f"method must be a method name such as clip-prompt (or unset), got {self.method!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        for sub in (self.data, self.augment, self.model, self.loss, self.optim, self.eval):
            sub.validate()
        return self


# ---------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if value is None:
            return []
        if isinstance(value, str):
            value = [v for v in value.strip().strip("[]").replace(",", " ").split()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if isinstance(value, bool) and tp in (int, float, str):
            # YAML reads true/false/yes/no/on/off as booleans; int(True) == 1 and str(False) == "False" would
            # silently turn `model.content_crop=true` into 1.0 or a name into "False".
            raise ConfigError(
                f"config key '{key}' expects {tp.__name__}, got the boolean {value!r}"
                + (" (quote it to mean the word)" if tp is str else "")
            )
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in sorted(unknown))}; "
            f"valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``a.b=value`` strings (YAML-parsed values) to a config in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        obj = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
                raise ConfigError(f"unknown config key '{key}'")
            obj = getattr(obj, p)
        leaf = parts[-1]
        if not dataclasses.is_dataclass(obj) or leaf not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config key '{key}'")
        value = yaml.safe_load(raw) if raw.strip() else None
        setattr(obj, leaf, _coerce(value, typing.get_type_hints(type(obj))[leaf], key))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must contain a mapping at the top level")
    cfg = from_dict(TrainConfig, data)
    apply_overrides(cfg, overrides or [])
    # The task's own rules (its loss kind, its metrics) come from the task registry.
    from sbir.engine.tasks import check_config

    return check_config(cfg)


def config_from_dict(data: dict) -> TrainConfig:
    return from_dict(TrainConfig, data).validate()


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
