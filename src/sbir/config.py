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
    unseen: Optional[str] = None  # zero-shot: split name, file or comma list

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

    def validate(self) -> None:
        if self.embed_dim < 2:
            raise ConfigError(f"model.embed_dim must be >= 2, got {self.embed_dim}")
        if self.head not in ("linear", "mlp", "identity"):
            raise ConfigError(f"model.head must be 'linear', 'mlp' or 'identity', got {self.head!r}")
        if self.freeze_stages < 0:
            raise ConfigError(f"model.freeze_stages must be >= 0, got {self.freeze_stages}")


@dataclass
class LossConfig:
    name: str = "ntxent"  # ntxent | triplet | ntxent+triplet
    temperature: float = 0.07
    weight_cross: float = 1.0  # sketch <-> photo
    weight_sketch: float = 1.0  # sketch <-> augmented sketch
    weight_photo: float = 1.0  # photo <-> augmented photo
    triplet_margin: float = 0.2
    weight_triplet: float = 1.0

    def validate(self) -> None:
        allowed = {"ntxent", "triplet", "ntxent+triplet"}
        if self.name not in allowed:
            raise ConfigError(f"loss.name must be one of {sorted(allowed)}, got {self.name!r}")
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

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"optim.batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.scheduler not in ("cosine", "constant"):
            raise ConfigError(f"optim.scheduler must be 'cosine' or 'constant', got {self.scheduler!r}")


@dataclass
class EvalConfig:
    flip_tta: bool = False  # average embeddings of the image and its mirror
    distance: str = "cosine"  # cosine | euclidean
    batch_size: int = 64

    def validate(self) -> None:
        if self.distance not in ("cosine", "euclidean", "angular"):
            raise ConfigError(f"eval.distance must be cosine, euclidean or angular, got {self.distance!r}")


@dataclass
class TrainConfig:
    task: str = "finegrained"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision, used on GPU only
    select_metric: str = "acc@1"  # validation metric for the best epoch
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
        return self


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
