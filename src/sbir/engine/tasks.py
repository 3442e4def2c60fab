"""The task registry: one entry per SBIR task, naming every part the pipeline needs.

A task (``cfg.task``) is a :class:`TaskSpec`: its split policy
(:mod:`sbir.data.policies`), its model (:func:`sbir.models.create_model`), the
kind of loss it trains with (:mod:`sbir.losses`), its batch sampler, its
evaluation and the defaults it gives unset config values. The trainer, ``sbir
eval``, the index and the server ask this registry and never test the task's
name. Task modules register themselves (:func:`register_task`) and are
listed once in ``TASK_MODULES``; a new task is its own file plus one line
there.

A task may have several *methods* (``cfg.method``): specs registered under the
same task name with ``TaskSpec.method`` set (e.g. ``zeroshot`` +
``clip-prompt``). They share the task's meaning (split policy, metrics) but
bring their own model, loss, batches and training step. ``method`` unset is
the spec registered without one. Code outside this module asks
:func:`task_spec` (``cfg`` -> its spec), never ``cfg.task`` alone.

Config values a task fills in (:func:`with_defaults`, when the run starts and
is recorded in ``config.yaml``): ``loss.name`` and ``select_metric`` when
unset. ``eval.distance: auto`` and ``eval.flip_mode: auto`` stay ``auto`` in the
config and are resolved by :func:`resolve_distance` / :func:`resolve_flip_mode`.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from sbir.config import TrainConfig
from sbir.errors import ConfigError

# Modules that register tasks (imported on the first lookup).
TASK_MODULES = (
    "sbir.engine.finegrained",
    "sbir.engine.category",
    "sbir.engine.clip_prompt",
    "sbir.engine.pretrain",
)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the pipeline needs to know about one task."""

    name: str
    model: str  # registered model name (sbir.models.factory)
    loss_kind: str  # "pairs" | "classes" (sbir.losses.factory)
    default_loss: str
    select_metric: str  # default validation metric for the best epoch
    metric_keys: tuple[str, ...]  # the headline metrics, in the order the CLI prints them
    flip_mode: str  # what eval.flip_mode "auto" means: "average" | "pairings"
    split_policy: str  # sbir.data.policies: "photo" | "class" | "unseen"
    # The trainer's Task: task_class(spec, cfg, run_dir, progress=..., split_record=...).
    task_class: type
    # evaluate(model, cfg, split, flip_tta=..., progress=..., distance=None) -> sbir.engine.evaluate.Evaluation
    evaluate: Callable[..., Any]
    # make_sampler(task) -> batch sampler with set_epoch(), over task.pairs
    make_sampler: Callable[[Any], Any]
    # Extra keyword arguments of the model builder, from the config and the loss spec.
    model_kwargs: Callable[[TrainConfig, Any], dict] = field(default=lambda cfg, loss: {})
    hash_codes: bool = False  # supports eval.hash_bits
    method: str | None = None  # cfg.method this spec answers for (None: the task's default method)
    rerank: bool = False  # supports model.rerank (a trained token re-ranker of the embedding top-K)
    grid_features: bool = False  # supports model.feature_level / model.pool_grid (sbir.models.grid_features)
    ridge_head: bool = False  # supports model.head=ridge (its task_class fits it: fit_closed_form)
    hubness_eval: bool = False  # supports eval.hubness (its evaluate takes stat_sketches)


_TASKS: dict[tuple[str, str | None], TaskSpec] = {}
_loaded = False


def register_task(spec: TaskSpec) -> TaskSpec:
    _TASKS[(spec.name, spec.method)] = spec
    return spec


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in TASK_MODULES:
            importlib.import_module(mod)


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted({name for name, _ in _TASKS})


def list_methods(task: str) -> list[str]:
    """The named methods of ``task`` (its default method, registered without a name, is not listed)."""
    _load_builtin()
    return sorted(m for name, m in _TASKS if name == task and m is not None)


