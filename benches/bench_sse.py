"""SSE codec benchmarks, side by side in one run (pytest-benchmark).

Decode: a realistic OpenAI chat stream of about 10 MB (chunk JSON of 150-300 bytes, read 4 KiB at a time)
with radixrouter.SseDecoder (feed(): SseEvent objects, the consumer reads .data; feed_data(): the data
of each event as bytes), httpx-sse's decoder (as its iter_sse drives it: incremental UTF-8 text,
SSELineDecoder, SSEDecoder) and the openai SDK's decoder (openai._streaming.SSEDecoder.iter_bytes).
Encode: 100,000 chunk payloads with encode_event against b"data: " + payload + b"\\n\\n".

Run: make bench   (or: .venv/bin/python -m pytest benches/bench_sse.py --benchmark-only)
"""

from __future__ import annotations

import codecs
import random

import orjson
import pytest

from radixrouter import SseDecoder, encode_event

WORDS = "the quick brown fox jumps over a lazy dog while router streams tokens fast cache prefix radix tree".split()
NON_ASCII = "é 😀 日本 ü ß".split()


def _chat_stream(non_ascii_share: float, target_bytes: int = 10_000_000, seed: int = 7) -> tuple[bytes, list[bytes]]:
    """Chat chunks as an OpenAI-compatible server sends them; `non_ascii_share` of the chunks carry a
    non-ASCII word (orjson writes it as raw UTF-8)."""
    rng = random.Random(seed)
    payloads = []
    size = 0
    while size < target_bytes:
        n = rng.randrange(1, 60)
        content = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 4)))[:n]
        if rng.random() < non_ascii_share:
            content += " " + rng.choice(NON_ASCII)
        chunk = {
            "id": "chatcmpl-8f1a2b3c4d5e6f7a8b9c0d1e",
            "object": "chat.completion.chunk",
            "created": 1763700000,
            "model": "Qwen/Qwen3-8B",
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}],
        }
        if rng.random() < 0.3:
            chunk["usage"] = None
        p = orjson.dumps(chunk)
        assert 150 <= len(p) <= 300, len(p)
        payloads.append(p)
        size += len(p) + 8
    stream = b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"
    return stream, payloads


# "english": 1% of chunks carry a non-ASCII character; "multilingual": 60% do (Python strings of
# non-ASCII text cost more to build, for every decoder).
STREAMS = {name: _chat_stream(share) for name, share in (("english", 0.01), ("multilingual", 0.6))}
STREAM, PAYLOADS = STREAMS["english"]
READS: list[bytes] = []


DECODED: list[list[bytes]] = []


def use_stream(name: str) -> tuple[int, float]:
    stream, payloads = STREAMS[name]
    READS[:] = [stream[i : i + 4096] for i in range(0, len(stream), 4096)]
    dec = SseDecoder()
    DECODED[:] = [dec.feed_data(chunk) for chunk in READS]
    return len(payloads) + 1, len(stream) / 1e6


def consumer_loop_only() -> int:
    """Not a decoder: the consumer's loop over the lists feed_data returned for the reads, decoded
    beforehand. The floor under any decoder that returns one object per event."""
    n = 0
    for items in DECODED:
        for data in items:  # noqa: B007 - the same loop as decode_radixrouter_data
            n += 1
    return n


def decode_radixrouter() -> int:
    dec = SseDecoder()
    n = 0
    for chunk in READS:
        for ev in dec.feed(chunk):
            ev.data  # noqa: B018 - a consumer reads the data
            n += 1
    return n


def decode_radixrouter_data() -> int:
    """The data-only API: one bytes object per event; the loop hands each to the consumer."""
    dec = SseDecoder()
    n = 0
    for chunk in READS:
        for data in dec.feed_data(chunk):  # noqa: B007 - the consumer receives every payload
            n += 1
    return n


def decode_httpx_sse() -> int:
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    dec = SSEDecoder()
    n = 0
    for chunk in READS:
        for line in lines.decode(text_decoder.decode(chunk)):
            sse = dec.decode(line)
            if sse is not None:
                sse.data  # noqa: B018
                n += 1
    return n


def decode_openai_sdk() -> int:
    from openai._streaming import SSEDecoder

    n = 0
    for sse in SSEDecoder().iter_bytes(iter(READS)):
        sse.data  # noqa: B018
        n += 1
    return n


@pytest.mark.parametrize("stream", ["english", "multilingual"])
@pytest.mark.parametrize(
    "impl",
    [decode_radixrouter, decode_radixrouter_data, decode_httpx_sse, decode_openai_sdk, consumer_loop_only],
    ids=["radixrouter-feed", "radixrouter-feed_data", "httpx-sse", "openai-sdk", "floor-consumer-loop-only"],
)
def test_decode_chat_stream(benchmark, impl, stream) -> None:
    n_events, mb = use_stream(stream)
    benchmark.group = f"sse-decode-10MB-{stream}"
    rounds = 5 if impl in (decode_httpx_sse, decode_openai_sdk) else 20
    n = benchmark.pedantic(impl, rounds=rounds, iterations=1, warmup_rounds=1)
    assert n == n_events
    benchmark.extra_info["MB"] = round(mb, 2)
    benchmark.extra_info["MB_per_s"] = round(mb / benchmark.stats.stats.mean, 1)


# 100,000 chunk payloads (the english stream's payloads, repeated to the count).
ENC_PAYLOADS = [PAYLOADS[i % len(PAYLOADS)] for i in range(100_000)]


def encode_radixrouter() -> int:
    total = 0
    for p in ENC_PAYLOADS:
        total += len(encode_event(p))
    return total


def encode_concat() -> int:
    total = 0
    for p in ENC_PAYLOADS:
        total += len(b"data: " + p + b"\n\n")
    return total


@pytest.mark.benchmark(group="sse-encode-100k")
@pytest.mark.parametrize("impl", [encode_radixrouter, encode_concat], ids=["encode_event", "python-concat"])
def test_encode_payloads(benchmark, impl) -> None:
    total = benchmark.pedantic(impl, rounds=15, iterations=1, warmup_rounds=1)
    assert total == sum(len(p) + 8 for p in ENC_PAYLOADS)
    benchmark.extra_info["payloads"] = len(ENC_PAYLOADS)
