"""FastAPI app of ``sbir serve``: search API, gallery images, thumbnails and the drawing page.

Endpoints
    ``POST /api/search``           a sketch as multipart upload (field ``file``), a raw ``image/*``
                                   body, or strokes JSON ``{"strokes": [[[x...],[y...]], ...], "k": 10,
                                   "canvas": {"width": W, "height": H}?, "stroke_width": 3?}``
    ``GET /api/images/{id}``       the gallery image with that id (only files inside the gallery)
    ``GET /api/thumbnails/{id}``   a JPEG thumbnail of it
    ``GET /api/search/similar/{id}`` photos like gallery photo ``id`` (its stored photo embedding as
                                   the query, itself excluded)
    ``POST /api/search/batch``     a JSON list of strokes queries; one result list each
    ``POST /api/raster``           the PNG the model sees for a strokes query (the server's rasteriser)
    ``GET /api/info``, ``/healthz`` index and service facts (including the generation served)
    ``GET /metrics``               Prometheus metrics (text exposition format)
    ``GET /``                      the drawing page (``/static/*``: its script and style)
    ``/docs``, ``/redoc``          OpenAPI documentation (Swagger UI, ReDoc), assets served from
                                   ``/static`` so they work offline; ``/openapi.json``

The strokes JSON is :class:`sbir.data.query.SketchQuery` (one model and one set of
limits shared with ``sbir search``). A new index generation written by ``sbir
index update`` is picked up by the next request (see :meth:`SearchService.refresh`).

Capacity: a query whose estimated response time (the time its request took to read and
decode, the queue length and the running average batch time) exceeds ``max_queue_ms`` gets
503 with ``Retry-After`` instead of waiting.
With an API key, every ``/api/`` endpoint needs the header ``X-API-Key`` (401 otherwise);
the page, its static files, the docs, ``/healthz`` and ``/metrics`` stay public.

Limits: a request body above ``max_upload_bytes`` gets 413; a body that is not
an image, a decompression bomb, malformed strokes JSON or a bad ``k`` gets 400
with ``{"detail": message}``. Images are served by id only: the id maps to a
manifest path whose real location must lie inside the gallery.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from sbir import __version__
from sbir.data.query import RASTER_SIZE, QueryError, SketchQuery, check_json_depth
from sbir.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sbir.serve.service import (
    BadRequest,
    Busy,
    NotFound,
    PayloadTooLarge,
    SearchOutcome,
    SearchService,
    ServeSettings,
    json_to_image,
    parse_k,
    upload_to_image,
)

STATIC_DIR = Path(__file__).parent / "static"

PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class SearchResult(BaseModel):
    id: int = Field(description="image id in the current index generation")
    path: str = Field(description="path of the photo relative to the gallery folder")
    score: float = Field(description="cosine similarity of sketch and photo embeddings (higher is closer)")
    rank: int
    thumbnail_url: str
    image_url: str


class Timings(BaseModel):
    decode: float = Field(description="reading and decoding the upload or rasterising the strokes, ms")
    queue: float = Field(description="waiting for the model, ms")
    embed: float = Field(description="embedding the batch this query ran in, ms")
    search: float = Field(description="nearest-neighbour search, ms")
    rerank: float = Field(0.0, description="re-scoring the top hits with the token re-ranker (0 without one), ms")
    total: float = Field(description="whole request as seen by the server, ms")


class SearchResponse(BaseModel):
    results: list[SearchResult]
    k: int
    timings_ms: Timings
    model_id: str
    batch_size: int = Field(description="queries embedded together with this one (micro-batching)")
    generation: str = Field(description="index generation the result ids refer to")


class SimilarResponse(BaseModel):
    results: list[SearchResult]
    k: int
    query_id: int = Field(description="the gallery photo whose photo embedding is the query (not in the results)")
    query_path: str
    model_id: str
    generation: str = Field(description="index generation the result ids refer to")
    timings_ms: dict[str, float]


class BatchItem(BaseModel):
    results: list[SearchResult]
    k: int
    generation: str = Field(description="index generation the result ids refer to")
    batch_size: int = Field(description="queries embedded together with this one (micro-batching)")


class BatchResponse(BaseModel):
    searches: list[BatchItem] = Field(description="one result list per query, in the order sent")
    model_id: str
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    images: int
    model_id: str
    generation: str
    api_key_required: bool = Field(False, description="the /api/ endpoints need an X-API-Key header")


class Info(BaseModel):
    images: int
    model_id: str
    generation: str
    kind: str
    dim: int
    default_k: int
    max_k: int
    max_upload_bytes: int
    max_queue_ms: int = Field(description="a query expected to take longer than this gets 503 with Retry-After")
    max_batch_queries: int = Field(description="most queries in one POST /api/search/batch")
    runtime: str = Field(description="query encoder runtime: torch, onnx, onnx-int8, openvino, openvino-int8")
    threads: int = Field(description="intra-op threads of the encoder")
    encoder_id: str
    version: str


def _inline_schema(schema: dict) -> dict:
    """A pydantic JSON schema with its ``$defs`` inlined (OpenAPI has no ``#/$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {key: walk(v) for key, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


SEARCH_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "sketch image (png, jpg, webp, ...)",
                        },
                        "k": {"type": "integer", "minimum": 1, "description": "number of results"},
                    },
                }
            },
            "application/json": {
                "schema": _inline_schema(SketchQuery.model_json_schema()),
                "example": {"strokes": [[[10, 120, 230], [40, 200, 40]]], "k": 5},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

STROKES_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline_schema(SketchQuery.model_json_schema()),
                "example": {"strokes": [[[10, 120, 230], [40, 200, 40]]]},
            }
        },
    }
}

