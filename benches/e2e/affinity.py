"""Does a router keep a conversation on the worker that served its previous turn?

    python benches/e2e/affinity.py [--target radixrouter:cache_aware] [--workers 3] [--conversations 6] [--turns 4]

Sends multi-turn conversations one request at a time (no concurrency, so load balancing is never the
reason to move), finds which sim worker served each turn from the workers' /sim/stats, and prints the
worker and `cached_tokens / prompt_tokens` per turn, then how many turns stayed on the previous turn's worker.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from targets import REPO, make_target  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from simutil import SimWorkers  # noqa: E402

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def served(workers: SimWorkers) -> list[int]:
    return [w.stats()["requests"] for w in workers]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="radixrouter:cache_aware")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--conversations", type=int, default=6)
    p.add_argument("--turns", type=int, default=4)
    args = p.parse_args()
    from radixrouter.sim.tokenizer import qwen3_dir

    stayed = moves = 0
    with SimWorkers(args.workers, tokenizer="qwen3", min_output_tokens=20, max_output_tokens=20) as ws:
        target = make_target(args.target)
        url = target.start(ws.urls, str(qwen3_dir()), "sim-model")
        headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        try:
            convs = []
            for c in range(args.conversations):
                system_rng = random.Random(c % 2)  # two system prompts shared by the conversations
                system = f"System {c % 2}. " + " ".join(system_rng.choice(WORDS) for _ in range(300))
                convs.append({"messages": [{"role": "system", "content": system}], "last": None})
            for turn in range(args.turns):
                row = []
                for c, conv in enumerate(convs):
                    rng = random.Random(c * 100 + turn)
                    text = f"turn {turn} of conversation {c}: " + " ".join(
                        rng.choice(WORDS) for _ in range(40)
                    )
                    conv["messages"].append({"role": "user", "content": text})
                    before = served(ws)
                    r = httpx.post(
                        url + "/v1/chat/completions",
                        headers=headers,
                        timeout=60,
                        json={"model": "sim-model", "messages": conv["messages"], "max_tokens": 30},
                    )
                    r.raise_for_status()
                    body = r.json()
                    worker = next(
                        i for i, (a, b) in enumerate(zip(served(ws), before, strict=True)) if a != b
                    )
                    if conv["last"] is not None:
                        stayed += worker == conv["last"]
                        moves += worker != conv["last"]
                    conv["last"] = worker
                    usage = body["usage"]
                    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                    row.append(f"c{c}->w{worker} {cached}/{usage['prompt_tokens']}")
                    conv["messages"].append(
                        {"role": "assistant", "content": body["choices"][0]["message"]["content"]}
                    )
                print(f"turn {turn}: " + "; ".join(row))
        finally:
            target.stop()
    print(f"{args.target}: {stayed} of {stayed + moves} follow-up turns stayed on the previous turn's worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
