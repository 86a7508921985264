"""The worker pool and the routing policies.

A `Worker` carries what policies look at (in-flight requests, health, its circuit breaker). A policy is
an object with ``choose(candidates, ctx) -> Worker``; candidates are the routable workers (healthy, breaker
not open) not yet tried for this request. When no worker is routable, `WorkerPool.pick` returns None and
the request gets a 503 at once. Session stickiness (`RouteContext.session`) is handled by the pool, before
the policy.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger("radixrouter.workers")


class WorkerError(ValueError):
    """A bad worker URL or an unknown worker."""


def normalize_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise WorkerError("empty worker URL")
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest or not rest.isprintable() or any(c.isspace() for c in rest) \
            or not _valid_host(url):
        raise WorkerError(f"invalid worker URL {url!r}: expected http(s)://host:port")
    return url.rstrip("/")


def _valid_host(url: str) -> bool:
    """A host name (IDNA-encodable when not ASCII) and no port or a valid one."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when not a number in 0..65535
        host = parts.hostname
        if host and not host.isascii():
            host.encode("idna")
    except (ValueError, UnicodeError):
        return False
    return bool(host)


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
    breaker_failures: int = 0  # consecutive failed requests (transport errors, timeouts, 5xx)
    breaker_open_until: float = 0.0  # monotonic time; 0 = closed
    breaker_trial: bool = False  # half-open: the one trial request is running
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Worker({self.url!r}, in_flight={self.in_flight}, healthy={self.healthy})"

    def breaker_state(self) -> str:
        """ "closed", "open" (cooling down) or "half_open" (cooled down; the next request is a trial)."""
        if not self.breaker_open_until:
            return "closed"
        return "half_open" if time.monotonic() >= self.breaker_open_until else "open"


