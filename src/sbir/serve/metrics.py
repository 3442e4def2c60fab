"""Prometheus metrics of ``sbir serve`` (``GET /metrics``, text exposition format).

One :class:`ServeMetrics` per service, each with its own registry (several apps can live in
one process, as in the tests). The service records what happens in the batching worker
(queue wait, embedding, search, batch sizes, rejections); the app records requests by
endpoint and status and their total latency.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

# seconds: from 1 ms to 30 s
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

__all__ = ["CONTENT_TYPE", "ServeMetrics"]


class ServeMetrics:
    """The service's metrics; ``queue_length`` and ``generation`` are read when scraped."""

    def __init__(self, queue_length: Callable[[], float], generation: Callable[[], str], runtime: dict[str, str]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sbir_requests", "HTTP requests by endpoint (route template) and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "sbir_request_seconds",
            "whole request as seen by the server",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "sbir_queue_wait_seconds", "time a query waited for the model", buckets=LATENCY_BUCKETS, registry=r
        )
        self.embed = Histogram("sbir_embed_seconds", "embedding one micro-batch", buckets=LATENCY_BUCKETS, registry=r)
        self.search = Histogram(
            "sbir_search_seconds", "nearest-neighbour search of one micro-batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "sbir_batch_size", "queries embedded together (micro-batching)", buckets=BATCH_BUCKETS, registry=r
        )
        self.rejected = Counter(
            "sbir_rejected", "queries refused with 503 because the wait would exceed the bound", registry=r
        )
        qlen = Gauge("sbir_queue_length", "queries waiting for the model", registry=r)
        qlen.set_function(queue_length)
        self._generation = generation
        self._gen_gauge = Gauge(
            "sbir_index_generation", "the index generation served (1 for the current one)", ["generation"], registry=r
        )
        self._gen_seen = ""
        Info("sbir_runtime", "query encoder runtime", registry=r).info(runtime)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format (version 0.0.4)."""
        gen = self._generation()
        if gen != self._gen_seen:
            if self._gen_seen:
                self._gen_gauge.remove(self._gen_seen)
            self._gen_gauge.labels(generation=gen).set(1)
            self._gen_seen = gen
        return generate_latest(self.registry)
