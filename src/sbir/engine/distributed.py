"""Data-parallel training across processes (``torchrun`` / ``sbir train --nproc N``).

Design (see the README's "Scaling out"):

* **Process group** from the torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_*``):
  ``gloo`` on CPU, ``nccl`` on GPU, each rank on ``cuda:LOCAL_RANK``. Without that environment (or with
  ``WORLD_SIZE=1``) nothing changes: one process, no process group.
* **Batches**: every rank builds the *same* global batch sequence (same seed, same sampler) and takes its
  contiguous slice of each global batch (:class:`ShardedBatchSampler`). ``optim.batch_size`` stays the
  global batch size and must divide by the world size. The samplers' guarantees (no two sketches of one
  photo in a global batch; P classes x K samples) therefore hold for the global batch.
* **Losses that need the global batch** (NT-Xent, batch-hard triplet) see embeddings gathered from every
  rank with :func:`gather_with_grad` (``torch.distributed.nn.functional.all_gather``, whose backward sums
  the gradients of all ranks' copies back to the owner). Every rank then computes the same global loss
  ``L``; rank ``r``'s parameters receive ``W · dL/dθ`` through its own rows, and DDP's gradient averaging
  divides by ``W``: the update equals one process's on the global batch. Per-sample losses
  (MEMS / CosFace / the CLIP-prompt terms) stay local: the mean of equal-sized local means is the global
  mean, which is what DDP's averaging gives.
* **Evaluation**: sharded, then gathered. Inside :func:`sharded_evaluation` (the trainer's validation)
  every rank embeds its contiguous slice of each image list (:func:`eval_shard`), the slices are gathered
  in rank order (:func:`sbir.engine.embed.embed_images`), and every rank computes the metrics from the full
  matrices, so they are those of one process; rank 0's are broadcast so that every rank takes the same
  best-epoch decision even if a last bit differed. Only rank 0 writes files or shows progress bars.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from sbir.errors import ConfigError

TIMEOUT_ENV = "SBIR_DIST_TIMEOUT_MIN"  # minutes a rank waits for the others (default 60: rank 0 writes files)

# Set by sharded_evaluation(): embedding helpers called meanwhile split their inputs over the ranks.
_SHARD_EVAL = False


def env_world_size() -> int:
    """``WORLD_SIZE`` from the torchrun environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device | None:
    """Join the torchrun process group for ``device`` (``auto`` / ``cpu`` / ``cuda``); return this rank's device.

    Returns None when not launched with more than one process (the caller resolves the device as usual).
    Raises :class:`ConfigError` (one line) for combinations that cannot work.
    """
    world = env_world_size()
    if world <= 1:
        return None
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; train with one process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda:"):
        raise ConfigError(
            f"device={device} names one GPU, but each of the {world} torchrun processes uses cuda:LOCAL_RANK; "
            "use device=cuda (or auto)"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpu == 0:
            raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu (gloo) or a GPU machine")
        if local_rank >= n_gpu:
            raise ConfigError(
                f"LOCAL_RANK {local_rank} has no GPU: only {n_gpu} visible; start at most {n_gpu} processes "
                "per node (--nproc-per-node) or use device=cpu"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, "60"))
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=minutes)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    elif dist.get_backend() != backend:
        raise ConfigError(f"the process group uses {dist.get_backend()} but device {dev} needs {backend}")
    return dev


def cleanup(synchronize: bool = True) -> None:
    """Tear the process group down; after a normal end, first wait for every rank (gloo aborts a process
    whose peer tears down mid-communication). After an error, do not wait: the others may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; for small things: metrics, decisions)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def sharded_evaluation() -> Iterator[None]:
    """Within this block, :func:`eval_shard` splits evaluation inputs over the ranks.

    Opt-in rather than automatic whenever a process group exists: sharding is a collective, so it
    is only safe where *every* rank makes the same embedding calls in the same order (the trainer's
    validation). Rank-0-only work under torchrun (e.g. ``on_best``) must keep embedding everything itself.
    """
    global _SHARD_EVAL
    previous, _SHARD_EVAL = _SHARD_EVAL, True
    try:
        yield
    finally:
        _SHARD_EVAL = previous


def eval_shard(n: int) -> tuple[int, int] | None:
    """This rank's contiguous ``[lo, hi)`` of ``n`` items inside :func:`sharded_evaluation` under torchrun.

    None when not sharding (one process, or outside the block). The slices of ranks ``0..W-1`` are
    consecutive and cover ``range(n)``, so concatenating their results in rank order keeps the
    original order; with fewer items than ranks some slices are empty (their ranks still gather).
    """
    if not (_SHARD_EVAL and is_distributed()):
        return None
    r, w = rank(), world_size()
    return r * n // w, (r + 1) * n // w


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each value (every rank must pass the same keys)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    means = dict(zip(keys, t.tolist(), strict=True))
    return {k: means[k] for k in values}  # the caller's order: metrics.csv's columns as in one process


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (equal shapes) along dim 0, rank order; gradients flow back to each owner.

    The backward of ``torch.distributed.nn.functional.all_gather`` sums every rank's gradient for a
    rank's rows, so with the same loss computed on every rank each row gets ``W`` times its gradient;
    DDP's averaging over ``W`` ranks restores the single-process gradient. Tensors without grad are
    gathered with a plain all_gather.
    """
    if not is_distributed():
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API; still the autograd-aware one
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(x.contiguous()), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def gather_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """:func:`gather_with_grad` on every tensor of a loss batch (other values are kept)."""
    if not is_distributed():
        return batch
    return {k: gather_with_grad(v) if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's contiguous slice of each batch of ``inner`` (a seeded batch sampler, the same on every rank).

    With world size ``W`` and global batch ``B`` (``B % W == 0``), rank ``r`` gets items
    ``[r·B/W, (r+1)·B/W)`` of every global batch, so the concatenation of all ranks' slices in rank
    order is the global batch (what :func:`gather_with_grad` rebuilds). ``len()`` is the global
    number of batches; ``set_epoch`` is passed on.
    """

    def __init__(self, inner: Any, rank: int, world_size: int):
        super().__init__()
        self.inner = inner
        self.rank = int(rank)
        self.world_size = int(world_size)
        b = int(inner.batch_size)
        if b % self.world_size:
            raise ConfigError(
                f"optim.batch_size ({b}) is the global batch and must divide by the number of processes "
                f"({self.world_size}); use a multiple of {self.world_size}"
            )
        self.batch_size = b
        self.local_batch_size = b // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.inner:
            if len(batch) % self.world_size:
                raise ConfigError(
                    f"a batch of {len(batch)} items cannot be split over {self.world_size} processes; "
                    "use drop_last batches whose size divides by the number of processes"
                )
            n = len(batch) // self.world_size
            yield list(batch[self.rank * n : (self.rank + 1) * n])

    def __len__(self) -> int:
        return len(self.inner)
