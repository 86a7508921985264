"""A bounded fuzz run of the SSE decoder through Python.

`make fuzz` runs it for FUZZ_SECONDS (default 120); the normal test run gives it 2 seconds.
Every input must decode without any exception other than SseDecodeError (a Rust panic would surface as
pyo3's PanicException, a BaseException, and fail the test), and any chunking must give the same events.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from radixrouter import SseDecodeError, SseDecoder, encode_event

PIECES = [b"data: ", b"data:", b"data", b"id: ", b"id", b"event: ", b"retry: ", b"12", b": ", b"\r", b"\n",
          b"\r\n", b"\xef\xbb\xbf", b"\xe2\x82\xac", b"\xe2\x82", b"\xff", b"\x00", b" ", b":", b"x", b"{}"]


def _random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(60)):
        if rng.random() < 0.2:
            parts.append(rng.randbytes(rng.randrange(1, 8)))
        else:
            parts.append(rng.choice(PIECES))
    return b"".join(parts)


def _decode(chunks: list[bytes], limit: int) -> tuple[list, str, int | None] | str:
    d = SseDecoder(max_line_bytes=limit, max_event_bytes=limit)
    # feed_data on a second decoder must agree with feed read by read.
    d_data = SseDecoder(max_line_bytes=limit, max_event_bytes=limit)
    out = []
    for c in chunks:
        try:
            events = d.feed(c)
        except SseDecodeError:
            with pytest.raises(SseDecodeError, match="limit"):
                d_data.feed_data(c)
            return "limit"
        out += events
        if any(e.event != "message" for e in events):
            with pytest.raises(SseDecodeError, match="feed_data"):
                d_data.feed_data(c)
        else:
            assert d_data.feed_data(c) == [e.data.encode() for e in events]
    d.close()
    return out, d.last_event_id, d.reconnection_time


def test_fuzz_decoder_bounded() -> None:
    seconds = float(os.environ.get("FUZZ_SECONDS", "2"))
    seed = int(os.environ.get("FUZZ_SEED", "1234"))
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        stream = _random_stream(rng)
        limit = rng.choice([16, 64, 1 << 20])
        whole = _decode([stream], limit)
        cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(6)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=False)]
        chunked = _decode(chunks, limit)
        assert chunked == whole, (stream, cuts)
        runs += 1
    assert runs > 0


def test_fuzz_encoder_round_trip_bounded() -> None:
    seconds = float(os.environ.get("FUZZ_SECONDS", "2")) / 2
    rng = random.Random(99)
    alphabet = "ab \r\n:\x00é😀\u2028"
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = "".join(rng.choice(alphabet) for _ in range(rng.randrange(30)))
        frame = encode_event(data)
        assert b"\r" not in frame and frame.endswith(b"\n\n")
        assert all(line.startswith(b"data: ") for line in frame[:-2].split(b"\n"))
        (event,) = SseDecoder().feed(frame)
        assert event.data == data.replace("\r\n", "\n").replace("\r", "\n")
        runs += 1
    assert runs > 0
