"""ChatTokenizer: loading, HF-compatible rendering (byte-identical to jinja2), tokenization, stop ids.

The reference renderer below is Hugging Face's template setup rebuilt on jinja2 (sandboxed environment,
trim_blocks, lstrip_blocks, loop controls, `{% generation %}` blocks, raise_exception / strftime_now /
tojson); where transformers is importable, Qwen3 renders are also compared with its own
`apply_chat_template`.
"""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
import jinja2.ext
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from radixrouter.tokenizer import ChatTokenizer, TemplateError, _normalize_messages, qwen3_files

# ---------------------------------------------------------------------------------------------------------
# Template fixtures (written for these tests from the ChatML and Llama-3 format facts)

CHATML = """\
{%- set ns = namespace(system=none, calls=0) %}
{%- if messages and messages[0].role == 'system' %}
    {%- set ns.system = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if ns.system is none and default_system is defined %}
    {%- set ns.system = default_system %}
{%- endif %}
{% if ns.system is not none or tools %}
<|im_start|>system
{% if ns.system is not none %}
{{ ns.system }}
{% endif %}
{% if tools %}
# Tools: {{ tools | map(attribute='function') | map(attribute='name') | join(', ') }}
{% for tool in tools %}
{{ tool.function | tojson(indent=2, sort_keys=true) }}
{% endfor %}
{% endif %}
<|im_end|>
{% endif %}
{% for message in loop_messages %}
    {% if message.role not in ['user', 'assistant', 'tool', 'system'] %}
        {{ raise_exception('unsupported role: ' ~ message.role) }}
    {% endif %}
<|im_start|>{{ message.role }}
    {% if message.role == 'assistant' %}
        {% generation %}
        {% if message.content is string %}
{{ message.content }}
        {%- endif %}
        {% for call in message.tool_calls | default([]) %}
            {% if loop.index > 3 %}{% break %}{% endif %}
            {% set ns.calls = ns.calls + 1 %}
<tool_call>{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson(separators=[',', ':']) }}</tool_call>
        {%- endfor %}
<|im_end|>
        {% endgeneration %}
    {% elif message.content is string %}
{{ message.content }}<|im_end|>
    {% else %}
        {% for part in message.content %}
            {% if part.type != 'text' %}{% continue %}{% endif %}
{{ part.text }}
            {%- if not loop.last %}{{ '\\n' }}{% endif %}
        {% endfor %}
<|im_end|>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% if ns.calls > 0 %}
{{- '(' ~ ns.calls ~ ' tool calls so far)\\n' -}}
{% endif %}
{% endif %}
"""

LLAMA3 = """\
{{- bos_token }}
{%- if date_string is not defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- 'Answer a function call as JSON: {"name": function name, "parameters": arguments}.\\n\\n' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == 'assistant' and message.tool_calls is defined %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception("only one tool call per turn is supported") }}
        {%- endif %}
        {%- set call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
        {{- '{"name": "' + call.name + '", "parameters": ' }}
        {{- call.arguments | tojson }}
        {{- "}<|eot_id|>" }}
    {%- elif message.role in ['user', 'system', 'assistant'] %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] | trim }}
        {%- else %}
            {%- for part in message['content'] %}
                {%- if part['type'] == 'text' %}
                    {{- part['text'] | trim }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif message.role == 'tool' %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- raise_exception('unexpected role ' ~ message.role) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

LLAMA3_CONFIG = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


# ---------------------------------------------------------------------------------------------------------
# The reference: Hugging Face's jinja2 setup


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (transformers tracks its span)."""

    tags = {"generation"}

    def parse(self, parser):  # type: ignore[no-untyped-def]
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):  # type: ignore[no-untyped-def]
        return caller()


def _j2_raise(message):  # type: ignore[no-untyped-def]
    raise jinja2.exceptions.TemplateError(message)


