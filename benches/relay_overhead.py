"""What the OpenAI-compatible relay adds: a simulated worker's /v1/chat/completions direct vs through radixrouter
(`--openai-url m=<sim>/v1`, a relayed model with key injection).

    .venv/bin/python benches/relay_overhead.py [--seconds 4] [--concurrency 32] [--rounds 2]
        [--compare DIR] [--native]

One simulated worker (instant prefill/decode, Qwen3 tokenizer); one aiohttp load generator alternates
between the targets each round (their order rotates from round to round):
- non-streaming chat (8 new tokens) at `--concurrency`: requests/s, p50, p99;
- streaming chat (32 new tokens, one event per token) at `--concurrency`: streams/s and events/s received;
- router CPU per request (user+sys of the router process tree over the run, divided by the requests), for
  the non-streaming and the streaming runs.
Ratios are the point; absolute numbers move with the load on the 2 shared cores.

`--compare DIR` adds a second router run from the Python package under DIR (`PYTHONPATH=DIR`, e.g. an
export of main's `python/` with its built `_core.abi3.so`): before/after side by side, interleaved, in one
session. `--native` adds the same sim's native `/generate` (8 new tokens) direct and through the router
(`--worker-url`, no tokenizer: the body is forwarded as is), the native path's cost in the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from router_overhead import cpu_of  # noqa: E402
from simutil import SimWorker  # noqa: E402

MSG = [{"role": "user", "content": "hello there"}]


def body(model: str, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "messages": MSG, "max_tokens": 32 if stream else 8, "stream": stream})


async def load(url: str, data: bytes, seconds: float, conc: int, stream: bool, headers: dict) -> dict:
    lat: list[float] = []
    events = 0
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one() -> None:
            nonlocal events
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with s.post(url, data=data, headers=headers) as r:
                    if stream:
                        async for line in r.content:
                            if line.startswith(b"data: "):
                                events += 1
                    else:
                        await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conc)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"rps": len(lat) / wall, "p50": lat[len(lat) // 2] * 1e3, "p99": lat[int(len(lat) * 0.99)] * 1e3,
            "events_s": events / wall, "n": len(lat)}


def _row(label: str, r: dict, d: dict, cpu: float | None, stream: bool) -> str:
    out = f"  {label:<22} {r['rps']:7.0f} {r['rps'] / d['rps']:6.2f}"
    out += f" {r['events_s']:9.0f}" if stream else f" {r['p50']:7.1f} {r['p99']:7.1f}"
    return out + ("" if cpu is None else f" {cpu:8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", metavar="DIR", help="also run a router from the Python package under DIR")
    ap.add_argument("--native", action="store_true", help="also measure /generate direct and through the router")
    a = ap.parse_args()
    from test_router import RouterProcess

    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench"
    json_h = {"content-type": "application/json"}
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(SimWorker(model="sim", tokenizer="qwen3", decode_tokens_per_s=0))

        def router(pythonpath: str) -> RouterProcess:
            return stack.enter_context(RouterProcess(
                [sim.url] if a.native else [], qwen3=False, openai_url=f"m={sim.url}/v1",
                openai_api_key_env="BENCH_UPSTREAM_KEY", health_check_interval=3600, max_concurrent_requests=0,
                env={"PYTHONPATH": pythonpath}))

        routers = {"relay": router(os.environ.get("PYTHONPATH", ""))}
        if a.compare:
            routers["relay (--compare)"] = router(a.compare)
        chat = sim.url + "/v1/chat/completions"
        # name -> (url, model, router measured or None, kinds)
        targets: dict[str, tuple] = {"direct": (chat, "sim", None, (False, True))}
        for name, r in routers.items():
            targets[name] = (r.url + "/v1/chat/completions", "m", r, (False, True))
        if a.native:
            gen = orjson.dumps({"text": "hello there", "sampling_params": {"max_new_tokens": 8}})
            targets["direct /generate"] = (sim.url + "/generate", gen, None, (False,))
            targets["native /generate"] = (routers["relay"].url + "/generate", gen, routers["relay"], (False,))
        res: dict[tuple[str, bool], list[dict]] = {}
        cpu: dict[tuple[str, bool], list[float]] = {}
        names = list(targets)
        for rnd in range(a.rounds):
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                url, model, r, kinds = targets[name]
                for stream in kinds:
                    data = model if isinstance(model, bytes) else body(model, stream)
                    c0 = cpu_of(r.proc.pid) if r is not None else 0.0
                    x = asyncio.run(load(url, data, a.seconds, a.concurrency, stream, json_h))
                    if r is not None:
                        cpu.setdefault((name, stream), []).append((cpu_of(r.proc.pid) - c0) / max(x["n"], 1) * 1e6)
                    res.setdefault((name, stream), []).append(x)
        med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in res.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"concurrency {a.concurrency}, {a.rounds} rounds of {a.seconds:g} s, medians; ratio: to direct;"
              f" CPU: router user+sys per request, us" + (f"; --compare {a.compare}" if a.compare else ""))
        print("non-streaming chat (8 tokens)    req/s  ratio  p50 ms  p99 ms   CPU us")
        for name in names:
            if (name, False) in med and not name.endswith("/generate"):
                print(_row(name, med[(name, False)], med[("direct", False)], cpu_med.get((name, False)), False))
        print("streaming chat (32 events)     streams/s ratio  events/s   CPU us")
        for name in names:
            if (name, True) in med:
                print(_row(name, med[(name, True)], med[("direct", True)], cpu_med.get((name, True)), True))
        if a.native:
            print("native /generate (8 tokens)      req/s  ratio  p50 ms  p99 ms   CPU us")
            for name in ("direct /generate", "native /generate"):
                print(_row(name, med[(name, False)], med[("direct /generate", False)],
                           cpu_med.get((name, False)), False))


if __name__ == "__main__":
    main()
