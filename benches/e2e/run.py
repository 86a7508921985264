"""End-to-end load harness: simulated SGLang workers behind each router, driven by an asyncio load generator.

    python benches/e2e/run.py                                  # everything (what `make bench-e2e` runs)
    python benches/e2e/run.py --targets direct,sglang-router --scenarios nonstream --duration 5

For every scenario it starts the scenario's sim workers once; then for every target it resets them (stats,
faults, KV cache), starts the target on 127.0.0.1, runs the load, samples CPU time of the target's process
tree and of the workers from /proc, reads the workers' /sim/stats, and stops the target. Output (overwritten
each run): <out>/e2e.json, <out>/e2e.md, <out>/e2e_latency.png, <out>/e2e_cache.png, <out>/e2e_throughput.png.
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

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import Result, Scenario, closed_loop, multiturn, scenarios  # noqa: E402
from targets import REPO, Target, make_target, proc_tree_cpu  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from simutil import SimWorkers  # noqa: E402

MODEL = "sim-model"
DEFAULT_TARGETS = "direct,radixrouter,radixrouter:round_robin,sglang-router,sglang-router:round_robin,litellm"


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))
    return v[k]


def dist_ms(values: list[float]) -> dict:
    return {
        f"p{p}": (round(x * 1000, 3) if (x := pct(values, p)) is not None else None) for p in (50, 90, 99)
    } | {"mean": round(sum(values) / len(values) * 1000, 3) if values else None}


async def worker_stats(urls: list[str]) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        out = []
        for u in urls:
            async with s.get(u + "/sim/stats") as r:
                out.append(await r.json())
        return out


async def reset_workers(urls: list[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for u in urls:
            async with s.post(u + "/sim/reset", json={"flush_cache": True}) as r:
                assert r.status == 200, await r.text()


def cpu_snapshot(target: Target, workers: SimWorkers) -> dict:
    return {
        "router": proc_tree_cpu(target.pid) if target.pid else 0.0,
        "workers": sum(proc_tree_cpu(w.pid) for w in workers),
        "loadgen": sum(os.times()[:2]),
    }


async def run_one(target: Target, sc: Scenario, workers: SimWorkers, url: str) -> tuple[dict, dict]:
    """Run `sc` against `target`; returns (summary row, raw samples for the plots)."""
    await reset_workers(workers.urls)
    if sc.kind == "closed":
        before: dict = {}
        after: dict = {}

        async def sampler(t_measure: float, t_end: float) -> None:
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            before.update(cpu=cpu_snapshot(target, workers), stats=await worker_stats(workers.urls))
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            after.update(cpu=cpu_snapshot(target, workers), stats=await worker_stats(workers.urls))

        t_start = time.perf_counter()
        sample = asyncio.ensure_future(sampler(t_start + sc.warmup, t_start + sc.warmup + sc.duration))
        results, t0, t1 = await closed_loop(url, sc, MODEL, target.api_key)
        await sample
    else:
        before = {"cpu": cpu_snapshot(target, workers), "stats": await worker_stats(workers.urls)}
        results, t0, t1 = await multiturn(url, sc, MODEL, target.api_key)
        after = {"cpu": cpu_snapshot(target, workers), "stats": await worker_stats(workers.urls)}
    ok = [r for r in results if r.ok]
    raw = {"latency": [r.end - r.start for r in ok], "ttft": [r.ttft for r in ok if r.ttft is not None]}
    return summarize(target, sc, results, t1 - t0, before, after), raw


def summarize(
    target: Target, sc: Scenario, results: list[Result], elapsed: float, before: dict, after: dict
) -> dict:
    ok = [r for r in results if r.ok]
    errors = [r for r in results if not r.ok]
    cpu = {k: after["cpu"][k] - before["cpu"][k] for k in after["cpu"]}
    per_worker = []
    prompt = cached = 0
    for b, a in zip(before["stats"], after["stats"], strict=True):
        n = sum(a[k] - b[k] for k in ("chat_requests", "generate_requests", "completion_requests"))
        per_worker.append(n)
        prompt += a["prompt_tokens"] - b["prompt_tokens"]
        cached += a["cached_tokens"] - b["cached_tokens"]
    chunks = sum(r.chunks for r in ok)
    total = sum(per_worker)
    mean = total / len(per_worker) if per_worker else 0
    spread = (max(per_worker) - min(per_worker)) / mean if mean else 0.0
    n = len(ok)
    return {
        "target": target.label,
        "target_name": target.name,
        "policy": target.policy,
        "scenario": sc.name,
        "requests": n,
        "errors": len(errors),
        "error_samples": sorted({r.error for r in errors})[:5],
        "elapsed_s": round(elapsed, 3),
        "rps": round(n / elapsed, 2) if elapsed else 0.0,
        "latency_ms": dist_ms([r.end - r.start for r in ok]),
        "ttft_ms": dist_ms([r.ttft for r in ok if r.ttft is not None]),
        "itl_ms": dist_ms([x for r in ok for x in r.itl]),
        "chunks": chunks,
        "chunks_per_s": round(chunks / elapsed, 1) if elapsed else 0.0,
        "router_cpu_s": round(cpu["router"], 3),
        "router_cpu_us_per_request": round(cpu["router"] / n * 1e6, 1) if n and target.pid else None,
        "router_cpu_us_per_chunk": round(cpu["router"] / chunks * 1e6, 2) if chunks and target.pid else None,
        "workers_cpu_s": round(cpu["workers"], 3),
        "workers_cpu_us_per_request": round(cpu["workers"] / n * 1e6, 1) if n else None,
        "loadgen_cpu_s": round(cpu["loadgen"], 3),
        "worker_prompt_tokens": prompt,
        "worker_cached_tokens": cached,
        "cache_hit_ratio": round(cached / prompt, 4) if prompt else None,
        "requests_per_worker": per_worker,
        "spread": round(spread, 3),
    }


def median_row(rs: list[dict]) -> dict:
    """Median of every number over the repetitions of one target; errors summed; per-run req/s kept."""

    def med(vals: list) -> object:
        nums = sorted(v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool))
        if not nums:
            return vals[0]
        m = nums[len(nums) // 2] if len(nums) % 2 else (nums[len(nums) // 2 - 1] + nums[len(nums) // 2]) / 2
        return round(m, 4) if isinstance(m, float) else m

    out: dict = {}
    for key, first in rs[0].items():
        vals = [r[key] for r in rs]
        if isinstance(first, dict):
            out[key] = {k: med([v[k] for v in vals]) for k in first}
        elif isinstance(first, list) and first and all(isinstance(x, (int, float)) for x in first):
            out[key] = [med([v[i] for v in vals]) for i in range(len(first))]
        elif key in ("errors", "requests"):
            out[key] = sum(vals) if key == "errors" else med(vals)
        elif key == "error_samples":
            out[key] = sorted({e for v in vals for e in v})[:5]
        else:
            out[key] = med(vals)
    out["runs"] = len(rs)
    out["rps_runs"] = [r["rps"] for r in rs]
    out.pop("rep", None)
    return out


# ------------------------------------------------------------------------------------------ report
def add_ratios(rows: list[dict]) -> None:
    direct = {r["scenario"]: r for r in rows if r["target_name"] == "direct"}
    for r in rows:
        d = direct.get(r["scenario"])
        if d and d["rps"]:
            r["rps_vs_direct"] = round(r["rps"] / d["rps"], 3)
        key = "ttft_ms" if not r["scenario"].startswith("nonstream") else "latency_ms"
        if d and d[key]["p50"] and r[key]["p50"]:
            r["p50_vs_direct"] = round(r[key]["p50"] / d[key]["p50"], 3)


def markdown(meta: dict, rows: list[dict], skipped: dict) -> str:
    out = [
        f"# End-to-end benchmark ({meta['date']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}. Load generator, router and simulated workers share these cores.",
        "",
        f"Each target ran {meta['repeat']} times, interleaved with the others; figures are medians over the "
        "runs (latency percentiles: median of each run's percentile).",
        "",
    ]
    for sc_name, sc in meta["scenarios"].items():
        sel = [r for r in rows if r["scenario"] == sc_name]
        if not sel:
            continue
        out += [f"## {sc_name}: {sc['description']}", ""]
        out += [
            "| target | req/s (median) | req/s of each run | x direct | errors | p50 / p90 / p99 latency ms "
            "| p50 / p90 / p99 TTFT ms "
            "| p50 / p99 ITL ms | router CPU µs/req | router CPU µs/chunk | chunks/s | workers CPU µs/req | cached/prompt "
            "| requests per worker |",
            "|---|---:|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in sel:
            lat, ttft, itl = r["latency_ms"], r["ttft_ms"], r["itl_ms"]
            out.append(
                f"| {r['target']} | {r['rps']} | {', '.join(str(x) for x in r['rps_runs'])} "
                f"| {r.get('rps_vs_direct', '')} | {r['errors']} "
                f"| {lat['p50']} / {lat['p90']} / {lat['p99']} | {ttft['p50']} / {ttft['p90']} / {ttft['p99']} "
                f"| {itl['p50']} / {itl['p99']} | {r['router_cpu_us_per_request'] or '-'} "
                f"| {r['router_cpu_us_per_chunk'] or '-'} | {r.get('chunks_per_s', '-')} | {r['workers_cpu_us_per_request']} "
                f"| {r['cache_hit_ratio']} | {r['requests_per_worker']} |"
            )
        out.append("")
    if skipped:
        out += ["Skipped targets: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()), ""]
    errs = [r for r in rows if r["error_samples"]]
    for r in errs:
        out.append(f"- errors of {r['target']} in {r['scenario']}: {r['error_samples']}")
    return "\n".join(out) + "\n"


def plots(rows: list[dict], raw: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    scen = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, axes = plt.subplots(1, len(scen), figsize=(5.5 * len(scen), 4), squeeze=False)
    for ax, sc in zip(axes[0], scen, strict=True):
        metric = "latency" if sc.startswith("nonstream") else "ttft"
        for label, series in raw.get(sc, {}).items():
            v = sorted(x * 1000 for x in series[metric])
            if v:
                ax.plot(v, [i / len(v) for i in range(1, len(v) + 1)], label=label)
        ax.set_xscale("log")
        ax.set_xlabel(("end-to-end latency" if metric == "latency" else "time to first token") + " (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(sc)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "e2e_latency.png", dpi=110)
    files.append("e2e_latency.png")
    plt.close(fig)

    mt = [r for r in rows if r["scenario"] == "multiturn"]
    if mt:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        labels = [r["target"] for r in mt]
        a1.bar(labels, [r["cache_hit_ratio"] or 0 for r in mt], color="tab:green")
        a1.set_ylabel("workers' cached_tokens / prompt_tokens")
        a1.set_title("multiturn: KV cache hit ratio per target/policy")
        a1.set_ylim(0, 1)
        a2.bar(labels, [r["ttft_ms"]["p50"] or 0 for r in mt], color="tab:blue", label="p50")
        a2.bar(
            labels,
            [(r["ttft_ms"]["p90"] or 0) - (r["ttft_ms"]["p50"] or 0) for r in mt],
            bottom=[r["ttft_ms"]["p50"] or 0 for r in mt],
            color="tab:orange",
            alpha=0.6,
            label="p90",
        )
        a2.set_ylabel("TTFT ms (log)")
        a2.set_yscale("log")
        a2.set_title("multiturn: time to first token")
        a2.legend()
        for a in (a1, a2):
            a.tick_params(axis="x", labelrotation=25, labelsize=8)
        fig.tight_layout()
        fig.savefig(out / "e2e_cache.png", dpi=110)
        files.append("e2e_cache.png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    width = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        vals = [next((r["rps"] for r in rows if r["scenario"] == s and r["target"] == t), 0) for s in scen]
        ax.bar([j + i * width for j in range(len(scen))], vals, width, label=t)
    ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(scen))], scen)
    ax.set_ylabel("requests/s")
    ax.set_title("throughput per scenario")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "e2e_throughput.png", dpi=110)
    files.append("e2e_throughput.png")
    plt.close(fig)
    return files


# ------------------------------------------------------------------------------------------ main
async def amain(args: argparse.Namespace) -> int:
    from radixrouter.sim.tokenizer import qwen3_dir

    model_dir = str(qwen3_dir())
    all_sc = scenarios(args.duration, quick=args.quick)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in chosen:
        if s not in all_sc:
            raise SystemExit(f"unknown scenario {s!r}; known: {', '.join(all_sc)}")
    specs = [t.strip() for t in args.targets.split(",") if t.strip()]
    skipped: dict[str, str] = {}
    usable = []
    for spec in specs:
        reason = make_target(spec).available()
        if reason:
            skipped[spec] = reason
            print(f"skip {spec}: {reason}", file=sys.stderr)
        else:
            usable.append(spec)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    raw: dict[str, dict[str, dict[str, list[float]]]] = {}
    runs: list[dict] = []
    for name in chosen:
        sc = all_sc[name]
        specs_here, seen_names = [], set()
        for spec in usable:
            tname = spec.partition(":")[0]
            if sc.workers == 1 and tname in seen_names:
                continue  # with one worker every policy routes the same way
            seen_names.add(tname)
            specs_here.append(spec)
        per_target: dict[str, list[dict]] = {}
        with SimWorkers(sc.workers, model=MODEL, tokenizer="qwen3", **sc.worker_flags) as workers:
            # repetitions interleave the targets (A B C A B C ...), so a change in background load hits all
            for rep in range(args.repeat):
                for spec in specs_here:
                    target = make_target(spec)
                    print(f"[{name} {rep + 1}/{args.repeat}] {target.label} ...", file=sys.stderr, flush=True)
                    try:
                        url = target.start(workers.urls, model_dir, MODEL)
                    except Exception as e:
                        skipped[f"{spec} ({name})"] = f"failed to start: {e}"
                        print(f"  failed to start: {e}\n{target.log_tail()}", file=sys.stderr)
                        continue
                    try:
                        row, samples = await run_one(target, sc, workers, url)
                    finally:
                        target.stop()
                    row["rep"] = rep
                    runs.append(row)
                    per_target.setdefault(row["target"], []).append(row)
                    series = raw.setdefault(name, {}).setdefault(target.label, {"latency": [], "ttft": []})
                    for k in series:
                        series[k].extend(samples[k])
                    print(
                        f"  {row['rps']} req/s, errors {row['errors']}, p50 TTFT {row['ttft_ms']['p50']} ms, "
                        f"cache {row['cache_hit_ratio']}, per worker {row['requests_per_worker']}",
                        file=sys.stderr,
                        flush=True,
                    )
        rows.extend(median_row(rs) for rs in per_target.values())
    add_ratios(rows)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": args.command,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "scenarios": {
            n: {
                "description": all_sc[n].description,
                "duration_s": all_sc[n].duration,
                "concurrency": all_sc[n].concurrency,
                "workers": all_sc[n].workers,
                "worker_flags": all_sc[n].worker_flags,
            }
            for n in chosen
        },
        "skipped": skipped,
        "repeat": args.repeat,
    }
    (out / "e2e.json").write_text(json.dumps({"meta": meta, "results": rows, "runs": runs}, indent=1) + "\n")
    (out / "e2e.md").write_text(markdown(meta, rows, skipped))
    if rows and not args.no_plots:
        plots(rows, raw, out)
    print(markdown(meta, rows, skipped))
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--targets",
        default=DEFAULT_TARGETS,
        help="comma-separated target[:policy] list (default %(default)s); unavailable ones are skipped",
    )
    p.add_argument("--scenarios", default="nonstream,stream,multiturn")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per closed-loop run")
    p.add_argument("--quick", action="store_true", help="half the multi-turn conversations")
    p.add_argument(
        "--repeat", type=int, default=3, help="interleaved repetitions per target; medians reported"
    )
    p.add_argument("--out", default=str(REPO / "benches" / "results"))
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    env = f"LITELLM_BIN={os.environ['LITELLM_BIN']} " if os.environ.get("LITELLM_BIN") else ""
    args.command = (
        env + "python benches/e2e/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ).strip()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
