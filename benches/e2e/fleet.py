"""Fleet benchmark: the multi-turn chat scenario over 4 simulated workers, per routing policy.

    python benches/e2e/fleet.py                          # what `docs/bench-fleet.md` reports
    python benches/e2e/fleet.py --repeat 1 --targets radixrouter:cache_aware,sglang-router:cache_aware

The 4 workers' KV caches are sized so the live conversations fit in the four together but not in any one;
the "ideal" row is one worker whose KV cache equals the four together (no routing can beat its hit ratio,
but it has a quarter of the fleet's compute). For every target the workers are reset (stats, faults, KV),
the same conversations are replayed, and the workers' own counters give cached_tokens / prompt_tokens and
the requests per worker. Reuses the harness's load generator (`loadgen.multiturn`) and targets.
Writes <out>/fleet.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import Scenario, multiturn  # noqa: E402
from run import MODEL, dist_ms, median_row, reset_workers, worker_stats  # noqa: E402
from targets import REPO, Direct, make_target  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from simutil import SimWorkers  # noqa: E402

POLICIES = "cache_aware,round_robin,least_load,power_of_two,random"
DEFAULT_TARGETS = ",".join(
    [f"radixrouter:{p}" for p in POLICIES.split(",")]
    + ["sglang-router:cache_aware", "sglang-router:round_robin"]
)
KV_PER_WORKER = 16000
WORKER_FLAGS = {
    "min_output_tokens": 60,
    "max_output_tokens": 60,
    "prefill_tokens_per_s": 20000,
    "decode_tokens_per_s": 1000,
}


def scenario(conversations: int) -> Scenario:
    return Scenario(
        "fleet",
        f"multi-turn chat, {conversations} conversations x 6 turns, 2 system prompts, concurrency 8, streaming",
        workers=4,
        worker_flags=dict(WORKER_FLAGS, kv_cache_tokens=KV_PER_WORKER),
        kind="multiturn",
        stream=True,
        concurrency=8,
        max_tokens=60,
        conversations=conversations,
        turns=6,
        system_prompts=2,
        system_words=300,
        user_words=60,
    )


async def run_target(label: str, url: str, api_key: str | None, urls: list[str], sc: Scenario) -> dict:
    await reset_workers(urls)
    before = await worker_stats(urls)
    results, t0, t1 = await multiturn(url, sc, MODEL, api_key)
    after = await worker_stats(urls)
    ok = [r for r in results if r.ok]
    per_worker, prompt, cached, peak_kv = [], 0, 0, []
    for b, a in zip(before, after, strict=True):
        per_worker.append(
            sum(a[k] - b[k] for k in ("chat_requests", "generate_requests", "completion_requests"))
        )
        prompt += a["prompt_tokens"] - b["prompt_tokens"]
        cached += a["cached_tokens"] - b["cached_tokens"]
        peak_kv.append(a["kv_evicted_tokens"] - b["kv_evicted_tokens"])
    mean = sum(per_worker) / len(per_worker)
    return {
        "target": label,
        "requests": len(ok),
        "errors": len(results) - len(ok),
        "elapsed_s": round(t1 - t0, 3),
        "rps": round(len(ok) / (t1 - t0), 2),
        "cache_hit_ratio": round(cached / prompt, 4) if prompt else None,
        "worker_prompt_tokens": prompt,
        "worker_cached_tokens": cached,
        "ttft_ms": dist_ms([r.ttft for r in ok if r.ttft is not None]),
        "requests_per_worker": per_worker,
        "busiest_vs_mean": round(max(per_worker) / mean, 3) if mean else None,
        "kv_evicted_tokens": peak_kv,
        "kv_tokens_at_end": [a["kv_cache_tokens"] for a in after],
    }


async def amain(args: argparse.Namespace) -> int:
    from radixrouter.sim.tokenizer import qwen3_dir

    model_dir = str(qwen3_dir())
    sc = scenario(args.conversations)
    specs = [t.strip() for t in args.targets.split(",") if t.strip()]
    runs: dict[str, list[dict]] = {}
    with (
        SimWorkers(4, model=MODEL, tokenizer="qwen3", **sc.worker_flags) as fleet,
        SimWorkers(
            1, model=MODEL, tokenizer="qwen3", **dict(WORKER_FLAGS, kv_cache_tokens=4 * KV_PER_WORKER)
        ) as ideal,
    ):
        for rep in range(args.repeat):  # interleaved: A B C ... A B C ...
            if not args.no_ideal:
                row = await run_target("ideal single worker (4x KV)", ideal.urls[0], None, ideal.urls, sc)
                runs.setdefault(row["target"], []).append(row)
                print(
                    f"[{rep + 1}] {row['target']}: {row['cache_hit_ratio']} {row['ttft_ms']}", file=sys.stderr
                )
            for spec in specs:
                target = make_target(spec)
                if isinstance(target, Direct):
                    continue
                url = target.start(fleet.urls, model_dir, MODEL)
                try:
                    row = await run_target(target.label, url, target.api_key, fleet.urls, sc)
                finally:
                    target.stop()
                runs.setdefault(row["target"], []).append(row)
                print(
                    f"[{rep + 1}] {row['target']}: hit {row['cache_hit_ratio']} ttft {row['ttft_ms']} "
                    f"per worker {row['requests_per_worker']} errors {row['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
    rows = [median_row(rs) for rs in runs.values()]
    ideal_hit = next((r["cache_hit_ratio"] for r in rows if r["target"].startswith("ideal")), None)
    for r in rows:
        if ideal_hit:
            r["hit_vs_ideal"] = round(r["cache_hit_ratio"] / ideal_hit, 3)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": args.command,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "scenario": sc.description,
        "worker_flags": sc.worker_flags,
        "repeat": args.repeat,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(
        json.dumps({"meta": meta, "results": rows, "runs": [x for rs in runs.values() for x in rs]}, indent=1)
        + "\n"
    )
    print(markdown(meta, rows))
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    out = [
        f"`{meta['command']}` ({meta['date']}, {meta['machine']}, median of {meta['repeat']} runs)",
        "",
        "| target | hit ratio | vs ideal | TTFT p50 ms | TTFT p99 ms | requests per worker | busiest / mean | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['target']} | {r['cache_hit_ratio']} | {r.get('hit_vs_ideal', '')} | {r['ttft_ms']['p50']} | "
            f"{r['ttft_ms']['p99']} | {r['requests_per_worker']} | {r['busiest_vs_mean']} | {r['errors']} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=DEFAULT_TARGETS)
    p.add_argument("--conversations", type=int, default=48)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-ideal", action="store_true")
    p.add_argument("--out", default=str(REPO / "benches" / "results"))
    args = p.parse_args(argv)
    args.command = (
        "python benches/e2e/fleet.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ).strip()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