def _j2_tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # type: ignore[no-untyped-def]
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _j2_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _j2_tojson
    env.globals["raise_exception"] = _j2_raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


_J2 = _j2_env()


def reference_render(tok: ChatTokenizer, source: str, messages, tools=None, add_generation_prompt=True, **kw):
    """jinja2 render of the same (normalized) inputs; raises jinja2 / Python errors as they come."""
    content_parts = tok._content_parts["default"]
    msgs = _normalize_messages(messages, content_parts)
    context = {**tok.special_tokens, **kw}
    context.setdefault("documents", None)
    return _J2.from_string(source).render(
        messages=msgs, tools=tools, add_generation_prompt=add_generation_prompt, **context
    )


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def qwen() -> ChatTokenizer:
    return ChatTokenizer.qwen3()


@pytest.fixture(scope="module")
def chatml(qwen: ChatTokenizer) -> ChatTokenizer:
    return ChatTokenizer(qwen.tokenizer, CHATML, {"eos_token": "<|im_end|>"}, name="chatml")


@pytest.fixture(scope="module")
def llama3(qwen: ChatTokenizer) -> ChatTokenizer:
    # The rendering does not depend on the vocabulary; the Qwen3 tokenizer stands in.
    return ChatTokenizer(qwen.tokenizer, LLAMA3, LLAMA3_CONFIG, name="llama3")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": 'Current weather <in °C> & "quoted" for a city',
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


def _call(name: str, args, cid: str = "call_1") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


# (name, messages, tools, kwargs)
CASES: list[tuple[str, list[dict], list | None, dict]] = [
    ("single user", [{"role": "user", "content": "Hi"}], None, {}),
    (
        "system + user",
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        None,
        {},
    ),
    (
        "multi turn",
        [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
            {"role": "assistant", "content": "Why did the chicken cross the road?"},
            {"role": "user", "content": "Why?"},
        ],
        None,
        {},
    ),
    (
        "no generation prompt",
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        None,
        {"add_generation_prompt": False},
    ),
    (
        "thinking in history",
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\n4"},
            {"role": "user", "content": "and 3+3?"},
        ],
        None,
        {},
    ),
    (
        "thinking after last query",
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nSimple.\n</think>\n\n4"},
        ],
        None,
        {"add_generation_prompt": False},
    ),
    (
        "reasoning_content field",
        [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "reasoning_content": "because"},
        ],
        None,
        {"add_generation_prompt": False},
    ),
    (
        "reasoning alias",
        [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "reasoning": "hmm"},
        ],
        None,
        {"add_generation_prompt": False},
    ),
    ("enable_thinking false", [{"role": "user", "content": "Hi"}], None, {"enable_thinking": False}),
    ("enable_thinking true", [{"role": "user", "content": "Hi"}], None, {"enable_thinking": True}),
    (
        "tools, no call",
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather?"}],
        [WEATHER_TOOL, SEARCH_TOOL],
        {},
    ),
    (
        "tool call and result",
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [_call("get_weather", '{"city":"Paris","unit":"c"}')],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'},
        ],
        [WEATHER_TOOL],
        {},
    ),
    (
        "tool call with dict args and text",
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [_call("get_weather", {"city": "Zürich"})],
            },
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny in Zürich."},
            {"role": "user", "content": "Thanks"},
        ],
        [WEATHER_TOOL],
        {},
    ),
    (
        "parallel tool calls, consecutive results",
        [
            {"role": "user", "content": "Paris and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    _call("get_weather", '{"city": "Paris"}', "a"),
                    _call("get_weather", '{"city": "Rome"}', "b"),
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "20"},
            {"role": "tool", "tool_call_id": "b", "content": "25"},
        ],
        [WEATHER_TOOL],
        {},
    ),
    (
        "multi-part content",
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Two"}],
            },
            {
                "role": "user",
                "content": [{"type": "text", "text": "Describe"}, {"type": "input_text", "text": " this  "}],
            },
        ],
        None,
        {},
    ),
    (
        "unicode, markup, whitespace",
        [
            {"role": "system", "content": "  padded system  \n"},
            {
                "role": "user",
                "content": "<b>bold</b> & \"quotes\" 'single' — ünïcödé 😀 中文\n\n  trailing  ",
            },
            {"role": "assistant", "content": "\n leading newline and tab\t"},
            {"role": "user", "content": "<tool_response>\nlooks like a tool response\n</tool_response>"},
        ],
        None,
        {},
    ),
    (
        "empty content",
        [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "again"},
        ],
        None,
        {},
    ),
    (
        "kwargs passthrough",
        [{"role": "user", "content": "Hi"}],
        None,
        {"default_system": "Injected default.", "date_string": "01 Jan 2026"},
    ),
]


