"""Typed run configuration.

Configs are nested dataclasses, loadable from YAML, overridable from the command
line with dotted keys (``--set optim.lr=3e-4 model.embed_dim=256``) and saved
as ``config.yaml`` with every run and inside every checkpoint, so any result can
be reproduced. Values are validated when the config is built, with messages
naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from sbir.errors import ConfigError

TASKS = ("finegrained", "category", "zeroshot")


@dataclass
class DataConfig:
    path: Optional[str] = None
    format: Optional[str] = None  # auto-detected when None
    skip_orphans: bool = False
    val_fraction: float = 0.15
    split_seed: int = 0
    image_size: int = 224
    num_workers: int = 2
    # Zero-shot: unseen classes as a built-in split name (e.g. sketchy_unseen21), a class-list file or a
    # comma list. None: sketchy_unseen21 when the data has all of its classes (Sketchy), else an error.
    unseen: Optional[str] = None

    def validate(self) -> None:
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

    def validate(self) -> None:
        if not 0.05 <= self.crop_scale_min <= 1.0:
            raise ConfigError(f"augment.crop_scale_min must be in [0.05, 1], got {self.crop_scale_min}")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ConfigError(f"augment.erase_prob must be in [0, 1], got {self.erase_prob}")


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: Optional[str] = None  # local weights file for any timm model
    shared_encoder: bool = False  # ARNet: separate sketch and photo encoders
    embed_dim: int = 512
    head: str = "linear"  # linear | mlp | identity (no projection: off-the-shelf features)
    dropout: float = 0.0
    # Freeze the first N backbone stages ("blocks") to train faster on CPU; 0 trains all.
    freeze_stages: int = 0
    # Category / zero-shot models only (one shared encoder; see sbir.models.category):
    dase: bool = True  # domain-aware squeeze-and-excitation blocks
    dase_where: str = "auto"  # auto | se | stages (sbir.models.dase.insert_dase)
    # Number of training classes; set by the category task when training starts (recorded in checkpoints).
    num_classes: Optional[int] = None

    def validate(self) -> None:
        if self.embed_dim < 2:
            raise ConfigError(f"model.embed_dim must be >= 2, got {self.embed_dim}")
        if self.head not in ("linear", "mlp", "identity"):
            raise ConfigError(f"model.head must be 'linear', 'mlp' or 'identity', got {self.head!r}")
        if self.freeze_stages < 0:
            raise ConfigError(f"model.freeze_stages must be >= 0, got {self.freeze_stages}")
        if self.dase_where not in ("auto", "se", "stages"):
            raise ConfigError(f"model.dase_where must be 'auto', 'se' or 'stages', got {self.dase_where!r}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2 (or unset), got {self.num_classes}")


FINEGRAINED_LOSSES = ("ntxent", "triplet", "ntxent+triplet")
CATEGORY_LOSSES = ("mems", "cosface")


@dataclass
class LossConfig:
    # Fine-grained: ntxent | triplet | ntxent+triplet. Category / zero-shot: mems | cosface.
    name: str = "ntxent"
    temperature: float = 0.07
    weight_cross: float = 1.0  # sketch <-> photo
    weight_sketch: float = 1.0  # sketch <-> augmented sketch
    weight_photo: float = 1.0  # photo <-> augmented photo
    triplet_margin: float = 0.2
    weight_triplet: float = 1.0
    # MEMS / CosFace. None = the published default: MEMS margin 4, scale 1; CosFace margin 0.35, scale 32.
    margin: Optional[float] = None
    scale: Optional[float] = None
    # Steps over which the margin ramps up. None: MEMS 100000 (published), CosFace 0 (full margin at once).
    # A MEMS margin that grows within a short run collapses the embedding: keep it slow.
    anneal_steps: Optional[int] = None

    def resolved(self) -> tuple[float, float]:
        """``(margin, scale)`` of a MEMS / CosFace loss, defaults filled in."""
        if self.name == "cosface":
            return (0.35 if self.margin is None else self.margin, 32.0 if self.scale is None else self.scale)
        return (4.0 if self.margin is None else self.margin, 1.0 if self.scale is None else self.scale)

    def validate(self) -> None:
        allowed = set(FINEGRAINED_LOSSES) | set(CATEGORY_LOSSES)
        if self.name not in allowed:
            raise ConfigError(f"loss.name must be one of {sorted(allowed)}, got {self.name!r}")
        if self.name == "mems" and self.margin is not None and self.margin < 1.0:
            raise ConfigError(f"loss.margin must be >= 1 for MEMS (multiplicative margin), got {self.margin}")
        if self.name == "cosface" and self.margin is not None and not 0.0 <= self.margin < 2.0:
            raise ConfigError(f"loss.margin must be in [0, 2) for CosFace, got {self.margin}")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"loss.scale must be > 0, got {self.scale}")
        if self.anneal_steps is not None and self.anneal_steps < 0:
            raise ConfigError(f"loss.anneal_steps must be >= 0 (or unset), got {self.anneal_steps}")
        if self.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.temperature}")
        for k in ("weight_cross", "weight_sketch", "weight_photo", "weight_triplet"):
            if getattr(self, k) < 0:
                raise ConfigError(f"loss.{k} must be >= 0, got {getattr(self, k)}")


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    scheduler: str = "cosine"  # cosine | constant
    grad_clip: float = 5.0
    max_steps_per_epoch: Optional[int] = None  # cap for quick runs
    # Category / zero-shot: each batch holds batch_size sketches (+ one photo of the same class each),
    # batch_size // samples_per_class classes x samples_per_class sketches (class-balanced sampling).
    samples_per_class: int = 4
    # Stop before an epoch that would end past this many minutes of training (None: no limit).
    time_budget_minutes: Optional[float] = None

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"optim.batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}")
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
    # cosine | euclidean | angular | auto (euclidean for MEMS, angular for CosFace, cosine otherwise).
    distance: str = "cosine"
    batch_size: int = 64
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
        bits = self.hash_bits
        if bits is None:
            bits = []
        elif isinstance(bits, (int, str)) and not isinstance(bits, bool):
            bits = [b for b in str(bits).strip("[]").replace(",", " ").split()]
        if not isinstance(bits, (list, tuple)):
            raise ConfigError(f"eval.hash_bits must be a list of code lengths from {HASH_BITS}, got {self.hash_bits!r}")
        out: list[int] = []
        for b in bits:
            try:
                v = int(b)
            except (TypeError, ValueError):
                v = None
            if v not in HASH_BITS or isinstance(b, bool) or (isinstance(b, float) and not b.is_integer()):
                raise ConfigError(
                    f"eval.hash_bits must list code lengths from {HASH_BITS} (e.g. eval.hash_bits=[32,64,128]), "
                    f"got {self.hash_bits!r}"
                )
            if v not in out:
                out.append(v)
        self.hash_bits = out


@dataclass
class TrainConfig:
    task: str = "finegrained"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision, used on GPU only
    # Validation metric for the best epoch. Category / zero-shot runs left at the fine-grained
    # default acc@1 select on map@all (see validate()).
    select_metric: str = "acc@1"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "TrainConfig":
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        for sub in (self.data, self.augment, self.model, self.loss, self.optim, self.eval):
            sub.validate()
        if self.task in ("category", "zeroshot"):
            # Settings left at the fine-grained defaults get the category-level ones. "cosine" and
            # "angular" rank identically, so an explicit cosine ranking stays available as "angular".
            if self.loss.name == "ntxent":
                self.loss.name = "mems"
            if self.select_metric == "acc@1":
                self.select_metric = "map@all"
            if self.eval.distance == "cosine":
                self.eval.distance = "auto"
            if self.loss.name not in CATEGORY_LOSSES:
                raise ConfigError(
                    f"loss.name {self.loss.name!r} is a fine-grained loss; task {self.task!r} trains with "
                    f"one of {list(CATEGORY_LOSSES)} (set loss.name=mems or loss.name=cosface)"
                )
            if self.select_metric.startswith(("acc@", "%corr")):
                raise ConfigError(
                    f"select_metric {self.select_metric!r} is a fine-grained metric; task {self.task!r} "
                    "selects on a category metric such as map@all, map@200, p@100 or p@200"
                )
        else:
            if self.loss.name in CATEGORY_LOSSES:
                raise ConfigError(
                    f"loss.name {self.loss.name!r} is a category-level loss; use it with --task category or "
                    f"--task zeroshot, or pick a fine-grained loss ({', '.join(FINEGRAINED_LOSSES)})"
                )
            if self.eval.hash_bits:
                raise ConfigError("eval.hash_bits is for category / zero-shot runs; remove it for task finegrained")
        return self

    def resolved_distance(self) -> str:
        """``eval.distance`` with ``auto`` resolved: euclidean for MEMS, angular for CosFace, else cosine."""
        if self.eval.distance != "auto":
            return self.eval.distance
        if self.task in ("category", "zeroshot"):
            return "angular" if self.loss.name == "cosface" else "euclidean"
        return "cosine"

    def resolved_flip_mode(self) -> str:
        """``eval.flip_mode`` with ``auto`` resolved: pairings for category / zero-shot, average otherwise."""
        if self.eval.flip_mode != "auto":
            return self.eval.flip_mode
        return "pairings" if self.task in ("category", "zeroshot") else "average"


# ---------------------------------------------------------------- (de)serialisation


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
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


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
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
    return cfg.validate()


def config_from_dict(data: dict) -> TrainConfig:
    return from_dict(TrainConfig, data).validate()


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
