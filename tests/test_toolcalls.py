"""Tool-call parsing: streaming under every chunking equals the one-shot parse, OpenAI delta shapes, the
official SDK's accumulation, malformed output as content, request validation."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from radixrouter.toolcalls import (
    OutputParser,
    ToolCallParser,
    ToolChoice,
    ToolRequestError,
    detect_tool_format,
    group_deltas,
    make_output_processor_factory,
    merge_deltas,
    new_call_id,
    normalize_tool_format,
    parse_tool_calls,
    tool_choice_json_schema,
    validate_tool_choice,
    validate_tools,
)

W = {"city": "Paris", "unit": "c"}

# (format, model output, expected content, expected calls as (name, arguments object))
SAMPLES = [
    ("hermes",
     'I will check the weather.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}'
     '\n</tool_call>',
     "I will check the weather.", [("get_weather", W)]),
    ("hermes",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     None, [("get_weather", W), ("get_time", {})]),
    ("hermes", "Just text, with <b>tags</b> and a < sign and <tool_ inside.",
     "Just text, with <b>tags</b> and a < sign and <tool_ inside.", []),
    ("hermes",
     'Before\n<tool_call>\n{"name": "f", "arguments": {"s": "a \\"quoted\\" </tool_call> {brace", '
     '"n": [1, 2.5e3, -3], "o": {"deep": [true, false, null]}}}\n</tool_call>\nAfter the call.',
     "Before\n\nAfter the call.",
     [("f", {"s": 'a "quoted" </tool_call> {brace', "n": [1, 2.5e3, -3], "o": {"deep": [True, False, None]}})]),
    ("hermes",
     '<tool_call>\n{"name": "météo", "arguments": {"ville": "Zürich 🌧", "note": "\\u00e9t\\u00e9 \\ud83d\\ude00"}}'
     "\n</tool_call>",
     None, [("météo", {"ville": "Zürich 🌧", "note": "été 😀"})]),
    ("hermes", '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', None, [("f", {"x": 1})]),
    ("hermes", '<tool_call>\n{"name": "now"}\n</tool_call>', None, [("now", {})]),
    ("hermes", '<tool_call>\n{"name": "a", "arguments": {}}\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>',
     None, [("a", {}), ("b", {"x": 1})]),
    ("hermes", '<tool_call>\n{"name": "f", "parameters": {"a": 1}}\n</tool_call>', None, [("f", {"a": 1})]),
    # missing closing tag at the end of the output: tolerated, the JSON is complete
    ("hermes", 'Ok.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}', "Ok.", [("f", {"a": 1})]),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}', None,
     [("get_weather", W)]),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}', None,
     [("get_weather", W)]),
    ("llama3",
     '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": "z;{}"}}',
     None, [("a", {"x": 1}), ("b", {"y": "z;{}"})]),
    ("llama3", '\n\n{"type": "function", "name": "a", "arguments": {"x": [1]}}\n', None, [("a", {"x": [1]})]),
    ("llama3", "The JSON {\"name\": \"a\", \"parameters\": {}} is in prose.",
     "The JSON {\"name\": \"a\", \"parameters\": {}} is in prose.", []),
    ("llama3", "Let me look.<|python_tag|>{\"name\": \"a\", \"parameters\": {}}", "Let me look.", [("a", {})]),
    ("mistral",
     'Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, '
     '{"name": "get_time", "arguments": {"tz": "UTC"}}]',
     "Sure.", [("get_weather", W), ("get_time", {"tz": "UTC"})]),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "abcdefghi"}]', None, [("f", {})]),
    ("mistral", '[TOOL_CALLS] {"name": "f", "arguments": {"k": "v"}} done', "done", [("f", {"k": "v"})]),
    # an array element after a complete call is broken: the call stands, the rest is content
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}} {"name": "g"}]', '{"name": "g"}]',
     [("f", {"a": 1})]),
    ("mistral",
     '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "c"}[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{}',
     None, [("get_weather", W), ("get_time", {})]),
]

MALFORMED = [
    # (format, output, expected content); every one yields no call
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": }}\n</tool_call>', None),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>', None),  # missing brace
    ("hermes", "<tool_call>\nnot json at all\n</tool_call>", None),
    ("hermes", '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>', None),  # no name
    ("hermes", '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>', None),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>', None),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": "not json"}\n</tool_call>', None),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": NaN}}\n</tool_call>', None),
    ("hermes", 'Text <tool_call>\n{"name": "f", "arguments": {"a": "unterminated', None),  # cut off
    ("hermes", "<tool_call>", None),
    ("llama3", '{"name": "f", "parameters": {"a": }}', None),
    ("llama3", '{"name": "f"}', None),  # a bare object needs parameters
    ("llama3", "<|python_tag|>brave_search.call(query=\"x\")", None),
    ("mistral", "[TOOL_CALLS] I cannot do that.", None),
    ("mistral", "[TOOL_CALLS]bad name[ARGS]{}", None),
    ("mistral", "[TOOL_CALLS]f[ARGS]{oops}", None),
]


def stream(parser, chunks):
    """Feed chunks; return the per-feed merged deltas (non-empty ones) and all raw pieces."""
    deltas, pieces = [], []
    for chunk in chunks:
        got = parser.feed(chunk)
        pieces.extend(got)
        if got:
            deltas.append(merge_deltas(got))
    got = parser.finish()
    pieces.extend(got)
    if got:
        deltas.append(merge_deltas(got))
    return deltas, pieces


def accumulate(deltas, finish_reason="stop"):
    """Accumulate deltas into a message the way the openai SDK does (ChatCompletionStreamState)."""
    state = ChatCompletionStreamState()
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}

    def chunk(delta, fr=None):
        return ChatCompletionChunk.model_validate(
            {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": fr, "logprobs": None}]})

    state.handle_chunk(chunk({"role": "assistant", "content": ""}))
    for d in deltas:
        state.handle_chunk(chunk(d))
    state.handle_chunk(chunk({}, finish_reason))
    return state.get_final_completion().choices[0].message


def calls_summary(calls):
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def split(text, cuts):
    cuts = sorted(set(c for c in cuts if 0 < c < len(text)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def check_fragments(pieces, fmt="hermes"):
    """Every tool_calls fragment is in OpenAI's shape: the first per index has id/type/name, then arguments only."""
    seen: dict[int, str] = {}
    for piece in pieces:
        for frag in piece.get("tool_calls", ()):
            idx = frag["index"]
            if idx not in seen:
                assert idx == len(seen), "indexes start at 0 and grow by one"
                assert set(frag) == {"index", "id", "type", "function"}
                assert frag["type"] == "function"
                assert frag["function"] == {"name": frag["function"]["name"], "arguments": ""}
                pattern = r"[0-9A-Za-z]{9}" if fmt == "mistral" else r"call_[0-9A-Za-z]{24}"
                assert re.fullmatch(pattern, frag["id"])
                assert frag["id"] not in seen.values()
                seen[idx] = frag["id"]
            else:
                assert set(frag) == {"index", "function"} and set(frag["function"]) == {"arguments"}
                assert frag["function"]["arguments"]
    return seen


