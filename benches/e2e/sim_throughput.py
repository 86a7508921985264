"""How much the simulated worker itself costs: requests/s and worker CPU per request / per streamed chunk.

    python benches/e2e/sim_throughput.py [--duration 5] [--concurrency 32]

One sim worker (Qwen3 tokenizer, instant prefill and decode, 16-token replies) under a closed loop of
`concurrency` aiohttp clients, for native /generate and OpenAI /v1/chat/completions, streaming and not.
Its CPU time is read from /proc, so the figure holds whatever else shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from targets import REPO, proc_tree_cpu  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from simutil import SimWorker  # noqa: E402

CASES = [
    ("/generate", False),
    ("/generate", True),
    ("/v1/chat/completions", False),
    ("/v1/chat/completions", True),
]


async def measure(url: str, pid: int, path: str, stream: bool, concurrency: int, duration: float) -> dict:
    n = chunks = 0

    def body(k: int) -> bytes:
        if path == "/generate":
            b = {
                "text": f"{k}: tell me something",
                "stream": stream,
                "sampling_params": {"max_new_tokens": 16},
            }
        else:
            b = {
                "model": "sim-model",
                "messages": [{"role": "user", "content": f"{k}: tell me something"}],
                "max_tokens": 16,
                "stream": stream,
            }
        return orjson.dumps(b)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4)) as s:
        end = time.perf_counter() + duration

        async def client(i: int) -> None:
            nonlocal n, chunks
            k = i
            while time.perf_counter() < end:
                async with s.post(
                    url + path, data=body(k), headers={"content-type": "application/json"}
                ) as r:
                    assert r.status == 200, await r.text()
                    if stream:
                        async for line in r.content:
                            if line.startswith(b"data: "):
                                chunks += 1
                    else:
                        await r.read()
                n += 1
                k += concurrency

        cpu0, own0, t0 = proc_tree_cpu(pid), sum(os.times()[:2]), time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        dt = time.perf_counter() - t0
        cpu, own = proc_tree_cpu(pid) - cpu0, sum(os.times()[:2]) - own0
    return {
        "endpoint": path,
        "stream": stream,
        "rps": round(n / dt, 1),
        "worker_cores": round(cpu / dt, 2),
        "worker_cpu_us_per_request": round(cpu / n * 1e6, 1),
        "worker_cpu_us_per_chunk": round(cpu / chunks * 1e6, 1) if chunks else None,
        "loadgen_cores": round(own / dt, 2),
    }


async def amain(args: argparse.Namespace) -> None:
    with SimWorker(tokenizer="qwen3", min_output_tokens=16, max_output_tokens=16) as w:
        rows = [await measure(w.url, w.pid, p, s, args.concurrency, args.duration) for p, s in CASES]
    print(
        f"command: python benches/e2e/sim_throughput.py --duration {args.duration} "
        f"--concurrency {args.concurrency}\n"
    )
    print(
        "| endpoint | stream | req/s | worker cores used | worker CPU µs/request | worker CPU µs/chunk "
        "| load generator cores |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['stream']} | {r['rps']} | {r['worker_cores']} | "
            f"{r['worker_cpu_us_per_request']} | {r['worker_cpu_us_per_chunk'] or '-'} | {r['loadgen_cores']} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
