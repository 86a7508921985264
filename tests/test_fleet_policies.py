"""Routing policies, the circuit breaker and session stickiness of `radixrouter.workers`, in process (the
end-to-end behaviour is in test_fleet.py)."""

from __future__ import annotations

from collections import Counter

import pytest

import radixrouter
from radixrouter import workers
from radixrouter.app import create_app
from radixrouter.config import Config
from radixrouter.workers import CacheAware, RouteContext, WorkerPool, make_policy

URLS = [f"http://127.0.0.1:{9000 + i}" for i in range(4)]


class FakeClock:
    """Stands in for the `time` module of radixrouter.workers: `monotonic()` moves only on `advance()`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pool(policy: str = "round_robin", cache=None, **kw) -> WorkerPool:
    p = WorkerPool(URLS, make_policy(policy, cache) if policy == "cache_aware" else make_policy(policy), **kw)
    for w in p.list():
        p.report_success(w)  # healthy after one good probe (success_threshold 1)
    return p


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_load", "power_of_two", "cache_aware"])
def test_every_policy_spreads_idle_traffic(policy):
    # one request at a time (nothing in flight): no policy may send everything to one worker
    p = pool(policy, radixrouter.PrefixCache() if policy == "cache_aware" else None)
    got = Counter(p.pick(RouteContext(text=f"unique prompt {i}")).url for i in range(200))
    assert len(got) == 4, got
    assert min(got.values()) >= 20, got


def test_least_load_and_power_of_two_prefer_idle_workers():
    p = pool("least_load")
    ws = p.list()
    for w, n in zip(ws, [5, 0, 3, 2], strict=True):
        w.in_flight = n
    assert all(p.pick(RouteContext()) is ws[1] for _ in range(20))
    p2 = pool("power_of_two")
    ws = p2.list()
    for w, n in zip(ws, [9, 9, 9, 0], strict=True):
        w.in_flight = n
    picks = Counter(p2.pick(RouteContext()).url for _ in range(300))
    # the idle worker wins every draw it takes part in (half of them), the others share the rest
    assert picks[ws[3].url] > 100


def test_cache_aware_follows_the_longest_match_until_the_balance_thresholds():
    cache = radixrouter.PrefixCache()
    p = WorkerPool(URLS, CacheAware(cache, threshold=0.3, balance_abs=4, balance_rel=1.5))
    for w in p.list():
        p.report_success(w)
    ws = p.list()
    history = "system: be brief. user: hello " * 20
    cache.insert(history, [], [], worker=ws[2].url)
    cache.insert(history[:100], [], [], worker=ws[1].url)  # a shorter match on another worker
    ctx = RouteContext(text=history + " user: next question")
    assert all(p.pick(ctx) is ws[2] for _ in range(10))
    ws[2].in_flight = 4  # 4 - 0 = 4: not beyond abs 4
    assert p.pick(ctx) is ws[2]
    ws[2].in_flight = 5  # beyond both thresholds: the least loaded instead
    assert p.pick(ctx) is not ws[2]
    for w in ws:
        w.in_flight = 3
    ws[2].in_flight = 8  # 8 - 3 > 4 but 8 < 1.5 * 6? no: 8 < 4.5 is false -> imbalanced
    assert p.pick(ctx) is not ws[2]
    ws[2].in_flight = 7
    for w in ws[:2] + ws[3:]:
        w.in_flight = 6  # 7 - 6 = 1: balanced, affinity wins
    assert p.pick(ctx) is ws[2]
    # a match below the threshold share of the prompt is no match: by load
    for w in ws:
        w.in_flight = 0
    ws[2].in_flight = 1
    short = RouteContext(text=history[:20] + "x" * 2000)
    assert p.pick(short) is not ws[2]


def test_breaker_opens_on_consecutive_failures_and_half_opens(monkeypatch):
    # the pool's clock is a fake one: the cooldown passes when the test says so, not after a sleep that a
    # busy machine could stretch past the cooldown before an "is it still open" check
    clock = FakeClock()
    monkeypatch.setattr(workers, "time", clock)
    p = pool(breaker_threshold=3, breaker_cooldown=0.2)
    w = p.list()[0]
    p.request_failed(w)
    p.request_failed(w)
    p.request_ok(w)  # a success resets the count
    p.request_failed(w)
    p.request_failed(w)
    now = clock.monotonic()
    assert p.routable(w, now)
    p.request_failed(w)  # third in a row: open
    assert not p.routable(w, clock.monotonic())
    assert all(p.pick(RouteContext()) is not w for _ in range(20))
    clock.advance(0.15)
    assert not p.routable(w, clock.monotonic())  # still inside the cooldown
    clock.advance(0.1)
    assert p.routable(w, clock.monotonic())  # half-open: exactly one trial request
    trial = None
    for _ in range(20):
        x = p.pick(RouteContext())
        if x is w:
            trial = x
            break
        p.request_done(x)
    assert trial is w and not p.routable(w, clock.monotonic())
    p.request_failed(w)  # the trial failed: open for another cooldown
    assert not p.routable(w, clock.monotonic())
    clock.advance(0.25)
    p.request_ok(w)  # a successful trial closes it
    assert p.routable(w, clock.monotonic()) and w.breaker_open_until == 0.0
    # a trial that ends without a verdict (the client left, a 4xx) frees the slot for another trial
    for _ in range(3):
        p.request_failed(w)
    clock.advance(0.25)
    while p.pick(RouteContext()) is not w:
        pass
    assert not p.routable(w, clock.monotonic())
    p.request_done(w)
    assert p.routable(w, clock.monotonic())


def test_health_thresholds_and_no_fallback_to_unhealthy_workers():
    p = WorkerPool(URLS[:2], make_policy("round_robin"), failure_threshold=2, success_threshold=3)
    a, b = p.list()
    assert p.pick(RouteContext()) is None  # nothing probed yet: nothing routable
    for _ in range(3):
        p.report_success(a)
    assert a.healthy and not b.healthy
    p.report_failure(a)
    assert a.healthy
    p.report_failure(a)
    assert not a.healthy and p.pick(RouteContext()) is None and not p.any_healthy()


def test_sessions_stick_until_the_worker_is_overloaded_or_gone():
    p = pool("round_robin", balance_abs=2, balance_rel=1.5)
    ctx = lambda: RouteContext(text="", session="alice")  # noqa: E731
    first = p.pick(ctx())
    assert all(p.pick(ctx()) is first for _ in range(10))
    first.in_flight = 3  # 3 - 0 > 2 and 3 > 0: overloaded, the session moves
    moved = p.pick(ctx())
    assert moved is not first
    first.in_flight = 0
    assert p.pick(ctx()) is moved  # and stays where it went
    for _ in range(3):
        p.report_failure(moved)
    assert p.pick(ctx()) is not moved
    p.sessions.clear()
    small = WorkerPool(URLS, make_policy("round_robin"), max_sessions=3)
    for w in small.list():
        small.report_success(w)
    for i in range(10):
        small.pick(RouteContext(session=f"s{i}"))
    assert list(small.sessions) == ["s7", "s8", "s9"]


def test_unhealthy_or_removed_workers_lose_their_cache_affinity():
    app = create_app(Config(worker_urls=URLS[:2], health_failure_threshold=1))
    a, b = app.pool.list()
    for w in (a, b):
        app.pool.report_success(w)
    app.cache.insert("first conversation", [], [], worker=a.url)
    app.cache.insert("second conversation", [], [], worker=b.url)
    assert app.cache.match("first conversation").workers == {a.url: len("first conversation")}
    app.pool.report_failure(a)  # unhealthy
    assert app.cache.match("first conversation").workers == {}
    assert app.cache.match("second conversation").workers == {b.url: len("second conversation")}
    app.pool.remove(b.url)
    assert app.cache.match("second conversation").workers == {}


def test_session_key_config():
    app = create_app(Config(session_key="user"))
    assert app._session_user and app._session_header is None
    app = create_app(Config(session_key="header:X-Session-Id"))
    assert app._session_header == b"x-session-id" and not app._session_user
    app = create_app(Config(session_key="X-Conversation"))
    assert app._session_header == b"x-conversation"


def test_cache_aware_equal_matches_go_by_load_and_spread():
    cache = radixrouter.PrefixCache()
    p = WorkerPool(URLS, CacheAware(cache))
    for w in p.list():
        p.report_success(w)
    ws = p.list()
    shared = "a system prompt every conversation starts with. " * 10
    for w in ws[:3]:
        cache.insert(shared, [], [], worker=w.url)  # three workers hold it equally; ws[3] does not
    ctx = RouteContext(text=shared + "a new question")
    ws[0].in_flight = 2
    picks = Counter(p.pick(ctx).url for _ in range(100))
    assert set(picks) == {ws[1].url, ws[2].url} and min(picks.values()) > 10, picks