@pytest.mark.parametrize("stream_arguments", [False, True])
@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES)
def test_samples_one_shot_and_char_by_char(fmt, text, content, calls, stream_arguments):
    got_content, got_calls = parse_tool_calls(text, fmt, stream_arguments=stream_arguments)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == calls
    for c in got_calls:
        assert c["type"] == "function" and c["id"]
        # the arguments are the model's own text, verbatim
        args = c["function"]["arguments"]
        assert args == "{}" or args in text or json.dumps(args)[1:-1] in text
    parser = ToolCallParser(fmt, stream_arguments=stream_arguments)
    deltas, pieces = stream(parser, list(text))
    check_fragments(pieces, normalize_tool_format(fmt))
    assert (parser.content or None) == content
    assert calls_summary(parser.tool_calls) == calls_summary(got_calls)
    assert parser.has_tool_calls == bool(calls)
    assert parser.broken_calls == 0
    message = accumulate(deltas, "tool_calls" if calls else "stop")
    assert (message.content or None) == content
    sdk_calls = [(tc.function.name, tc.function.arguments) for tc in message.tool_calls or []]
    assert sdk_calls == calls_summary(got_calls)
    assert [tc.id for tc in message.tool_calls or []] == [c["id"] for c in parser.tool_calls]


@pytest.mark.parametrize(("fmt", "text", "content"), MALFORMED)
def test_malformed_output_is_content(fmt, text, content):
    expected = text if content is None else content
    got_content, got_calls = parse_tool_calls(text, fmt)
    assert got_calls == []
    assert got_content == expected.strip() or got_content == expected
    parser = ToolCallParser(fmt)
    stream(parser, list(text))
    assert parser.content == got_content
    assert not parser.has_tool_calls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES + [(f, t, c, []) for f, t, c in MALFORMED]),
       cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=25),
       stream_arguments=st.booleans())
