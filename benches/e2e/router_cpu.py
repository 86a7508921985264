"""One simulated worker and one target (direct, radixrouter:POLICY or sglang-router:POLICY) under one
closed-loop scenario of benches/e2e (default `nonstream`); prints req/s and the target's CPU per request.
Optionally records a py-spy profile (raw format) of the target's process tree while it runs.

    .venv/bin/python benches/e2e/router_cpu.py radixrouter:round_robin 5 [PYSPY_OUT] [SCENARIO]

For an A/B of one setting, alternate runs (e.g. with RADIXROUTER_INTERFACE=asgi|rsgi): a single 5 s run on
a shared 2-core machine moves by 10-20%.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent / "tests")]

from loadgen import closed_loop, scenarios  # noqa: E402
from targets import make_target, proc_tree_cpu  # noqa: E402

from simutil import SimWorkers  # noqa: E402


def main() -> None:
    from radixrouter.sim.tokenizer import qwen3_dir

    spec, seconds = sys.argv[1], float(sys.argv[2])
    pyspy = sys.argv[3] if len(sys.argv) > 3 else ""
    name = sys.argv[4] if len(sys.argv) > 4 else "nonstream"
    sc = scenarios(seconds)[name]
    with SimWorkers(1, model="sim-model", tokenizer="qwen3", **sc.worker_flags) as w:
        t = make_target(spec)
        url = t.start(w.urls, str(qwen3_dir()), "sim-model")
        try:
            asyncio.run(closed_loop(url, scenarios(1.0)[name], "sim-model"))  # warm up
            spy = None
            if pyspy:
                spy = subprocess.Popen(
                    [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--subprocesses",
                     "-p", str(t.pid), "-r", "250", "-f", "raw", "-o", pyspy, "-d", str(int(seconds + 3)),
                     "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            c0 = proc_tree_cpu(t.pid)
            res, a, b = asyncio.run(closed_loop(url, sc, "sim-model"))
            c1 = proc_tree_cpu(t.pid)
            n = sum(1 for r in res if r.ok)
            print(f"{spec} {name}: {n / (b - a):.0f} req/s, errors {len(res) - n}, "
                  f"CPU per request {(c1 - c0) / max(1, n) * 1e6:.0f} us")
            if spy is not None:
                spy.wait()
        finally:
            t.stop()


if __name__ == "__main__":
    main()