def get_task(name: str, method: str | None = None) -> TaskSpec:
    _load_builtin()
    if (name, method) not in _TASKS:
        if name not in list_tasks():
            raise ConfigError(f"task must be one of {list_tasks()}, got {name!r}")
        methods = list_methods(name)
        with_it = sorted(t for t, m in _TASKS if m == method and method is not None)
        unset_ok = (name, None) in _TASKS
        if method is None:
            raise ConfigError(f"task {name!r} needs a method: --method one of {methods} (cfg.method)")
        raise ConfigError(
            f"task {name!r} has no method {method!r}; "
            + (f"its methods are {methods}" if methods else "leave --method unset")
            + (" (or leave --method unset)" if methods and unset_ok else "")
            + (f"; method {method!r} is registered for task(s) {', '.join(with_it)}" if with_it else "")
        )
    return _TASKS[(name, method)]


def task_spec(cfg: TrainConfig) -> TaskSpec:
    """The spec of ``cfg``'s task and method."""
    return get_task(cfg.task, getattr(cfg, "method", None))


# ---------------------------------------------------------------- config rules


def loss_name(cfg: TrainConfig) -> str:
    return cfg.loss.name or task_spec(cfg).default_loss


def select_metric(cfg: TrainConfig) -> str:
    return cfg.select_metric or task_spec(cfg).select_metric


def loss_spec(cfg: TrainConfig):
    """The registered loss of ``cfg`` (its kind checked against the task)."""
    from sbir.losses import get_loss_spec

    return get_loss_spec(loss_name(cfg), task_spec(cfg).loss_kind)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg.validate()`` plus the task's rules: a loss of the task's kind, a metric it reports, hash codes
    only where supported. Changes nothing; returns ``cfg``."""
    cfg.validate()
    spec = task_spec(cfg)
    loss_spec(cfg)
    metric = select_metric(cfg)
    if not any(metric == k or metric.startswith(k.split("@")[0] + "@") for k in spec.metric_keys):
        raise ConfigError(
            f"select_metric {metric!r} is not a {spec.name} metric; task {spec.name!r} selects on one of "
            f"{', '.join(spec.metric_keys)}"
        )
    if cfg.model.rerank and not spec.rerank:
        raise ConfigError(f"model.rerank is for fine-grained runs; remove it for task {spec.name}")
    if cfg.model.feature_level is not None and not spec.grid_features:
        raise ConfigError(f"model.feature_level is for fine-grained runs; remove it for task {spec.name}")
    if cfg.model.extra_backbones and spec.grid_features and cfg.model.feature_level is None:
        raise ConfigError(
            "model.extra_backbones concatenates grid features in a fine-grained run: set model.feature_level "
            "(e.g. 3) with it"
        )
    if cfg.model.extra_backbones and not (spec.grid_features or spec.model == "category"):
        raise ConfigError(
            f"model.extra_backbones is for fine-grained and category runs; remove it for task {spec.name}"
        )
    if cfg.model.extra_backbones and spec.model == "category" and (cfg.model.dase or cfg.loss.weight_distill):
        raise ConfigError(
            "model.extra_backbones (concatenated backbones) cannot take DASE blocks or loss.weight_distill (they "
            "concern one backbone): set model.dase=false and unset loss.weight_distill, or drop extra_backbones"
        )
    if cfg.model.ridge_rank is not None and not (cfg.model.head == "ridge" and spec.model == "category"):
        raise ConfigError(
            "model.ridge_rank truncates a category / zero-shot ridge head (model.head=ridge); unset it here"
        )
    if cfg.eval.hubness != "none" and not spec.hubness_eval:
        raise ConfigError(f"eval.hubness is for fine-grained runs; set eval.hubness=none for task {spec.name}")
    if cfg.eval.hubness != "none" and cfg.model.rerank:
        raise ConfigError("eval.hubness corrects embedding scores, model.rerank replaces them: choose one")
    if cfg.model.head == "ridge" and not spec.ridge_head:
        raise ConfigError(
            f"model.head=ridge is for fine-grained, category and zero-shot runs; choose linear, mlp or identity "
            f"for task {spec.name}"
        )
    if cfg.model.content_crop is not None and spec.name != "finegrained":
        raise ConfigError(f"model.content_crop crops the fine-grained model's input; unset it for task {spec.name}")
    if cfg.model.ridge_crossfit and spec.name != "finegrained":
        raise ConfigError(f"model.ridge_crossfit is for fine-grained runs; unset it for task {spec.name}")
    if cfg.model.ridge_crossfit and cfg.optim.epochs == 0:
        raise ConfigError(
            "model.ridge_crossfit shapes gradient training, and optim.epochs is 0: set optim.epochs > 0 with it"
        )
    if cfg.model.head == "ridge" and spec.model == "category" and not loss_spec(cfg).normalized:
        raise ConfigError(
            f"model.head=ridge gives cosine embeddings, but loss {loss_name(cfg)} tests with euclidean distance; "
            "use loss.name=cosface with the ridge head"
        )
    if cfg.loss.weight_distill and spec.loss_kind != "classes":
        raise ConfigError(f"loss.weight_distill is for category / zero-shot runs; remove it for task {spec.name}")
    if cfg.loss.weight_distill and not (cfg.model.pretrained or cfg.model.weights_path):
        raise ConfigError(
            "loss.weight_distill preserves the ImageNet model's knowledge: set model.pretrained=true "
            "(or model.weights_path) with it"
        )
    if cfg.eval.hash_bits and not spec.hash_codes:
        raise ConfigError(f"eval.hash_bits is for category / zero-shot runs; remove it for task {spec.name}")
    return cfg


def with_defaults(cfg: TrainConfig) -> TrainConfig:
    """A checked copy of ``cfg`` with the task's loss and selection metric filled in where unset."""
    check_config(cfg)
    out = copy.deepcopy(cfg)
    out.loss.name = loss_name(cfg)
    out.select_metric = select_metric(cfg)
    return out