# ---------------------------------------------------------------------------------------------------------
# Equivalence with jinja2


def _which(request: pytest.FixtureRequest, name: str) -> ChatTokenizer:
    return request.getfixturevalue(name)


@pytest.mark.parametrize("template", ["qwen", "chatml", "llama3"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_render_matches_jinja2(request, template, case) -> None:
    tok = _which(request, template)
    name, messages, tools, kwargs = case
    kwargs = dict(kwargs)
    if template == "llama3":
        kwargs.setdefault("date_string", "21 Nov 2026")
    source = tok.chat_template
    assert source is not None
    try:
        expected = reference_render(tok, source, messages, tools=tools, **kwargs)
    except jinja2.TemplateError as e:
        # The template itself refuses these messages: so must we, with the template's message.
        with pytest.raises(TemplateError) as info:
            tok.render(messages, tools=tools, **kwargs)
        assert str(e) in str(info.value)
        return
    got = tok.render(messages, tools=tools, **kwargs)
    assert got == expected
    assert got  # every template renders something for these cases


def test_fixture_templates_render_the_formats(chatml, llama3) -> None:
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": " Hi \n"}]
    assert (
        chatml.render(msgs)
        == "<|im_start|>system\nS\n<|im_end|>\n<|im_start|>user\n Hi \n<|im_end|>\n<|im_start|>assistant\n"
    )
    assert llama3.render(msgs, date_string="1 Jan 2026") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: 1 Jan 2026\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # strftime_now is a real clock.
    assert datetime.now().strftime("%d %b %Y") in llama3.render(msgs)


def test_qwen3_render_known_output(qwen) -> None:
    msgs = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", '{"city":"Paris"}')]},
        {"role": "tool", "content": "21"},
    ]
    text = qwen.render(msgs, tools=[WEATHER_TOOL], enable_thinking=False)
    # HF tojson: no HTML escaping, non-ASCII kept, arguments re-serialized with json.dumps separators.
    assert '"description": "Current weather <in °C> & \\"quoted\\" for a city"' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n21\n</tool_response><|im_end|>\n"
    ) in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def _conversations():
    piece = st.sampled_from(
        list("ab xyz\n\t<>/&\"'{}é😀中")
        + ["<think>", "</think>", "<tool_response>", "</tool_response>", "<|im_end|>"]
    )
    text = st.lists(piece, max_size=12).map("".join)
    call = st.builds(
        lambda n, a: _call(n, a),
        st.sampled_from(["get_weather", "search"]),
        st.one_of(
            st.dictionaries(
                st.sampled_from(["city", "q", "n"]),
                st.one_of(text, st.integers(-5, 5), st.booleans(), st.none()),
                max_size=3,
            ),
            st.dictionaries(st.sampled_from(["city"]), text).map(json.dumps),
        ),
    )
    user = st.builds(lambda c: {"role": "user", "content": c}, text)
    parts = st.builds(
        lambda cs: {"role": "user", "content": [{"type": "text", "text": c} for c in cs]},
        st.lists(text, min_size=1, max_size=3),
    )
    assistant = st.builds(
        lambda c, calls, r: {
            "role": "assistant",
            "content": c,
            **({"tool_calls": calls} if calls else {}),
            **({"reasoning_content": r} if r is not None else {}),
        },
        st.one_of(text, st.none()),
        st.lists(call, max_size=2),
        st.one_of(st.none(), text),
    )
    tool = st.builds(lambda c: {"role": "tool", "content": c}, text)
    system = st.builds(lambda c: {"role": "system", "content": c}, text)
    return st.tuples(
        st.lists(st.one_of(user, parts, assistant, tool, system), min_size=1, max_size=7),
        st.booleans(),
        st.booleans(),
        st.sampled_from([None, True, False]),
    )