def test_any_chunking_equals_one_shot(sample, cuts, stream_arguments):
    fmt, text, _, _ = sample
    content, calls = parse_tool_calls(text, fmt, stream_arguments=stream_arguments)
    parser = ToolCallParser(fmt, stream_arguments=stream_arguments)
    deltas, pieces = stream(parser, split(text, cuts))
    check_fragments(pieces, normalize_tool_format(fmt))
    merged = merge_deltas(pieces)
    assert (merged.get("content") or None) == content
    assert calls_summary(parser.tool_calls) == calls_summary(calls)
    message = accumulate(deltas)
    assert [(tc.function.name, tc.function.arguments) for tc in message.tool_calls or []] == calls_summary(calls)


# -- generated tool calls: arbitrary names, arguments and surrounding text ---------------------------------
json_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
arguments = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,20}", fullmatch=True)
prose = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<[{"), max_size=30)


def render_calls(fmt, calls, before, ascii_only, indent):
    def dump(obj):
        return json.dumps(obj, ensure_ascii=ascii_only, indent=indent)

    if fmt == "hermes":
        body = "\n".join(f'<tool_call>\n{{"name": {dump(n)}, "arguments": {dump(a)}}}\n</tool_call>'
                         for n, a in calls)
        return before + ("\n" if before else "") + body
    if fmt == "llama3":
        return "<|python_tag|>" + "; ".join(f'{{"name": {dump(n)}, "parameters": {dump(a)}}}' for n, a in calls)
    if fmt == "mistral":
        return before + "[TOOL_CALLS]" + dump([{"name": n, "arguments": a} for n, a in calls])
    return before + "".join(f"[TOOL_CALLS]{n}[ARGS]{dump(a)}" for n, a in calls)  # mistral [ARGS] form


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["hermes", "llama3", "mistral", "mistral-args"]),
       calls=st.lists(st.tuples(names, arguments), min_size=1, max_size=3),
       before=prose, ascii_only=st.booleans(), indent=st.sampled_from([None, 2]),
       cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=30), stream_arguments=st.booleans())
def test_generated_calls_roundtrip(fmt, calls, before, ascii_only, indent, cuts, stream_arguments):
    text = render_calls(fmt, calls, before.strip(), ascii_only, indent)
    parser_fmt = "mistral" if fmt == "mistral-args" else fmt
    content, got = parse_tool_calls(text, parser_fmt, stream_arguments=stream_arguments)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == [
        (n, a) for n, a in calls]
    if fmt != "llama3":
        assert content == (before.strip() or None)
    parser = ToolCallParser(parser_fmt, stream_arguments=stream_arguments)
    deltas, pieces = stream(parser, split(text, cuts))
    check_fragments(pieces, parser_fmt)
    message = accumulate(deltas, "tool_calls")
    assert [(tc.function.name, tc.function.arguments) for tc in message.tool_calls] == calls_summary(got)
    assert (message.content or None) == content


# -- streaming behaviour ---------------------------------------------------------------------------------
def test_content_streams_without_waiting():
    p = ToolCallParser("hermes")
    assert merge_deltas(p.feed("Hello ")) == {"content": "Hello"}  # trailing space held
    assert merge_deltas(p.feed("world, the answer")) == {"content": " world, the answer"}
    assert merge_deltas(p.feed(" is <tool")) == {"content": " is"}  # a marker may be starting
    assert merge_deltas(p.feed("box> done")) == {"content": " <toolbox> done"}
    assert merge_deltas(p.finish()) == {}
    assert p.content == "Hello world, the answer is <toolbox> done"


