"""Same-run A/B of two radixrouter trees: direct, radixrouter from another source tree ("before"), this
checkout's radixrouter and sglang-router, rounds interleaved, in front of the same simulated worker.

    python benches/e2e/ab_router.py --before-python /tmp/before/python --scenarios nonstream,stream64 --repeat 2

`--before-python` is a `python/` folder holding a `radixrouter` package (with its `_core` extension copied
in, e.g. `git archive REV python | tar -x -C /tmp/before && cp python/radixrouter/_core*.so
/tmp/before/python/radixrouter/` when the Rust side did not change); it runs with PYTHONPATH set to it.
Prints one line per run and the medians per target (router CPU from /proc, as benches/e2e/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as R  # noqa: E402
from loadgen import scenarios  # noqa: E402
from targets import RadixRouter, make_target  # noqa: E402

from simutil import SimWorkers  # noqa: E402


class Before(RadixRouter):
    name = "radixrouter-before"
    python_dir = ""

    def start(self, *a, **k):
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.python_dir
        try:
            return super().start(*a, **k)
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


async def amain(args: argparse.Namespace) -> None:
    from radixrouter.sim.tokenizer import qwen3_dir

    Before.python_dir = args.before_python
    specs = ["direct", "before", f"radixrouter:{args.policy}", f"sglang-router:{args.policy}"]
    for name in args.scenarios.split(","):
        sc = scenarios(args.duration)[name]
        rows: dict[str, list[dict]] = {}
        with SimWorkers(sc.workers, model=R.MODEL, tokenizer="qwen3", **sc.worker_flags) as workers:
            for rep in range(args.repeat):
                for spec in specs:
                    t = Before(args.policy) if spec == "before" else make_target(spec)
                    url = t.start(workers.urls, str(qwen3_dir()), R.MODEL)
                    try:
                        row, _ = await R.run_one(t, sc, workers, url)
                    finally:
                        t.stop()
                    rows.setdefault(t.label, []).append(row)
                    print(
                        f"{name} {rep + 1}/{args.repeat} {t.label}: {row['rps']} req/s, "
                        f"router CPU {row['router_cpu_us_per_request']} µs/req, "
                        f"{row['router_cpu_us_per_chunk']} µs/chunk, errors {row['errors']}",
                        flush=True,
                    )
        direct = statistics.median(r["rps"] for r in rows["direct"])
        print(f"== {name} (medians of {args.repeat})")
        for label, rs in rows.items():
            rps = statistics.median(r["rps"] for r in rs)
            cpu = [r["router_cpu_us_per_request"] for r in rs if r["router_cpu_us_per_request"] is not None]
            chunk = [r["router_cpu_us_per_chunk"] for r in rs if r["router_cpu_us_per_chunk"] is not None]
            print(
                f"   {label:36s} {rps:8.1f} req/s  x direct {rps / direct:.3f}  "
                f"CPU/req {statistics.median(cpu) if cpu else '-'}  CPU/chunk {statistics.median(chunk) if chunk else '-'}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-python", required=True)
    ap.add_argument("--scenarios", default="nonstream,stream64,stream256")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--policy", default="round_robin")
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
