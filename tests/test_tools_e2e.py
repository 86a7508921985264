"""Tool calls and reasoning through a real `radixrouter serve` (granian) process with the Qwen3 tokenizer and
template (`--tool-call-parser qwen --reasoning-parser qwen3`), in front of a simulated SGLang worker scripted
to emit thinking and tool calls; the official `openai` client on the other side, its streaming helper
accumulating the deltas. (tests/test_toolcalls_e2e.py covers the same parsers in process.)"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from radixrouter import SseDecoder
from simutil import SimWorker
from test_router import MODEL, RouterProcess

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# written exactly as the Qwen3 template renders an assistant turn with reasoning, content and tool calls, so
# the next turn's prompt continues the worker's own tokens
REPLY = ('<think>\nTwo cities, two calls.\n</think>\n\nChecking both.\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>')
MALFORMED = '<think>\nHmm.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": }}\n</tool_call>'


@pytest.fixture(scope="module")
def sim():
    with SimWorker(model=MODEL, tokenizer="qwen3", decode_tokens_per_s=0) as w:
        yield w


@pytest.fixture(scope="module")
def router(sim):
    with RouterProcess([sim.url], tool_call_parser="qwen", reasoning_parser="qwen3",
                       health_check_interval=3600) as r:
        yield r


def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=30)


def msgs(tag: str) -> list[dict]:
    # a distinct system message per test, so prefix-cache hits come only from the test's own turns
    return [{"role": "system", "content": f"You are a weather assistant ({tag})."},
            {"role": "user", "content": "Weather in Paris and Zürich?"}]


def test_tool_calls_and_reasoning_stream_and_not(router, sim):
    c = client(router)
    sim.fault(reply=REPLY, count=2)
    full = c.chat.completions.create(model=MODEL, messages=msgs("a"), tools=TOOLS, max_tokens=300)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking both."
    assert choice.message.model_extra["reasoning_content"] == "Two cities, two calls."
    calls = [(t.function.name, json.loads(t.function.arguments)) for t in choice.message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Zürich"})]
    assert all(t.type == "function" and t.id for t in choice.message.tool_calls)

    # the SDK's own stream accumulation gives the same calls, content and finish reason
    reasoning_deltas = []
    with c.chat.completions.stream(model=MODEL, messages=msgs("a"), tools=TOOLS, max_tokens=300) as s:
        for ev in s:
            if ev.type == "chunk" and ev.chunk.choices:
                r = (ev.chunk.choices[0].delta.model_extra or {}).get("reasoning_content")
                if r:
                    reasoning_deltas.append(r)
        streamed = s.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.content == "Checking both."
    assert [(t.function.name, t.function.arguments) for t in streamed.message.tool_calls] == [
        (t.function.name, t.function.arguments) for t in choice.message.tool_calls]
    assert len(reasoning_deltas) > 1 and "".join(reasoning_deltas) == "Two cities, two calls."


def test_tool_call_fragments_in_openai_shape(router, sim):
    sim.fault(reply=REPLY)
    r = httpx.post(router.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": msgs("b"), "tools": TOOLS, "stream": True, "max_tokens": 300})
    events = SseDecoder().feed(r.content)
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    frags = [f for ch in chunks for c in ch["choices"] for f in c["delta"].get("tool_calls", ())]
    heads = [f for f in frags if "id" in f]
    assert [f["index"] for f in heads] == [0, 1]
    assert all(f["type"] == "function" and f["function"]["name"] == "get_weather" for f in heads)
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in frags if "id" not in f)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


def test_malformed_call_comes_back_as_content(router, sim):
    c = client(router)
    sim.fault(reply=MALFORMED, count=2)
    full = c.chat.completions.create(model=MODEL, messages=msgs("c"), tools=TOOLS, max_tokens=300).choices[0]
    with c.chat.completions.stream(model=MODEL, messages=msgs("c"), tools=TOOLS, max_tokens=300) as s:
        streamed = s.get_final_completion().choices[0]
    body = MALFORMED.split("</think>\n\n", 1)[1]
    for ch in (full, streamed):
        assert ch.finish_reason == "stop" and not ch.message.tool_calls
        assert ch.message.content == body
        assert ch.message.model_extra["reasoning_content"] == "Hmm."


def test_tool_choice_none_leaves_markup_as_content(router, sim):
    sim.fault(reply='<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    out = client(router).chat.completions.create(model=MODEL, messages=msgs("d"), tools=TOOLS, tool_choice="none",
                                                 max_tokens=300).choices[0]
    assert out.finish_reason == "stop" and not out.message.tool_calls
    assert out.message.content.startswith("<tool_call>")


def test_follow_up_turn_with_tool_results_reuses_the_cached_ids(router, sim):
    """Turn 2 carries the assistant's tool_calls (and its reasoning) plus the tool results; the router renders it
    through the template, and the worker finds the whole first turn, its own generated tokens included, in its
    KV cache: the router sent the same ids, not a re-tokenization that drifts."""
    c = client(router)
    m = msgs("e")
    sim.fault(reply=REPLY)
    first = c.chat.completions.create(model=MODEL, messages=m, tools=TOOLS, max_tokens=300)
    msg = first.choices[0].message
    turn1 = first.usage.prompt_tokens + first.usage.completion_tokens
    follow = m + [
        {"role": "assistant", "content": msg.content, "reasoning_content": msg.model_extra["reasoning_content"],
         "tool_calls": [t.model_dump(include={"id", "type", "function"}) for t in msg.tool_calls]},
        {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": '{"temp_c": 14}'},
        {"role": "tool", "tool_call_id": msg.tool_calls[1].id, "content": '{"temp_c": 9}'},
    ]
    sim.fault(reply="Paris 14 °C, Zürich 9 °C.")
    second = c.chat.completions.create(model=MODEL, messages=follow, tools=TOOLS, max_tokens=300)
    assert second.choices[0].message.content == "Paris 14 °C, Zürich 9 °C."
    assert second.choices[0].finish_reason == "stop"
    assert second.usage.prompt_tokens > turn1
    # the worker's KV cache held prompt 1 + its output (the EOS / <|im_end|> id included)
    assert second.usage.prompt_tokens_details.cached_tokens >= turn1
