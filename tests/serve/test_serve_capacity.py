"""Serving at capacity: the admission limit (503 + Retry-After), and the Prometheus metrics."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from sbir.index import QueryEncoder
from sbir.serve.service import Busy

from .shapes import strokes

BATCH_S = 0.1  # the slow encoder's time per batch, whatever its size


class SlowEncoder(QueryEncoder):
    """A query encoder with the index's model id that takes ``BATCH_S`` per batch (no model run)."""

    def __init__(self, base: QueryEncoder, vector: np.ndarray, batch_s: float = BATCH_S):
        super().__init__(
            base.model, base.model_id, base.image_size, base.flip_tta, base.normalize, base.runtime, base.encoder_id
        )
        self.vector = np.asarray(vector, np.float32)
        self.batch_s = batch_s
        self.calls: list[int] = []

    def encode(self, images):
        time.sleep(self.batch_s)
        self.calls.append(len(images))
        return np.tile(self.vector, (len(images), 1))


@pytest.fixture
def slow_service(base_service):
    from sbir.serve import SearchService, ServeSettings

    idx = base_service.index
    enc = SlowEncoder(base_service.encoder, idx.vectors[0])
    svc = SearchService(idx, enc, ServeSettings(max_batch=4, max_queue_ms=400))
    yield svc
    svc.close()


def _metrics(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_admission_refuses_what_would_wait_too_long(slow_service):
    svc = slow_service
    img = Image.new("RGB", (64, 64), "white")
    assert svc.estimate_wait() is None
    svc.search_image(img, 3)  # times one batch
    assert svc.estimate_wait() == pytest.approx(BATCH_S, rel=0.5)
    accepted, refused, latencies = [], [], []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                fut = svc.submit(img, 3)
            except Busy as exc:
                with lock:
                    refused.append(exc)
                time.sleep(0.02)
                continue
            fut.result(timeout=30)
            with lock:
                accepted.append(fut)
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert refused, "40 clients against 40 queries/s of capacity must see some 503s"
    assert accepted and len(accepted) + len(refused) == 120
    assert all(exc.retry_after >= 1 for exc in refused)
    assert "400 ms bound" in str(refused[-1]) or "waiting" in str(refused[-1])
    # accepted queries finish within the bound (plus scheduling slack on a busy machine)
    assert max(latencies) < 0.4 + 0.25, sorted(latencies)[-5:]
    assert max(svc.encoder.calls) <= 4
    assert svc.rejected == len(refused)


def test_time_already_spent_on_a_request_counts_against_the_bound(slow_service):
    # A request that took long to be read and decoded (the server under load) has less of the bound left to
    # wait in: it is refused where a fresh one with the same queue ahead of it is taken. An idle model always
    # takes a query, however late it comes.
    svc = slow_service
    img = Image.new("RGB", (64, 64), "white")
    svc.search_image(img, 3)  # times one batch: about BATCH_S
    assert svc.submit(img, 3, spent_s=10.0).result(timeout=30).hits  # idle: admitted
    running = svc.submit(img, 3)  # the model is busy (or about to be) for about BATCH_S
    with pytest.raises(Busy, match=r"after 350 ms reading and decoding it, above the 400 ms bound"):
        svc.submit(img, 3, spent_s=0.4 - BATCH_S / 2)
    fresh = svc.submit(img, 3, spent_s=0.0)
    assert running.result(timeout=30).hits and fresh.result(timeout=30).hits
    assert svc.rejected == 1


def test_http_503_with_retry_after_and_metrics(slow_service):
    from fastapi.testclient import TestClient

    from sbir.serve import create_app

    app = create_app(slow_service)
    codes, totals, retry = [], [], []
    lock = threading.Lock()
    body = {"strokes": strokes("moon"), "k": 3}
    with TestClient(app) as client:
        assert client.post("/api/search", json=body).status_code == 200  # times one batch

        def one() -> None:
            r = client.post("/api/search", json=body)
            with lock:
                codes.append(r.status_code)
                if r.status_code == 200:
                    totals.append(r.json()["timings_ms"])  # the parts say where a slow answer spent its time
                else:
                    retry.append(r.headers.get("retry-after"))
                    assert "retry" in r.json()["detail"]

        threads = [threading.Thread(target=one) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        assert all(v is not None and int(v) >= 1 for v in retry)
        slowest = sorted(totals, key=lambda t: t["total"])[-5:]
        assert slowest[-1]["total"] < 400 + 250, slowest
        assert client.get("/api/search/similar/0?k=2").status_code == 200
        assert client.get("/api/thumbnails/99999").status_code == 404

        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = _metrics(r.text)
    n200, n503 = codes.count(200) + 1, codes.count(503)
    assert m[("sbir_requests_total", frozenset({("endpoint", "/api/search"), ("status", "200")}))] == n200
    assert m[("sbir_requests_total", frozenset({("endpoint", "/api/search"), ("status", "503")}))] == n503
    assert m[("sbir_requests_total", frozenset({("endpoint", "/api/thumbnails/{image_id}"), ("status", "404")}))] == 1
    assert m[("sbir_rejected_total", frozenset())] == n503
    assert m[("sbir_request_seconds_count", frozenset({("endpoint", "/api/search")}))] == n200 + n503
    assert m[("sbir_queue_wait_seconds_count", frozenset())] == n200
    batches = m[("sbir_batch_size_count", frozenset())]
    assert m[("sbir_batch_size_sum", frozenset())] == n200 and 1 <= batches <= n200
    assert m[("sbir_embed_seconds_count", frozenset())] == batches
    assert m[("sbir_embed_seconds_sum", frozenset())] >= batches * BATCH_S * 0.9
    assert m[("sbir_search_seconds_count", frozenset())] == batches + 1  # + the similar search
    assert m[("sbir_batch_size_bucket", frozenset({("le", "4.0")}))] == batches  # max_batch 4
    assert m[("sbir_queue_length", frozenset())] == 0
    gen = slow_service.index.generation
    assert m[("sbir_index_generation", frozenset({("generation", gen)}))] == 1
    labels = dict(next(lab for name, lab in m if name == "sbir_runtime_info"))
    assert labels["runtime"] == "torch" and int(labels["threads"]) >= 1


def test_settings_validate_max_queue_ms():
    from sbir.errors import ConfigError
    from sbir.serve import ServeSettings

    with pytest.raises(ConfigError, match="max_queue_ms"):
        ServeSettings(max_queue_ms=0)
