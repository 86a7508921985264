"""Per-delta cost of the output parsers, side by side in one run (pytest-benchmark).

One realistic Qwen3 output (a ~300-token think block, a sentence, two tool calls with ~1 KB of arguments),
cut into the deltas a worker streams: one Qwen3 token each (the real tokenizer's ids decoded one by one).
Each benchmark feeds the whole output through a fresh parser and finishes it:
- passthrough: OutputParser() with no parser configured (the floor: the API's own cost);
- reasoning:   qwen3 reasoning separation only;
- tools:       hermes tool calls only (calls sent when their JSON is complete);
- tools_stream: hermes with stream_arguments=True;
- both:        reasoning then tool calls, what the router runs for Qwen3 with tools.

Run: .venv/bin/python -m pytest benches/bench_toolcalls.py --benchmark-only -p no:randomly

Also one large write_file call (27 KB = 6,900 deltas, 220 KB = 55,025 deltas of 4 characters): the cost per
delta must stay about flat as the call grows (the JSON scanner never re-reads or re-joins earlier text).

Measured 2026-11-21 on the shared 2-core machine (one run, medians; ratio to passthrough):
  688-token Qwen3 output: passthrough 306 us (1.0), reasoning 840 us (2.7), both 1,381 us (4.5),
  tools 1,636 us (5.3), tools_stream 2,237 us (7.3): about 2 us per delta for reasoning + tool calls.
  large call, buffered: 27 KB 15.5 ms (2.2 us/delta), 220 KB 206 ms (3.7 us/delta);
  stream_arguments: 27 KB 56.7 ms, 220 KB 326 ms (3 rounds each, noisy).
  Before the chunk-based scanner the buffered cost per delta grew with the call (4.0 -> 22.2 us/delta from 27 KB
  to 220 KB, measured with the same 4-character feeding in a throwaway script).
"""

from __future__ import annotations

import json

import pytest

from radixrouter.tokenizer import ChatTokenizer
from radixrouter.toolcalls import OutputParser


def _output() -> str:
    thought = " ".join(["The user asks for the weather in two cities, so I should call the tool twice."] * 20)
    notes = "Line of a file to write, with some punctuation: a, b; c! " * 15
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 3}},
        {"name": "write_file", "arguments": {"path": "notes/weather.md", "content": notes}},
    ]
    body = "\n".join(
        f"<tool_call>\n{json.dumps(c, ensure_ascii=False)}\n</tool_call>" for c in calls
    )
    return f"<think>\n{thought}\n</think>\n\nLet me check both and save the result.\n{body}"


def _deltas() -> list[str]:
    tok = ChatTokenizer.qwen3()
    text = _output()
    ids = tok.encode(text)
    deltas = [tok.decode([i], skip_special_tokens=False) for i in ids]
    assert "".join(deltas) == text
    return deltas


DELTAS = _deltas()
CONFIGS = {
    "passthrough": {},
    "reasoning": {"reasoning_format": "qwen3"},
    "tools": {"tool_format": "hermes"},
    "tools_stream": {"tool_format": "hermes", "stream_arguments": True},
    "both": {"tool_format": "hermes", "reasoning_format": "qwen3"},
}


def _run(config: dict) -> int:
    parser = OutputParser(**config)
    sent = 0
    for d in DELTAS:
        if parser.feed(d):
            sent += 1
    if parser.finish():
        sent += 1
    return sent


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bench_output_parser(benchmark, name):
    benchmark.group = f"output parser, {len(DELTAS)} token deltas"
    benchmark.extra_info["deltas"] = len(DELTAS)
    sent = benchmark(_run, CONFIGS[name])
    assert sent > 0
    if name in ("tools", "both"):
        parser = OutputParser(**CONFIGS[name])
        for d in DELTAS:
            parser.feed(d)
        parser.finish()
        assert [c["function"]["name"] for c in parser.tool_calls] == ["get_weather", "write_file"]


def _big_call(reps: int) -> list[str]:
    content = 'line with "quotes" and \\ backslash and unicode é 😀\n' * reps
    call = {"name": "write_file", "arguments": {"path": "a.txt", "content": content}}
    text = "Writing.\n<tool_call>\n" + json.dumps(call, ensure_ascii=False) + "\n</tool_call>"
    return [text[i:i + 4] for i in range(0, len(text), 4)]


@pytest.mark.parametrize("reps", [500, 4000])
@pytest.mark.parametrize("stream_arguments", [False, True])
def test_bench_large_call(benchmark, reps, stream_arguments):
    """One write_file call of 27 KB or 220 KB fed 4 characters at a time: the cost per delta stays flat."""
    deltas = _big_call(reps)
    benchmark.group = "one large tool call, 4-character deltas"
    benchmark.extra_info["deltas"] = len(deltas)

    def run() -> int:
        parser = OutputParser(tool_format="hermes", stream_arguments=stream_arguments)
        for d in deltas:
            parser.feed(d)
        parser.finish()
        return len(parser.tool_calls)

    assert benchmark.pedantic(run, rounds=3, iterations=1) == 1
