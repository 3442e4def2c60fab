"""The training loop shared by every task (fine-grained, category, zero-shot).

A *task* (registered in :mod:`sbir.engine.tasks`; e.g. :mod:`sbir.engine.finegrained`)
knows its data, model, loss and validation metric; the :class:`Trainer` owns
everything else: seeding, the
optimizer and LR schedule, mixed precision on GPU, progress bars, per-epoch
validation, best-epoch selection on the validation split (never test; or the
last epoch, ``optim.keep_epoch``),
``metrics.csv`` and the training-curve PNG, and an atomic checkpoint every
epoch from which ``--resume`` continues to the same result as an
uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sbir.config import TrainConfig, save_config, to_dict
from sbir.data.splits import load_split_record
from sbir.engine import distributed
from sbir.engine.checkpoint import (
    atomic_write_text,
    average_state_dicts,
    capture_rng_state,
    load_training_checkpoint,
    read_weights,
    restore_rng_state,
    save_training_checkpoint,
    save_weights,
)
from sbir.engine.embed import resolve_device
from sbir.engine.evaluate import Evaluation
from sbir.engine.schedule import warmup_cosine
from sbir.engine.tasks import build_task, check_config, with_defaults
from sbir.errors import CheckpointError, ConfigError
from sbir.viz.curves import has_training_curves, plot_training_curves
from sbir.viz.grid import write_retrieval_grid


class Task(Protocol):
    """What the trainer needs from a method."""

    model: nn.Module
    criterion: nn.Module  # may hold learnable parameters (e.g. class centres)

    def steps_per_epoch(self) -> int: ...

    def train_batches(self, epoch: int): ...  # iterable of batches

    def compute_loss(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self) -> Evaluation: ...  # the validation split's

    def on_best(self, run_dir: Path) -> None: ...  # after best.safetensors is written

    # Optional (attribute; None or absent: one backward of compute_loss): train_step(batch, device, scaler)
    # -> (loss, parts) computes the loss and leaves the (scaler-scaled) gradients in .grad itself, for updates
    # that are not one backward of one loss, e.g. the topology term's first-order meta update
    # (loss.topology_meta, sbir.engine.finegrained). The trainer zeroes the gradients before it, then clips and
    # steps as usual. Single-process only: the task refuses it under torchrun.
    # Optional (attribute; None or absent: nothing): fit_closed_form() fits the parts of the model that are
    # solved rather than trained (model.head=ridge) on the training split; the trainer calls it before every
    # validation, so each saved checkpoint holds the fit for its own weights.


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


CSV_FIELDS_FIRST = ["epoch", "train_loss"]

# When set, rank 0 appends one JSON line per optimizer step to this file: {"epoch", "step", "train_loss", "time"}
# (the loss of the global batch: the mean over ranks). For checking distributed against single-process runs.
STEP_LOG_ENV = "SBIR_STEP_LOG"


class _LossStep(nn.Module):
    """The model and the criterion as one module whose forward is the task's training loss, for DDP."""

    def __init__(self, task: Task):
        super().__init__()
        self.model = task.model
        self.criterion = task.criterion
        self.task = task

    def forward(self, batch: Any, device: torch.device):
        return self.task.compute_loss(batch, device)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Trainer:
    """Train ``cfg`` into ``run_dir``; ``resume=True`` continues from its last checkpoint."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.resume_state: dict | None = None
        resume_tensors = None
        if resume:
            resume_tensors, self.resume_state, cfg = load_training_checkpoint(self.run_dir)
        # Under torchrun: join the process group; only rank 0 writes files, logs and progress bars.
        dist_device = distributed.setup(cfg.device)
        self.world_size = distributed.world_size()
        self.rank = distributed.rank()
        self.is_main = self.rank == 0
        self.progress = progress = progress and self.is_main
        if not resume:
            if (self.run_dir / "last.json").exists():
                raise CheckpointError(
                    f"{self.run_dir} already holds a run; continue it with 'sbir train --resume {self.run_dir}' "
                    "or choose another --out folder"
                )
        # Resumed runs carry the filled-in config they started with.
        cfg = check_config(cfg) if resume else with_defaults(cfg)
        self.cfg = cfg
        distributed.barrier()  # every rank checked for an existing run before rank 0 starts writing
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = dist_device if dist_device is not None else resolve_device(cfg.device)
        seed_everything(cfg.seed)

        split_record = None
        if resume:
            split_path = self.run_dir / "split.json"
            if not split_path.is_file():
                raise CheckpointError(f"{split_path} is missing; the run folder is incomplete")
            split_record = load_split_record(split_path)
        if split_record is None and not self.is_main:
            distributed.barrier()  # rank 0 carves the split and writes split.json; the others replay it
            split_record = load_split_record(self.run_dir / "split.json")
        self.task = build_task(cfg, self.run_dir, progress, split_record)
        if not resume and self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
            if self.world_size > 1:
                distributed.barrier()
        self.model = self.task.model.to(self.device)
        self.criterion = self.task.criterion.to(self.device)
        self.ddp: nn.Module | None = None
        if self.world_size > 1:
            # Every rank builds the same global batches and trains on its slice (sbir.engine.distributed).
            self.task.sampler = distributed.ShardedBatchSampler(self.task.sampler, self.rank, self.world_size)
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                _LossStep(self.task),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # e.g. a loss term with weight 0 leaves a head unused
            )

        params = self.model.param_groups(cfg.optim.lr, cfg.optim.backbone_lr_mult, cfg.optim.weight_decay)
        crit_params = [p for p in self.criterion.parameters() if p.requires_grad]
        if crit_params:
            params.append({"params": crit_params, "lr": cfg.optim.lr, "weight_decay": 0.0, "name": "criterion"})
        params = [g for g in params if g["params"]]
        opt_class = torch.optim.Adam if cfg.optim.name == "adam" else torch.optim.AdamW
        self.optimizer = opt_class(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.steps_per_epoch = self.task.steps_per_epoch()
        # The schedule's length; optim.epochs_from_budget shortens it after the first epoch (see fit()).
        self.planned_epochs = cfg.optim.epochs
        warmup = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: warmup_cosine(s, self.steps_per_epoch * self.planned_epochs, warmup, cfg.optim.scheduler),
        )
        self.use_amp = bool(cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.start_epoch = 1
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        if resume:
            self._load_resume(resume_tensors)

    # ------------------------------------------------------------------ state

    def _load_resume(self, tensors: dict[str, torch.Tensor]) -> None:
        st = self.resume_state
        self.model.load_state_dict(tensors)
        self.criterion.load_state_dict(st["criterion"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if "scaler" in st and self.use_amp:
            self.scaler.load_state_dict(st["scaler"])
        self.start_epoch = int(st["epoch"]) + 1
        self.history = json.loads(st["history"])
        self.best_score = float(st["best_score"])
        self.best_epoch = int(st["best_epoch"])
        self.planned_epochs = int(st.get("planned_epochs", self.cfg.optim.epochs))
        ranks = st.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world_size:
            restore_rng_state(ranks[self.rank])  # each rank continues its own random stream
        else:
            restore_rng_state(st["rng"])

    def _train_state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "criterion": self.criterion.state_dict(),
            "history": json.dumps(self.history),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "planned_epochs": self.planned_epochs,
            "rng": capture_rng_state(),
            # One state per rank under torchrun (gathered: every rank must call this).
            "rng_ranks": distributed.all_gather_object(capture_rng_state()) if self.world_size > 1 else None,
        }

    # ------------------------------------------------------------------ loop

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.criterion.train()
        totals: dict[str, float] = {}
        n = 0
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}/{self.cfg.optim.epochs}",
            unit="batch",
            disable=not self.progress,
            file=sys.stderr,
            leave=False,
        )
        step_log = os.environ.get(STEP_LOG_ENV)
        train_step = getattr(self.task, "train_step", None)
        for batch in self.task.train_batches(epoch):
            if train_step is not None:
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    loss, parts = train_step(batch, self.device, self.scaler)
            else:
                with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
                    if self.ddp is not None:
                        loss, parts = self.ddp(batch, self.device)
                    else:
                        loss, parts = self.task.compute_loss(batch, self.device)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch}; lower optim.lr or check the data"
                )
            if train_step is None:
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
            if self.cfg.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.optim.grad_clip
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n += 1
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            if step_log:
                global_loss = distributed.all_reduce_mean({"loss": float(loss.detach())}, self.device)["loss"]
                if self.is_main:
                    with open(step_log, "a", encoding="utf-8") as f:
                        f.write(
                            json.dumps({"epoch": epoch, "step": n, "train_loss": global_loss, "time": time.time()})
                            + "\n"
                        )
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss'] / n:.4f}")
        bar.close()
        # The global batch's means: per-sample losses differ between ranks (gathered ones do not).
        return distributed.all_reduce_mean({k: v / max(n, 1) for k, v in totals.items()}, self.device)

    def _validate(self) -> tuple[Evaluation | None, dict[str, Any]]:
        """Evaluate the validation split sharded over the ranks; every rank gets rank 0's numeric metrics.

        Every rank calls ``task.evaluate()``: each embeds its slice of the images, the embeddings are
        gathered in order (:func:`sbir.engine.distributed.sharded_evaluation`) and every rank computes
        the metrics of the full matrices, those of one process. Rank 0's are still broadcast so that all
        ranks take the same best-epoch decision bit for bit; only rank 0 keeps the Evaluation (the grid).
        """
        fit_closed_form = getattr(self.task, "fit_closed_form", None)
        if fit_closed_form is not None:
            fit_closed_form()  # every rank fits the same heads on the whole training split
        with distributed.sharded_evaluation():
            evaluation = self.task.evaluate()
        val = {k: v for k, v in evaluation.metrics.items() if _is_number(v)} if self.is_main else None
        return (evaluation if self.is_main else None), distributed.broadcast_object(val)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        select = cfg.select_metric
        budget_s = cfg.optim.time_budget_minutes * 60 if cfg.optim.time_budget_minutes else None
        fit_start = time.time()
        stopped_early = False
        for epoch in range(self.start_epoch, cfg.optim.epochs + 1):
            if epoch > self.planned_epochs:
                break
            t0 = time.time()
            if budget_s is not None and epoch > self.start_epoch:
                per_epoch = (t0 - fit_start) / (epoch - self.start_epoch)
                # Rank 0's clock decides for every rank (they must stop together).
                if distributed.broadcast_object(t0 - fit_start + per_epoch > budget_s):
                    stopped_early = True
                    if self.progress:
                        print(
                            f"stopping before epoch {epoch}: optim.time_budget_minutes "
                            f"({cfg.optim.time_budget_minutes}) reached",
                            file=sys.stderr,
                        )
                    break
            losses = self.train_epoch(epoch)
            evaluation, val = self._validate()
            row: dict[str, Any] = {"epoch": epoch, "train_loss": round(losses.pop("loss"), 6)}
            row.update({f"train_{k}": round(v, 6) for k, v in losses.items()})
            row.update({f"val_{k}": v for k, v in val.items()})
            row["lr"] = self.optimizer.param_groups[-1]["lr"]
            row["seconds"] = round(time.time() - t0, 2)
            self.history.append(row)
            score = val.get(select)
            if score is None:
                raise ConfigError(f"select_metric {select!r} is not a validation metric; have {sorted(val)}")
            # keep_epoch "last": every epoch replaces the kept weights, so the final one stays.
            keep_this_epoch = score > self.best_score or cfg.optim.keep_epoch == "last"
            if keep_this_epoch:
                self.best_score = float(score)
                self.best_epoch = epoch
                if self.is_main:
                    save_weights(
                        self.model, self.run_dir / "best.safetensors", cfg, {"epoch": epoch, "val": {select: score}}
                    )
            train_state = self._train_state(epoch)
            if self.is_main:
                self._write_metrics()
                save_training_checkpoint(self.run_dir, self.model, cfg, train_state, keep=cfg.optim.average_last or 1)
            msg = f"epoch {epoch}: loss {row['train_loss']:.4f}  val {select} {score:.2f}"
            kept = "best" if cfg.optim.keep_epoch == "best" else "kept"
            msg += f"  ({kept})" if keep_this_epoch else f"  (best {self.best_score:.2f} @ {self.best_epoch})"
            if self.progress:
                print(msg, file=sys.stderr)
            if keep_this_epoch and self.is_main:
                write_retrieval_grid(
                    evaluation, self.run_dir / "val_retrieval.png", title=f"validation retrieval ({kept} epoch)"
                )
                self.task.on_best(self.run_dir)
            distributed.barrier()  # the epoch's files are written before any rank goes on
            if cfg.optim.epochs_from_budget and budget_s is not None:
                self._plan_from_budget(epoch, time.time() - fit_start, budget_s)
        if cfg.optim.epochs == 0 and not self.history:
            self._keep_starting_weights(select)
        summary = {
            "best_epoch": self.best_epoch,
            f"best_val_{select}": self.best_score,
            "epochs": cfg.optim.epochs,
            "epochs_run": len(self.history),
            "planned_epochs": self.planned_epochs,
            "stopped_by_time_budget": stopped_early,
            "history": self.history,
            "config": to_dict(cfg),
        }
        if cfg.optim.average_last:
            summary["averaged"] = self._write_averaged(cfg.optim.average_last, select)
        if self.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        distributed.barrier()
        return summary

    def _keep_starting_weights(self, select: str) -> None:
        """``optim.epochs=0``: validate the starting weights and keep them as best.safetensors (epoch 0)."""
        t0 = time.time()
        evaluation, val = self._validate()
        score = val.get(select)
        if score is None:
            raise ConfigError(f"select_metric {select!r} is not a validation metric; have {sorted(val)}")
        row = {"epoch": 0, **{f"val_{k}": v for k, v in val.items()}, "seconds": round(time.time() - t0, 2)}
        self.history.append(row)
        self.best_score, self.best_epoch = float(score), 0
        if self.is_main:
            save_weights(self.model, self.run_dir / "best.safetensors", self.cfg, {"epoch": 0, "val": {select: score}})
            self._write_metrics()
            grid_png = self.run_dir / "val_retrieval.png"
            write_retrieval_grid(evaluation, grid_png, title="validation retrieval (starting weights)")
            self.task.on_best(self.run_dir)
        if self.progress:
            print(f"optim.epochs=0: kept the starting weights, val {select} {score:.2f}", file=sys.stderr)
        distributed.barrier()

    def _plan_from_budget(self, epoch: int, elapsed_s: float, budget_s: float) -> None:
        """Fit the LR schedule to the budget after every epoch: as many more epochs as the mean epoch so far
        (saving and validation included) leaves room for, at most optim.epochs. Re-planning every epoch, not
        once, keeps the cosine ending inside the budget when epochs slow down (a shared machine, a slow
        first-epoch estimate)."""
        per_epoch = elapsed_s / max(epoch - self.start_epoch + 1, 1)
        more = int(max(budget_s * 0.97 - elapsed_s, 0.0) // max(per_epoch, 1e-6))  # 3% slack for slower epochs
        planned = distributed.broadcast_object(max(epoch, min(self.cfg.optim.epochs, epoch + more)))
        if planned != self.planned_epochs and self.progress:
            print(
                f"epochs take {per_epoch:.0f} s: the schedule runs {planned} epochs within "
                f"optim.time_budget_minutes={self.cfg.optim.time_budget_minutes}",
                file=sys.stderr,
            )
        self.planned_epochs = planned

    def _write_averaged(self, n: int, select: str) -> dict[str, Any]:
        """Average the last ``n`` epochs' weights into averaged.safetensors; validate it (the model keeps them)."""
        dirs = sorted((self.run_dir / "checkpoints").glob("epoch-*"))[-n:]
        epochs = [int(d.name.split("-")[1]) for d in dirs]
        self.model.load_state_dict(average_state_dicts([read_weights(d / "model.safetensors")[0] for d in dirs]))
        _, val = self._validate()
        info = {"epochs": epochs, f"val_{select}": val.get(select)}
        if self.is_main:
            save_weights(self.model, self.run_dir / "averaged.safetensors", self.cfg, info)
        if self.progress:
            print(f"averaged epochs {epochs}: val {select} {val.get(select):.2f}", file=sys.stderr)
        return info

    def _write_metrics(self) -> None:
        fields: list[str] = list(CSV_FIELDS_FIRST)
        for row in self.history:
            fields.extend(k for k in row if k not in fields)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for row in self.history:
            writer.writerow(row)
        atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if has_training_curves(self.run_dir / "metrics.csv"):  # a closed-form category run has none: no figure
            plot_training_curves(self.run_dir / "metrics.csv", self.run_dir / "acc.png")
