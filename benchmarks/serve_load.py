"""Load test of ``sbir serve``: 50 concurrent clients on loopback, bounded requests and time.

Gallery: ``--gallery-size`` (default 10,000) files made from the 3,125 Sketchy
photos in ../shared/data/sketchy_mini/photo, each hard-linked (or copied) into
``copy-N/`` folders until the count is reached. ``sbir index build`` embeds
every distinct content once (duplicates share a vector), so the index is a
real 10,000-entry index built by the real code, with 3,125 distinct vectors
(each result list contains copies). The index is built with ``--model``
(default: the pretrained EfficientNet-Lite0 at 224 px; or a run folder, e.g. a
trained 128 px category model) once and kept in ``--workdir`` for later runs.

The server is the real command (``python -m sbir.cli serve``) in a
subprocess. Each client sends, one request after the other, alternately a
real Sketchy sketch as a PNG upload (multipart) and a real Quick, Draw!
drawing as strokes JSON, ``k=10``, until ``--requests`` requests are done or
``--max-seconds`` passed. Latency is measured by the client (from sending the
request to having parsed the JSON). Also measured: one client alone
(latency without queueing). With ``--compare-no-batching`` the load test is
repeated with ``--max-batch 1`` (no micro-batching).

Every query needs one forward pass of the sketch encoder; on a 2-core CPU
that dominates the cost, so under 50 concurrent clients the latency is
mostly waiting for the model (reported as ``queue`` in the server timings).

Prints JSON and writes ``benchmarks/results/serve_load.json``. Usage::

    python benchmarks/serve_load.py                          # 10k gallery, 50 clients, 1000 requests
    python benchmarks/serve_load.py --requests 300 --compare-no-batching
    python benchmarks/serve_load.py --model runs/my_run --out serve_load-my_run
    python benchmarks/serve_load.py --capacity-curve 1,8,32,64    # capacity curve, writes serve_capacity.json

Capacity curve (``--capacity-curve``): one server with the admission limit
(``--max-queue-ms``, default 1000), and for each client count a closed loop of
``--capacity-seconds`` (default 30): throughput of answered requests, their
p50/p99, and the 503s (refused at capacity) counted separately from errors. A
client that gets a 503 waits ``--retry-wait-ms`` (default 100) before its next
request (not the whole Retry-After, which would hide the server's capacity).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SHARED_DATA, portable_path, resolve_path, run_main, write_result  # noqa: E402


def make_gallery(photos: Path, dst: Path, n: int) -> int:
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    if not files:
        sys.exit(f"error: no photos under {photos}")
    made = 0
    copy = 0
    while made < n:
        for p in files:
            if made >= n:
                break
            target = dst / f"copy-{copy}" / p.relative_to(photos)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    os.link(p, target)
                except OSError:
                    target.write_bytes(p.read_bytes())
            made += 1
        copy += 1
    return made


def ensure_index(args) -> Path:
    from sbir.index import Index, build_index, update_index

    work = Path(args.workdir)
    gallery = work / f"gallery-{args.gallery_size}"
    suffix = "" if args.model == "pretrained" else "-" + Path(args.model.rstrip("/")).name
    suffix += "" if args.runtime == "auto" else f"-{args.runtime}"
    suffix += "" if args.approx == "auto" else f"-{args.approx}"
    index_dir = work / f"index-{args.gallery_size}{suffix}"
    if not gallery.is_dir():
        make_gallery(Path(args.photos), gallery, args.gallery_size)
    t0 = time.perf_counter()
    if (index_dir / "CURRENT").is_file():
        rep = update_index(index_dir, progress=False)
        how = "reused (updated)"
    else:
        rep = build_index(
            gallery,
            args.model,
            index_dir,
            progress=True,
            device=args.device,
            runtime=args.runtime,
            approx=args.approx,
            export_dir=args.export if args.runtime != "torch" else None,
        )
        how = "built"
    index = Index.open(index_dir)
    args._index_info = {
        "how": how,
        "entries": len(index),
        "distinct_vectors": int(len({e.sha256 for e in index.entries})),
        "embedded_now": rep.embedded,
        "seconds": round(time.perf_counter() - t0, 1),
        "kind": index.kind,
        "model_id": index.model_id,
        "image_size": index.model.image_size,
        "runtime": index.info().get("runtime"),
    }
    print(f"index {index_dir}: {args._index_info}", file=sys.stderr, flush=True)
    return index_dir


def load_queries(n: int) -> list[tuple[str, object]]:
    """Alternating real sketches (PNG bytes) and real Quick, Draw! strokes."""
    sketches = sorted((SHARED_DATA / "sketchy_mini" / "sketch").rglob("*.png"))[::7][: n // 2 + 1]
    qd_files = sorted((SHARED_DATA / "quickdraw_mini").glob("*.ndjson"))
    drawings = []
    for f in qd_files[:: max(1, len(qd_files) // (n // 2 + 1))]:
        line = f.read_text().splitlines()[0]
        drawings.append(json.loads(line)["drawing"])
    out: list[tuple[str, object]] = []
    for i in range(n):
        if i % 2 == 0 and sketches:
            out.append(("png", sketches[(i // 2) % len(sketches)].read_bytes()))
        else:
            out.append(("strokes", drawings[(i // 2) % len(drawings)]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    index_dir: Path, max_batch: int, device: str, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    """``sbir serve`` on a free port (``extra``: more flags); returns once /healthz answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "sbir.cli", "serve", str(index_dir), "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--device", device, "--log-level", "warning", "--no-access-log", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: sbir serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("error: sbir serve did not start within 300 s")