def test_trailing_whitespace_is_kept_without_calls():
    assert parse_tool_calls("Hi\n\n", "hermes") == ("Hi\n\n", [])
    assert parse_tool_calls("  \n", "hermes") == ("  \n", [])
    assert parse_tool_calls("", "hermes") == (None, [])


def test_held_marker_prefix_is_flushed_as_content_at_the_end():
    p = ToolCallParser("mistral")
    assert merge_deltas(p.feed("see [TOOL_CA")) == {"content": "see"}
    assert merge_deltas(p.finish()) == {"content": " [TOOL_CA"}


def test_stream_arguments_sends_pieces_before_the_call_closes():
    text = '<tool_call>\n{"name": "write_file", "arguments": {"path": "a.txt", "content": "' + "x" * 50 + '"}}\n</tool_call>'
    p = ToolCallParser("hermes", stream_arguments=True)
    early = []
    for ch in text[: text.index('"}}')]:
        early.extend(p.feed(ch))
    frags = [f for piece in early for f in piece.get("tool_calls", ())]
    assert frags[0]["function"]["name"] == "write_file"
    partial = "".join(f["function"].get("arguments", "") for f in frags)
    assert partial == '{"path": "a.txt", "content": "' + "x" * 50
    for ch in text[text.index('"}}'):]:
        p.feed(ch)
    p.finish()
    assert json.loads(p.tool_calls[0]["function"]["arguments"]) == {"path": "a.txt", "content": "x" * 50}


def test_buffered_mode_sends_a_call_once_its_json_is_complete():
    p = ToolCallParser("hermes")
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}'
    assert p.feed(text[:-1]) == []
    (head, args) = p.feed(text[-1])
    assert head["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    assert args == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}
    assert merge_deltas(p.feed("\n</tool_call>")) == {}


def test_stream_arguments_broken_call_is_counted_not_raised():
    p = ToolCallParser("hermes", stream_arguments=True)
    stream(p, list('<tool_call>\n{"name": "f", "arguments": {"a": "cut off by max_tokens'))
    assert p.has_tool_calls and p.broken_calls == 1
    assert p.tool_calls[0]["function"]["arguments"] == '{"a": "cut off by max_tokens'


def test_parallel_tool_calls_false_keeps_the_first_call():
    text = SAMPLES[1][1]
    content, calls = parse_tool_calls(text, "hermes", parallel_tool_calls=False)
    assert calls_summary(calls) == [("get_weather", '{"city": "Paris", "unit": "c"}')]
    assert content is None


def test_ids_are_unique_and_shaped():
    ids = {new_call_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(re.fullmatch(r"call_[0-9A-Za-z]{24}", i) for i in ids)
    assert re.fullmatch(r"[0-9A-Za-z]{9}", new_call_id("mistral"))


def test_merge_deltas_merges_one_index():
    merged = merge_deltas([
        {"content": "a"},
        {"tool_calls": [{"index": 0, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
        {"content": "b"},
        {"tool_calls": [{"index": 1, "id": "call_y", "type": "function", "function": {"name": "g", "arguments": ""}}]},
    ])
    assert merged == {"content": "ab", "tool_calls": [
        {"index": 0, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "id": "call_y", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]}
    assert merge_deltas([]) == {}


# -- formats -----------------------------------------------------------------------------------------------
def test_format_names_and_detection():
    assert normalize_tool_format("qwen") == normalize_tool_format("Qwen25") == "hermes"
    assert normalize_tool_format("llama3_json") == "llama3"
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        normalize_tool_format("pythonic")
    from radixrouter.tokenizer import ChatTokenizer  # noqa: PLC0415

    assert detect_tool_format(ChatTokenizer.qwen3().chat_template) == "hermes"
    assert detect_tool_format("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}") == "mistral"
    assert detect_tool_format("<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}") == "llama3"
    assert detect_tool_format("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert detect_tool_format(None) is None


def test_qwen3_template_roundtrip_of_parsed_calls():
    """Arguments kept verbatim re-render through the Qwen3 template exactly as the model wrote them."""
    from radixrouter.tokenizer import ChatTokenizer  # noqa: PLC0415

    tok = ChatTokenizer.qwen3()
    output = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>')
    content, calls = parse_tool_calls(output, "hermes")
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": content or "", "tool_calls": calls}]
    rendered = tok.render(messages, add_generation_prompt=False)
    assert "\n\n" + output + "<|im_end|>" in rendered


# -- request validation -------------------------------------------------------------------------------------
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},
]


def test_validate_tools_accepts_openai_shape():
    assert validate_tools(TOOLS) is TOOLS
    assert validate_tools(None) == []


@pytest.mark.parametrize(("tools", "param"), [
    ({"type": "function"}, "tools"),
    (["x"], "tools[0]"),
    ([{"type": "code_interpreter"}], "tools[0].type"),
    ([{"type": "function"}], "tools[0].function"),
    ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": ""}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f" * 65}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}], "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "tools[0].function.description"),
    ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], "tools[0].function.strict"),
    ([TOOLS[1], TOOLS[1]], "tools[1].function.name"),
])
def test_validate_tools_rejects(tools, param):
    with pytest.raises(ToolRequestError) as info:
        validate_tools(tools)
    assert info.value.param == param
    assert isinstance(info.value, ValueError) and str(info.value)