@pytest.mark.parametrize("template", ["qwen", "chatml", "llama3"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_conversations())
def test_render_matches_jinja2_property(request, template, data) -> None:
    tok = _which(request, template)
    messages, with_tools, gen_prompt, thinking = data
    tools = [WEATHER_TOOL, SEARCH_TOOL] if with_tools else None
    kwargs: dict = {"add_generation_prompt": gen_prompt, "date_string": "5 May 2026"}
    if thinking is not None:
        kwargs["enable_thinking"] = thinking
    source = tok.chat_template
    try:
        expected = reference_render(tok, source, messages, tools=tools, **kwargs)
    except Exception:
        with pytest.raises(TemplateError):
            tok.render(messages, tools=tools, **kwargs)
        return
    assert tok.render(messages, tools=tools, **kwargs) == expected


def test_qwen3_matches_transformers_apply_chat_template(qwen) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(qwen3_files()))
    checked = 0
    for name, messages, tools, kwargs in CASES:
        kw = dict(kwargs)
        gen = kw.pop("add_generation_prompt", True)
        # transformers passes messages as given: give it what our normalization produces for OpenAI input
        # (text parts joined, JSON-string arguments parsed), which is what SGLang's server does too.
        hf_messages = _normalize_messages(messages, False)
        expected = hf.apply_chat_template(
            hf_messages, tools=tools, tokenize=False, add_generation_prompt=gen, **kw
        )
        assert qwen.render(messages, tools=tools, add_generation_prompt=gen, **kw) == expected, name
        checked += 1
    assert checked == len(CASES)


# ---------------------------------------------------------------------------------------------------------
# Shims and edge cases, each rendered by both engines


SHIM_CASES = [
    ("{{ x | tojson }}", {"x": {"b": "<é>&", "a": [1.5, True, None]}}),
    ("{{ x | tojson(indent=2) }}", {"x": {"k": ["v", {"n": 1}]}}),
    ("{{ x | tojson(sort_keys=true, separators=[',', ':']) }}", {"x": {"b": 1, "a": 2}}),
    ("{{ {'z': 1, 'a': [x, 2]} | tojson }}", {"x": "in-template dict keeps key order"}),
    (
        "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}"
        "{% endfor %}",
        {},
    ),
    ("a\n  {% if true %}\n  b\n  {% endif %}\nc", {}),
    ("x {%- generation -%}  y  {%- endgeneration %} z\n", {}),
    ("<{% generation %}\n{{ v }}\n{% endgeneration %}>", {"v": "body"}),
    (
        "{{ s.strip() }}|{{ s.lstrip(' ') }}|{{ s.split('b') }}|{{ s.startswith(' a') }}|{{ s | trim }}",
        {"s": " ab c "},
    ),
    ("{{ m.get('k', 'dflt') }} {{ m.missing is defined }} {{ m['k2'] }}", {"m": {"k2": 3}}),
    (
        "{% set ns = namespace(n=0) %}{% for _ in [1, 2, 3] %}{% set ns.n = ns.n + loop.index %}{% endfor %}{{ ns.n }}",
        {},
    ),
    ("{{ l[::-1] | join(',') }} {{ l | length }} {{ l | first }} {{ l | last }}", {"l": [1, 2, 3]}),
]