BATCH_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": _inline_schema(SketchQuery.model_json_schema()), "minItems": 1},
                "example": [{"strokes": [[[10, 120, 230], [40, 200, 40]]], "k": 5}, {"strokes": [[[0, 50], [0, 50]]]}],
            }
        },
    }
}

ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or wrong X-API-Key (when the server has an API key)"},
    400: {"model": ErrorResponse, "description": "malformed sketch, strokes or parameters"},
    413: {"model": ErrorResponse, "description": "request body above the upload limit"},
    415: {"model": ErrorResponse, "description": "unsupported content type"},
    503: {"model": ErrorResponse, "description": "too many queries waiting for the model; retry"},
}


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The request body, or PayloadTooLarge as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(
                    f"the request body is {int(declared)} bytes; the limit is {limit} bytes ({limit / 1048576:.1f} MB)"
                )
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes ({limit / 1048576:.1f} MB)")
        chunks.append(chunk)
    return b"".join(chunks)


def _receive_from(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _results(hits) -> list[SearchResult]:
    return [
        SearchResult(
            id=h.id,
            path=h.path,
            score=round(h.score, 6),
            rank=h.rank,
            thumbnail_url=f"/api/thumbnails/{h.id}",
            image_url=f"/api/images/{h.id}",
        )
        for h in hits
    ]


def parse_batch(body: bytes, settings: ServeSettings) -> list[SketchQuery]:
    """A JSON list of strokes queries; BadRequest naming the first bad one."""
    limits = settings.query_limits
    try:
        check_json_depth(body, limits.max_depth + 1, "the JSON body")
        data = json.loads(body)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the JSON body is not valid JSON ({exc})") from None
    if not isinstance(data, list) or not data:
        raise BadRequest('send a non-empty JSON list of strokes queries: [{"strokes": [[[x...], [y...]], ...]}, ...]')
    if len(data) > settings.max_batch_queries:
        raise BadRequest(f"{len(data)} queries in one batch; the limit is {settings.max_batch_queries}")
    if sum(1 for q in data if isinstance(q, dict)) != len(data):
        raise BadRequest('each item of the list must be a strokes query object {"strokes": ...}')
    total = 0
    queries = []
    for i, item in enumerate(data):
        try:
            q = SketchQuery.parse(item, limits, source=f"query {i}")
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        total += q.n_points
        if total > settings.max_points:
            raise BadRequest(f"the batch has more than {settings.max_points} stroke points in all; send fewer queries")
        queries.append(q)
    return queries


def strokes_png(body: bytes, settings: ServeSettings) -> bytes:
    """The raster the model sees for a strokes JSON body, as PNG."""
    try:
        img = SketchQuery.from_json(body, settings.query_limits).to_image(RASTER_SIZE)
    except QueryError as exc:
        raise BadRequest(str(exc)) from None
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def create_app(
    service: SearchService, title: str = "sbir", api_key: str | None = None, cors_origins: Sequence[str] = ()
) -> FastAPI:
    """The ASGI app serving ``service``; ``api_key``: required as ``X-API-Key`` by the ``/api/`` endpoints;
    ``cors_origins``: origins allowed to call the API from a browser (CORS)."""
    settings: ServeSettings = service.settings
    metrics = service.metrics
    if api_key is not None and not api_key.strip():
        raise BadRequest("the API key is empty; pass a non-empty --api-key or unset SBIR_API_KEY")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title=f"{title} sketch-based image retrieval",
        version=__version__,
        description="Draw or upload a sketch, get the matching photos of the index. See `POST /api/search`.",
        lifespan=lifespan,
        docs_url=None,  # served below from /static: no CDN, so the docs work offline
        redoc_url=None,
    )
    app.state.service = service

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(PayloadTooLarge)
    async def _big(request: Request, exc: PayloadTooLarge):
        return JSONResponse({"detail": str(exc)}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # the client went away mid-upload: nobody reads the answer, and it is not a server error
        return Response(status_code=499)

    @app.exception_handler(NotFound)
    async def _nf(request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    key_bytes = api_key.encode() if api_key else None

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path
        if key_bytes is not None and path.startswith("/api/") and request.method != "OPTIONS":
            given = request.headers.get("x-api-key", "").encode()
            if not hmac.compare_digest(given, key_bytes):
                response = JSONResponse(
                    {"detail": "missing or wrong API key: send it in the X-API-Key header"}, status_code=401
                )
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or ("/static" if path.startswith("/static/") else "other")
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
        return response

    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
            expose_headers=["Retry-After"],
            max_age=600,
        )

    @app.post(
        "/api/search",
        response_model=SearchResponse,
        responses=ERRORS,
        openapi_extra=SEARCH_BODY_DOC,
        summary="Search the index with a sketch (image upload or strokes)",
    )
    async def search(request: Request) -> SearchResponse:
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body_limited(request, settings.max_upload_bytes)
        k_raw = request.query_params.get("k")
        if ctype == "multipart/form-data":
            sub = Request(request.scope, _receive_from(body))
            try:
                form = await sub.form(max_files=1, max_fields=8)
            except Exception as exc:  # noqa: BLE001 - python-multipart / starlette parse errors
                raise BadRequest(
                    f"malformed multipart body ({exc}); send the sketch as a file field named 'file'"
                ) from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadRequest("multipart body has no file field named 'file'; send the sketch image as 'file'")
            data = await upload.read()
            name = upload.filename or "upload"
            if form.get("k") is not None:
                k_raw = form.get("k")
            img = await run_in_threadpool(upload_to_image, data, name, settings)
        elif ctype == "application/json":
            img, k_json = await run_in_threadpool(json_to_image, body, settings)
            if k_json is not None:
                k_raw = k_json
        elif ctype.startswith("image/"):
            img = await run_in_threadpool(upload_to_image, body, "upload", settings)
        else:
            return JSONResponse(
                {
                    "detail": f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with a 'file' "
                    "field, application/json strokes, or an image/* body"
                },
                status_code=415,
            )
        k = parse_k(k_raw, settings)
        t1 = time.perf_counter()
        outcome = await asyncio.wrap_future(service.submit(img, k, spent_s=t1 - t0))
        t2 = time.perf_counter()
        tm = outcome.timings_ms
        return SearchResponse(
            results=_results(outcome.hits),
            k=k,
            model_id=service.encoder.model_id,
            batch_size=int(tm["batch"]),
            generation=outcome.generation,
            timings_ms=Timings(
                decode=round((t1 - t0) * 1e3, 3),
                queue=round(tm["queue"], 3),
                embed=round(tm["embed"], 3),
                search=round(tm["search"], 3),
                rerank=round(tm["rerank"], 3),
                total=round((t2 - t0) * 1e3, 3),
            ),
        )

    @app.post(
        "/api/search/batch",
        response_model=BatchResponse,
        responses=ERRORS,
        openapi_extra=BATCH_BODY_DOC,
        summary="Search with several strokes sketches at once (one result list each)",
    )
    async def search_batch(request: Request) -> BatchResponse:
        t0 = time.perf_counter()
        body = await read_body_limited(request, settings.max_upload_bytes)
        queries = await run_in_threadpool(parse_batch, body, settings)
        ks = [parse_k(q.k, settings) for q in queries]
        images = await run_in_threadpool(lambda: [q.to_image(RASTER_SIZE) for q in queries])
        t1 = time.perf_counter()
        futures = service.submit_many(images, ks, spent_s=t1 - t0)
        outcomes: list[SearchOutcome] = [await asyncio.wrap_future(f) for f in futures]
        t2 = time.perf_counter()
        return BatchResponse(
            searches=[
                BatchItem(results=_results(o.hits), k=k, generation=o.generation, batch_size=int(o.timings_ms["batch"]))
                for o, k in zip(outcomes, ks, strict=True)
            ],
            model_id=service.encoder.model_id,
            timings_ms={"decode": round((t1 - t0) * 1e3, 3), "total": round((t2 - t0) * 1e3, 3)},
        )

    @app.get(
        "/api/search/similar/{image_id}",
        response_model=SimilarResponse,
        responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no image with that id"}},
        summary="More like this: photos similar to a gallery photo (photo embedding against the gallery)",
    )
    def similar(image_id: str, k: str | None = None) -> SimilarResponse:
        kk = parse_k(k, settings)
        outcome = service.similar(image_id, kk)
        idx = service.index
        i = int(image_id)
        return SimilarResponse(
            results=_results(outcome.hits),
            k=kk,
            query_id=i,
            query_path=idx.entries[i].path if outcome.generation == idx.generation else "",
            model_id=service.encoder.model_id,
            generation=outcome.generation,
            timings_ms={"search": round(outcome.timings_ms["search"], 3)},
        )

    @app.post(
        "/api/raster",
        responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the rasterised sketch"}},
        response_class=Response,
        openapi_extra=STROKES_BODY_DOC,
        summary="The raster the model sees for a strokes query (PNG)",
    )
    async def raster(request: Request):
        body = await read_body_limited(request, settings.max_upload_bytes)
        data = await run_in_threadpool(strokes_png, body, settings)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/metrics", include_in_schema=True, summary="Prometheus metrics (text exposition format)")
    def prometheus_metrics():
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/api/images/{image_id}", responses={404: {"model": ErrorResponse}}, summary="A gallery image by id")
    def image(image_id: str):
        path = service.image_path(image_id)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/thumbnails/{image_id}", responses={404: {"model": ErrorResponse}}, summary="A JPEG thumbnail by id")
    def thumbnail(image_id: str):
        data = service.thumbnail(image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/info", response_model=Info, responses={401: ERRORS[401]}, summary="Index and service facts")
    def info() -> Info:
        idx = service.index
        return Info(
            images=len(idx),
            model_id=idx.model_id,
            generation=idx.generation,
            kind=idx.kind,
            dim=idx.dim,
            default_k=settings.default_k,
            max_k=settings.max_k,
            max_upload_bytes=settings.max_upload_bytes,
            max_queue_ms=settings.max_queue_ms,
            max_batch_queries=settings.max_batch_queries,
            runtime=service.runtime["runtime"],
            threads=service.runtime["threads"],
            encoder_id=service.runtime["encoder_id"],
            version=__version__,
        )

    @app.get("/healthz", response_model=Health, summary="Liveness")
    def healthz() -> Health:
        idx = service.index
        return Health(
            status="ok",
            images=len(idx),
            model_id=idx.model_id,
            generation=idx.generation,
            api_key_required=key_bytes is not None,
        )

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url="/static/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg",
            with_google_fonts=False,
        )

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_from_index_dir(
    index_dir: str | Path, api_key: str | None = None, cors_origins: Sequence[str] = (), **service_options
) -> FastAPI:
    """Load the index and its model and build the app (what ``sbir serve`` runs).

    ``service_options``: ``model``, ``device``, ``settings``, ``ef_search``, ``nprobe``, ``runtime`` as for
    :meth:`SearchService.from_index_dir`; ``api_key``, ``cors_origins`` as for :func:`create_app`.
    """
    return create_app(
        SearchService.from_index_dir(index_dir, **service_options), api_key=api_key, cors_origins=cors_origins
    )
