"""What the router adds: direct to a simulated worker vs through radixrouter (and sglang-router if installed).

    .venv/bin/python benches/router_overhead.py [--seconds 4] [--concurrency 32] [--rounds 2] [--no-sglang-router]

One simulated worker (instant prefill/decode, Qwen3 tokenizer) and each target in front of it, measured in
alternating rounds from one aiohttp load generator:
- non-streaming `POST /generate` (16 prompt ids, 8 new tokens) at `--concurrency`: requests/s, p50, p99;
- streaming chat (radixrouter, /v1/chat/completions) vs streaming /generate direct at concurrency 1:
  time to first byte p50/p99 over 200 requests on ONE keep-alive connection (a ~40 ms Nagle stall would
  show here);
- router CPU per request (user+sys of the router process tree over the non-streaming run).
Ratios are the point; absolute numbers move with the load on the 2 shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from radixrouter.tokenizer import qwen3_files  # noqa: E402
from simutil import SimWorker, free_port  # noqa: E402

MODEL = "qwen3-sim"
GEN = orjson.dumps({"input_ids": list(range(1000, 1016)), "sampling_params": {"max_new_tokens": 8}})
GEN_STREAM = orjson.dumps({"input_ids": list(range(1000, 1016)), "sampling_params": {"max_new_tokens": 8},
                           "stream": True})
CHAT_STREAM = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}],
                            "max_tokens": 8, "stream": True})


def cpu_of(pid: int) -> float:
    """user+sys seconds of a process and its children (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / tick
        except OSError:
            pass
    return total


async def load(url: str, body: bytes, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    lat: list[float] = []
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> None:
            t = time.perf_counter()
            async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            lat.append(time.perf_counter() - t)

        for _ in range(concurrency):
            await one()
        lat.clear()
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop:
                await one()

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return len(lat) / (time.perf_counter() - t0), lat


async def ttfb(url: str, body: bytes, n: int) -> list[float]:
    out = []
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for i in range(n + 10):
            t = time.perf_counter()
            async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
                first = await r.content.readany()
                dt = time.perf_counter() - t
                assert first and r.status == 200
                await r.read()
            if i >= 10:
                out.append(dt)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def start(cmd: list[str], url: str) -> subprocess.Popen:
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"{cmd[:4]} did not start")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ttfb-requests", type=int, default=200)
    ap.add_argument("--no-sglang-router", action="store_true")
    args = ap.parse_args()
    procs: list[subprocess.Popen] = []
    with SimWorker(model=MODEL, tokenizer="qwen3") as w:
        try:
            rport = free_port()
            rr = start([sys.executable, "-m", "radixrouter.cli", "serve", "--port", str(rport), "--worker-url", w.url,
                        "--model-path", str(qwen3_files()), "--served-model-name", MODEL, "--log-level", "warning",
                        "--policy", "round_robin"], f"http://127.0.0.1:{rport}/readiness")
            procs.append(rr)
            targets = {"direct": (w.url, None), "radixrouter": (f"http://127.0.0.1:{rport}", rr)}
            if not args.no_sglang_router:
                try:
                    import sglang_router  # noqa: F401

                    sport, mport = free_port(), free_port()
                    sr = start([sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", w.url,
                                "--policy", "round_robin", "--host", "127.0.0.1", "--port", str(sport),
                                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(mport),
                                "--log-level", "warn"], f"http://127.0.0.1:{sport}/health")
                    procs.append(sr)
                    targets["sglang-router"] = (f"http://127.0.0.1:{sport}", sr)
                except (ImportError, RuntimeError) as e:
                    print(f"sglang-router skipped: {e}")
            res: dict[str, dict[str, list]] = {k: {"rps": [], "lat": [], "cpu": []} for k in targets}
            for rnd in range(args.rounds):
                for name, (base, proc) in targets.items():
                    c0 = cpu_of(proc.pid) if proc else 0.0
                    rps, lat = asyncio.run(load(base + "/generate", GEN, args.concurrency, args.seconds))
                    if proc:
                        res[name]["cpu"].append((cpu_of(proc.pid) - c0) / max(1, len(lat)))
                    res[name]["rps"].append(rps)
                    res[name]["lat"] += lat
                    print(f"round {rnd + 1} {name:14s} {rps:8.0f} req/s", flush=True)
            print(f"\nnon-streaming /generate, concurrency {args.concurrency}, {args.rounds} x {args.seconds:.0f} s:")
            direct = statistics.median(res["direct"]["rps"])
            for name, r in res.items():
                rps = statistics.median(r["rps"])
                cpu = f", router CPU {statistics.median(r['cpu']) * 1e6:.0f} us/request" if r["cpu"] else ""
                print(f"  {name:14s} {rps:8.0f} req/s ({rps / direct:.2f}x direct), p50 {pct(r['lat'], .5) * 1e3:.2f} ms, "
                      f"p99 {pct(r['lat'], .99) * 1e3:.2f} ms{cpu}")
            print(f"\nstreaming, concurrency 1, one keep-alive connection, {args.ttfb_requests} requests: time to first byte")
            rows = [("direct /generate", w.url + "/generate", GEN_STREAM),
                    ("radixrouter /generate", targets["radixrouter"][0] + "/generate", GEN_STREAM),
                    ("radixrouter chat", targets["radixrouter"][0] + "/v1/chat/completions", CHAT_STREAM)]
            if "sglang-router" in targets:
                rows.append(("sglang-router /generate", targets["sglang-router"][0] + "/generate", GEN_STREAM))
            for label, url, body in rows:
                xs = asyncio.run(ttfb(url, body, args.ttfb_requests))
                print(f"  {label:24s} p50 {pct(xs, .5) * 1e3:6.2f} ms, p99 {pct(xs, .99) * 1e3:6.2f} ms")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
