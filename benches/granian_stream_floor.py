"""The floor under the router's per-chunk cost: a minimal ASGI app on granian that streams 64 fixed chunks.

    .venv/bin/python benches/granian_stream_floor.py [--seconds 5] [--concurrency 32]

The app (`app` below) does nothing per chunk but `await asyncio.sleep(0.002)` and `await send(...)`, so the
CPU it spends per chunk (user + system of the granian worker process, from /proc) is what granian's ASGI
send path and the event loop cost, before any upstream reading or JSON work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
CHUNK = (b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n\n')
N_CHUNKS = 64


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(START)
    for _ in range(N_CHUNKS):
        await asyncio.sleep(0.002)
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def _load(url: str, seconds: float, concurrency: int) -> int:
    import aiohttp

    n = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        stop = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal n
            while time.perf_counter() < stop:
                async with s.post(url, data=b"{}") as r:
                    await r.read()
                n += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                             "--port", str(port), "--http", "1", "--no-ws", "--working-dir", here,
                             "--log-level", "warning", "granian_stream_floor:app"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(0.5)
        worker = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
        c0 = _cpu(worker)
        n = asyncio.run(_load(f"http://127.0.0.1:{port}/", args.seconds, args.concurrency))
        cpu = _cpu(worker) - c0
        chunks = n * (N_CHUNKS + 1)
        print(f"{n} streams, {chunks} chunks in {args.seconds:.0f} s; granian worker CPU {cpu:.2f} s = "
              f"{cpu / chunks * 1e6:.1f} us per chunk")
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