async def one(client: httpx.AsyncClient, url: str, q, k: int) -> tuple[float, int, dict | None, str | None]:
    kind, payload = q
    t0 = time.perf_counter()
    try:
        if kind == "png":
            r = await client.post(
                url + "/api/search", files={"file": ("sketch.png", payload, "image/png")}, data={"k": str(k)}
            )
        else:
            r = await client.post(url + "/api/search", json={"strokes": payload, "k": k})
        body = r.json()
        dt = (time.perf_counter() - t0) * 1e3
        if r.status_code != 200:
            return dt, r.status_code, None, str(body)[:200]
        if len(body["results"]) != k:
            return dt, r.status_code, None, f"{len(body['results'])} results"
        return dt, 200, body, None
    except Exception as exc:  # noqa: BLE001 - every failure is counted as an error
        return (time.perf_counter() - t0) * 1e3, 0, None, f"{type(exc).__name__}: {exc}"[:200]


async def run_load(url: str, queries, clients: int, requests: int, max_seconds: float, k: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    results: list = []
    counter = iter(range(requests))
    deadline = time.perf_counter() + max_seconds

    async def worker(client):
        for i in counter:
            if time.perf_counter() > deadline:
                return
            results.append(await one(client, url, queries[i % len(queries)], k))

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        # warm-up: a few sequential requests
        for q in queries[:4]:
            await one(client, url, q, k)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return summarise(results, wall, clients)


def summarise(results: list, wall: float, clients: int) -> dict:
    lat = np.asarray([r[0] for r in results])
    ok = [r for r in results if r[1] == 200]
    errors = [r for r in results if r[1] != 200]
    out = {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "error_examples": sorted({f"{r[1]}: {r[3]}" for r in errors})[:5],
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2) if wall > 0 else 0.0,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p90": round(float(np.percentile(lat, 90)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1),
            "max": round(float(lat.max()), 1),
        }
        if len(lat)
        else {},
    }
    if ok:

        def mean(key):
            return round(float(np.mean([r[2]["timings_ms"][key] for r in ok])), 2)

        def p99(key):
            return round(float(np.percentile([r[2]["timings_ms"][key] for r in ok], 99)), 2)

        stages = ("decode", "queue", "embed", "search", "total")
        out["server_timings_ms"] = {key: {"mean": mean(key), "p99": p99(key)} for key in stages}
        sizes = [r[2]["batch_size"] for r in ok]
        out["batch_size"] = {"mean": round(float(np.mean(sizes)), 2), "max": int(max(sizes))}
    return out


