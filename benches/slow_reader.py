"""Clients that stop reading a stream: how much the router buffers for them.

    .venv/bin/python benches/slow_reader.py [--streams 4] [--seconds 8] [--interface rsgi|asgi]

One simulated worker generating 20,000 tokens/s (incremental stream events) behind `radixrouter serve`.
`--streams` raw TCP clients (receive buffer 4 KiB) each send one streaming chat of up to 100,000 tokens and
then read nothing. Every second it prints the router's resident memory above its level before the
requests and the tokens the worker has generated; at the end it closes the clients and checks that the
worker's requests were aborted.

What it shows: granian gives an ASGI/RSGI app no backpressure on a response body (RSGI's
`send_bytes` puts the chunk on an unbounded channel and returns at once), so once the kernel's socket
buffers are full, what the worker keeps generating for a client that does not read is held in the
router's memory until the client reads or leaves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]

from simutil import SimWorkers, rss_of_tree, stalled_streams  # noqa: E402
from test_router import MODEL, RouterProcess  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--interface", default="rsgi", choices=["rsgi", "asgi"])
    a = ap.parse_args()
    with SimWorkers(1, model=MODEL, tokenizer="qwen3", decode_tokens_per_s=20000, context_length=200000,
                    incremental_streaming_output=True) as ws, RouterProcess(ws.urls, interface=a.interface) as r:
        ws[0].fault(reply="hello world " * 30000, count=-1)  # long answers: no early end of sequence
        base = rss_of_tree(r.proc.pid)
        socks = stalled_streams(r.port, a.streams, MODEL)
        for t in range(a.seconds):
            time.sleep(1)
            st = ws[0].stats()
            print(f"t={t + 1:2d} s  router RSS +{(rss_of_tree(r.proc.pid) - base) / 1e6:6.1f} MB  worker tokens "
                  f"generated {st['completion_tokens']:7d}  running {st['running_requests']}", flush=True)
        for s in socks:
            s.close()
        deadline = time.monotonic() + 10
        while ws[0].stats()["running_requests"] and time.monotonic() < deadline:
            time.sleep(0.1)
        left = ws[0].stats()["running_requests"]
        print(f"after the clients closed: {left} request(s) still running on the worker; router RSS "
              f"+{(rss_of_tree(r.proc.pid) - base) / 1e6:.1f} MB")
        return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