@pytest.mark.parametrize(("source", "context"), SHIM_CASES)
def test_shims_match_jinja2(source, context, qwen) -> None:
    tok = ChatTokenizer(qwen.tokenizer, source, {}, name="t")
    expected = _J2.from_string(source).render(
        messages=[], tools=None, add_generation_prompt=True, documents=None, **context
    )
    assert tok.render([], **context) == expected


def test_raise_exception_is_a_template_error(chatml) -> None:
    with pytest.raises(TemplateError, match="unsupported role: robot"):
        chatml.render([{"role": "robot", "content": "beep"}])
    assert issubclass(TemplateError, ValueError)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("not a list", "list of message objects"),
        ([1, 2], r"messages\[0\] must be an object"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "'image_url' is not supported",
        ),
        ([{"role": "user", "content": [7]}], "parts must be objects"),
        ([{"role": "user", "content": 42}], "chat template error"),  # Qwen3 calls .startswith on the content
        ([], "chat template error"),  # Qwen3 reads messages[0]
    ],
)
def test_bad_messages_raise_template_error(qwen, messages, match) -> None:
    with pytest.raises(TemplateError, match=match):
        qwen.render(messages)


def test_bad_template_fails_at_load_and_missing_template(qwen, tmp_path) -> None:
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTokenizer(qwen.tokenizer, "{% if %}", {})
    bare = ChatTokenizer(qwen.tokenizer, None, {})
    assert not bare.has_chat_template
    with pytest.raises(TemplateError, match="no chat template"):
        bare.render([{"role": "user", "content": "x"}])


# ---------------------------------------------------------------------------------------------------------
# Loading


