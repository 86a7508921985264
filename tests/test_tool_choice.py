"""tool_choice 'required' and a named function: enforced by constrained decoding on the worker
(sampling_params.json_schema), rendered with thinking off, the constrained output returned as tool_calls.
A real granian router with the Qwen3 template in front of a recording SGLang worker (test_router_tokens)."""

from __future__ import annotations

import json

import openai
import pytest

from radixrouter.tokenizer import ChatTokenizer
from test_router import MODEL, RouterProcess
from test_router_tokens import RecordingWorker

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}}},
]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer.qwen3()


def _client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=30)


@pytest.mark.parametrize("stream", [False, True])
def test_required_and_named_function(tok, stream) -> None:
    replies = ['[{"name": "get_weather", "parameters": {"city": "Paris"}}]', '{"zone": "CET"}']
    with RecordingWorker(tok, replies) as worker, RouterProcess([worker.url], tool_call_parser="qwen",
                                                                reasoning_parser="qwen3") as router:
        c = _client(router)
        results = []
        for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
            if stream:
                with c.chat.completions.stream(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=choice,
                                               max_tokens=100) as s:
                    for _ in s:
                        pass
                    results.append(s.get_final_completion().choices[0])
            else:
                results.append(c.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                                         tool_choice=choice, max_tokens=100).choices[0])
        required, named = results
        assert required.finish_reason == "tool_calls" and not required.message.content
        assert [(t.function.name, json.loads(t.function.arguments)) for t in required.message.tool_calls] == [
            ("get_weather", {"city": "Paris"})]
        assert named.finish_reason == "tool_calls"
        assert [(t.function.name, json.loads(t.function.arguments)) for t in named.message.tool_calls] == [
            ("get_time", {"zone": "CET"})]
        # What the worker was asked: a JSON schema forcing the call, and a prompt with thinking switched off.
        sent = [json.loads(r["sampling_params"]["json_schema"]) for r in worker.requests]
        assert sent[0]["type"] == "array" and sent[0]["minItems"] == 1
        assert {i["properties"]["name"]["enum"][0] for i in sent[0]["items"]["anyOf"]} == {"get_weather", "get_time"}
        assert sent[1] == TOOLS[1]["function"]["parameters"]
        prompt = tok.decode(worker.requests[0]["input_ids"], skip_special_tokens=False)
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_tool_choice_errors(tok) -> None:
    with RecordingWorker(tok, []) as worker, RouterProcess([worker.url], tool_call_parser="qwen") as router:
        c = _client(router)
        cases = [
            (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}),
             "tool_choice.function.name"),
            (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
            (dict(tool_choice="required"), "tool_choice"),
            (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "tool_choice"),
            (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
        ]
        for kwargs, param in cases:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, **kwargs)
            assert e.value.body["param"] == param, (kwargs, e.value.body)
        assert worker.requests == []  # nothing reached the worker
