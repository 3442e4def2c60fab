"""The search service behind ``sbir serve``: query parsing, micro-batched embedding, thumbnails.

Framework-independent, so it can be tested and benchmarked without HTTP.

*Micro-batching.* Embedding a sketch dominates a query's cost on CPU. Requests
hand their decoded sketch to one worker thread, which takes every request that
is waiting (up to ``max_batch``) and embeds and searches them together: under
concurrent load the model runs on batches, which costs less per image, and
with a single client there is no added delay (the worker never waits for a
batch to fill).
"""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sbir.data.image_io import load_image, load_image_bytes
from sbir.data.query import MAX_K, MAX_POINTS, RASTER_SIZE, QueryError, QueryLimits, SketchQuery
from sbir.data.query import parse_k as parse_query_k
from sbir.errors import ConfigError, SbirError
from sbir.index.model import QueryEncoder
from sbir.index.store import POINTER, Hit, Index, current_generation, hold_generation, release_generation

log = logging.getLogger("sbir.serve")


class BadRequest(SbirError):
    """The request is malformed (HTTP 400); the message says what to fix."""


class PayloadTooLarge(SbirError):
    """The request body exceeds the upload limit (HTTP 413)."""


class NotFound(SbirError):
    """No such image (HTTP 404)."""


class Busy(SbirError):
    """Too many queries are waiting (HTTP 503); the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


@dataclass
class ServeSettings:
    """Limits and sizes of the service; checked at construction (ConfigError naming the field)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    default_k: int = 10
    max_points: int = MAX_POINTS  # stroke points per request (sbir.data.query's limit by default)
    max_pixels: int = 16_000_000  # decoded upload size; larger is treated as a decompression bomb
    thumb_size: int = 256
    thumb_cache: int = 2048  # thumbnails kept in memory (LRU); 0 = no cache
    max_batch: int = 16
    max_queue: int = 1024  # queries waiting for the model; beyond this a request gets 503
    # Refuse (503) a query whose estimated response time exceeds this: the time it already spent in the server
    # before reaching the queue (reading and decoding it, `spent_s`) plus its estimated wait for the model.
    max_queue_ms: int = 1000
    max_batch_queries: int = 64  # sketches in one POST /api/search/batch
    # Re-score each query's top hits with the checkpoint's token re-ranker (model.rerank), when it has one.
    rerank: bool = True

    def __post_init__(self) -> None:
        minimum = {"thumb_cache": 0, "thumb_size": 16}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in (bool, "bool"):  # switches; every other field is a count or a bound
                if not isinstance(v, bool):
                    raise ConfigError(f"ServeSettings.{f.name} must be true or false, got {v!r}")
                continue
            lo = minimum.get(f.name, 1)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"ServeSettings.{f.name} must be an integer >= {lo}, got {v!r}")
            if v < lo:
                raise ConfigError(f"ServeSettings.{f.name} must be >= {lo}, got {v}")
        if self.max_k > MAX_K:
            raise ConfigError(f"ServeSettings.max_k must be <= {MAX_K}, got {self.max_k}")
        if self.default_k > self.max_k:
            raise ConfigError(f"ServeSettings.default_k ({self.default_k}) must be <= max_k ({self.max_k})")

    @property
    def query_limits(self) -> QueryLimits:
        """The sketch-query limits with this service's ``max_points`` and ``max_k``."""
        return QueryLimits(max_points=self.max_points, max_k=self.max_k)


@dataclass
class SearchOutcome:
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)
    generation: str = ""  # the index generation the ids refer to


# ---------------------------------------------------------------- query parsing


def parse_k(value: Any, settings: ServeSettings) -> int:
    """``k`` from a query parameter or form field (``default_k`` if absent); BadRequest if not in [1, max_k]."""
    try:
        return parse_query_k(value, settings.max_k, settings.default_k)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None


def json_to_image(body: bytes, settings: ServeSettings) -> tuple[Image.Image, int | None]:
    """Validate and rasterise a strokes JSON body (:class:`sbir.data.query.SketchQuery`); returns (image, k or None)."""
    try:
        query = SketchQuery.from_json(body, settings.query_limits)
        return query.to_image(RASTER_SIZE), query.k
    except QueryError as exc:
        raise BadRequest(str(exc)) from None


