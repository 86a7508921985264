"""The worker pool and the routing policies.

A `Worker` carries what policies look at (in-flight requests, health). A policy is an object with
``choose(candidates, ctx) -> Worker``; candidates are the healthy workers not yet tried for this request
(or, if none is healthy, every untried worker, so a fleet whose probes lag still gets traffic).
Policies are isolated here so fleet features (breakers, session affinity, balance thresholds) can be
added without touching the request path.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


class WorkerError(ValueError):
    """A bad worker URL or an unknown worker."""


def normalize_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise WorkerError("empty worker URL")
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest or any(c.isspace() for c in rest):
        raise WorkerError(f"invalid worker URL {url!r}: expected http(s)://host:port")
    return url.rstrip("/")


@dataclass(eq=False)
class Worker:
    url: str
    kind: str = "sglang"  # "sglang" (native /generate) or "openai" (an OpenAI-compatible upstream)
    in_flight: int = 0
    healthy: bool = False  # set by health probes and by successful requests
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    total_requests: int = 0
    stream_mode: str | None = None  # "cumulative" / "incremental" once known
    removed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Worker({self.url!r}, in_flight={self.in_flight}, healthy={self.healthy})"


@dataclass(slots=True)
class RouteContext:
    """What a policy may consult for one request."""

    text: str = ""  # the prompt text (the cache key); "" when unknown
    session: str | None = None


class Policy(Protocol):
    name: str

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker:
        i = self._next
        self._next = i + 1
        return candidates[i % len(candidates)]


class Random:
    name = "random"

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker:
        return random.choice(candidates)


def _least_loaded(candidates: list[Worker]) -> Worker:
    # ties broken at random so an idle fleet does not send every request to the first worker
    best = min(w.in_flight for w in candidates)
    tied = [w for w in candidates if w.in_flight == best]
    return tied[0] if len(tied) == 1 else random.choice(tied)


class LeastLoad:
    name = "least_load"

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker:
        return _least_loaded(candidates)


class PowerOfTwo:
    name = "power_of_two"

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker:
        if len(candidates) == 1:
            return candidates[0]
        a, b = random.sample(candidates, 2)
        return a if a.in_flight <= b.in_flight else b


class CacheAware:
    """The worker holding the longest cached prefix of the prompt, unless load is imbalanced.

    Uses `PrefixCache.match(text).workers` (worker -> matched characters). Without a cache, or when no
    worker holds at least `threshold` of the prompt, the least loaded worker is chosen.
    """

    name = "cache_aware"

    def __init__(self, cache: Any = None, threshold: float = 0.3, balance_abs: int = 32, balance_rel: float = 1.5):
        self.cache = cache
        self.threshold = threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker:
        if len(candidates) == 1:
            return candidates[0]
        if self.cache is None or not ctx.text:
            return _least_loaded(candidates)
        loads = [w.in_flight for w in candidates]
        lo, hi = min(loads), max(loads)
        if hi - lo > self.balance_abs and hi > lo * self.balance_rel:
            return _least_loaded(candidates)
        held = self.cache.match(ctx.text).workers
        if not held:
            return _least_loaded(candidates)
        best: Worker | None = None
        best_chars = 0
        for w in candidates:
            chars = held.get(w.url, 0)
            if chars > best_chars or (chars == best_chars and best is not None and w.in_flight < best.in_flight):
                best, best_chars = w, chars
        if best is None or best_chars < self.threshold * len(ctx.text):
            return _least_loaded(candidates)
        return best


def make_policy(name: str, cache: Any = None, **kwargs: Any) -> Policy:
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return Random()
    if name == "least_load":
        return LeastLoad()
    if name == "power_of_two":
        return PowerOfTwo()
    if name == "cache_aware":
        return CacheAware(cache, **kwargs)
    raise ValueError(f"unknown policy {name!r}")


class WorkerPool:
    def __init__(self, urls: Iterable[str], policy: Policy, *, failure_threshold: int = 3, success_threshold: int = 1):
        self.policy = policy
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.workers: dict[str, Worker] = {}
        for url in urls:
            self.add(url)

    def add(self, url: str, kind: str = "sglang") -> Worker:
        url = normalize_url(url)
        w = self.workers.get(url)
        if w is None:
            w = self.workers[url] = Worker(url, kind=kind)
        return w

    def remove(self, url: str) -> Worker:
        url = normalize_url(url)
        w = self.workers.pop(url, None)
        if w is None:
            raise WorkerError(f"unknown worker {url}")
        w.removed = True  # requests in flight to it finish normally
        return w

    def list(self) -> list[Worker]:
        return list(self.workers.values())

    def any_healthy(self) -> bool:
        return any(w.healthy for w in self.workers.values())

    def pick(self, ctx: RouteContext, exclude: set[Worker] | None = None) -> Worker | None:
        ws = self.workers.values()
        candidates = [w for w in ws if w.healthy and (not exclude or w not in exclude)]
        if not candidates:
            candidates = [w for w in ws if not exclude or w not in exclude]
            if not candidates:
                return None
        return candidates[0] if len(candidates) == 1 else self.policy.choose(candidates, ctx)

    # ---- outcome reports (health bookkeeping; 4xx responses are never reported as failures)
    def report_success(self, w: Worker) -> None:
        w.consecutive_failures = 0
        if not w.healthy:
            w.consecutive_successes += 1
            if w.consecutive_successes >= self.success_threshold:
                w.healthy = True
                w.consecutive_successes = 0

    def report_failure(self, w: Worker) -> None:
        w.consecutive_successes = 0
        w.consecutive_failures += 1
        if w.healthy and w.consecutive_failures >= self.failure_threshold:
            w.healthy = False
