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
import json
import math
import queue
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from sbir.data.image_io import load_image, load_image_bytes
from sbir.data.strokes import StrokeError, rasterize_strokes
from sbir.errors import SbirError
from sbir.index.model import QueryEncoder
from sbir.index.store import Hit, Index

STROKE_RASTER_SIZE = 256


class BadRequest(SbirError):
    """The request is malformed (HTTP 400); the message says what to fix."""


class PayloadTooLarge(SbirError):
    """The request body exceeds the upload limit (HTTP 413)."""


class NotFound(SbirError):
    """No such image (HTTP 404)."""


class Busy(SbirError):
    """Too many queries are waiting (HTTP 503); the client should retry later."""


@dataclass
class ServeSettings:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    default_k: int = 10
    max_points: int = 20_000  # stroke points per request
    max_pixels: int = 16_000_000  # decoded upload size; larger is treated as a decompression bomb
    thumb_size: int = 256
    thumb_cache: int = 2048  # thumbnails kept in memory (LRU)
    max_batch: int = 16
    max_queue: int = 1024  # queries waiting for the model; beyond this a request gets 503


@dataclass
class SearchOutcome:
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- query parsing


def parse_k(value: Any, settings: ServeSettings) -> int:
    if value is None or value == "":
        return settings.default_k
    if isinstance(value, bool):
        raise BadRequest(f"k must be an integer between 1 and {settings.max_k}, got {value!r}")
    try:
        k = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise BadRequest(f"k must be an integer between 1 and {settings.max_k}, got {value!r}") from None
    if not 1 <= k <= settings.max_k:
        raise BadRequest(f"k must be between 1 and {settings.max_k}, got {k}")
    return k


STROKE_KEYS = {"strokes", "k", "canvas", "stroke_width"}