async def run_single(url: str, queries, n: int, k: int) -> dict:
    results = []
    async with httpx.AsyncClient(timeout=120) as client:
        for q in queries[:4]:
            await one(client, url, q, k)
        t0 = time.perf_counter()
        for i in range(n):
            results.append(await one(client, url, queries[i % len(queries)], k))
        wall = time.perf_counter() - t0
    return summarise(results, wall, 1)


# ---------------------------------------------------------------- capacity curve


def start_capacity_server(index_dir: Path, args) -> tuple[subprocess.Popen, str]:
    """``sbir serve`` with the admission limit (``--max-queue-ms``)."""
    return start_server(index_dir, args.max_batch, args.device, ("--max-queue-ms", str(args.max_queue_ms)))


def summarise_capacity(results: list, wall: float, clients: int) -> dict:
    """Throughput and latency of answered requests; 503s (refused at capacity) apart from errors."""
    ok = np.asarray([r[0] for r in results if r[1] == 200])
    refused = [r for r in results if r[1] == 503]
    errors = [r for r in results if r[1] not in (200, 503)]

    def pct(a, q):
        return round(float(np.percentile(a, q)), 1) if len(a) else None

    return {
        "clients": clients,
        "requests": len(results),
        "ok": int(len(ok)),
        "rejected_503": len(refused),
        "errors": len(errors),
        "error_examples": sorted({f"{r[1]}: {r[3]}" for r in errors})[:5],
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2) if wall > 0 else 0.0,
        "offered_rps": round(len(results) / wall, 2) if wall > 0 else 0.0,
        "ok_latency_ms": {
            "p50": pct(ok, 50),
            "p99": pct(ok, 99),
            "max": round(float(ok.max()), 1) if len(ok) else None,
        },
        "rejected_latency_ms": {"p50": pct(np.asarray([r[0] for r in refused]), 50)},
    }


