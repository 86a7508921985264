"""The simulated worker's KV model: the radix tree itself, and cached_tokens / capacity / LRU / queueing over HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrouter.sim import RadixKV, SimConfig
from radixrouter.sim.engine import Engine
from radixrouter.sim.tokenizer import SimTokenizer
from simutil import SimWorker


# ------------------------------------------------------------------------------------------ RadixKV unit
def _tree_tokens(kv: RadixKV) -> int:
    total, stack = 0, [kv.root]
    while stack:
        n = stack.pop()
        total += len(n.key)
        stack.extend(n.children.values())
    return total


def test_radix_match_insert_split():
    kv = RadixKV(1000)
    assert kv.insert([1, 2, 3, 4])[0] == 0
    assert kv.match([1, 2, 3, 4]) == 4
    assert kv.match([1, 2, 9]) == 2  # partial edge match splits the node
    assert kv.insert([1, 2, 9, 9])[0] == 2
    assert kv.match([1, 2, 9, 9, 5]) == 4
    assert kv.match([7]) == 0 and kv.match([]) == 0
    assert kv.size == _tree_tokens(kv) == 6
    assert kv.node_count() == 3  # [1,2] -> [3,4], [9,9]


def test_radix_lru_eviction_and_locks():
    kv = RadixKV(10)
    _, a = kv.insert([1] * 4)
    kv.insert([2] * 4)
    kv.match([1] * 4)  # touch A: B is now least recently used
    kv.insert([3] * 4)
    assert kv.evict() == 4
    assert kv.match([2] * 4) == 0 and kv.match([1] * 4) == 4 and kv.match([3] * 4) == 4
    # a locked path survives even when it is the least recently used
    kv = RadixKV(8)
    _, a = kv.insert([1] * 6)
    kv.lock(a)
    kv.insert([2] * 6)
    kv.evict()
    assert kv.match([1] * 6) == 6 and kv.match([2] * 6) == 0
    kv.unlock(a)
    kv.insert([3] * 6)
    kv.evict()
    assert kv.match([1] * 6) == 0 and kv.size <= 8
    assert kv.evicted_tokens == 12


def test_radix_eviction_climbs_to_emptied_parents():
    kv = RadixKV(100)
    kv.insert([1, 2, 3])
    kv.insert([1, 2, 4])  # [1,2] -> [3], [4]
    kv.capacity = 0
    assert kv.evict() == 4 and kv.size == 0 and kv.node_count() == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=25),
    st.lists(st.integers(0, 3), max_size=14),
)
def test_radix_matches_brute_force_without_eviction(seqs, probe):
    kv = RadixKV(10**9)
    for i, s in enumerate(seqs):
        seen = max((_lcp(s, t) for t in seqs[:i]), default=0)
        assert kv.insert(s)[0] == seen
    assert kv.match(probe) == max(_lcp(probe, t) for t in seqs)
    distinct = {tuple(s) for s in seqs}
    assert kv.size == _tree_tokens(kv) <= sum(len(s) for s in distinct)


def _lcp(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_decode_interval_slows_with_concurrency():
    eng = Engine(SimConfig(decode_tokens_per_s=100, decode_slowdown=0.02), SimTokenizer.load())
    assert eng.decode_interval() == pytest.approx(0.01)
    eng.running = 11
    assert eng.decode_interval() == pytest.approx(0.012)
    assert Engine(SimConfig(decode_tokens_per_s=0), SimTokenizer.load()).decode_interval() == 0.0


# ------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def tok() -> SimTokenizer:
    return SimTokenizer.load(tokenizer="qwen3")


def _ids(tok: SimTokenizer, first: int, n: int) -> list[int]:
    """n word-token ids starting with a distinctive one (so prompts branch at the root)."""
    words = [w[0] for w in tok.words]
    return [words[first]] + [words[(first * 7 + i * 13) % len(words)] for i in range(n - 1)]


def _gen(c: httpx.Client, ids: list[int], **sp) -> dict:
    r = c.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 1} | sp})
    assert r.status_code == 200, r.text
    return r.json()


def test_cached_tokens_repeat_prefix_and_multiturn(tok):
    with SimWorker(tokenizer="qwen3") as w, httpx.Client(base_url=w.url) as c:
        a = _ids(tok, 1, 50)
        assert _gen(c, a)["meta_info"]["cached_tokens"] == 0
        assert _gen(c, a)["meta_info"]["cached_tokens"] == 50  # a repeated prompt is cached whole
        b = a[:30] + _ids(tok, 2, 20)
        assert _gen(c, b)["meta_info"]["cached_tokens"] == 30  # the shared prefix
        # next turn = prompt + the worker's output + new text: everything before the new text is cached
        first = _gen(c, _ids(tok, 3, 40), max_new_tokens=12, ignore_eos=True)
        turn2 = _ids(tok, 3, 40) + first["output_ids"] + _ids(tok, 4, 10)
        assert _gen(c, turn2)["meta_info"]["cached_tokens"] == 52
        s = w.stats()
        assert s["prompt_tokens"] == 50 + 50 + 50 + 40 + 62 and s["cached_tokens"] == 50 + 30 + 52
        assert s["cache_hit_ratio"] == pytest.approx(132 / 252)
        # flush
        assert c.post("/flush_cache").status_code == 200
        assert _gen(c, a)["meta_info"]["cached_tokens"] == 0


def test_capacity_and_lru(tok):
    with SimWorker(tokenizer="qwen3", kv_cache_tokens=1000) as w, httpx.Client(base_url=w.url) as c:
        a, b, x = _ids(tok, 10, 400), _ids(tok, 11, 400), _ids(tok, 12, 400)
        _gen(c, a)
        _gen(c, b)
        assert _gen(c, a)["meta_info"]["cached_tokens"] == 400  # touch A: B becomes least recently used
        _gen(c, x)  # 1202 tokens > 1000: B is evicted
        s = w.stats()
        assert s["kv_cache_tokens"] <= 1000 and s["kv_evicted_tokens"] == 401
        assert _gen(c, a)["meta_info"]["cached_tokens"] == 400
        assert _gen(c, x)["meta_info"]["cached_tokens"] == 400
        assert _gen(c, b)["meta_info"]["cached_tokens"] == 0
        # a prompt longer than the whole cache is served, then only the budget is kept
        big = _ids(tok, 13, 1500)
        assert _gen(c, big)["meta_info"]["cached_tokens"] == 0
        assert w.stats()["kv_cache_tokens"] <= 1000


def test_queueing_over_max_running_and_flush_refused_while_busy(tok):
    async def run(url: str) -> tuple[list[dict], dict, int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            first = asyncio.ensure_future(c.post("/generate", json={"text": "a", "sim": {"stall_s": 60}}))
            second = asyncio.ensure_future(c.post("/generate", json={"text": "b"}))
            load: dict = {}
            for _ in range(1000):
                load = (await c.get("/get_load")).json()[0]
                if load["num_waiting_reqs"] == 1:
                    break
                await asyncio.sleep(0.01)
            flush = (await c.post("/flush_cache")).status_code
            await c.post("/abort_request", json={"abort_all": True})
            return [(await first).json(), (await second).json()], load, flush

    with SimWorker(tokenizer="qwen3", max_running=1) as w:
        (a, b), load, flush = asyncio.run(run(w.url))
        assert load == {"dp_rank": 0, "num_reqs": 2, "num_waiting_reqs": 1, "num_tokens": load["num_tokens"]}
        assert flush == 400
        assert a["meta_info"]["finish_reason"]["type"] == "abort"
        assert b["meta_info"]["finish_reason"]["type"] == "abort"  # aborted while queued
        assert b["meta_info"]["completion_tokens"] == 0
        assert w.stats()["running"] == 0 and w.stats()["waiting"] == 0


def test_prefill_time_scales_with_uncached_tokens(tok):
    # 2000 uncached tokens at 20000 tokens/s take at least 0.1 s before the first token (a lower bound
    # of the model's own delay, not a speed claim)
    with SimWorker(tokenizer="qwen3", prefill_tokens_per_s=20000) as w, httpx.Client(base_url=w.url) as c:
        ids = _ids(tok, 20, 2000)
        first = _gen(c, ids)["meta_info"]
        assert first["cached_tokens"] == 0 and first["e2e_latency"] >= 0.095
        assert _gen(c, ids)["meta_info"]["cached_tokens"] == 2000
