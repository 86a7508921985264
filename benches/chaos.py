"""Chaos: radixrouter under a mixed load while its workers misbehave, checking that no request is lost or
mangled: every response is either a complete, well-formed answer or a clean error in OpenAI's shape.

Three simulated workers (Qwen3 tokenizer) behind `radixrouter serve` (cache_aware, first-token timeout 2 s,
health probes every 0.5 s; the same workers' OpenAI endpoints also serve model "relayed" through
`--openai-url`, the relay path). For CHAOS_SECONDS (default 60) a fault injector picks a worker every 50-250 ms
and queues one of: HTTP 503 (1-3 requests), 500, 429, a connection dropped after K = 1-5 generated tokens
(the whole answer is lost for a non-streamed request, a stream is cut after its first tokens), a stall longer than the first-token timeout whose request id the worker keeps for a
second after the abort (as SGLang does until its scheduler acknowledges it), or an unhealthy second on the
health endpoints. Meanwhile these clients run in a loop each: 6 non-streaming chats, 6 streaming chats (with
usage), 2 streaming chats with n=2, 2 /v1/completions, 2 streaming /generate, 2 non-streaming and 2 streaming
relayed chats, 1 client leaving mid-stream.

Each response is classified:
- ok: HTTP 200 and complete (non-streamed: a parseable body with content; streamed: every frame `data: `
  with a JSON object, one chunk id, a finish reason for every choice, the usage chunk when asked, then
  `data: [DONE]`);
- clean error before the first byte: HTTP 429/502/503/504 with an OpenAI error object;
- clean error after it: HTTP 200, the stream's last frame `data: {"error": {...}}` and no `[DONE]`;
- anything else (a 500, a hang past 60 s, a stream cut without an error frame, malformed frames, `[DONE]`
  after an error, a wrong chunk id) is BROKEN.
After the load the faults are cleared and health restored; then the router must hold nothing in flight, the
workers nothing running, and the router's request counter must account for every request the clients made.

Pass: no broken response, nothing left over, every request counted.

    make chaos            (or: .venv/bin/python benches/chaos.py [SECONDS])
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "e2e"), str(HERE.parent / "tests")]

from loadgen import session, words  # noqa: E402

from simutil import SimWorkers, http_json  # noqa: E402
from test_router import RouterProcess  # noqa: E402

MODEL = "qwen3-sim"
RELAYED = "relayed"  # the same workers' OpenAI endpoints, as --openai-url upstreams (radixrouter.relay)
CLEAN_STATUSES = {429, 502, 503, 504}
ROUTE_LABELS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/generate": "generate"}
HANG_S = 60.0  # a response taking longer than this is a hang


class Chaos:
    def __init__(self, url: str, workers: list[str], seconds: float) -> None:
        self.url = url
        self.workers = workers
        self.t_end = time.monotonic() + seconds
        rng = random.Random(5)
        self.prompts = [words(rng, rng.randrange(10, 60)) for _ in range(96)]
        self.outcomes: Counter = Counter()  # (kind, outcome)
        self.by_route: Counter = Counter()
        self.broken: list[str] = []
        self.errors: Counter = Counter()  # clean errors by message
        self.faults: Counter = Counter()
        self.healing: asyncio.Task | None = None  # the unhealthy worker's return to health

    def prompt(self, rng: random.Random) -> str:
        return self.prompts[rng.randrange(len(self.prompts))]

    def record(self, kind: str, route: str, outcome: str, detail: str = "") -> None:
        self.outcomes[(kind, outcome)] += 1
        self.by_route[route] += 1
        if outcome == "broken" and len(self.broken) < 20:
            self.broken.append(f"{kind}: {detail[:300]}")
        elif outcome.startswith("error") and self.errors[detail[:80]] < 1000:
            self.errors[detail[:80]] += 1

    # ------------------------------------------------------------------ classification
    @staticmethod
    def classify_error(status: int, raw: bytes) -> tuple[str, str]:
        try:
            err = orjson.loads(raw)["error"]
            ok = isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err
        except (orjson.JSONDecodeError, KeyError, TypeError):
            ok = False
        if status in CLEAN_STATUSES and ok:
            return "error-before", f"HTTP {status}: {err['message']}"
        return "broken", f"HTTP {status}: {raw[:200]!r}"

    @staticmethod
    def classify_stream(raw: bytes, choices: int, usage: bool, generate: bool = False) -> tuple[str, str]:
        """Strict framing: frames separated by one blank line, each `data: <payload>` (or a comment)."""
        if not raw.endswith(b"\n\n"):
            return "broken", f"cut without an error frame: ...{raw[-200:]!r}"
        frames = raw[:-2].split(b"\n\n")
        payloads = []
        for f in frames:
            if f.startswith(b":"):
                continue
            if not f.startswith(b"data: ") or b"\n" in f:
                return "broken", f"malformed frame {f[:200]!r}"
            payloads.append(f[6:])
        if not payloads:
            return "broken", "no data frames"
        last = payloads[-1]
        if last != b"[DONE]":
            try:
                err = orjson.loads(last)["error"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return "broken", f"ends without [DONE] or an error frame: {last[:200]!r}"
            if not isinstance(err, dict) or not isinstance(err.get("message"), str):
                return "broken", f"bad error frame {last[:200]!r}"
            if any(p == b"[DONE]" for p in payloads):
                return "broken", "[DONE] before the error frame"
            return "error-after", err["message"]
        objs = [orjson.loads(p) for p in payloads[:-1]]
        if any("error" in o for o in objs):
            return "broken", "an error frame followed by more frames"
        if generate:
            fins = [o["meta_info"].get("finish_reason") for o in objs if "meta_info" in o]
            if not fins or not fins[-1]:
                return "broken", "generate stream without a finish reason"
            return "ok", ""
        if len({o["id"] for o in objs}) != 1:
            return "broken", "chunk ids differ"
        finished = {c["index"] for o in objs for c in o["choices"] if c.get("finish_reason")}
        if finished != set(range(choices)):
            return "broken", f"finish reasons for {sorted(finished)}, expected {choices} choices"
        if usage and not (objs[-1]["choices"] == [] and objs[-1].get("usage")):
            return "broken", "no usage chunk last"
        return "ok", ""

    # ------------------------------------------------------------------ clients
    async def _post(self, s: aiohttp.ClientSession, path: str, body: dict) -> tuple[int, bytes]:
        async with s.post(self.url + path, data=orjson.dumps(body), timeout=aiohttp.ClientTimeout(total=HANG_S)) as r:
            return r.status, await r.read()

    async def client(self, s: aiohttp.ClientSession, i: int, kind: str) -> None:
        rng = random.Random(1000 + i)
        while time.monotonic() < self.t_end:
            msgs = [{"role": "user", "content": self.prompt(rng)}]
            n = 2 if kind == "chat-n2" else 1
            stream = kind in ("chat-stream", "chat-n2", "generate", "relay-stream")
            model = RELAYED if kind.startswith("relay") else MODEL
            if kind == "generate":
                route, body = "/generate", {"text": self.prompt(rng), "stream": True,
                                            "sampling_params": {"max_new_tokens": rng.randrange(1, 16)}}
            elif kind == "completion":
                route, body = "/v1/completions", {"model": MODEL, "prompt": self.prompt(rng), "max_tokens": 8}
            else:
                route = "/v1/chat/completions"
                body = {"model": model, "messages": msgs, "max_tokens": rng.randrange(1, 24), "n": n}
                if stream:
                    body.update(stream=True, stream_options={"include_usage": True})
            try:
                status, raw = await self._post(s, route, body)
            except asyncio.TimeoutError:
                self.record(kind, route, "broken", f"no answer within {HANG_S} s")
                continue
            except aiohttp.ClientError as e:
                self.record(kind, route, "broken", f"{type(e).__name__}: {e}")
                continue
            if status != 200:
                outcome, detail = self.classify_error(status, raw)
            elif stream:
                outcome, detail = self.classify_stream(raw, n, kind != "generate", generate=kind == "generate")
            else:
                try:
                    obj = orjson.loads(raw)
                    text = (obj["choices"][0]["text"] if kind == "completion"
                            else obj["choices"][0]["message"]["content"])
                    outcome, detail = ("ok", "") if isinstance(text, str) and obj["usage"] else (
                        "broken", f"incomplete body {raw[:200]!r}")
                except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                    outcome, detail = "broken", f"bad body {raw[:200]!r}"
            self.record(kind, route, outcome, detail)

    async def leaver(self) -> None:
        rng = random.Random(7)
        while time.monotonic() < self.t_end:
            async with session(1) as s:
                body = {"model": MODEL, "max_tokens": 200, "stream": True,
                        "messages": [{"role": "user", "content": self.prompt(rng)}]}
                async with s.post(self.url + "/v1/chat/completions", data=orjson.dumps(body)) as r:
                    if r.status == 200:
                        await r.content.readline()
                    r.close()
            self.by_route["/v1/chat/completions"] += 1
            self.outcomes[("leaver", "left")] += 1

    async def injector(self, s: aiohttp.ClientSession) -> None:
        rng = random.Random(11)
        menu = [
            ("503", {"status": 503, "count": 0}), ("500", {"status": 500}), ("429", {"status": 429}),
            ("drop", {"close_after_tokens": 1}),
            ("stall", {"stall_s": 3, "linger_s": 1}), ("unhealthy", {}),
        ]
        while time.monotonic() < self.t_end - 1:
            w = self.workers[rng.randrange(len(self.workers))]
            name, fault = menu[rng.randrange(len(menu))]
            fault = dict(fault)
            if name == "503":
                fault["count"] = rng.randrange(1, 4)
            if name == "drop":
                fault["close_after_tokens"] = rng.randrange(1, 6)
            if name == "unhealthy":
                if self.healing is not None and not self.healing.done():
                    continue  # one unhealthy worker at a time: the others can take its requests
                async with s.post(w + "/sim/health", json={"healthy": False}) as r:
                    await r.read()
                self.healing = asyncio.create_task(self._heal(s, w, after=1.0))
            else:
                async with s.post(w + "/sim/fault", json=fault) as r:
                    if r.status != 200:
                        raise RuntimeError(f"fault {fault} refused: {r.status} {await r.text()}")
            self.faults[name] += 1
            await asyncio.sleep(rng.uniform(0.05, 0.25))

    @staticmethod
    async def _heal(s: aiohttp.ClientSession, w: str, after: float) -> None:
        await asyncio.sleep(after)
        async with s.post(w + "/sim/health", json={"healthy": True}) as r:
            await r.read()

    async def run(self) -> None:
        kinds = (["chat"] * 6 + ["chat-stream"] * 6 + ["chat-n2"] * 2 + ["completion"] * 2 + ["generate"] * 2
                 + ["relay-chat"] * 2 + ["relay-stream"] * 2)
        async with session(32) as s, session(4) as ctl:
            await asyncio.gather(self.injector(ctl), self.leaver(),
                                 *(self.client(s, i, k) for i, k in enumerate(kinds)))
            if self.healing is not None:
                await self.healing  # the last unhealthy worker heals
            for w in self.workers:
                async with ctl.delete(w + "/sim/fault") as r:
                    await r.read()


def counted_requests(metrics: str) -> Counter:
    out: Counter = Counter()
    for line in metrics.splitlines():
        if line.startswith("radixrouter_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            route = labels.split('route="', 1)[1].split('"', 1)[0]
            out[route] += int(float(value))
    return out


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else float(os.environ.get("CHAOS_SECONDS", "60"))
    with SimWorkers(3, model=MODEL, tokenizer="qwen3", decode_tokens_per_s=400) as ws:
        flags = dict(first_token_timeout=2.0, retry_backoff=0.01, health_check_interval=0.5,
                     health_failure_threshold=1, breaker_cooldown=1.0)
        router = RouterProcess(ws.urls, **flags)
        for u in ws.urls:
            router.argv += ["--openai-url", f"{RELAYED}={u}"]
        with router:
            chaos = Chaos(router.url, ws.urls, seconds)
            t0 = time.monotonic()
            asyncio.run(chaos.run())
            elapsed = time.monotonic() - t0
            deadline = time.monotonic() + 15  # aborts land, stalled requests end, counters settle
            while True:
                _, metrics = http_json("GET", router.url + "/metrics")
                in_flight = [ln for ln in metrics.splitlines()
                             if ln.startswith("radixrouter_worker_in_flight") and not ln.rstrip().endswith(" 0.0")]
                left = [(w.url, st["running_requests"], st["waiting"]) for w in ws
                        if (st := w.stats())["running_requests"] or st["waiting"]]
                counted = counted_requests(metrics)
                lost = {r: (n, counted.get(ROUTE_LABELS[r], 0)) for r, n in chaos.by_route.items()
                        if counted.get(ROUTE_LABELS[r], 0) != n}
                if not (in_flight or left or lost) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            stats = [w.stats() for w in ws]
    total = sum(chaos.by_route.values())
    print(f"requests: {total} in {elapsed:.0f} s; faults injected: {dict(sorted(chaos.faults.items()))}")
    print(f"worker faults applied: {sum(st['faults_applied'] for st in stats)}, "
          f"aborts received: {sum(st['abort_requests'] for st in stats)}")
    for (kind, outcome), n in sorted(chaos.outcomes.items()):
        print(f"  {kind:12s} {outcome:13s} {n:6d}")
    for msg, n in chaos.errors.most_common(8):
        print(f"  clean error x{n}: {msg}")
    retries = [ln for ln in metrics.splitlines() if ln.startswith("radixrouter_retries_total")]
    print("router: " + "; ".join(retries))
    print(f"broken responses: {sum(n for (_, o), n in chaos.outcomes.items() if o == 'broken')}"
          f"{': ' + ' | '.join(chaos.broken) if chaos.broken else ''}")
    print(f"left in flight on the router: {in_flight or 'none'}; left on the workers: {left or 'none'}")
    print(f"requests the router did not count (route: made, counted): {lost or 'none'}")
    ok = not chaos.broken and not in_flight and not left and not lost
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
