"""CLI command ``sbir serve``: the REST API and drawing page over an index."""

from __future__ import annotations

import argparse
import os

from sbir.engine.runtime import RUNTIME_CHOICES
from sbir.errors import SbirError
from sbir.index.commands import add_query_model_args


def _make_server(config, on_started):
    """A uvicorn server that calls ``on_started()`` once its sockets listen (not before)."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                on_started()

    return _Server(config)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sbir.serve.app import app_from_index_dir
    from sbir.serve.service import ServeSettings

    if args.max_upload_mb <= 0:
        raise SbirError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if not 1 <= args.max_k <= 10_000:
        raise SbirError(f"--max-k must be between 1 and 10000, got {args.max_k}")
    if not 1 <= args.port <= 65535:
        raise SbirError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_batch < 1:
        raise SbirError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue_ms < 1:
        raise SbirError(f"--max-queue-ms must be >= 1, got {args.max_queue_ms}")
    api_key = args.api_key if args.api_key is not None else os.environ.get("SBIR_API_KEY") or None
    if api_key is not None and not api_key.strip():
        raise SbirError("--api-key is empty; pass a non-empty key or leave it out")
    for origin in args.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SbirError(f"--cors-origin {origin!r} is not an origin; use e.g. https://example.org (or *)")
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_k=args.max_k,
        default_k=min(10, args.max_k),
        max_batch=args.max_batch,
        max_queue_ms=args.max_queue_ms,
        rerank=not args.no_rerank,
    )
    app = app_from_index_dir(
        args.index,
        model=args.model,
        device=args.device,
        settings=settings,
        ef_search=args.ef_search,
        nprobe=args.nprobe,
        runtime=args.runtime,
        api_key=api_key,
        cors_origins=args.cors_origin,
    )
    svc = app.state.service
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    n = len(svc.index)
    rt = svc.runtime
    print(f"runtime: {rt['runtime']}, {rt['threads']} thread{'' if rt['threads'] == 1 else 's'}", flush=True)

    def announce() -> None:
        auth = ", API key required" if api_key else ""
        print(
            f"serving {n} image{'' if n == 1 else 's'} of {args.index} (model {svc.index.model_id}, "
            f"runtime {rt['runtime']}, {rt['threads']} threads{auth}) "
            f"at http://{shown}:{args.port}/ (API docs: /docs)",
            flush=True,
        )

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    server = _make_server(config, announce)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        if not server.started:
            raise SbirError(
                f"cannot listen on {args.host}:{args.port} (the port is in use or not allowed); choose another --port"
            ) from None
        raise
    return 0


def add_serve_command(subparsers) -> None:
    """Register ``serve`` on the ``sbir`` sub-command parser."""
    p = subparsers.add_parser(
        "serve",
        help="run the search API and drawing page over an index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve an index over HTTP (FastAPI + uvicorn):\n"
            "  GET  /                     drawing page: draw or upload a sketch, results update after each stroke\n"
            "  POST /api/search           sketch as multipart 'file', image/* body, or strokes JSON\n"
            "  GET  /api/images/{id}      gallery image;  GET /api/thumbnails/{id}: JPEG thumbnail\n"
            "  GET  /api/search/similar/{id}  more like this;  POST /api/search/batch: a list of strokes queries\n"
            "  POST /api/raster           the PNG the model sees for strokes\n"
            "  GET  /docs  /healthz  /api/info  /metrics (Prometheus)\n"
            "Queries are embedded with the model recorded in the index."
        ),
        epilog="example:\n  sbir serve shoes.idx --port 8000   # then open http://127.0.0.1:8000/",
    )
    p.add_argument("index", metavar="INDEX_DIR", help="index folder made by 'sbir index build'")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    add_query_model_args(p)
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest accepted request body in MB (default 10); larger gets 413",
    )
    p.add_argument("--max-k", type=int, default=100, help="largest k a client may ask for (default 100)")
    p.add_argument("--max-batch", type=int, default=16, help="most concurrent queries embedded together (default 16)")
    p.add_argument(
        "--max-queue-ms",
        type=int,
        default=1000,
        help="refuse a query (503 with Retry-After) when its estimated response time exceeds this (default 1000)",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=None,
        help="query encoder runtime; must be the index's runtime (default: it)",
    )
    p.add_argument(
        "--no-rerank",
        action="store_true",
        help="skip the checkpoint's token re-ranker (model.rerank) if it has one (default: re-rank the top hits)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages of ORIGIN to call the API (CORS); repeatable",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key in the X-API-Key header on /api/ endpoints (default: env SBIR_API_KEY, else none)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )
    p.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log every request")
    p.set_defaults(func=cmd_serve)
