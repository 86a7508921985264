"""Where the router's CPU goes on the OpenAI-compatible relay path: `perf record` of the granian worker while
benches/relay_overhead.py's load runs, every on-CPU sample put in one bucket by thread and layer.

    .venv/bin/python benches/relay_profile.py [--seconds 5] [--concurrency 32] [--stream]

Needs `perf` (Linux) and the right to profile a child process (root, or kernel.perf_event_paranoid <= 1).
Same setup as relay_overhead.py: one simulated worker with instant decode, the router relaying a model to
its `/v1/chat/completions` with key injection. Buckets: the event-loop thread (where all Python runs) and
granian's other threads; in user space by library (the Python interpreter, i.e. all Python code, uvloop,
granian, orjson, radixrouter._core, libc), in the kernel by system call (the user-space function that
entered it) or as context switches (any sample under the scheduler) and interrupts. Shares are of the
samples; the per-request figures scale the router's measured CPU per request (user+sys over the run) by
them. perf's own sampling costs some CPU, so that total is above relay_overhead.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

from relay_overhead import body, load  # noqa: E402
from router_overhead import cpu_of  # noqa: E402
from simutil import SimWorker  # noqa: E402

LIBS = (("libpython", "Python interpreter"), ("_granian", "granian (Rust)"), ("uvloop", "uvloop (C)"),
        ("orjson", "orjson"), ("_core", "radixrouter._core (Rust)"), ("_asyncio", "asyncio (C)"), ("libc", "libc"))
SYSCALLS = {"writev": "write", "send": "write", "sendto": "write", "sendmsg": "write", "recv": "read",
            "recvfrom": "read", "readv": "read", "epoll_pwait": "epoll_wait", "syscall": "futex"}


def bucket(frames: list[str]) -> str:
    """frames: `ip sym (dso)` lines of one sample, innermost first."""
    if "[kernel.kallsyms]" not in frames[0]:
        dso = frames[0].rsplit("(", 1)[-1]
        return next((name for key, name in LIBS if key in dso), "other user space")
    syms = [f.split()[1] if len(f.split()) > 1 else "" for f in frames]
    if "__schedule" in syms or "schedule" in syms:
        return "kernel: context switches"
    user = next((f for f in frames if "[kernel.kallsyms]" not in f), None)
    if user is None:
        return "kernel: interrupts"
    fn = user.split()[1] if len(user.split()) > 1 else "?"
    fn = fn.replace("__GI___libc_", "").replace("__libc_", "").replace("__GI___", "").lstrip("_").split("@")[0]
    return f"kernel: {SYSCALLS.get(fn, fn)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--stream", action="store_true", help="streaming chat (32 events) instead of non-streaming")
    a = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("relay_profile.py needs perf (linux-tools)")
    from test_router import RouterProcess

    os.environ["BENCH_UPSTREAM_KEY"] = "sk-bench"
    headers = {"content-type": "application/json"}
    with tempfile.TemporaryDirectory() as tmp, \
            SimWorker(model="sim", tokenizer="qwen3", decode_tokens_per_s=0) as sim, \
            RouterProcess([], qwen3=False, openai_url=f"m={sim.url}/v1", openai_api_key_env="BENCH_UPSTREAM_KEY",
                          health_check_interval=3600, max_concurrent_requests=0) as router:
        kids = subprocess.run(["pgrep", "-P", str(router.proc.pid)], capture_output=True, text=True).stdout.split()
        if len(kids) != 1:
            sys.exit(f"expected one granian worker process, found {kids}")
        worker = kids[0]
        url = router.url + "/v1/chat/completions"
        data = body("m", a.stream)
        asyncio.run(load(url, data, 1.0, a.concurrency, a.stream, headers))  # warm up (connections, caches)
        out = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-p", worker, "-o", out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        c0 = cpu_of(router.proc.pid)
        r = asyncio.run(load(url, data, a.seconds, a.concurrency, a.stream, headers))
        per_request = (cpu_of(router.proc.pid) - c0) / max(r["n"], 1) * 1e6
        perf.send_signal(2)
        err = perf.communicate()[1]
        if perf.returncode not in (0, -2) or not os.path.exists(out):
            sys.exit(f"perf record failed: {err.decode(errors='replace')[-500:]}")
        script = subprocess.run(["perf", "script", "-i", out, "-F", "tid,ip,sym,dso"], capture_output=True,
                                text=True).stdout
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for sample in script.split("\n\n"):
        lines = [ln.strip() for ln in sample.strip().split("\n") if ln.strip()]
        if len(lines) < 2:
            continue
        thread = "event loop" if lines[0].split()[0] == worker else "granian threads"
        counts[(thread, bucket(lines[1:]))] += 1
    total = sum(counts.values())
    kind = "streams (32 events each)" if a.stream else "non-streaming requests"
    print(f"{r['n']} {kind} at {r['rps']:.0f}/s, concurrency {a.concurrency}; router CPU {per_request:.0f} us per"
          f" request; {total} samples")
    for thread in ("event loop", "granian threads"):
        rows = sorted(((c, k) for (t, k), c in counts.items() if t == thread), reverse=True)
        share = sum(c for c, _ in rows) / total
        print(f"{thread}: {100 * share:.0f}%, {per_request * share:.0f} us")
        for c, k in rows:
            if c / total >= 0.005:
                print(f"  {k:<34} {100 * c / total:5.1f}%  {per_request * c / total:5.0f} us")


if __name__ == "__main__":
    main()
