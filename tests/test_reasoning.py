"""Reasoning separation: formats, where the output starts, streaming under any chunking equals one shot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrouter.reasoning import (
    REASONING_FORMATS,
    ReasoningParser,
    detect_reasoning_format,
    normalize_reasoning_format,
    parse_reasoning,
    prompt_in_reasoning,
)

# (format, in_reasoning, output, expected reasoning, expected content)
CASES = [
    ("qwen3", None, "<think>\nLet me think.\nStill thinking.\n</think>\n\nThe answer is 4.",
     "Let me think.\nStill thinking.", "The answer is 4."),
    ("qwen3", None, "The answer is 4.", None, "The answer is 4."),
    ("qwen3", None, "\n\nThe answer is 4.\n", None, "\n\nThe answer is 4.\n"),
    ("qwen3", None, "  <think>x</think>y", "x", "y"),
    ("qwen3", None, "<think>\n\n</think>\n\nNo thoughts.", None, "No thoughts."),
    ("qwen3", None, "<thinking> is not the tag", None, "<thinking> is not the tag"),
    ("qwen3", None, "<thi", None, "<thi"),
    ("qwen3", None, "<think>cut off by max_tokens", "cut off by max_tokens", ""),
    ("qwen3", None, "<think>a</think>b <think>c</think>", "a", "b <think>c</think>"),
    ("qwen3", True, "Thinking already.\n</think>\n\nDone.", "Thinking already.", "Done."),
    ("qwen3", True, "<think>\nRepeated tag.</think>Done.", "Repeated tag.", "Done."),
    ("qwen3", False, "<think>literal</think> text", None, "<think>literal</think> text"),
    ("deepseek-r1", None, "Reasoning with tag in prompt.\n</think>\n\nAnswer.", "Reasoning with tag in prompt.",
     "Answer."),
    ("deepseek-r1", None, "<think>\nModel repeats the tag.\n</think>\n\nAnswer.", "Model repeats the tag.",
     "Answer."),
    ("deepseek-r1", None, "Truncated reasoning without an end", "Truncated reasoning without an end", ""),
    ("deepseek-r1", None, "", None, ""),
    ("qwen3-thinking", None, "r </th </think> c </thi", "r </th", "c </thi"),
    ("kimi", None, "\u25c1think\u25b7ponder\u25c1/think\u25b7reply", "ponder", "reply"),
    ("qwen3", None, "<think>\u00e9t\u00e9 \U0001f914 \u601d\u8003</think>\u7b54\u3048", "\u00e9t\u00e9 \U0001f914 \u601d\u8003",
     "\u7b54\u3048"),
]


def run(fmt, in_reasoning, chunks):
    p = ReasoningParser(fmt, in_reasoning=in_reasoning)
    pieces = []
    for c in chunks:
        pieces.extend(p.feed(c))
    pieces.extend(p.finish())
    reasoning = "".join(x.get("reasoning_content", "") for x in pieces)
    content = "".join(x.get("content", "") for x in pieces)
    for x in pieces:  # one non-empty field per piece
        assert len(x) == 1 and next(iter(x.values()))
    assert reasoning == p.reasoning and content == p.content
    return reasoning or None, content


@pytest.mark.parametrize(("fmt", "in_reasoning", "text", "reasoning", "content"), CASES)
def test_cases(fmt, in_reasoning, text, reasoning, content):
    assert parse_reasoning(text, fmt, in_reasoning=in_reasoning) == (reasoning, content)
    assert run(fmt, in_reasoning, list(text)) == (reasoning, content)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=1, max_value=120), max_size=20))
def test_any_chunking_equals_one_shot(case, cuts):
    fmt, in_reasoning, text, _, _ = case
    cuts = sorted(set(c for c in cuts if c < len(text)))
    bounds = [0, *cuts, len(text)]
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert run(fmt, in_reasoning, chunks) == parse_reasoning(text, fmt, in_reasoning=in_reasoning)


@settings(max_examples=200, deadline=None)
@given(reasoning=st.text(max_size=40), content=st.text(max_size=40),
       cuts=st.lists(st.integers(min_value=1, max_value=120), max_size=20))
def test_generated_blocks(reasoning, content, cuts):
    if "</think>" in reasoning or "<think>" in reasoning:
        return
    text = f"<think>\n{reasoning}\n</think>\n\n{content}"
    expected = (reasoning.strip() or None, content.lstrip())
    assert parse_reasoning(text, "qwen3") == expected
    cuts = sorted(set(c for c in cuts if c < len(text)))
    bounds = [0, *cuts, len(text)]
    assert run("qwen3", None, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]) == expected


def test_reasoning_streams_before_the_block_ends():
    p = ReasoningParser("deepseek-r1")
    assert p.feed("First thought") == [{"reasoning_content": "First thought"}]
    assert p.in_reasoning
    assert p.feed(", second.\n</th") == [{"reasoning_content": ", second."}]  # the partial tag waits
    assert p.feed("ink>\n\nAns") == [{"content": "Ans"}]
    assert not p.in_reasoning
    assert p.feed("wer\n") == [{"content": "wer\n"}]  # content is not held back
    assert p.finish() == []


def test_names_and_detection():
    assert set(REASONING_FORMATS) >= {"qwen3", "deepseek-r1"}
    assert normalize_reasoning_format("DeepSeek_R1") == "deepseek-r1"
    assert normalize_reasoning_format("qwen") == "qwen3"
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        normalize_reasoning_format("o1")
    with pytest.raises(ValueError):
        ReasoningParser("nope")
    from radixrouter.tokenizer import ChatTokenizer  # noqa: PLC0415

    assert detect_reasoning_format(ChatTokenizer.qwen3().chat_template) == "qwen3"
    assert detect_reasoning_format("{{ '<\uff5cAssistant\uff5c><think>\\n' }}") == "deepseek-r1"
    assert detect_reasoning_format("{{ messages }}") is None
    assert detect_reasoning_format(None) is None


def test_prompt_in_reasoning_with_the_qwen3_template():
    from radixrouter.tokenizer import ChatTokenizer  # noqa: PLC0415

    tok = ChatTokenizer.qwen3()
    messages = [{"role": "user", "content": "2+2?"}]
    thinking = tok.render(messages)
    assert prompt_in_reasoning(thinking, "qwen3") is None  # the model decides whether to open <think>
    off = tok.render(messages, enable_thinking=False)
    assert prompt_in_reasoning(off, "qwen3") is False
    assert parse_reasoning("4", "qwen3", in_reasoning=prompt_in_reasoning(off, "qwen3")) == (None, "4")
    assert prompt_in_reasoning("<\uff5cAssistant\uff5c><think>\n", "deepseek-r1") is True