def test_validate_tool_choice():
    assert validate_tool_choice(None, TOOLS) == ToolChoice("auto")
    assert validate_tool_choice(None, []) == ToolChoice("none")
    assert validate_tool_choice("none", None) == ToolChoice("none")
    assert not ToolChoice("none").parse_output
    assert validate_tool_choice("required", TOOLS) == ToolChoice("required")
    assert validate_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS) == ToolChoice(
        "function", "get_time")
    for bad, param in [("always", "tool_choice"), ("auto-ish", "tool_choice"), (3, "tool_choice"),
                       ({"type": "function"}, "tool_choice"),
                       ({"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name")]:
        with pytest.raises(ToolRequestError) as info:
            validate_tool_choice(bad, TOOLS)
        assert info.value.param == param
    with pytest.raises(ToolRequestError, match="only allowed when 'tools'"):
        validate_tool_choice("required", [])


def test_named_tool_choice_constrained_output():
    choice = validate_tool_choice({"type": "function", "function": {"name": "get_weather"}}, TOOLS)
    assert tool_choice_json_schema(TOOLS, choice) == TOOLS[0]["function"]["parameters"]
    assert tool_choice_json_schema(TOOLS, ToolChoice("auto")) is None
    text = '{"city": "Paris"}'
    for cuts in ([], list(range(1, len(text)))):
        p = ToolCallParser.for_tool_choice(choice)
        deltas, pieces = stream(p, split(text, cuts))
        check_fragments(pieces)
        assert calls_summary(p.tool_calls) == [("get_weather", text)]
        assert p.content == ""
    # a constrained output that is not an object comes back as content
    p = ToolCallParser.for_tool_choice(choice, stream_arguments=False)
    stream(p, ["I refuse"])
    assert p.content == "I refuse" and not p.has_tool_calls


def test_required_tool_choice_constrained_output():
    choice = validate_tool_choice("required", TOOLS)
    schema = tool_choice_json_schema(TOOLS, choice)
    assert schema["type"] == "array" and schema["minItems"] == 1
    assert [i["properties"]["name"]["enum"] for i in schema["items"]["anyOf"]] == [["get_weather"], ["get_time"]]
    text = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]'
    for cuts in ([], list(range(1, len(text)))):
        p = ToolCallParser.for_tool_choice(choice)
        _, pieces = stream(p, split(text, cuts))
        check_fragments(pieces)
        assert calls_summary(p.tool_calls) == [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    with pytest.raises(ValueError):
        ToolCallParser.for_tool_choice(ToolChoice("auto"))


# -- composition with reasoning ----------------------------------------------------------------------------
QWEN3_OUTPUT = ('<think>\nThe user wants the weather. I should call get_weather.\n</think>\n\n'
                'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(QWEN3_OUTPUT)), max_size=30),
       stream_arguments=st.booleans())
def test_output_parser_reasoning_then_tools(cuts, stream_arguments):
    expected = {"content": "Let me check.",
                "reasoning_content": "The user wants the weather. I should call get_weather."}
    one = OutputParser(tool_format="qwen", reasoning_format="qwen3", stream_arguments=stream_arguments)
    message = one.parse(QWEN3_OUTPUT)
    assert {k: message[k] for k in expected} == expected
    assert calls_summary(message["tool_calls"]) == [("get_weather", '{"city": "Paris"}')]
    p = OutputParser(tool_format="qwen", reasoning_format="qwen3", stream_arguments=stream_arguments)
    deltas = []
    for c in split(QWEN3_OUTPUT, cuts):
        deltas.extend(p.feed(c))
    deltas.extend(p.finish())
    assert all(set(d) <= {"content", "reasoning_content", "tool_calls"} and d for d in deltas)
    check_fragments(deltas)
    for d in deltas:  # a call's head and its arguments never share a fragment
        assert len(d.get("tool_calls", ())) <= 1
    assert p.finish_reason == "tool_calls"
    sdk = accumulate(deltas, "tool_calls")
    assert sdk.content == expected["content"]
    assert getattr(sdk, "reasoning_content", None) == expected["reasoning_content"]
    assert [(tc.function.name, tc.function.arguments) for tc in sdk.tool_calls] == calls_summary(message["tool_calls"])
    assert p.has_tool_calls


def test_output_parser_modes():
    text = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    assert OutputParser().parse(text) == {"content": text}
    assert OutputParser(tool_format="hermes", tool_choice=ToolChoice("none")).parse(text) == {"content": text}
    got = OutputParser(tool_format="hermes", tool_choice=ToolChoice("auto")).parse(text)
    assert got["content"] is None and calls_summary(got["tool_calls"]) == [("f", "{}")]
    assert OutputParser(tool_format="hermes").parse("plain") == {"content": "plain"}
    assert OutputParser(tool_format="hermes").parse("") == {"content": ""}
    choice = ToolChoice("function", "f")
    got = OutputParser(tool_format="hermes", tool_choice=choice, constrained=True).parse('{"x": 1}')
    assert calls_summary(got["tool_calls"]) == [("f", '{"x": 1}')]


# -- fuzz: arbitrary mixtures of markup fragments never raise and never depend on the chunking --------------
FRAGMENTS = ["<tool_call>", "</tool_call>", "<tool_", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<|python_tag|>",
             "{", "}", "[", "]", '"', "\\", ",", ":", ";", " ", "\n", '"name"', '"arguments"', '"parameters"',
             '"f"', "1", "true", "x", "é", "😀", '{"name": "f", "arguments": {"a": 1}}', "{}", "f"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(["hermes", "llama3", "mistral"]),
       parts=st.lists(st.sampled_from(FRAGMENTS), max_size=40),
       cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=25), stream_arguments=st.booleans())