def _model_dir(tmp_path, config: dict, *, jinja: str | None = None, generation: dict | None = None):
    d = tmp_path / "My-Model"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((qwen3_files() / "tokenizer.json").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja is not None:
        (d / "chat_template.jinja").write_text(jinja)
    if generation is not None:
        (d / "generation_config.json").write_text(json.dumps(generation))
    return d


def test_from_model_path_config_template_and_added_token_dicts(tmp_path) -> None:
    d = _model_dir(
        tmp_path,
        {
            "chat_template": CHATML,
            "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True},
            "bos_token": None,
            "pad_token": "<|endoftext|>",
        },
    )
    tok = ChatTokenizer.from_model_path(d)
    assert tok.name == "My-Model"
    assert tok.eos_token == "<|im_end|>" and tok.bos_token is None
    assert tok.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert tok.render([{"role": "user", "content": "x"}]).startswith("<|im_start|>user\nx<|im_end|>")


def test_chat_template_jinja_file_wins_and_override(tmp_path) -> None:
    d = _model_dir(
        tmp_path, {"chat_template": "from config", "eos_token": "<|im_end|>"}, jinja="from jinja file"
    )
    assert ChatTokenizer.from_model_path(d).render([]) == "from jinja file"
    override = tmp_path / "override.jinja"
    override.write_text("{{ messages | length }} from override")
    assert ChatTokenizer.from_model_path(d, chat_template_file=override).render([{}]) == "1 from override"
    # --tokenizer + --chat-template
    tok = ChatTokenizer.from_files(d / "tokenizer.json", override)
    assert tok.render([]) == "0 from override"


def test_named_templates_default_and_tool_use(tmp_path) -> None:
    d = _model_dir(
        tmp_path,
        {
            "chat_template": [
                {"name": "default", "template": "plain"},
                {"name": "tool_use", "template": "tools: {{ tools | length }}"},
            ]
        },
    )
    tok = ChatTokenizer.from_model_path(d)
    assert tok.render([]) == "plain"
    assert tok.render([], tools=[WEATHER_TOOL]) == "tools: 1"
    # Template files beside the config, as transformers saves them.
    extra = d / "additional_chat_templates"
    extra.mkdir()
    (extra / "tool_use.jinja").write_text("file tools: {{ tools | length }}")
    assert ChatTokenizer.from_model_path(d).render([], tools=[WEATHER_TOOL]) == "file tools: 1"
    (d / "chat_template.jinja").write_text("file default")
    tok = ChatTokenizer.from_model_path(d)
    assert (tok.render([]), tok.render([], tools=[])) == ("file default", "file tools: 0")
    only_tools = ChatTokenizer(tok.tokenizer, [{"name": "tool_use", "template": "t"}], {})
    with pytest.raises(TemplateError, match="no 'default' chat template"):
        only_tools.render([])


def test_stop_token_ids(qwen, tmp_path) -> None:
    im_end = qwen.tokenizer.token_to_id("<|im_end|>")
    eot = qwen.tokenizer.token_to_id("<|endoftext|>")
    assert qwen.stop_token_ids == {im_end, eot}
    d = _model_dir(tmp_path, {"eos_token": "<|endoftext|>"}, generation={"eos_token_id": [im_end, 151643, 7]})
    assert ChatTokenizer.from_model_path(d).stop_token_ids == {im_end, eot, 7}


@pytest.mark.parametrize("problem", ["no dir", "no tokenizer", "bad json", "bad tokenizer"])
def test_load_errors_are_clear(tmp_path, problem) -> None:
    d = tmp_path / "m"
    if problem != "no dir":
        d.mkdir()
    if problem == "bad json":
        (d / "tokenizer.json").write_bytes((qwen3_files() / "tokenizer.json").read_bytes())
        (d / "tokenizer_config.json").write_text("{nope")
    if problem == "bad tokenizer":
        (d / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        ChatTokenizer.from_model_path(d)
    assert str(d) in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Tokenization


def test_encode_decode_and_ends(qwen) -> None:
    text = "<|im_start|>user\nhello world 😀 é\n\n<|im_end|>\n<think>x</think>"
    ids, ends = qwen.encode_with_ends(text)
    assert ids == qwen.encode(text)
    assert ids[0] == qwen.tokenizer.token_to_id("<|im_start|>")  # special tokens recognized, no BOS added
    assert qwen.decode(ids, skip_special_tokens=False) == text
    assert "<|im_start|>" not in qwen.decode(ids)
    assert ends[-1] == len(text)
    assert all(a <= b for a, b in zip(ends, ends[1:], strict=False))
    # Each token's text ends where its offset says.
    pos = 0
    for tid, end in zip(ids, ends, strict=True):
        piece = qwen.decode([tid], skip_special_tokens=False)
        if "\ufffd" not in piece:  # a whole-character token
            assert text[pos:end].endswith(piece) or text[:end].endswith(piece)
        pos = end
    assert qwen.encode("hello world") == [14990, 1879]
    assert qwen.decode([49122, 385, 1879]) == "hello world"
    assert qwen.id_to_token_text(151645) == "<|im_end|>"
    assert qwen.encode_with_ends("") == ([], [])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.sampled_from(
            list("ab \n\t<>é😀中𝔘ẞꙮ\u200d🏳️‍🌈") + ["<|im_end|>", "<think>", "hello", " world", "  "]
        ),
        max_size=25,
    ).map("".join)
)
def test_char_ends_equal_the_tokenizer_offsets(qwen, text) -> None:
    """Token ends computed from ids alone (what PromptBuilder records) are the tokenizer's own offsets,
    also where a character is split over several byte-level tokens."""
    ids, ends = qwen.encode_with_ends(text)
    assert list(qwen.char_ends(ids)) == ends
    assert list(qwen.char_ends(ids, 7)) == [e + 7 for e in ends]


def test_lone_surrogates_are_a_value_error(qwen) -> None:
    with pytest.raises(ValueError, match="lone surrogates"):
        qwen.encode("bad \ud800 text")