@dataclass(slots=True)
class RouteContext:
    """What a policy may consult for one request."""

    text: str = ""  # the prompt text (the cache key); "" when unknown
    session: str | None = None
    match: Any = None  # the cache's PrefixMatch of `text`, when the caller already looked it up


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

    def __init__(
        self, cache: Any = None, threshold: float = 0.3, balance_abs: int = 32, balance_rel: float = 1.5
    ):
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
        m = ctx.match if ctx.match is not None else self.cache.match(ctx.text)
        held = m.workers
        if not held:
            return _least_loaded(candidates)
        best_chars = max(held.get(w.url, 0) for w in candidates)
        if not best_chars or best_chars < self.threshold * len(ctx.text):
            return _least_loaded(candidates)
        # the longest match; several workers holding it equally: the least loaded (at random among equals)
        return _least_loaded([w for w in candidates if held.get(w.url, 0) == best_chars])


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
    """The workers of one model, their health and circuit breakers, session stickiness, and the policy.

    Two independent gates decide whether a worker takes traffic (`routable`):
    - health, from the periodic probes (`report_success` / `report_failure`): unhealthy after
      `failure_threshold` failed probes in a row, healthy again after `success_threshold` good ones;
    - a circuit breaker, from real requests (`request_ok` / `request_failed`): `breaker_threshold`
      transport errors / timeouts / 5xx in a row open it (a worker's 4xx and 429 never count); after
      `breaker_cooldown` seconds it is half-open: one trial request goes through, success closes it,
      failure opens it again for another cooldown.
    `on_unhealthy` callbacks run when a worker turns unhealthy or is removed (the app drops its cache
    affinity there).
    """

    def __init__(
        self,
        urls: Iterable[str],
        policy: Policy,
        *,
        failure_threshold: int = 3,
        success_threshold: int = 1,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
        balance_abs: int = 32,
        balance_rel: float = 1.5,
        max_sessions: int = 100_000,
    ):
        self.policy = policy
        self.failure_threshold = max(1, failure_threshold)
        self.success_threshold = max(1, success_threshold)
        self.breaker_threshold = breaker_threshold  # 0 = no breaker
        self.breaker_cooldown = breaker_cooldown
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[str, str] = OrderedDict()  # session key -> worker URL (LRU)
        self.on_unhealthy: list[Callable[[Worker], None]] = []
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
            raise WorkerError(f"unknown worker URL {url}")
        w.removed = True  # requests in flight to it finish normally; nothing new is routed to it
        self._lost(w)
        return w

    def list(self) -> list[Worker]:
        return list(self.workers.values())

    def any_healthy(self) -> bool:
        now = time.monotonic()
        return any(self.routable(w, now) for w in self.workers.values())

    def routable(self, w: Worker, now: float) -> bool:
        """Healthy, and its breaker closed, or open but cooled down with no trial request running."""
        if not w.healthy or w.removed:
            return False
        if w.breaker_open_until == 0.0:
            return True
        return now >= w.breaker_open_until and not w.breaker_trial

    def pick(self, ctx: RouteContext, exclude: set[Worker] | None = None) -> Worker | None:
        """The worker for this request, or None when no worker can take traffic (the caller answers 503)."""
        now = time.monotonic()
        candidates = [
            w for w in self.workers.values() if (not exclude or w not in exclude) and self.routable(w, now)
        ]
        if not candidates:
            return None
        w = None
        key = ctx.session
        if key is not None:
            url = self.sessions.get(key)
            if url is not None:
                s = self.workers.get(url)
                if s is not None and s in candidates and not self._overloaded(s, candidates):
                    w = s
        if w is None:
            w = candidates[0] if len(candidates) == 1 else self.policy.choose(candidates, ctx)
        if key is not None:
            sessions = self.sessions
            sessions[key] = w.url
            sessions.move_to_end(key)
            if len(sessions) > self.max_sessions:
                sessions.popitem(last=False)
        if w.breaker_open_until:
            w.breaker_trial = True  # half-open: this request is the trial
        return w

    def _overloaded(self, w: Worker, candidates: list[Worker]) -> bool:
        lo = min(c.in_flight for c in candidates)
        return w.in_flight - lo > self.balance_abs and w.in_flight > lo * self.balance_rel

    # ---- health probes
    def report_success(self, w: Worker) -> None:
        """A good health probe."""
        w.consecutive_failures = 0
        if not w.healthy:
            w.consecutive_successes += 1
            if w.consecutive_successes >= self.success_threshold:
                w.healthy = True
                w.consecutive_successes = 0
                self._close_breaker(w)  # back from the dead: start with a clean slate

    def report_failure(self, w: Worker) -> None:
        """A failed health probe."""
        w.consecutive_successes = 0
        w.consecutive_failures += 1
        if w.healthy and w.consecutive_failures >= self.failure_threshold:
            w.healthy = False
            self._lost(w)

    def _lost(self, w: Worker) -> None:
        for cb in self.on_unhealthy:
            try:
                cb(w)
            except Exception:  # noqa: BLE001 - a callback must not break health bookkeeping
                log.exception("on_unhealthy callback failed for %s", w.url)

    # ---- request outcomes (the circuit breaker; a worker's 4xx / 429 is never reported)
    def request_ok(self, w: Worker) -> None:
        w.breaker_failures = 0
        if w.breaker_open_until:
            self._close_breaker(w)

    def request_failed(self, w: Worker) -> None:
        """A transport error, timeout, 5xx or broken stream from this worker."""
        w.breaker_failures += 1
        w.breaker_trial = False
        if self.breaker_threshold and (w.breaker_open_until or w.breaker_failures >= self.breaker_threshold):
            if not w.breaker_open_until:
                log.warning(
                    "circuit breaker of %s open after %d failures in a row", w.url, w.breaker_failures
                )
            w.breaker_open_until = time.monotonic() + self.breaker_cooldown

    def request_done(self, w: Worker) -> None:
        """The request ended without a verdict on the worker (a 4xx, a client disconnect): end its trial."""
        w.breaker_trial = False

    @staticmethod
    def _close_breaker(w: Worker) -> None:
        if w.breaker_open_until:
            log.info("circuit breaker of %s closed", w.url)
        w.breaker_open_until = 0.0
        w.breaker_failures = 0
        w.breaker_trial = False


def pool_options(cfg: Any) -> dict[str, Any]:
    """`WorkerPool` keyword arguments from a `radixrouter.config.Config`."""
    return {
        "failure_threshold": cfg.health_failure_threshold,
        "success_threshold": cfg.health_success_threshold,
        "breaker_threshold": cfg.breaker_failure_threshold,
        "breaker_cooldown": cfg.breaker_cooldown,
        "balance_abs": cfg.balance_abs_threshold,
        "balance_rel": cfg.balance_rel_threshold,
    }