def test_fuzz_markup_mixtures(fmt, parts, cuts, stream_arguments):
    text = "".join(parts)
    content, calls = parse_tool_calls(text, fmt, stream_arguments=stream_arguments)
    parser = ToolCallParser(fmt, stream_arguments=stream_arguments)
    deltas, pieces = stream(parser, split(text, cuts))
    check_fragments(pieces, fmt)
    assert (parser.content or None) == content
    assert calls_summary(parser.tool_calls) == calls_summary(calls)
    if not stream_arguments:
        for c in calls:  # the default mode only ever sends valid arguments objects
            assert isinstance(json.loads(c["function"]["arguments"]), dict)
    if not calls:  # without calls, nothing is lost: content is the text
        assert (content or "") == text


edits = st.lists(st.tuples(st.integers(min_value=0, max_value=300), st.sampled_from(["delete", "insert", "repeat"]),
                           st.integers(min_value=1, max_value=30), st.sampled_from(FRAGMENTS)), max_size=4)


def mutate(text, ops):
    for pos, op, n, fragment in ops:
        i = min(pos, len(text))
        if op == "delete":
            text = text[:i] + text[i + n % 4 + 1:]
        elif op == "insert":
            text = text[:i] + fragment + text[i:]
        else:
            text = text[:i] + text[max(0, i - n):i] + text[i:]
    return text


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), ops=edits,
       cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=25), stream_arguments=st.booleans())
def test_fuzz_mutated_samples(sample, ops, cuts, stream_arguments):
    """Valid outputs with random damage: chunking never matters and nothing raises."""
    fmt = normalize_tool_format(sample[0])
    test_fuzz_markup_mixtures.hypothesis.inner_test(fmt, [mutate(sample[1], ops)], cuts, stream_arguments)