def strokes_request_to_image(payload: Any, settings: ServeSettings) -> tuple[Image.Image, Optional[int]]:
    """Validate a strokes JSON request and rasterise it; returns (image, k or None)."""
    if not isinstance(payload, dict):
        raise BadRequest('the JSON body must be an object like {"strokes": [[[x...], [y...]], ...], "k": 10}')
    unknown = set(payload) - STROKE_KEYS
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(STROKE_KEYS))}")
    if "strokes" not in payload:
        raise BadRequest('missing field "strokes": a list of strokes, each [[x0, x1, ...], [y0, y1, ...]]')
    strokes = payload["strokes"]
    if not isinstance(strokes, list):
        raise BadRequest(f'"strokes" must be a list of strokes [[x...], [y...]], got {type(strokes).__name__}')
    canvas = payload.get("canvas")
    canvas_wh = None
    if canvas is not None:
        if not isinstance(canvas, dict) or set(canvas) != {"width", "height"}:
            raise BadRequest('"canvas" must be an object {"width": W, "height": H}')
        w, h = canvas["width"], canvas["height"]
        for name, v in (("width", w), ("height", h)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 100_000:
                raise BadRequest(f'"canvas.{name}" must be a number in (0, 100000], got {v!r}')
        canvas_wh = (float(w), float(h))
    sw = payload.get("stroke_width", 3)
    if isinstance(sw, bool) or not isinstance(sw, (int, float)) or not math.isfinite(sw) or not 0.5 <= sw <= 32:
        raise BadRequest(f'"stroke_width" must be a number between 0.5 and 32 (pixels at {STROKE_RASTER_SIZE} px), got {sw!r}')
    try:
        img = rasterize_strokes(
            strokes,
            size=STROKE_RASTER_SIZE,
            stroke_width=float(sw),
            canvas=canvas_wh,
            source="strokes",
            max_points=settings.max_points,
        )
    except StrokeError as exc:
        raise BadRequest(str(exc)) from None
    return img, payload.get("k")


def json_to_image(body: bytes, settings: ServeSettings) -> tuple[Image.Image, Optional[int]]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON ({exc})") from None
    return strokes_request_to_image(payload, settings)


def upload_to_image(data: bytes, name: str, settings: ServeSettings) -> Image.Image:
    try:
        return load_image_bytes(data, name=name or "<upload>", max_pixels=settings.max_pixels)
    except SbirError as exc:  # ImageLoadError: not an image, corrupt, bomb
        raise BadRequest(str(exc)) from None


# ---------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    image: Image.Image
    k: int
    enqueued: float
    future: Future


class SearchService:
    """Holds the index, the query encoder and the thumbnail cache; serves searches from any thread."""

    def __init__(self, index: Index, encoder: QueryEncoder, settings: Optional[ServeSettings] = None):
        index.check_model(encoder.model_id)
        self.index = index
        self.encoder = encoder
        self.settings = settings or ServeSettings()
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._thumbs: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._thumb_lock = threading.Lock()
        self.batches = 0
        self.batched_queries = 0

    @classmethod
    def from_index_dir(
        cls, index_dir: str | Path, model: Optional[str] = None, device: str = "cpu", settings: Optional[ServeSettings] = None,
        ef_search: Optional[int] = None, nprobe: Optional[int] = None,
    ) -> "SearchService":
        index = Index.open(index_dir, ef_search=ef_search, nprobe=nprobe)
        encoder = QueryEncoder.for_index(index, override=model, device=device)
        return cls(index, encoder, settings)

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
        try:
            vecs = self.encoder.encode([j.image for j in jobs])
            t1 = time.perf_counter()
            kmax = max(j.k for j in jobs)
            hits = self.index.search_many(vecs, kmax, model_id=self.encoder.model_id)
            t2 = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - hand every error to the waiting requests
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        self.batches += 1
        self.batched_queries += len(jobs)
        for j, h in zip(jobs, hits):
            j.future.set_result(
                SearchOutcome(
                    h[: j.k],
                    {
                        "queue": (t0 - j.enqueued) * 1e3,
                        "embed": (t1 - t0) * 1e3,
                        "search": (t2 - t1) * 1e3,
                        "batch": float(len(jobs)),
                    },
                )
            )

    def submit(self, image: Image.Image, k: int) -> Future:
        """Queue one decoded sketch; the future resolves to a :class:`SearchOutcome`."""
        self._ensure_worker()
        if self._queue.qsize() >= self.settings.max_queue:
            raise Busy(f"{self._queue.qsize()} queries are waiting for the model; retry in a moment")
        fut: Future = Future()
        self._queue.put(_Job(image, k, time.perf_counter(), fut))
        return fut

    def search_image(self, image: Image.Image, k: int) -> SearchOutcome:
        """Blocking search for one decoded sketch."""
        return self.submit(image, k).result()

    def close(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=5)

    # -------------------------------------------------------------- images

    def image_path(self, image_id: str | int) -> Path:
        """The gallery file of ``image_id``; anything else (bad id, outside the gallery, gone) is NotFound."""
        text = str(image_id)
        if not re.fullmatch(r"[0-9]{1,12}", text):
            raise NotFound(f"no image with id {text[:64]!r}: ids are the integers in search results")
        i = int(text)
        try:
            return self.index.resolve(i)
        except SbirError as exc:
            raise NotFound(str(exc).replace(str(self.index.gallery), "<gallery>")) from None

    def thumbnail(self, image_id: str | int) -> bytes:
        """JPEG thumbnail (longest side ``thumb_size``) of a gallery image, from an in-memory LRU cache."""
        path = self.image_path(image_id)
        i = int(image_id)
        entry = self.index.entries[i]
        key = (self.index.generation, i, entry.sha256, self.settings.thumb_size)
        with self._thumb_lock:
            data = self._thumbs.get(key)
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        try:
            img = load_image(path)
        except SbirError as exc:
            raise NotFound(f"image {i} cannot be read any more ({exc.__class__.__name__}); run 'sbir index update'") from None
        img.thumbnail((self.settings.thumb_size, self.settings.thumb_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, optimize=True)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self.settings.thumb_cache:
                self._thumbs.popitem(last=False)
        return data
