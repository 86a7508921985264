"""Prompt preparation per turn of a 16-turn chat, with the prefix cache and without (pytest-benchmark).

Prompt preparation = what the router does before it can send a request: render the messages with the
Qwen3 chat template (minijinja) and have the token ids ready to send (``Prompt.ids_json()``, the JSON
array for ``input_ids``; a row of "turn 16 parts" shows the cost of a Python list instead). Without the
cache the whole prompt is tokenized every turn; with it the ids of the history come from
radixrouter.PrefixCache (the previous turns were recorded as the router records them: prompt ids + the
worker's output ids) and only the new user turn is tokenized.

The conversation (mixed ASCII and non-ASCII text): user turns of ~100-250 tokens, assistant replies of
~250-400 tokens; turn 1's prompt is 302 tokens, turn 8's 4,030, turn 16's 7,818 (28,802 characters).

Run: .venv/bin/python -m pytest benches/bench_prompt_prep.py --benchmark-only -p no:randomly
(figures and ratios in docs/bench-prompt.md)
"""

from __future__ import annotations

import random

import orjson
import pytest

import radixrouter
from radixrouter.tokenizer import ChatTokenizer, PromptBuilder

TURNS = 16
WORDS = (
    "the a router cache token prefix worker stream latency request model tree radix fast slow queue "
    "batch prompt reply question answer because therefore however, which; (maybe) 42 3.14 é 日本 "
    "naïve résumé — \"quoted\" 'single' x=1 f(x) {json: true} <tag> #heading * item\n"
).split(" ")


def _text(rng: random.Random, n_words: int) -> str:
    out = []
    for i in range(n_words):
        out.append(rng.choice(WORDS))
        if i % 17 == 16:
            out.append(".\n\n" if rng.random() < 0.3 else ".")
    return " ".join(out).replace(" .", ".")


def conversation(seed: int = 16) -> tuple[list[dict], list[str]]:
    """The messages of all turns (user turns only; replies are filled in turn by turn) and the replies."""
    rng = random.Random(seed)
    users = [_text(rng, rng.randrange(40, 150)) for _ in range(TURNS)]
    replies = [_text(rng, rng.randrange(110, 260)) for _ in range(TURNS)]
    system = "You are a meticulous assistant for a router team. " + _text(rng, 80)
    messages = [{"role": "system", "content": system}]
    for turn in range(TURNS):
        messages.append({"role": "user", "content": users[turn]})
        messages.append({"role": "assistant", "content": replies[turn]})
    return messages, replies


@pytest.fixture(scope="module")
def qwen() -> ChatTokenizer:
    return ChatTokenizer.qwen3()


def _turn_messages(messages: list[dict], turn: int) -> list[dict]:
    """Messages of turn `turn` (1-based): the system prompt, the history and the new user message."""
    return messages[: 1 + 2 * (turn - 1) + 1]


def _warm_cache(qwen: ChatTokenizer, turn: int) -> PromptBuilder:
    """A cache holding turns 1..turn-1 as the router records them (worker output ids + <|im_end|>)."""
    builder = PromptBuilder(qwen, radixrouter.PrefixCache())
    messages, replies = conversation()
    im_end = qwen.tokenizer.token_to_id("<|im_end|>")
    for t in range(1, turn):
        prompt = builder.tokenize(qwen.render(_turn_messages(messages, t)))
        builder.record(prompt, replies[t - 1], qwen.encode(replies[t - 1]) + [im_end])
    return builder


@pytest.mark.parametrize("turn", [1, 2, 4, 8, 16])
def test_prep_without_cache(benchmark, qwen, turn) -> None:
    benchmark.group = f"prompt prep, turn {turn:2d}"
    messages = _turn_messages(conversation()[0], turn)
    builder = PromptBuilder(qwen, None)

    def prep() -> bytes:
        return builder.tokenize(qwen.render(messages)).ids_json()

    ids = orjson.loads(benchmark(prep))
    benchmark.extra_info["prompt_tokens"] = len(ids)
    assert ids == qwen.encode(qwen.render(messages))


@pytest.mark.skipif(not hasattr(radixrouter, "PrefixCache"), reason="PrefixCache not built yet")
@pytest.mark.parametrize("turn", [1, 2, 4, 8, 16])
def test_prep_with_cache(benchmark, qwen, turn) -> None:
    benchmark.group = f"prompt prep, turn {turn:2d}"
    messages, replies = conversation()
    turn_messages = _turn_messages(messages, turn)
    builder = _warm_cache(qwen, turn)

    def prep() -> bytes:
        return builder.tokenize(qwen.render(turn_messages)).ids_json()

    ids = orjson.loads(benchmark(prep))
    prompt = builder.tokenize(qwen.render(turn_messages))
    benchmark.extra_info["prompt_tokens"] = len(ids)
    benchmark.extra_info["cached_tokens"] = prompt.cached_tokens
    assert ids == prompt.ids == qwen.encode(qwen.render(turn_messages))
    if turn > 1:
        # Everything up to the previous answer's <|im_end|> came from the cache.
        previous = qwen.encode(qwen.render(_turn_messages(messages, turn - 1)))
        assert prompt.cached_tokens == len(previous) + len(qwen.encode(replies[turn - 2])) + 1


@pytest.mark.parametrize(
    ("part", "cached"),
    [("render", False), ("tokenize", False), ("tokenize", True), ("tokenize-list", True)],
    ids=["render", "ids_json-no-cache", "ids_json-cache", "ids-list-cache"],
)
def test_turn16_parts(benchmark, qwen, part, cached) -> None:
    """Where turn 16's time goes: rendering, getting the ids as JSON (what the router sends), or as a
    Python list."""
    if cached and not hasattr(radixrouter, "PrefixCache"):
        pytest.skip("PrefixCache not built yet")
    benchmark.group = "turn 16 parts"
    messages = _turn_messages(conversation()[0], TURNS)
    builder = _warm_cache(qwen, TURNS) if cached else PromptBuilder(qwen, None)
    text = qwen.render(messages)
    if part == "render":
        benchmark(qwen.render, messages)
    elif part == "tokenize":
        assert orjson.loads(benchmark(lambda: builder.tokenize(text).ids_json())) == qwen.encode(text)
    else:
        assert benchmark(lambda: builder.tokenize(text).ids) == qwen.encode(text)


@pytest.mark.skipif(not hasattr(radixrouter, "PrefixCache"), reason="PrefixCache not built yet")
def test_record_turn16(benchmark, qwen) -> None:
    """Recording a finished turn 16 (prompt + a 360-token answer) in the cache: verifying the output ids
    against the text, computing token ends, the insert. Runs after the response, not before it."""
    benchmark.group = "record, turn 16"
    messages, replies = conversation()
    builder = _warm_cache(qwen, TURNS)
    prompt = builder.tokenize(qwen.render(_turn_messages(messages, TURNS)))
    out = qwen.encode(replies[-1]) + [qwen.tokenizer.token_to_id("<|im_end|>")]
    benchmark(builder.record, prompt, replies[-1], out, worker="w1")
    assert builder.recorded_outputs > 0 and builder.rejected_outputs == 0


def test_token_ends_turn16(benchmark, qwen) -> None:
    """The part of record() that computes the end offsets of turn 16's ids (prompt + answer) in Python."""
    benchmark.group = "record, turn 16"
    messages, replies = conversation()
    text = qwen.render(_turn_messages(messages, TURNS)) + replies[-1] + "<|im_end|>"
    ids = qwen.encode(text)
    qwen.char_ends([])  # the table is built once per tokenizer
    assert benchmark(qwen.char_ends, ids) == qwen.encode_with_ends(text)[1]
