"""Embedding a gallery's photos on a Ray cluster (``sbir index build|update --ray [ADDRESS]``).

The driver (the ``sbir`` process) still scans, hashes and assembles the index
exactly as a local build does (:func:`sbir.index.builder._sync`); only the
"decode + embed" step is handed to Ray Data: the list of files becomes a
dataset, :meth:`ray.data.Dataset.map_batches` runs it through a pool of actors
(:class:`PhotoEmbedder`) that each load the model once, and the vectors come
back to the driver, which orders them by position. Each actor calls the same
:func:`sbir.engine.embed.embed_images` a local build calls, so the vectors
equal the local build's (up to float rounding of different batch splits).

Actors are restarted and their batch retried when a worker process dies
(:data:`MAX_RESTARTS`, :data:`MAX_TASK_RETRIES`), so a killed worker costs a
batch, not the build. Every worker must see the photos under the same paths
as the driver (one machine, or a shared file system) and have sbir installed.

Ray is optional (``pip install 'sbir[scale]'``) and imported only here, only
when ``--ray`` is used, so ``sbir --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sbir.errors import SbirError

# A restarted actor reloads the model; after this many deaths of one actor the build fails instead of looping.
MAX_RESTARTS = 4
# A batch whose actor died is retried on the restarted actor this many times.
MAX_TASK_RETRIES = 4
# Test hook: a file path; the first actor batch that finds no file there creates it and kills its own process.
FAULT_ENV = "SBIR_RAY_KILL_ONCE"
LOCAL = ""  # the ``--ray`` value that means: start a local cluster

ModelLoader = Callable[[], Any]  # returns a model (torch or a runtime's model view); run inside each actor


class RayUnavailableError(SbirError):
    """``--ray`` was asked for but Ray (with Ray Data) is not installed."""


def import_ray():
    """``ray`` with ``ray.data``, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailableError(
            f"--ray needs Ray Data, which is not installed ({exc}); pip install 'sbir[scale]' (or drop --ray)"
        ) from None
    return ray


def _sbir_source_root() -> str:
    """The folder the driver imports sbir from, so local workers import the same code (not another checkout)."""
    import sbir

    return str(Path(sbir.__file__).resolve().parents[1])


LOCAL_START_ATTEMPTS = 2


