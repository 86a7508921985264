"""User-space instructions per request of one target under valgrind's callgrind: a count that does not
depend on how busy the machine is, for comparing two versions of the router's code where CPU time on the
shared 2-core machine moves by 10-20% between runs. It does not count the kernel (sockets, wake-ups) or
what cache misses cost, so it is not CPU time.

The target starts under callgrind with instrumentation off; after 40 warm-up requests it is switched on
(callgrind_control) for N chat requests (8 concurrent, unique prompts, 16-token replies), then dumped.

    .venv/bin/python benches/e2e/router_instructions.py radixrouter:round_robin 300 [--keep DIR]

Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent / "tests")]

from loadgen import chat, session, words  # noqa: E402
from targets import make_target  # noqa: E402

from simutil import SimWorkers  # noqa: E402


async def drive(url: str, n: int, concurrency: int = 8) -> int:
    import random

    rng = random.Random(5)
    prompts = [words(rng, 40) for _ in range(64)]
    ok = 0
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with session(concurrency) as s:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                body = {"model": "sim-model", "max_tokens": 16,
                        "messages": [{"role": "user", "content": f"{i}: {prompts[i % 64]}"}]}
                r = await chat(s, url + "/v1/chat/completions", body, False)
                ok += r.ok
                if not r.ok and len(errors) < 3:
                    errors.append(r.error)

        await asyncio.gather(*(one(i) for i in range(n)))
    if errors:
        print("errors (first 3):", errors, file=sys.stderr)
    return ok


def main() -> None:
    from radixrouter.sim.tokenizer import qwen3_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="radixrouter:POLICY, sglang-router:POLICY")
    ap.add_argument("requests", type=int, nargs="?", default=300)
    ap.add_argument("--keep", help="copy the callgrind files here (for callgrind_annotate)")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (apt-get install valgrind)")
    out = tempfile.mkdtemp(prefix="rr-callgrind-")
    with SimWorkers(1, model="sim-model", tokenizer="qwen3", min_output_tokens=16, max_output_tokens=16) as w:
        t = make_target(a.target)
        command = t.command
        t.command = lambda *args: ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
                                   f"--callgrind-out-file={out}/cg.%p", *command(*args)]
        url = t.start(w.urls, str(qwen3_dir()), "sim-model")
        try:
            asyncio.run(drive(url, 40))
            subprocess.run(["callgrind_control", "-i", "on"], check=True, stdout=subprocess.DEVNULL)
            ok = asyncio.run(drive(url, a.requests))
            subprocess.run(["callgrind_control", "-i", "off"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["callgrind_control", "-d"], check=True, stdout=subprocess.DEVNULL)
            time.sleep(2)
        finally:
            t.stop()
    total = 0
    for f in glob.glob(f"{out}/cg.*"):
        with open(f) as fh:
            for line in fh:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        for f in glob.glob(f"{out}/cg.*"):
            shutil.copy(f, a.keep)
    shutil.rmtree(out, ignore_errors=True)
    print(f"{a.target}: {ok}/{a.requests} requests ok; {total / a.requests / 1000:.1f} k instructions per request")


if __name__ == "__main__":
    main()