def upload_to_image(data: bytes, name: str, settings: ServeSettings) -> Image.Image:
    try:
        return load_image_bytes(data, name=name or "<upload>", max_pixels=settings.max_pixels)
    except SbirError as exc:  # ImageLoadError: not an image, corrupt, bomb
        raise BadRequest(str(exc)) from None


def encoder_runtime(encoder: QueryEncoder) -> dict[str, Any]:
    """``{"runtime", "threads", "encoder_id"}`` of a query encoder (intra-op threads of its session)."""
    view = getattr(encoder.model, "_enc", None)  # a runtime's model view (onnx, openvino)
    threads = getattr(view, "threads", None)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return {"runtime": encoder.runtime, "threads": int(threads), "encoder_id": encoder.encoder_id}


# ---------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    image: Image.Image
    k: int
    enqueued: float
    future: Future


class SearchService:
    """Holds the index, the query encoder and the thumbnail cache; serves searches from any thread."""

    def __init__(
        self,
        index: Index,
        encoder: QueryEncoder,
        settings: ServeSettings | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ):
        index.check_model(encoder.model_id)
        self._index = index
        self.encoder = encoder
        self.settings = settings or ServeSettings()
        self._open_args = {"ef_search": ef_search, "nprobe": nprobe}
        self._index_lock = threading.Lock()
        self._pointer_stamp = self._stamp()
        self._lease = hold_generation(index.root, index.generation)
        self.reloads = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self.batches = 0
        self.batched_queries = 0
        self.rejected = 0
        self._admit_lock = threading.Lock()
        self._batch_s: float | None = None  # running average (EWMA) of one batch's service time
        self._query_s: float | None = None  # running average of the service time per query (batch time / size)
        self._busy_since: float | None = None  # start of the batch being processed
        self._busy_size = 0
        self.runtime = encoder_runtime(encoder)
        from sbir.serve.metrics import ServeMetrics

        self.metrics = ServeMetrics(
            queue_length=lambda: float(self._queue.qsize()),
            generation=lambda: self._index.generation,
            runtime={k: str(v) for k, v in self.runtime.items()},
        )

    @classmethod
    def from_index_dir(
        cls,
        index_dir: str | Path,
        model: str | None = None,
        device: str = "cpu",
        settings: ServeSettings | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        runtime: str | None = None,
    ) -> SearchService:
        """Open the index and its query encoder; ``runtime`` other than the index's is refused."""
        index = Index.open(index_dir, ef_search=ef_search, nprobe=nprobe)
        encoder = QueryEncoder.for_index(index, override=model, device=device, runtime=runtime)
        return cls(index, encoder, settings, ef_search=ef_search, nprobe=nprobe)

    # -------------------------------------------------------------- index generations

    def _stamp(self) -> tuple | None:
        try:
            st = os.stat(self._index.root / POINTER)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    @property
    def index(self) -> Index:
        """The index generation being served; a new one published by ``sbir index update`` is picked up here."""
        self.refresh()
        return self._index

    def refresh(self) -> bool:
        """Load the generation ``CURRENT`` names if it changed (one ``stat`` when it did not); True if swapped.

        The swap is atomic: a request or batch uses one generation throughout. If
        the new generation cannot be used (another model, damaged), the old one
        stays served and a warning is logged.
        """
        stamp = self._stamp()
        if stamp is None or stamp == self._pointer_stamp:
            return False
        with self._index_lock:
            if stamp == self._pointer_stamp:
                return False
            old = self._index
            try:
                if current_generation(old.root) == old.generation:
                    self._pointer_stamp = stamp
                    return False
                new = Index.open(old.root, **self._open_args)
                new.check_model(self.encoder.model_id)
            except SbirError as exc:
                log.warning("keeping index generation %s: the new one cannot be served (%s)", old.generation, exc)
                self._pointer_stamp = stamp
                return False
            lease = hold_generation(new.root, new.generation)
            self._index = new
            self._pointer_stamp = stamp
            release_generation(self._lease)
            self._lease = lease
            self.reloads += 1
            log.info("now serving index generation %s (%d images)", new.generation, len(new))
            return True

    # -------------------------------------------------------------- worker

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="sbir-search-batcher", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.settings.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        self._busy_size = len(jobs)
        self._busy_since = t0
        try:
            vecs = self.encoder.encode([j.image for j in jobs])
            t1 = time.perf_counter()
            rerank_k = self.encoder.rerank_k if self.settings.rerank else 0
            kmax = max(max(j.k for j in jobs), rerank_k)
            index = self.index  # one generation for the whole batch
            hits = index.search_many(vecs, kmax, model_id=self.encoder.model_id)
            t2 = time.perf_counter()
            if rerank_k:
                hits = [self.encoder.rerank(j.image, h, index) for j, h in zip(jobs, hits, strict=True)]
                t3 = time.perf_counter()
            else:
                t3 = t2  # nothing was re-scored: report 0 ms, not the cost of reading the clock
        except BaseException as exc:  # noqa: BLE001 - hand every error to the waiting requests
            self._busy_since = None
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        took = t3 - t0
        per = took / len(jobs)
        self._batch_s = took if self._batch_s is None else 0.7 * self._batch_s + 0.3 * took
        self._query_s = per if self._query_s is None else 0.7 * self._query_s + 0.3 * per
        self._busy_since = None
        self.batches += 1
        self.batched_queries += len(jobs)
        m = self.metrics
        m.embed.observe(t1 - t0)
        m.search.observe(t2 - t1)
        m.batch_size.observe(len(jobs))
        for j in jobs:
            m.queue_wait.observe(t0 - j.enqueued)
        for j, h in zip(jobs, hits, strict=True):
            j.future.set_result(
                SearchOutcome(
                    h[: j.k],
                    {
                        "queue": (t0 - j.enqueued) * 1e3,
                        "embed": (t1 - t0) * 1e3,
                        "search": (t2 - t1) * 1e3,
                        "rerank": (t3 - t2) * 1e3,
                        "batch": float(len(jobs)),
                    },
                    index.generation,
                )
            )

    def estimate_wait(self, extra: int = 1) -> float | None:
        """Estimated seconds until ``extra`` more queries would be answered; None before a batch was timed.

        The queries waiting plus ``extra`` make batches of ``max_batch`` (the last one smaller), run after
        the rest of the batch being processed now. A batch of ``n`` is estimated at the larger of the
        running average batch time and ``n`` times the running average time per query (batches cost a
        fixed part plus a part per query; under load the batches grow, and this follows them).
        """
        avg, per = self._batch_s, self._query_s
        if avg is None or per is None:
            return None

        def cost(n: int) -> float:
            return max(avg, per * n)

        busy = self._busy_since
        current = max(0.0, cost(self._busy_size) - (time.perf_counter() - busy)) if busy is not None else 0.0
        n = self._queue.qsize() + extra
        full, rest = divmod(n, self.settings.max_batch)
        return current + full * cost(self.settings.max_batch) + (cost(rest) if rest else 0.0)

    def _admit(self, n: int, spent_s: float = 0.0) -> None:
        """Raise :class:`Busy` (counted) if ``n`` more queries, ``spent_s`` seconds into their request already,
        cannot be answered within ``max_queue_ms`` of its start."""
        waiting = self._queue.qsize()
        if waiting + n > self.settings.max_queue:
            self._reject(n)
            raise Busy(f"{waiting} queries are waiting for the model; retry in a moment")
        est = self.estimate_wait(n)
        bound = self.settings.max_queue_ms / 1e3
        if est is None:  # no batch timed yet: nothing to estimate from, only max_queue applies
            return
        # Under load the requests also wait to be read and decoded (the GIL, the thread pool); that time counts
        # against the bound too, or a query admitted with a short queue still answers far beyond it. A query
        # finding the model idle is always admitted: refusing it would not answer anyone sooner.
        spent_s = max(0.0, spent_s)
        if est + spent_s > bound and (waiting > 0 or self._busy_since is not None):
            self._reject(n)
            behind = self.estimate_wait(0) or est
            spent = f" after {spent_s * 1e3:.0f} ms reading and decoding it" if spent_s >= 1e-3 else ""
            raise Busy(
                f"the server is at capacity: {waiting} queries are waiting, about {est * 1e3:.0f} ms{spent}, above "
                f"the {self.settings.max_queue_ms} ms bound; retry in a moment",
                retry_after=math.ceil(behind),
            )

    def _reject(self, n: int) -> None:
        self.rejected += n
        self.metrics.rejected.inc(n)

    def submit(self, image: Image.Image, k: int, spent_s: float = 0.0) -> Future:
        """Queue one decoded sketch; the future resolves to a :class:`SearchOutcome`.

        :class:`Busy` (HTTP 503) instead when the estimated response time would exceed ``max_queue_ms``;
        ``spent_s`` is the time the request already took before this call (reading and decoding it).
        """
        return self.submit_many([image], [k], spent_s)[0]

    def submit_many(self, images: list[Image.Image], ks: list[int], spent_s: float = 0.0) -> list[Future]:
        """Queue several sketches, all or none (:class:`Busy`); one future per sketch (``spent_s``: see
        :meth:`submit`)."""
        self._ensure_worker()
        with self._admit_lock:
            self._admit(len(images), spent_s)
            futures = []
            now = time.perf_counter()
            for image, k in zip(images, ks, strict=True):
                fut: Future = Future()
                self._queue.put(_Job(image, k, now, fut))
                futures.append(fut)
        return futures

    def similar(self, image_id: str | int, k: int) -> SearchOutcome:
        """Photo-to-photo search: the index's stored vector of ``image_id`` against the gallery, without itself."""
        t0 = time.perf_counter()
        self.image_path(image_id)  # NotFound for a bad id or a file gone from the gallery
        index = self.index
        i = int(image_id)
        vec = np.asarray(index.vectors[i], dtype=np.float32)
        hits = index.search_many(vec[None], min(k + 1, len(index)), model_id=self.encoder.model_id, domain="photo")[0]
        hits = [h for h in hits if h.id != i][:k]
        hits = [Hit(h.id, h.path, h.score, r + 1) for r, h in enumerate(hits)]
        t1 = time.perf_counter()
        self.metrics.search.observe(t1 - t0)
        return SearchOutcome(
            hits, {"queue": 0.0, "embed": 0.0, "search": (t1 - t0) * 1e3, "batch": 1.0}, index.generation
        )

    def search_image(self, image: Image.Image, k: int) -> SearchOutcome:
        """Blocking search for one decoded sketch."""
        return self.submit(image, k).result()

    def close(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=5)
        release_generation(self._lease)
        self._lease = None

    # -------------------------------------------------------------- images

    def image_path(self, image_id: str | int) -> Path:
        """The gallery file of ``image_id``; anything else (bad id, outside the gallery, gone) is NotFound."""
        text = str(image_id)
        if not re.fullmatch(r"[0-9]{1,12}", text):
            raise NotFound(f"no image with id {text[:64]!r}: ids are the integers in search results")
        i = int(text)
        index = self.index
        try:
            return index.resolve(i)
        except SbirError as exc:
            raise NotFound(str(exc).replace(str(index.gallery), "<gallery>")) from None

    def thumbnail(self, image_id: str | int) -> bytes:
        """JPEG thumbnail (longest side ``thumb_size``) of a gallery image, from an in-memory LRU cache."""
        index = self.index
        path = self.image_path(image_id)
        i = int(image_id)
        entry = index.entries[i] if i < len(index) else None
        key = (index.generation, i, entry.sha256 if entry else str(path), self.settings.thumb_size)
        with self._thumb_lock:
            data = self._thumbs.get(key)
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        try:
            img = load_image(path)
        except SbirError as exc:
            raise NotFound(
                f"image {i} cannot be read any more ({exc.__class__.__name__}); run 'sbir index update'"
            ) from None
        img.thumbnail((self.settings.thumb_size, self.settings.thumb_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, optimize=True)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self.settings.thumb_cache:
                self._thumbs.popitem(last=False)
        return data
