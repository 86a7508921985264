"""Asyncio load generator (aiohttp, orjson) and the scenarios of the end-to-end harness."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu river stone cloud garden window paper music "
    "number water story field market signal cache router worker prefix stream token model answer system"
).split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Result:
    start: float
    end: float = 0.0
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""


async def chat(session: aiohttp.ClientSession, url: str, body: dict, stream: bool) -> Result:
    """One chat completion. Streaming: TTFT = first non-empty content delta; ITL = gaps between them."""
    res = Result(start=time.perf_counter())
    payload = dict(body)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    try:
        async with session.post(
            url, data=orjson.dumps(payload), headers={"content-type": "application/json"}
        ) as r:
            res.status = r.status
            if r.status != 200:
                res.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                res.end = time.perf_counter()
                return res
            if not stream:
                data = orjson.loads(await r.read())
                res.text = data["choices"][0]["message"]["content"] or ""
                res.ttft = time.perf_counter() - res.start
                _usage(res, data.get("usage"))
                res.ok = True
            else:
                parts: list[str] = []
                last = 0.0
                done = False
                async for line in r.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    now = time.perf_counter()
                    res.chunks += 1
                    ev = orjson.loads(data)
                    if "error" in ev:
                        res.error = str(ev["error"])[:200]
                        break
                    if ev.get("usage"):
                        _usage(res, ev["usage"])
                    for ch in ev.get("choices") or ():
                        content = (ch.get("delta") or {}).get("content")
                        if content:
                            parts.append(content)
                            if res.ttft is None:
                                res.ttft = now - res.start
                            else:
                                res.itl.append(now - last)
                            last = now
                res.text = "".join(parts)
                res.ok = done and not res.error
                if not done and not res.error:
                    res.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
    res.end = time.perf_counter()
    return res


def _usage(res: Result, usage: dict | None) -> None:
    if not usage:
        return
    res.prompt_tokens = usage.get("prompt_tokens") or 0
    res.completion_tokens = usage.get("completion_tokens") or 0
    details = usage.get("prompt_tokens_details") or {}
    res.cached_tokens = details.get("cached_tokens") or 0


def session(concurrency: int, api_key: str | None = None, timeout: float = 120) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(limit=concurrency + 4, ttl_dns_cache=None, force_close=False)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    return aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers
    )


# ------------------------------------------------------------------------------------------ scenarios
@dataclass
class Scenario:
    name: str
    description: str
    workers: int
    worker_flags: dict
    kind: str  # "closed" (fixed concurrency for a duration) or "multiturn"
    stream: bool = False
    concurrency: int = 32
    duration: float = 10.0
    warmup: float = 1.5
    max_tokens: int = 16
    prompt_words: int = 40
    # multiturn
    conversations: int = 0
    turns: int = 0
    system_prompts: int = 0
    system_words: int = 0
    user_words: int = 0


def scenarios(duration: float, quick: bool = False) -> dict[str, Scenario]:
    scale = 0.5 if quick else 1.0
    return {
        "nonstream": Scenario(
            "nonstream",
            "non-streaming chat, 1 worker, fixed concurrency 32, 16-token replies",
            workers=1,
            worker_flags={"min_output_tokens": 16, "max_output_tokens": 16},
            kind="closed",
            stream=False,
            concurrency=32,
            duration=duration,
            max_tokens=16,
        ),
        "stream": Scenario(
            "stream",
            "streaming chat, 1 worker decoding 500 tokens/s per sequence, fixed concurrency 32, 64-token replies",
            workers=1,
            worker_flags={"min_output_tokens": 64, "max_output_tokens": 64, "decode_tokens_per_s": 500},
            kind="closed",
            stream=True,
            concurrency=32,
            duration=duration,
            max_tokens=64,
        ),
        # The router issue's matrix: non-streaming at 256, streaming at 1, 64 and 256 concurrent streams.
        "nonstream256": Scenario(
            "nonstream256",
            "non-streaming chat, 1 worker, fixed concurrency 256, 16-token replies",
            workers=1,
            worker_flags={"min_output_tokens": 16, "max_output_tokens": 16},
            kind="closed",
            stream=False,
            concurrency=256,
            duration=duration,
            max_tokens=16,
        ),
        **{
            f"stream{c}": Scenario(
                f"stream{c}",
                f"streaming chat, 1 worker decoding 500 tokens/s per sequence, fixed concurrency {c}, 64-token replies",
                workers=1,
                worker_flags={"min_output_tokens": 64, "max_output_tokens": 64, "decode_tokens_per_s": 500},
                kind="closed",
                stream=True,
                concurrency=c,
                duration=duration,
                max_tokens=64,
            )
            for c in (1, 64, 256)
        },
        "multiturn": Scenario(
            "multiturn",
            "multi-turn chat over 3 workers: shared system prompts, conversations that outgrow one worker's KV "
            "cache; streaming; prefill 40k tok/s, decode 1k tok/s",
            workers=3,
            worker_flags={
                "min_output_tokens": 60,
                "max_output_tokens": 60,
                "kv_cache_tokens": 24000,
                "prefill_tokens_per_s": 40000,
                "decode_tokens_per_s": 1000,
            },
            kind="multiturn",
            stream=True,
            concurrency=12,
            max_tokens=60,
            conversations=int(48 * scale),
            turns=6,
            system_prompts=4,
            system_words=500,
            user_words=60,
        ),
    }


async def closed_loop(
    url: str, sc: Scenario, model: str, api_key: str | None = None
) -> tuple[list[Result], float, float]:
    """`concurrency` clients, each sending the next request as soon as the last finished. Every prompt is
    unique (a request number first), so the workers' cache hits are the template prefix only, whatever the rate.

    Returns (results started after the warmup, measurement start, measurement end)."""
    rng = random.Random(1)
    prompts = [words(rng, sc.prompt_words) for _ in range(256)]
    t0 = time.perf_counter()
    t_measure = t0 + sc.warmup
    t_end = t_measure + sc.duration
    results: list[Result] = []
    endpoint = url + "/v1/chat/completions"

    async with session(sc.concurrency, api_key) as s:

        async def client(i: int) -> None:
            k = i
            while time.perf_counter() < t_end:
                body = {
                    "model": model,
                    "max_tokens": sc.max_tokens,
                    "messages": [{"role": "user", "content": f"{k}: {prompts[k % len(prompts)]}"}],
                }
                k += sc.concurrency
                r = await chat(s, endpoint, body, sc.stream)
                if r.start >= t_measure and r.end <= t_end:
                    results.append(r)

        await asyncio.gather(*(client(i) for i in range(sc.concurrency)))
    return results, t_measure, t_end


async def multiturn(
    url: str, sc: Scenario, model: str, api_key: str | None = None
) -> tuple[list[Result], float, float]:
    """`conversations` chats of `turns` turns, all interleaved with at most `concurrency` requests in
    flight (so the working set is every conversation at once); each turn resends the whole history (system
    prompt shared by a group of conversations) plus a new user message."""
    rng = random.Random(7)
    systems = [
        f"You are assistant number {i}. " + words(rng, sc.system_words) for i in range(sc.system_prompts)
    ]
    endpoint = url + "/v1/chat/completions"
    results: list[Result] = []
    sem = asyncio.Semaphore(sc.concurrency)

    async with session(sc.concurrency, api_key) as s:

        async def conversation(c: int) -> None:
            crng = random.Random(1000 + c)
            messages = [{"role": "system", "content": systems[c % len(systems)]}]
            for t in range(sc.turns):
                messages.append({"role": "user", "content": f"Turn {t}: " + words(crng, sc.user_words)})
                body = {"model": model, "max_tokens": sc.max_tokens, "messages": messages}
                async with sem:  # per request: all conversations advance, interleaved
                    r = await chat(s, endpoint, body, sc.stream)
                results.append(r)
                if not r.ok:
                    return
                messages.append({"role": "assistant", "content": r.text})

        t0 = time.perf_counter()
        await asyncio.gather(*(conversation(c) for c in range(sc.conversations)))
        t1 = time.perf_counter()
    return results, t0, t1
