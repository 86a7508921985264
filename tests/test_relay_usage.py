"""The relay's usage reading of non-streamed answers (radixrouter.relay._usage): a long answer's usage object
is parsed alone when it is a member of the outermost object; the result is always what parsing the whole
answer gives."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrouter.relay import _PARSE_WHOLE_UP_TO, _usage, _usage_tuple

LONG = "tok " * (_PARSE_WHOLE_UP_TO // 2)  # makes every answer below long enough for the partial read
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
         "prompt_tokens_details": {"cached_tokens": 5}, "completion_tokens_details": {"reasoning_tokens": 0}}


def whole(data: bytes) -> tuple[int, int, int]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return 0, 0, 0
    u = obj.get("usage") if isinstance(obj, dict) else None
    return _usage_tuple(u) if isinstance(u, dict) else (0, 0, 0)


def answer(**extra) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": LONG}, "finish_reason": "stop"}],
            **extra}


def test_usage_where_upstreams_put_it():
    cases = [
        answer(usage=USAGE),  # OpenAI, SGLang: last
        answer(usage=USAGE, prompt_logprobs=None, kv_transfer_params=None),  # vLLM: scalar members after it
        {"usage": USAGE, **answer()},  # first: members with objects and arrays follow, so parsed whole
        answer(usage=None),
        answer(),
    ]
    for obj in cases:
        for data in (orjson.dumps(obj), orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n"):
            assert len(data) > _PARSE_WHOLE_UP_TO
            assert _usage(data) == whole(data)
    assert _usage(orjson.dumps(answer(usage=USAGE))) == (12, 5, 7)


def test_a_nested_or_quoted_usage_is_not_taken_for_the_answers():
    # a "usage" key deeper in the answer, after the real one or without one, and "usage" inside strings
    tool = {"type": "function", "function": {"name": "f", "arguments": '{"usage":{"prompt_tokens":99}}'}}
    cases = [
        answer(usage=USAGE, extra={"usage": {"prompt_tokens": 99}}),
        answer(extra={"usage": {"prompt_tokens": 99}}),
        answer(usage=USAGE, tool_calls=[tool]),
        answer(note='"usage":{"prompt_tokens":99}}'),
        answer(usage=USAGE, note="}"),
    ]
    for obj in cases:
        data = orjson.dumps(obj)
        assert _usage(data) == whole(data), obj
    assert _usage(b"[" + orjson.dumps(answer(usage=USAGE)) + b"]") == (0, 0, 0)
    assert _usage(b'not json "usage":{"prompt_tokens":1}}' + LONG.encode()) == (0, 0, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["usage", '"usage":{', "}", "{", "]", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["usage", "a", "b"]), inner,
                                                                  max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(before=st.dictionaries(st.sampled_from(["a", "b", "c"]), json_values, max_size=3),
       usage=st.none() | st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens",
                                                           "prompt_tokens_details"]),
                                         st.integers(0, 9) | st.just({"cached_tokens": 2}), max_size=3),
       after=st.dictionaries(st.sampled_from(["d", "e"]), json_values, max_size=2))
def test_always_what_the_whole_parse_gives(before, usage, after):
    obj = {"pad": LONG, **before}
    if usage is not None:
        obj["usage"] = usage
    obj.update(after)
    data = orjson.dumps(obj)
    assert _usage(data) == whole(data)