async def run_capacity_point(url: str, queries, clients: int, seconds: float, k: int, retry_wait_s: float) -> dict:
    """``clients`` closed-loop clients for ``seconds``; a 503 makes its client wait ``retry_wait_s``."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    results: list = []
    deadline = time.perf_counter() + seconds

    async def worker(client, start: int):
        i = start
        while time.perf_counter() < deadline:
            r = await one(client, url, queries[i % len(queries)], k)
            results.append(r)
            i += clients
            if r[1] == 503:
                await asyncio.sleep(retry_wait_s)

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        for q in queries[:2]:
            await one(client, url, q, k)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client, c) for c in range(clients)))
        wall = time.perf_counter() - t0
    return summarise_capacity(results, wall, clients)


def capacity_curve(index_dir: Path, args) -> dict:
    counts = [int(c) for c in str(args.capacity_curve).split(",") if c.strip()]
    if not counts or min(counts) < 1:
        sys.exit(f"error: --capacity-curve takes client counts like 1,8,32,64, got {args.capacity_curve!r}")
    queries = load_queries(100)
    proc, url = start_capacity_server(index_dir, args)
    points = []
    try:
        for n in counts:
            point = asyncio.run(
                run_capacity_point(url, queries, n, args.capacity_seconds, args.k, args.retry_wait_ms / 1e3)
            )
            print(f"capacity {n} clients: {point}", file=sys.stderr, flush=True)
            points.append(point)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    rejected = [line for line in metrics.splitlines() if line.startswith("sbir_rejected_total")]
    return {
        "max_queue_ms": args.max_queue_ms,
        "max_batch": args.max_batch,
        "seconds_per_point": args.capacity_seconds,
        "retry_wait_ms": args.retry_wait_ms,
        "points": points,
        "server_rejected_total": float(rejected[0].split()[-1]) if rejected else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=resolve_path, default=SHARED_DATA / "sketchy_mini" / "photo")
    ap.add_argument("--gallery-size", type=int, default=10_000)
    ap.add_argument("--workdir", type=resolve_path, default=resolve_path("tmp:sbir-serve-load"))
    ap.add_argument(
        "--model",
        default="pretrained",
        help="model the index is built with: 'pretrained' (224 px ImageNet features) or a run folder",
    )
    ap.add_argument(
        "--runtimes",
        nargs="+",
        default=["auto"],
        help="embedding runtime of the index, which the server then uses too: auto, torch, onnx, onnx-int8, "
        "openvino (an exported runtime needs `sbir export RUN` first). With --capacity-curve each runtime gets "
        "its own index and curve in the same run (e.g. onnx torch: the eager baseline beside it); otherwise the "
        "first is used",
    )
    ap.add_argument(
        "--export",
        type=resolve_path,
        default=None,
        help="export folder of --model when it is not MODEL/export (sbir index build --export; e.g. for general)",
    )
    ap.add_argument("--approx", default="auto", help="index kind of the built index: auto, none (exact), hnsw, ivfpq")
    ap.add_argument("--index", type=resolve_path, default=None, help="use this existing index instead of building one")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--single-requests", type=int, default=50, help="requests of the one-client run")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--compare-no-batching", action="store_true", help="repeat the load test with --max-batch 1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="serve_load")
    ap.add_argument(
        "--capacity-curve",
        default=None,
        metavar="N,N,...",
        help="measure the capacity curve at these client counts (e.g. 1,8,32,64) instead",
    )
    ap.add_argument("--capacity-seconds", type=float, default=30, help="seconds per capacity point")
    ap.add_argument("--max-queue-ms", type=int, default=1000, help="the server's admission bound (capacity curve)")
    ap.add_argument("--retry-wait-ms", type=float, default=100, help="a client's pause after a 503 (capacity curve)")
    args = ap.parse_args()

    if args.capacity_curve and not args.index and len(args.runtimes) > 1:
        per_runtime = {}
        for runtime in args.runtimes:
            args.runtime = runtime
            index_dir = ensure_index(args)
            per_runtime[runtime] = {"index": args._index_info, **capacity_curve(index_dir, args)}
        write_result(
            args.out if args.out != "serve_load" else "serve_capacity",
            {
                "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "runtime"},
                "runtimes": per_runtime,
                "load_average_at_end": os.getloadavg(),
                "note": "client and server share the machine; latency is measured by the client",
            },
        )
        return
    args.runtime = args.runtimes[0]
    index_dir = Path(args.index) if args.index else ensure_index(args)
    if args.capacity_curve:
        result = capacity_curve(index_dir, args)
        out = args.out if args.out != "serve_load" else "serve_capacity"
        write_result(
            out,
            {
                "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "runtime"},
                "index": getattr(args, "_index_info", {"path": str(index_dir)}),
                **result,
                "load_average_at_end": os.getloadavg(),
                "note": "client and server share the machine; latency is measured by the client",
            },
        )
        return
    queries = load_queries(max(args.requests, 100))
    runs = []
    for max_batch in [args.max_batch] + ([1] if args.compare_no_batching else []):
        proc, url = start_server(index_dir, max_batch, args.device)
        try:
            single = asyncio.run(run_single(url, queries, args.single_requests, args.k))
            print(f"max_batch={max_batch} single client: {single}", file=sys.stderr, flush=True)
            load = asyncio.run(run_load(url, queries, args.clients, args.requests, args.max_seconds, args.k))
            print(f"max_batch={max_batch} load: {load}", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        runs.append({"max_batch": max_batch, "single_client": single, "load": load})
    write_result(
        args.out,
        {
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "index": getattr(args, "_index_info", {"path": portable_path(index_dir)}),
            "runs": runs,
            "goal": "0 errors, p99 < 100 ms at 10k photos",
            "load_average_at_end": os.getloadavg(),
            "note": "client and server share the machine; latency is measured by the client",
        },
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
