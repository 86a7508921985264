"""Soak: radixrouter under a mixed load for a while, watching for what a short test cannot see: memory
that grows per request, requests left running on a worker or in flight on the router, unexpected errors.

Two simulated workers (Qwen3 tokenizer) behind `radixrouter serve` (cache_aware). For SOAK_SECONDS
(default 60) these clients run at once, in a loop each:
- 8 non-streaming chats, 8 streaming chats (with usage), 2 /v1/completions, 2 streaming /generate;
- 2 clients that leave mid-stream (read the first event, close the connection);
- 1 client sending bad requests (invalid JSON, unknown model, empty messages): each must be a 4xx.
Prompts come from a fixed pool of 128, so the prefix cache fills during the warm-up and then stays put.

Every 5 s it samples the router's memory (RSS of its process tree) and the request count. After the load:
the router's /metrics must show no request in flight on any worker, the workers nothing running or
waiting. Pass: no unexpected error, nothing left running, and memory after the first fifth of the run
grew by less than SOAK_MAX_BYTES_PER_REQUEST (default 200) per request.

    make soak            (or: .venv/bin/python benches/soak.py [SECONDS])
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "e2e"), str(HERE.parent / "tests")]

from loadgen import chat, session, words  # noqa: E402
from targets import RadixRouter  # noqa: E402

from simutil import SimWorkers, rss_of_tree  # noqa: E402

MODEL = "sim-model"


class Soak:
    def __init__(self, url: str, seconds: float) -> None:
        self.url = url
        self.t_end = time.monotonic() + seconds
        rng = random.Random(3)
        self.prompts = [words(rng, rng.randrange(10, 60)) for _ in range(128)]
        self.done = 0
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}

    def count(self, kind: str) -> None:
        self.done += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def fail(self, kind: str, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {what}")

    def prompt(self, rng: random.Random) -> str:
        return self.prompts[rng.randrange(len(self.prompts))]

    async def chats(self, s: aiohttp.ClientSession, i: int, stream: bool) -> None:
        rng = random.Random(i)
        kind = "chat-stream" if stream else "chat"
        while time.monotonic() < self.t_end:
            body = {"model": MODEL, "max_tokens": rng.randrange(1, 24),
                    "messages": [{"role": "user", "content": self.prompt(rng)}]}
            r = await chat(s, self.url + "/v1/chat/completions", body, stream)
            if not r.ok:
                self.fail(kind, r.error)
            self.count(kind)

    async def completions(self, s: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(100 + i)
        while time.monotonic() < self.t_end:
            body = {"model": MODEL, "prompt": self.prompt(rng), "max_tokens": 8}
            async with s.post(self.url + "/v1/completions", data=orjson.dumps(body)) as r:
                data = await r.read()
                if r.status != 200 or not orjson.loads(data)["choices"][0]["text"]:
                    self.fail("completion", f"{r.status} {data[:200]!r}")
            self.count("completion")

    async def generate(self, s: aiohttp.ClientSession, i: int) -> None:
        rng = random.Random(200 + i)
        while time.monotonic() < self.t_end:
            body = {"text": self.prompt(rng), "stream": True, "sampling_params": {"max_new_tokens": 8}}
            async with s.post(self.url + "/generate", data=orjson.dumps(body)) as r:
                raw = await r.read()
                if r.status != 200 or not raw.rstrip().endswith(b"data: [DONE]"):
                    self.fail("generate", f"{r.status} {raw[-200:]!r}")
            self.count("generate")

    async def leavers(self, i: int) -> None:
        """Open a stream, read its first event, then close the connection (a new one each time)."""
        rng = random.Random(300 + i)
        while time.monotonic() < self.t_end:
            async with session(1) as s:
                body = {"model": MODEL, "max_tokens": 400, "stream": True,
                        "messages": [{"role": "user", "content": self.prompt(rng)}]}
                async with s.post(self.url + "/v1/chat/completions", data=orjson.dumps(body)) as r:
                    if r.status != 200:
                        self.fail("leaver", f"HTTP {r.status}")
                    else:
                        await r.content.readline()
                    r.close()
            self.count("leaver")

    async def bad(self, s: aiohttp.ClientSession) -> None:
        cases = [b"{not json", orjson.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
                 orjson.dumps({"model": MODEL, "messages": []}), orjson.dumps({"model": MODEL, "max_tokens": -1,
                                                                              "messages": [{"role": "user", "content": "x"}]})]
        k = 0
        while time.monotonic() < self.t_end:
            async with s.post(self.url + "/v1/chat/completions", data=cases[k % len(cases)]) as r:
                data = await r.read()
                if not 400 <= r.status < 500 or "error" not in orjson.loads(data):
                    self.fail("bad", f"{r.status} {data[:200]!r}")
            k += 1
            self.count("bad")
            await asyncio.sleep(0.01)

    async def run(self, pid: int, samples: list) -> None:
        async def sampler() -> None:
            while time.monotonic() < self.t_end:
                samples.append((time.monotonic(), self.done, rss_of_tree(pid)))
                await asyncio.sleep(5)
            samples.append((time.monotonic(), self.done, rss_of_tree(pid)))

        async with session(24) as s:
            await asyncio.gather(
                sampler(),
                *(self.chats(s, i, False) for i in range(8)),
                *(self.chats(s, 10 + i, True) for i in range(8)),
                *(self.completions(s, i) for i in range(2)),
                *(self.generate(s, i) for i in range(2)),
                *(self.leavers(i) for i in range(2)),
                self.bad(s),
            )


def main() -> int:
    from radixrouter.sim.tokenizer import qwen3_dir

    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else float(os.environ.get("SOAK_SECONDS", "60"))
    limit = float(os.environ.get("SOAK_MAX_BYTES_PER_REQUEST", "200"))
    with SimWorkers(2, model=MODEL, tokenizer="qwen3", decode_tokens_per_s=2000) as ws:
        target = RadixRouter("cache_aware")
        url = target.start(ws.urls, str(qwen3_dir()), MODEL)
        try:
            soak = Soak(url, seconds)
            samples: list[tuple[float, int, int]] = []
            asyncio.run(soak.run(target.pid, samples))
            time.sleep(1.0)  # aborts and the last records settle
            metrics = urlopen_text(url + "/metrics")
            in_flight = [line for line in metrics.splitlines()
                         if line.startswith("radixrouter_worker_in_flight") and not line.rstrip().endswith(" 0.0")]
            left = [(w.url, st["running_requests"], st["waiting"]) for w in ws
                    if (st := w.stats())["running_requests"] or st["waiting"]]
        finally:
            target.stop()
    t0, n0, r0 = samples[0]
    warm = next((smp for smp in samples if smp[0] - t0 >= seconds / 5), samples[-1])
    t1, n1, r1 = samples[-1]
    for t, n, r in samples:
        print(f"  t={t - t0:5.1f} s  requests {n:7d}  router RSS {r / 1e6:7.1f} MB")
    per_req = (r1 - warm[2]) / max(1, n1 - warm[1])
    print(f"requests: {soak.done} in {t1 - t0:.0f} s ({soak.done / (t1 - t0):.0f}/s): {soak.counts}")
    print(f"router memory after the warm-up: {warm[2] / 1e6:.1f} -> {r1 / 1e6:.1f} MB over {n1 - warm[1]} requests"
          f" = {per_req:.0f} bytes per request (limit {limit:.0f})")
    print(f"unexpected errors: {len(soak.errors)}{': ' + '; '.join(soak.errors) if soak.errors else ''}")
    print(f"left in flight on the router: {in_flight or 'none'}; left on the workers: {left or 'none'}")
    ok = not soak.errors and not in_flight and not left and per_req < limit
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


if __name__ == "__main__":
    sys.exit(main())