@contextlib.contextmanager
def ray_session(address: str | None = LOCAL, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to Ray for the duration of a build; shut down only what this call started.

    ``address`` ``""``/None starts a local cluster with ``num_cpus`` CPUs (default: all), no dashboard;
    anything else (``auto``, ``ray://head:10001``) connects to an existing cluster. An already initialised
    Ray (a notebook, a test session) is reused as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        _connect(ray, address)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a throw-away local cluster reports nothing
        pythonpath = os.pathsep.join(p for p in (_sbir_source_root(), os.environ.get("PYTHONPATH", "")) if p)
        for attempt in range(LOCAL_START_ATTEMPTS):
            try:
                ray.init(
                    num_cpus=num_cpus or os.cpu_count() or 1,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                )
                break
            except Exception as exc:  # Ray raises a bare Exception for this
                # Ray waits a fixed 30 s for its raylet to register; a loaded 2-core machine can miss that
                # once ("timed out during startup"). Anything else, or a second miss, is the user's to see.
                ray.shutdown()
                if "timed out during startup" not in str(exc) or attempt + 1 == LOCAL_START_ATTEMPTS:
                    raise
    try:
        yield ray
    finally:
        ray.shutdown()


def _connect(ray, address: str) -> None:
    """Join the cluster at ``address``; a cluster that is not there is the user's to fix, in one line."""
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise SbirError(
            f"--ray {address}: no Ray cluster there ({str(exc).splitlines()[0]}); start one with 'ray start --head' "
            "on the head node, or pass --ray alone to start a local cluster for this command"
        ) from None


def cluster_cpus(ray) -> int:
    """CPUs of the connected cluster (the default number of embedding actors: one per CPU)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class PhotoEmbedder:
    """A Ray Data actor: loads the model once, then decodes and embeds batches of photo paths.

    Returns per input row its ``id``, the vector as raw float32 bytes (empty when the image could not be
    read: bytes keep the column one type whatever the batch) and the error message (empty when fine).
    """

    def __init__(
        self,
        load: ModelLoader,
        image_size: int,
        flip_tta: bool,
        jpeg_draft: bool,
        fault_marker: str | None = None,
    ):
        import torch

        torch.set_num_threads(1)  # one actor per CPU: intra-op threads would fight each other
        self.model = load()
        self.image_size = int(image_size)
        self.flip_tta = bool(flip_tta)
        self.jpeg_draft = bool(jpeg_draft)
        self.fault_marker = fault_marker

    def _maybe_die(self) -> None:
        """The fault-injection hook of the tests: die once, like a worker killed by the OOM killer."""
        if self.fault_marker and not os.path.exists(self.fault_marker):
            Path(self.fault_marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from sbir.data.records import FileRef
        from sbir.engine.embed import embed_images

        self._maybe_die()
        ids = np.asarray(batch["id"], dtype=np.int64)
        res = embed_images(
            self.model,
            [FileRef(Path(str(p))) for p in batch["path"]],
            "photo",
            self.image_size,
            batch_size=max(1, len(ids)),
            flip_tta=self.flip_tta,
            num_workers=0,
            progress=False,
            skip_errors=True,
            jpeg_draft=self.jpeg_draft,
        )
        vectors = np.full(len(ids), b"", dtype=object)
        errors = np.full(len(ids), "", dtype=object)
        for row, pos in enumerate(res.indices):
            vectors[pos] = np.ascontiguousarray(res.embeddings[row], dtype=np.float32).tobytes()
        for pos, msg in res.errors:
            errors[pos] = msg
        return {"id": ids, "vector": vectors, "error": errors}


def _collect(rows: Sequence[dict[str, np.ndarray]], n: int):
    """An :class:`~sbir.engine.embed.EmbedResult` from the actors' output batches, in input order."""
    from sbir.engine.embed import EmbedResult

    vecs: dict[int, np.ndarray] = {}
    errors: list[tuple[int, str]] = []
    for batch in rows:
        for i, v, err in zip(batch["id"], batch["vector"], batch["error"], strict=True):
            if err:
                errors.append((int(i), str(err)))
            else:
                vecs[int(i)] = np.frombuffer(v, dtype=np.float32)
    missing = set(range(n)) - set(vecs) - {i for i, _ in errors}
    if missing:  # Ray retries lost batches; a gap here would be a bug, never a silently smaller index
        raise RuntimeError(f"the Ray build lost {len(missing)} of {n} photos (e.g. position {min(missing)})")
    indices = sorted(vecs)
    emb = np.stack([vecs[i] for i in indices]) if indices else np.zeros((0, 0), np.float32)
    return EmbedResult(emb, indices, sorted(errors))


def embed_files_ray(
    ray,
    paths: Sequence[os.PathLike | str],
    load: ModelLoader,
    image_size: int,
    flip_tta: bool,
    batch_size: int = 32,
    jpeg_draft: bool = False,
    workers: int | None = None,
    device: str = "cpu",
    progress: bool = True,
):
    """Embed ``paths`` (photos) on the connected Ray cluster with ``workers`` actors (default: one per CPU).

    Returns an :class:`~sbir.engine.embed.EmbedResult` whose ``indices``/``errors`` are positions in ``paths``,
    like :func:`sbir.engine.embed.embed_images` with ``skip_errors``.
    """
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no "Starting execution ..." lines either
    n_actors = max(1, min(workers or cluster_cpus(ray), len(paths)))
    items = [{"id": i, "path": str(p)} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 4 * n_actors)))
    with warnings.catch_warnings():
        # Ray >= 2.5x defaults to unlimited restarts and warns that passing them is deprecated; an explicit
        # bound still matters: a photo that crashes every worker must fail the build, not loop forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
        out = ds.map_batches(
            PhotoEmbedder,
            fn_constructor_kwargs={
                "load": load,
                "image_size": image_size,
                "flip_tta": flip_tta,
                "jpeg_draft": jpeg_draft,
                "fault_marker": os.environ.get(FAULT_ENV) or None,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=1,
            num_gpus=1 if str(device).startswith("cuda") else 0,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
        )
    batches = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    return _collect(batches, len(paths))


def load_spec_model(
    spec: str, runtime: str, device: str, image_size: int | None, expect_id: str, export_dir: str | None = None
):
    """Inside an actor: the model a new index is built with, by its spec (run folder, .safetensors, pretrained).

    ``runtime`` is the one the driver resolved (never ``auto``: every actor must embed like the driver's
    record says). Weights that changed since the driver loaded them are refused.
    """
    from sbir.engine.runtime import load_encoder
    from sbir.index.store import ModelMismatchError

    enc, _cfg, model_id, _note = load_encoder(
        spec, runtime, device=device, export_dir=export_dir, image_size=image_size
    )
    if model_id != expect_id:
        raise ModelMismatchError(
            f"a Ray worker loaded {spec} as model {model_id!r}, but the build uses {expect_id!r}: the weights "
            "differ between the driver and the workers (or changed during the build); give every node the same file"
        )
    return enc.as_model()


def load_record_model(record, override: str | None, device: str, runtime: str | None):
    """Inside an actor: the model an existing index records (``sbir index update``), same checks as locally."""
    from sbir.index.model import load_index_encoder

    enc, _cfg, _model_id = load_index_encoder(record, override=override, device=device, runtime=runtime)
    return enc.as_model()


def ray_embed_fn(
    address: str | None, load: ModelLoader, image_size: int, flip_tta: bool, **options: Any
) -> Callable[[Sequence[os.PathLike | str]], Any]:
    """A ``paths -> EmbedResult`` function for :func:`sbir.index.builder._sync` that embeds on Ray
    (``options``: ``batch_size``, ``jpeg_draft``, ``workers``, ``device``, ``progress`` of :func:`embed_files_ray`).

    Ray is imported now (a missing extra fails before any work) but connected to only when there is
    something to embed, so an update with nothing new starts no cluster.
    """
    import_ray()

    def embed(paths: Sequence[os.PathLike | str]):
        with ray_session(address, num_cpus=options.get("workers")) as ray:
            return embed_files_ray(ray, paths, load, image_size, flip_tta, **options)

    return embed
