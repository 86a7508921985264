"""Upstream HTTP client throughput: httpx vs aiohttp vs radixrouter's own client, same trivial local server.

    .venv/bin/python benches/upstream_client.py [--concurrency 32] [--seconds 3] [--rounds 3]

Starts one simulated worker (`radixrouter sim-worker`, granian) on 127.0.0.1 and drives `GET /health` (a
tiny JSON answer) with each client in turn from one asyncio process, alternating clients per round so both
see the same machine noise. Prints requests/s per client and round, then the medians and their ratios.
Also measures `POST /generate` (1 token, non-streaming), closer to what the router sends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402

from radixrouter.httpclient import HttpClient  # noqa: E402
from simutil import SimWorker  # noqa: E402

GEN = orjson.dumps({"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 1}})


async def run_httpx(url: str, path: str, concurrency: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:
        async def one() -> None:
            if path == "/generate":
                r = await c.post(url + path, content=GEN, headers={"content-type": "application/json"})
            else:
                r = await c.get(url + path)
            r.raise_for_status()

        return await _drive(one, concurrency, seconds)


async def run_aiohttp(url: str, path: str, concurrency: int, seconds: float) -> float:
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.DummyCookieJar(),
                                     auto_decompress=False) as s:
        async def one() -> None:
            if path == "/generate":
                cm = s.post(url + path, data=GEN, headers={"content-type": "application/json"})
            else:
                cm = s.get(url + path)
            async with cm as r:
                await r.read()
                r.raise_for_status()

        return await _drive(one, concurrency, seconds)


async def run_fast(url: str, path: str, concurrency: int, seconds: float) -> float:
    c = HttpClient()

    async def one() -> None:
        if path == "/generate":
            r = await c.request("POST", url + path, GEN, {"content-type": "application/json"})
        else:
            r = await c.request("GET", url + path)
        await r.read()
        r.release()
        assert r.status == 200

    try:
        return await _drive(one, concurrency, seconds)
    finally:
        await c.close()


async def _drive(one, concurrency: int, seconds: float) -> float:
    for _ in range(concurrency):  # warm the pool
        await one()
    done = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with SimWorker(tokenizer=None) as w:
        for path in ("/health", "/generate"):
            res: dict[str, list[float]] = {"httpx": [], "aiohttp": [], "radixrouter": []}
            for rnd in range(args.rounds):
                for name, fn in (("httpx", run_httpx), ("aiohttp", run_aiohttp), ("radixrouter", run_fast)):
                    rps = asyncio.run(fn(w.url, path, args.concurrency, args.seconds))
                    res[name].append(rps)
                    print(f"{path:10s} round {rnd + 1} {name:8s} {rps:9.0f} req/s", flush=True)
            hx, ah, rr = (statistics.median(res[k]) for k in ("httpx", "aiohttp", "radixrouter"))
            print(f"{path:10s} median   httpx {hx:.0f}, aiohttp {ah:.0f}, radixrouter.httpclient {rr:.0f} req/s; "
                  f"aiohttp/httpx {ah / hx:.2f}x, radixrouter/httpx {rr / hx:.2f}x, radixrouter/aiohttp {rr / ah:.2f}x\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
