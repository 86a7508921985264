"""CPU time of tokenizing the e2e harness's chat prompts: ChatTokenizer.encode (ASCII fast path) against
tokenizers' own `encode` and `encode_batch_fast`, Qwen3 tokenizer. Checks that all three give the same ids.

    .venv/bin/python benches/bench_tokenize.py            # --prompts 2000 --rounds 5

Prompts are what the router tokenizes for `benches/e2e` chat requests: the rendered Qwen3 chat prompt after
its first token (the prefix cache holds `<|im_start|>`), 40 random words behind a request number.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

from loadgen import words  # noqa: E402

from radixrouter.tokenizer import ChatTokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tok = ChatTokenizer.qwen3()
    raw = tok.tokenizer
    rng = random.Random(1)
    prompts = [
        tok.render([{"role": "user", "content": f"{k}: {words(rng, 40)}"}])[len("<|im_start|>") :]
        for k in range(args.prompts)
    ]
    ways = {
        "ChatTokenizer.encode": tok.encode,
        "tokenizers encode(...).ids": lambda t: raw.encode(t, add_special_tokens=False).ids,
        "tokenizers encode_batch_fast([t])": lambda t: (
            raw.encode_batch_fast([t], add_special_tokens=False)[0].ids
        ),
    }
    for p in prompts:
        ids = {name: f(p) for name, f in ways.items()}
        assert len({tuple(v) for v in ids.values()}) == 1, p
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, f in ways.items():
            t0 = time.process_time()
            for p in prompts:
                f(p)
            times[name].append((time.process_time() - t0) / len(prompts) * 1e6)
    n_tokens = sum(len(tok.encode(p)) for p in prompts) / len(prompts)
    print(
        f"{len(prompts)} prompts, {n_tokens:.0f} tokens each on average; CPU µs per prompt (median of {args.rounds})"
    )
    base = statistics.median(times["tokenizers encode(...).ids"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:36s} {m:7.1f} µs   {base / m:4.1f}x")


if __name__ == "__main__":
    main()
