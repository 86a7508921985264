"""Prometheus metrics of one router process (prometheus-client, a private registry per app).

Per-worker gauges and cache statistics are read at scrape time by a custom collector, so the request
path pays nothing for them. Latency histograms are observed once per request (inter-token latency is the
request's mean gap between streamed chunks), not once per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StateCollector(Collector):
    def __init__(self, workers: Callable[[], Iterable[Any]], cache_stats: Callable[[], dict | None]):
        self._workers = workers
        self._cache_stats = cache_stats

    def collect(self):  # type: ignore[override]
        inflight = GaugeMetricFamily("radixrouter_worker_in_flight", "Requests in flight per worker", labels=["worker"])
        healthy = GaugeMetricFamily("radixrouter_worker_healthy", "1 if the worker is healthy", labels=["worker"])
        for w in self._workers():
            inflight.add_metric([w.url], w.in_flight)
            healthy.add_metric([w.url], 1.0 if w.healthy else 0.0)
        yield inflight
        yield healthy
        stats = self._cache_stats()
        if stats:
            yield CounterMetricFamily("radixrouter_cache_lookups", "Prefix cache lookups", value=stats.get("lookups", 0))
            yield CounterMetricFamily(
                "radixrouter_cache_looked_up_tokens", "Tokens looked up in the prefix cache",
                value=stats.get("looked_up_tokens", 0),
            )
            yield CounterMetricFamily(
                "radixrouter_cache_matched_tokens", "Tokens matched in the prefix cache", value=stats.get("matched_tokens", 0)
            )
            yield GaugeMetricFamily("radixrouter_cache_tokens", "Tokens held by the prefix cache", value=stats.get("tokens", 0))
            yield GaugeMetricFamily("radixrouter_cache_nodes", "Nodes of the prefix cache", value=stats.get("nodes", 0))
            yield CounterMetricFamily(
                "radixrouter_cache_evictions", "Prefix cache evictions", value=stats.get("evictions", 0)
            )


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "radixrouter_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "radixrouter_time_to_first_token_seconds", "Time to first token (streams)", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "radixrouter_inter_token_latency_seconds", "Mean gap between streamed chunks, per request", ["route"],
            buckets=_ITL_BUCKETS, registry=r,
        )
        self.e2e = Histogram(
            "radixrouter_e2e_latency_seconds", "End-to-end request latency", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter("radixrouter_prompt_tokens", "Prompt tokens (worker-reported)", registry=r)
        self.cached_tokens = Counter(
            "radixrouter_cached_tokens", "Prompt tokens served from the worker's KV cache", registry=r
        )
        self.completion_tokens = Counter("radixrouter_completion_tokens", "Completion tokens", registry=r)
        self.retries = Counter("radixrouter_retries", "Requests moved to another worker", ["reason"], registry=r)
        self.aborts = Counter("radixrouter_aborts", "Abort requests sent to workers on client disconnect", registry=r)
        self._children: dict[tuple[str, int], Any] = {}
        self._hist: dict[str, tuple] = {}

    def attach_state(self, workers: Callable[[], Iterable[Any]], cache_stats: Callable[[], dict | None]) -> None:
        self.registry.register(_StateCollector(workers, cache_stats))

    def route_histograms(self, route: str):
        """(e2e, ttft, inter-token) histogram children of a route, resolved once."""
        h = self._hist.get(route)
        if h is None:
            h = self._hist[route] = (self.e2e.labels(route), self.ttft.labels(route), self.itl.labels(route))
        return h

    def count_request(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(route, str(status))
        child.inc()

    def usage(self, prompt: int, cached: int, completion: int) -> None:
        if prompt:
            self.prompt_tokens.inc(prompt)
        if cached:
            self.cached_tokens.inc(cached)
        if completion:
            self.completion_tokens.inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
