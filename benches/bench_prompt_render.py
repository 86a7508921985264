"""Chat template rendering: minijinja (ChatTokenizer.render) vs. jinja2 set up as Hugging Face does it,
and transformers' own apply_chat_template(tokenize=False) as SGLang's server calls it, side by side
(pytest-benchmark).

Workloads, all with the Qwen3 template: a 6-message chat, the same with tools and a tool call, and the
33 messages of turn 16 of the conversation in bench_prompt_prep.py (7,818 tokens of text).

Run: .venv/bin/python -m pytest benches/bench_prompt_render.py --benchmark-only -p no:randomly
(figures and ratios in docs/bench-prompt.md)
"""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bench_prompt_prep import conversation
from radixrouter.tokenizer import ChatTokenizer, _normalize_messages, qwen3_files

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

SIX = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 °C in Paris."},
    {"role": "user", "content": "And tomorrow?"},
]


def _turn16() -> list[dict]:
    return conversation()[0][:-1]


SIX_PLAIN = [m if "tool_calls" not in m else {"role": "assistant", "content": "Let me check."} for m in SIX]

WORKLOADS = {
    "6 messages": (SIX_PLAIN, None),
    "6 messages + tools": (SIX, TOOLS),
    "turn 16 (33 messages)": (_turn16(), None),
}


def _jinja2_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # type: ignore[no-untyped-def]
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def raise_exception(message):  # type: ignore[no-untyped-def]
        raise jinja2.exceptions.TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@pytest.fixture(scope="module")
def qwen() -> ChatTokenizer:
    return ChatTokenizer.qwen3()


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_render_minijinja(benchmark, qwen, workload) -> None:
    benchmark.group = f"render {workload}"
    messages, tools = WORKLOADS[workload]
    benchmark(qwen.render, messages, tools=tools)


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_render_jinja2(benchmark, qwen, workload) -> None:
    benchmark.group = f"render {workload}"
    messages, tools = WORKLOADS[workload]
    template = _jinja2_env().from_string(qwen.chat_template)
    context = dict(qwen.special_tokens)

    def render() -> str:
        msgs = _normalize_messages(messages, False)  # the same preprocessing as the minijinja path
        return template.render(
            messages=msgs, tools=tools, documents=None, add_generation_prompt=True, **context
        )

    assert benchmark(render) == qwen.render(messages, tools=tools)


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_render_transformers(benchmark, qwen, workload) -> None:
    transformers = pytest.importorskip("transformers")
    benchmark.group = f"render {workload}"
    messages, tools = WORKLOADS[workload]
    hf = transformers.AutoTokenizer.from_pretrained(str(qwen3_files()))

    def render() -> str:
        return hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)

    assert benchmark(render) == qwen.render(messages, tools=tools)