def resolve_distance(cfg: TrainConfig) -> str:
    """``eval.distance`` with ``auto`` resolved: the distance the loss trains for."""
    if cfg.eval.distance != "auto":
        return cfg.eval.distance
    return loss_spec(cfg).distance


def resolve_flip_mode(cfg: TrainConfig) -> str:
    """``eval.flip_mode`` with ``auto`` resolved by the task (average embeddings, or min over pairings)."""
    if cfg.eval.flip_mode != "auto":
        return cfg.eval.flip_mode
    return task_spec(cfg).flip_mode


# ---------------------------------------------------------------- factories


def build_model(cfg: TrainConfig, pretrained: bool | None = None) -> nn.Module:
    """The model ``cfg``'s task trains (``pretrained`` overrides ``cfg.model.pretrained``), its backbone(s)
    loaded from ``cfg.model.init_from`` when set (:mod:`sbir.engine.init_from`) unless ``pretrained`` is False."""
    from sbir.models import create_model

    spec = task_spec(cfg)
    model = create_model(spec.model, cfg.model, pretrained=pretrained, **spec.model_kwargs(cfg, loss_spec(cfg)))
    # model.init_from replaces the backbone's initial weights (ImageNet or random) when training starts;
    # pretrained=False means the caller loads trained weights over everything (inference), so it is skipped.
    if cfg.model.init_from and pretrained is not False:
        from sbir.engine.init_from import load_backbone_weights

        load_backbone_weights(model, cfg.model.init_from)
    return model


def build_criterion(cfg: TrainConfig, num_classes: int | None = None, embed_dim: int | None = None) -> nn.Module:
    """The task's loss module (:func:`sbir.losses.build_loss` with the task's default loss filled in)."""
    from sbir.losses import build_loss

    loss_cfg = copy.deepcopy(cfg.loss)
    loss_cfg.name = loss_name(cfg)
    return build_loss(loss_cfg, num_classes=num_classes, embed_dim=embed_dim, kind=task_spec(cfg).loss_kind)


def build_task(cfg: TrainConfig, run_dir: Path, progress: bool = True, split_record: dict | None = None):
    """The trainer's Task object for ``cfg``."""
    spec = task_spec(cfg)
    return spec.task_class(spec, cfg, Path(run_dir), progress=progress, split_record=split_record)


__all__ = [
    "TASK_MODULES",
    "TaskSpec",
    "build_criterion",
    "build_model",
    "build_task",
    "check_config",
    "get_task",
    "list_methods",
    "list_tasks",
    "loss_name",
    "loss_spec",
    "register_task",
    "resolve_distance",
    "resolve_flip_mode",
    "select_metric",
    "task_spec",
    "with_defaults",
]
