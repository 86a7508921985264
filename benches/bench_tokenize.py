"""CPU time of tokenizing the e2e harness's chat prompts with the Qwen3 tokenizer: tokenizers' own `encode` and
`encode_batch_fast`, the Python ASCII path (`_AsciiEncoder`, regex + dict of pieces) and the Rust one
(`radixrouter._core.ByteLevelBpe`, what ChatTokenizer.encode uses); and the check PromptBuilder.record makes on a
worker's output ids (do they spell the output text?), tokenizers' decode + compare against ByteLevelBpe.spells.
Every way is checked to give the same ids / answers first.

    .venv/bin/python benches/bench_tokenize.py            # side by side, --prompts 2000 --rounds 5
    .venv/bin/python -m pytest benches/bench_tokenize.py --benchmark-only -p no:randomly

Prompts are what the router tokenizes for `benches/e2e` chat requests: the rendered Qwen3 chat prompt after
its first token (the prefix cache holds `<|im_start|>`), 40 random words behind a request number. Outputs are
16 and 256 tokens of the same words.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as `radixrouter serve` sets it
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))

from loadgen import words  # noqa: E402

from radixrouter._core import ByteLevelBpe  # noqa: E402
from radixrouter.tokenizer import ChatTokenizer, _AsciiEncoder  # noqa: E402


@cache
def setup(n_prompts: int = 200) -> dict[str, Any]:
    tok = ChatTokenizer.qwen3()
    raw = tok.tokenizer
    python = _AsciiEncoder.build(raw, native=False)
    assert isinstance(python, _AsciiEncoder) and isinstance(tok._ascii, ByteLevelBpe)
    rng = random.Random(1)
    prompts = [
        tok.render([{"role": "user", "content": f"{k}: {words(rng, 40)}"}])[len("<|im_start|>") :]
        for k in range(n_prompts)
    ]
    encoders: dict[str, Callable[[str], Any]] = {
        "tokenizers encode(...).ids": lambda t: raw.encode(t, add_special_tokens=False).ids,
        "tokenizers encode_batch_fast([t])": lambda t: (
            raw.encode_batch_fast([t], add_special_tokens=False)[0].ids
        ),
        "Python _AsciiEncoder.encode": python.encode,
        "Rust ByteLevelBpe.encode": tok._ascii.encode,
    }
    for p in prompts:
        assert len({tuple(f(p)) for f in encoders.values()}) == 1, p
    im_end = tok.added_tokens["<|im_end|>"]
    outputs = {}
    for n in (16, 256):
        ids = tok.encode(" " + words(rng, n))[:n] + [im_end]
        outputs[n] = (ids, tok.decode(ids, skip_special_tokens=False))
    bpe = tok._ascii
    checks: dict[str, Callable[[list[int], str], bool]] = {
        "tokenizers decode(...) == text": lambda ids, text: (
            raw.decode(ids, skip_special_tokens=False) == text
        ),
        "Rust ByteLevelBpe.spells": bpe.spells,
    }
    for ids, text in outputs.values():
        for f in checks.values():
            assert f(ids, text) and not f(ids, text + ".") and f(ids[:-1], text[: -len("<|im_end|>")])
    return {"prompts": prompts, "encoders": encoders, "outputs": outputs, "checks": checks, "tok": tok}


# ---- pytest-benchmark: one round encodes every prompt once (divide by 200 for a prompt) ------------------

ENCODERS = [
    "tokenizers encode(...).ids",
    "tokenizers encode_batch_fast([t])",
    "Python _AsciiEncoder.encode",
    "Rust ByteLevelBpe.encode",
]


@pytest.mark.parametrize("name", ENCODERS)
def test_encode_200_prompts(benchmark, name) -> None:
    s = setup()
    f, prompts = s["encoders"][name], s["prompts"]
    benchmark.group = "encode 200 chat prompts (~70 tokens)"

    def run() -> None:
        for p in prompts:
            f(p)

    benchmark(run)


@pytest.mark.parametrize("n", [16, 256])
@pytest.mark.parametrize("name", ["tokenizers decode(...) == text", "Rust ByteLevelBpe.spells"])
def test_output_check(benchmark, name, n) -> None:
    s = setup()
    f = s["checks"][name]
    ids, text = s["outputs"][n]
    benchmark.group = f"do {n + 1} output ids spell the text"
    assert benchmark(f, ids, text)


# ---- side by side, process time ------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    s = setup(args.prompts)
    prompts = s["prompts"]

    def per_call(f: Callable[[], None], n: int) -> float:
        ts = []
        for _ in range(args.rounds):
            t0 = time.process_time()
            f()
            ts.append((time.process_time() - t0) / n * 1e6)
        return statistics.median(ts)

    n_tokens = sum(len(s["tok"].encode(p)) for p in prompts) / len(prompts)
    print(
        f"{len(prompts)} prompts, {n_tokens:.0f} tokens each on average; CPU µs per prompt (median of {args.rounds})"
    )
    times = {}
    for name, f in s["encoders"].items():
        times[name] = per_call(lambda f=f: [f(p) for p in prompts], len(prompts))
    base = times["tokenizers encode(...).ids"]
    for name, m in times.items():
        print(f"  {name:36s} {m:7.2f} µs   {base / m:5.1f}x")
    reps = 20_000
    for n, (ids, text) in s["outputs"].items():
        print(f"output check, {n + 1} ids: CPU µs per check (median of {args.rounds})")
        times = {
            name: per_call(lambda f=f, ids=ids, text=text: [f(ids, text) for _ in range(reps)], reps)
            for name, f in s["checks"].items()
        }
        base = times["tokenizers decode(...) == text"]
        for name, m in times.items():
            print(f"  {name:36s} {m:7.2f} µs   {base / m:5.1f}x")


if __name__ == "__main__":
    main()
