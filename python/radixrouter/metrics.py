"""Prometheus metrics of one router process, exposed with prometheus-client (`GET /metrics`).

The request path only bumps plain Python numbers (no locks, no label lookups): a collector turns them into
metric families at scrape time, together with per-worker gauges and prefix-cache statistics. Latency
histograms are observed once per request; the inter-token latency of a stream is its mean gap between
chunks sent to the client.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Hist:
    """A histogram as plain numbers: per-bucket counts (non-cumulative), sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(float(b)), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self._hist: dict[str, tuple[Hist, Hist, Hist]] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.retries: dict[str, int] = {}
        self.aborts = 0
        self._workers: Callable[[], Iterable[Any]] = lambda: ()
        self._cache_stats: Callable[[], dict | None] = lambda: None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def attach_state(self, workers: Callable[[], Iterable[Any]], cache_stats: Callable[[], dict | None]) -> None:
        self._workers = workers
        self._cache_stats = cache_stats

    # ---- request path
    def count_request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def route_histograms(self, route: str) -> tuple[Hist, Hist, Hist]:
        """(e2e, ttft, inter-token) histograms of a route."""
        h = self._hist.get(route)
        if h is None:
            h = self._hist[route] = (Hist(LATENCY_BUCKETS), Hist(LATENCY_BUCKETS), Hist(ITL_BUCKETS))
        return h

    def usage(self, prompt: int, cached: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.completion_tokens += completion

    def retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def abort(self) -> None:
        self.aborts += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


_BREAKER_VALUE = {"closed": 0.0, "open": 1.0, "half_open": 0.5}


class _Collector(Collector):
    def __init__(self, m: Metrics):
        self.m = m

    def collect(self):  # type: ignore[override]
        m = self.m
        req = CounterMetricFamily("radixrouter_requests", "HTTP requests by route and status", labels=["route", "status"])
        for (route, status), n in sorted(m.requests.items()):
            req.add_metric([route, str(status)], n)
        yield req
        names = (
            ("radixrouter_e2e_latency_seconds", "End-to-end request latency"),
            ("radixrouter_time_to_first_token_seconds", "Time to first token of streams"),
            ("radixrouter_inter_token_latency_seconds", "Mean gap between streamed chunks, per request"),
        )
        for i, (name, doc) in enumerate(names):
            fam = HistogramMetricFamily(name, doc, labels=["route"])
            for route, hs in sorted(m._hist.items()):
                h = hs[i]
                if h.count:
                    fam.add_metric([route], h.buckets(), h.sum)
            yield fam
        yield CounterMetricFamily("radixrouter_prompt_tokens", "Prompt tokens (worker-reported)", value=m.prompt_tokens)
        yield CounterMetricFamily(
            "radixrouter_cached_tokens", "Prompt tokens served from the worker's KV cache", value=m.cached_tokens)
        yield CounterMetricFamily("radixrouter_completion_tokens", "Completion tokens", value=m.completion_tokens)
        retries = CounterMetricFamily("radixrouter_retries", "Requests moved to another worker", labels=["reason"])
        for reason, n in sorted(m.retries.items()):
            retries.add_metric([reason], n)
        yield retries
        yield CounterMetricFamily("radixrouter_aborts", "Abort requests sent to workers (client gone)", value=m.aborts)
        inflight = GaugeMetricFamily("radixrouter_worker_in_flight", "Requests in flight per worker", labels=["worker"])
        healthy = GaugeMetricFamily("radixrouter_worker_healthy", "1 if the worker is healthy", labels=["worker"])
        breaker = GaugeMetricFamily(
            "radixrouter_worker_breaker_open",
            "Circuit breaker per worker: 0 closed, 1 open (cooling down), 0.5 half-open (next request is a trial)",
            labels=["worker"])
        for w in m._workers():
            inflight.add_metric([w.url], w.in_flight)
            healthy.add_metric([w.url], 1.0 if w.healthy else 0.0)
            breaker.add_metric([w.url], _BREAKER_VALUE.get(w.breaker_state(), 0.0))
        yield inflight
        yield healthy
        yield breaker
        stats = m._cache_stats()
        if stats:
            for key, name, doc, kind in (
                ("lookups", "radixrouter_cache_lookups", "Prefix cache lookups", CounterMetricFamily),
                ("looked_up_tokens", "radixrouter_cache_looked_up_tokens", "Tokens looked up", CounterMetricFamily),
                ("matched_tokens", "radixrouter_cache_matched_tokens", "Tokens matched in the prefix cache",
                 CounterMetricFamily),
                ("evictions", "radixrouter_cache_evictions", "Prefix cache evictions", CounterMetricFamily),
                ("tokens", "radixrouter_cache_tokens", "Tokens held by the prefix cache", GaugeMetricFamily),
                ("nodes", "radixrouter_cache_nodes", "Nodes of the prefix cache", GaugeMetricFamily),
                ("bytes", "radixrouter_cache_bytes", "Bytes held by the prefix cache (estimate)", GaugeMetricFamily),
                ("pins", "radixrouter_cache_pins", "Cached paths pinned by running requests (never evicted)",
                 GaugeMetricFamily),
            ):
                if key in stats:
                    yield kind(name, doc, value=stats[key])


def mark_frame(stats: list) -> None:
    """Streaming stats of one response, [first frame time, last frame time, frames sent]: one more frame now
    (what the time-to-first-token and inter-token histograms are observed from)."""
    now = time.perf_counter()
    if stats[0] is None:
        stats[0] = now
    stats[1] = now
    stats[2] += 1