def test_output_processor_factory():
    assert make_output_processor_factory(None, None) is None
    with pytest.raises(ValueError):
        make_output_processor_factory("nope", None)
    factory = make_output_processor_factory("qwen", "qwen3")
    from types import SimpleNamespace  # noqa: PLC0415

    with_tools = SimpleNamespace(tools=TOOLS, template_kwargs={})
    no_tools = SimpleNamespace(tools=None, template_kwargs={})
    # tools and a prompt that lets the model think: both parsers
    proc = factory(with_tools, "<|im_start|>assistant\n")
    assert proc.tools is not None and proc.reasoning is not None
    deltas = proc.feed(QWEN3_OUTPUT) + proc.finish()
    assert proc.finish_reason == "tool_calls"
    assert merge_deltas(deltas)["reasoning_content"].startswith("The user wants")
    # thinking switched off in the prompt and no tools: nothing to do
    assert factory(no_tools, "<|im_start|>assistant\n<think>\n\n</think>\n\n") is None
    # thinking off, tools on: tool parsing only
    proc = factory(with_tools, "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert proc.reasoning is None and proc.tools is not None
    # no tools: reasoning only; a plain answer passes through, finish_reason untouched
    proc = factory(no_tools, "<|im_start|>assistant\n")
    assert proc.tools is None
    assert merge_deltas(proc.feed("Hi there") + proc.finish()) == {"content": "Hi there"}
    assert proc.finish_reason is None
    # tool_choice / parallel_tool_calls when the request carries them
    req = SimpleNamespace(tools=TOOLS, tool_choice="none", parallel_tool_calls=False)
    proc = factory(req, "")
    assert proc.tools is None
    req = SimpleNamespace(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False)
    proc = factory(req, "")
    proc.feed(SAMPLES[1][1])
    proc.finish()
    assert len(proc.tool_calls) == 1
    # constrained decoding for a named function: the output is the arguments object
    factory = make_output_processor_factory("hermes", None, constrained=True)
    req = SimpleNamespace(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    proc = factory(req, "")
    deltas = proc.feed('{"city": "Oslo"}') + proc.finish()
    assert calls_summary(proc.tool_calls) == [("get_weather", '{"city": "Oslo"}')]
    check_fragments(deltas)


def test_group_deltas_keeps_openai_shape_and_order():
    head0 = {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                             "function": {"name": "f", "arguments": ""}}]}
    head1 = {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                             "function": {"name": "g", "arguments": ""}}]}

    def args(i, text):
        return {"tool_calls": [{"index": i, "function": {"arguments": text}}]}

    assert group_deltas([{"content": "a"}, {"content": "b"}]) == [{"content": "ab"}]
    assert group_deltas([{"content": "a"}, head0, args(0, "{"), args(0, "}"), head1, args(1, "{}"),
                         {"content": "z"}]) == [
        {"content": "a", **head0}, args(0, "{}"), head1, args(1, "{}"), {"content": "z"}]
    assert group_deltas([]) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=edits, cuts=st.lists(st.integers(min_value=1, max_value=300), max_size=25),
       stream_arguments=st.booleans(), in_reasoning=st.sampled_from([None, True]))
def test_fuzz_reasoning_and_tools_together(ops, cuts, stream_arguments, in_reasoning):
    text = mutate(QWEN3_OUTPUT, ops)
    options = dict(tool_format="hermes", reasoning_format="qwen3", in_reasoning=in_reasoning,
                   stream_arguments=stream_arguments)
    one = OutputParser(**options).parse(text)
    p = OutputParser(**options)
    deltas = []
    for c in split(text, cuts):
        deltas.extend(p.feed(c))
    deltas.extend(p.finish())
    check_fragments(deltas)
    merged = merge_deltas(deltas)
    assert merged.get("reasoning_content") == one.get("reasoning_content")
    assert (merged.get("content") or None) == (one["content"] or None)
    assert calls_summary(p.tool_calls) == calls_summary(one.get("tool_calls", []))
    assert p.finish_reason == ("tool_calls" if one.get("tool_calls") else None)
