"""What the OpenAI-compatible relay adds: a simulated worker's /v1/chat/completions direct vs through radixrouter
(`--openai-url m=<sim>/v1`, a relayed model with key injection).

    .venv/bin/python benches/relay_overhead.py [--seconds 4] [--concurrency 32] [--rounds 2]

One simulated worker (instant prefill/decode, Qwen3 tokenizer); one aiohttp load generator alternates
between the targets each round:
- non-streaming chat (8 new tokens) at `--concurrency`: requests/s, p50, p99;
- streaming chat (32 new tokens, one event per token) at `--concurrency`: streams/s and events/s received;
- router CPU per request (user+sys of the router process tree over the non-streaming run).
Ratios are the point; absolute numbers move with the load on the 2 shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from test_router import RouterProcess

    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench"
    with SimWorker(model="sim", tokenizer="qwen3", decode_tokens_per_s=0) as sim, \
            RouterProcess([], qwen3=False, openai_url=f"m={sim.url}/v1", openai_api_key_env="BENCH_UPSTREAM_KEY",
                          health_check_interval=3600, max_concurrent_requests=0) as router:
        targets = {"direct": (sim.url + "/v1/chat/completions", "sim"),
                   "relay": (router.url + "/v1/chat/completions", "m")}
        res: dict[tuple[str, str], list[dict]] = {}
        cpu: list[float] = []
        for _ in range(a.rounds):
            for name, (url, model) in targets.items():
                for stream in (False, True):
                    c0 = cpu_of(router.proc.pid)
                    r = asyncio.run(load(url, body(model, stream), a.seconds, a.concurrency, stream,
                                         {"content-type": "application/json"}))
                    if name == "relay" and not stream:
                        cpu.append((cpu_of(router.proc.pid) - c0) / max(r["n"], 1) * 1e6)
                    res.setdefault((name, "stream" if stream else "full"), []).append(r)
        med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in res.items()}
        print(f"concurrency {a.concurrency}, {a.rounds} rounds of {a.seconds:g} s, medians")
        for kind in ("full", "stream"):
            d, r = med[("direct", kind)], med[("relay", kind)]
            if kind == "full":
                print(f"non-streaming req/s: direct {d['rps']:.0f}  relay {r['rps']:.0f}  ratio {r['rps'] / d['rps']:.2f}"
                      f" | p50 ms {d['p50']:.1f} vs {r['p50']:.1f} | p99 ms {d['p99']:.1f} vs {r['p99']:.1f}")
            else:
                print(f"streaming streams/s: direct {d['rps']:.0f}  relay {r['rps']:.0f}  ratio {r['rps'] / d['rps']:.2f}"
                      f" | events/s {d['events_s']:.0f} vs {r['events_s']:.0f}")
        print(f"router CPU per non-streaming request: {statistics.median(cpu):.0f} us")


if __name__ == "__main__":
    main()
