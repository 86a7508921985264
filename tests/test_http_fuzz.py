"""Property-based fuzz of the router over real HTTP: bad input gets a clear 4xx in OpenAI's error shape, never a
5xx, a crash or a hang, and what the router accepted is answered in full.

The module starts two simulated SGLang workers and, in front of them, `radixrouter serve` four times: over RSGI
(the default), over ASGI, with the tool-call and reasoning parsers, and without a tokenizer (text mode: the
workers template the chat); each serves the native model and a relayed one (`--openai-url relayed=<sim>/v1`). Each generated case starts from a valid request for one route
and mutates it: fields replaced by values of the wrong type or out of range (huge integers, 1e309, lone
surrogates written as JSON escapes), fields removed, unknown keys added, messages, content parts, tools and
tool_choice broken, and whole bodies broken (not JSON, not an object, invalid UTF-8, duplicate keys, a BOM, wrong
Content-Type). The property, for every case: the status is 2xx or 4xx; a 4xx body is exactly
``{"error": {"message", "type", "param", "code"}}`` with a message that names the field at fault; a 2xx stream
follows the SSE rules and ends with ``data: [DONE]`` (or an error frame); a 2xx answer is complete. After each
fuzz test the router still serves a normal request, /metrics counts no 5xx, and nothing is left in flight.
Raw-socket cases cover what httpx cannot send (bad Content-Length, broken chunking, bodies cut short), and the
inputs the fuzz found are kept as regression cases at the end.

`make fuzz-http` runs the same file with many more examples (``HYPOTHESIS_PROFILE_HTTP=fuzz-long``,
``FUZZ_HTTP_EXAMPLES`` per route, default 3000, random seeds); the normal test run uses 60, derandomized.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simutil import SimWorkers
from test_router import MODEL, RouterProcess

KEY = "sk-fuzz"
ADMIN = "admin-fuzz"
RELAYED = "relayed"

_COMMON = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("fuzz-short", max_examples=int(os.environ.get("FUZZ_HTTP_EXAMPLES", "60")), **_COMMON)
settings.register_profile("fuzz-long", max_examples=int(os.environ.get("FUZZ_HTTP_EXAMPLES", "3000")),
                          **dict(_COMMON, derandomize=False))
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE_HTTP", "fuzz-short"))
LONG = settings.get_profile("fuzz-long")

# ------------------------------------------------------------------------------------------ the router


@pytest.fixture(scope="module")
def sims():
    # instant decode and short replies: a fuzz case costs the worker almost nothing
    with SimWorkers(2, model=MODEL, tokenizer="qwen3", decode_tokens_per_s=0, min_output_tokens=2, max_output_tokens=8,
                    context_length=4096) as ws:
        yield ws


@pytest.fixture(scope="module")
def router(sims):
    with _router(sims, "rsgi") as r:
        yield r


@pytest.fixture(scope="module")
def asgi_router(sims):
    """The same router over granian's ASGI interface (`Exchange` instead of `RsgiExchange`)."""
    with _router(sims, "asgi") as r:
        yield r


@pytest.fixture(scope="module")
def parser_router(sims):
    """A router that parses tool calls and reasoning (tool_choice 'required' / named: constrained decoding)."""
    with _router(sims, "rsgi", tool_call_parser="qwen", reasoning_parser="qwen3") as r:
        yield r


@pytest.fixture(scope="module")
def text_router(sims):
    """A router without a tokenizer (text mode): the workers' own OpenAI endpoints template the chat."""
    with _router(sims, "rsgi", qwen3=False, served_model_name=MODEL) as r:
        yield r


def _router(sims: SimWorkers, interface: str, **flags: Any) -> RouterProcess:
    return RouterProcess(sims.urls, api_key=KEY, admin_key=ADMIN, openai_url=f"{RELAYED}={sims[0].url}/v1",
                         health_check_interval=3600, max_body_bytes=1 << 20, interface=interface, **flags)


@pytest.fixture(scope="module")
def client(router):
    with httpx.Client(base_url=router.url, timeout=httpx.Timeout(15.0)) as c:
        yield c


# ------------------------------------------------------------------------------------------ JSON with raw tokens


class Raw:
    """A JSON token written verbatim (numbers JSON allows but no double holds, escaped lone surrogates...)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


class Pairs:
    """A JSON object written from (key, value) pairs, so a key can repeat."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        self.pairs = pairs

    def __repr__(self) -> str:
        return f"Pairs({self.pairs!r})"


RAW_TOKENS = ["1e309", "-1e309", "1E400", "1e-400", "-0", "-0.0", "18446744073709551616", "-9223372036854775809",
              "123456789012345678901234567890", '"\\ud800"', '"\\udfff"', '"a\\ud83dz"', '"\\u0000"', '"\\ud83d\\ude00"']


def enc(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, Pairs):
        return "{" + ",".join(json.dumps(k) + ":" + enc(x) for k, x in v.pairs) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + enc(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(enc(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ strategies

atoms = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2, 21, 129, 257, 2**31, 2**63, -(2**63), 2**64]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1.5, 2.5, 1e300, -1e300, 5e-324]),
    st.text(max_size=12), st.sampled_from(["", " ", "null", "true", "1", "\x00", "é😀", "\u2028", "text", "auto",
                                          "none", "required", "user", "function", "json_object", "json_schema"]),
    st.sampled_from(RAW_TOKENS).map(Raw),
)


def _nest(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)


junk = st.recursive(atoms, _nest, max_leaves=8)

bad_part = st.one_of(
    junk,
    st.fixed_dictionaries({"type": junk}),
    st.fixed_dictionaries({"type": st.just("text"), "text": junk}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "refusal", "text"])},
                          optional={"text": st.text(max_size=8), "image_url": junk, "refusal": junk}),
)
content = st.one_of(junk, st.lists(bad_part, max_size=3), st.text(max_size=40),
                    st.text(min_size=2000, max_size=6000), st.sampled_from(["😀" * 3000, "\u0301" * 4000]))
message = st.one_of(
    junk,
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function",
                                                    "robot", "", "USER"]) | junk},
                          optional={"content": content, "name": junk, "tool_calls": junk, "tool_call_id": junk,
                                    "reasoning_content": junk}),
)
tool = st.one_of(
    junk,
    st.fixed_dictionaries({"type": st.just("function") | junk},
                          optional={"function": junk | st.fixed_dictionaries(
                              {"name": st.text(max_size=8) | junk},
                              optional={"parameters": junk, "description": junk, "strict": junk})}),
)
tools = st.one_of(junk, st.lists(tool, max_size=3))
tool_choice = st.one_of(junk, st.sampled_from(["none", "auto", "required", "any"]),
                        st.fixed_dictionaries({"type": st.just("function") | junk},
                                              optional={"function": junk | st.fixed_dictionaries({"name": junk})}))
stop = st.one_of(junk, st.lists(st.text(max_size=4), min_size=0, max_size=40), st.lists(junk, max_size=5))
stream_options = st.one_of(junk, st.fixed_dictionaries({}, optional={"include_usage": junk,
                                                                     "continuous_usage_stats": junk}))
small_ints = st.one_of(junk, st.integers(-5, 300))

# fields with a strategy of their own; any other known field gets `junk`
FIELD_VALUES: dict[str, Any] = {
    "messages": st.one_of(junk, st.lists(message, max_size=4)),
    "tools": tools, "tool_choice": tool_choice, "stop": stop, "stream_options": stream_options,
    "n": small_ints, "max_tokens": small_ints, "max_completion_tokens": small_ints, "logprobs": small_ints,
    "top_logprobs": small_ints, "best_of": small_ints, "top_k": small_ints, "min_tokens": small_ints,
    "stream": st.one_of(junk, st.booleans()), "prompt": st.one_of(junk, content, st.lists(st.integers(-3, 200000),
                                                                                          max_size=5)),
    "logit_bias": st.one_of(junk, st.dictionaries(st.sampled_from(["1", "x", "-1", "99999999999"]), junk, max_size=3)),
    "response_format": st.one_of(junk, st.fixed_dictionaries({"type": junk | st.sampled_from(
        ["text", "json_object", "json_schema", "yaml"])}, optional={"json_schema": junk})),
    "model": st.one_of(junk, st.sampled_from([MODEL, RELAYED, "gpt-9", ""])),
}

SAMPLING = ["temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty",
            "min_tokens", "stop", "stop_token_ids", "ignore_eos", "skip_special_tokens", "no_stop_trim", "regex",
            "ebnf", "logit_bias", "response_format", "seed", "n", "stream", "stream_options", "user", "metadata",
            "store", "service_tier"]
CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
               "tool_choice", "parallel_tool_calls", "chat_template_kwargs", "modalities", "functions",
               "function_call", "prediction", "audio", "web_search_options", *SAMPLING]
COMPLETION_FIELDS = ["model", "prompt", "max_tokens", "logprobs", "echo", "suffix", "best_of", *SAMPLING]
GENERATE_FIELDS = ["text", "input_ids", "sampling_params", "stream", "rid", "return_logprob", "top_logprobs_num",
                   "logprob_start_len", "return_text_in_logprobs"]
SGLANG_SAMPLING = ["max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
                   "ignore_eos", "n", "min_new_tokens", "regex", "json_schema", "sampling_seed", "logit_bias"]

# the worker's words for a field the router passes on (SGLang names, and its context-length check)
WORKER_NAMES = {"max_tokens": ("max_new_tokens", "context length"),
                "max_completion_tokens": ("max_new_tokens", "context length"), "seed": ("sampling_seed",),
                "min_tokens": ("min_new_tokens",), "prompt": ("input", "token ids"), "text": ("input",),
                "sampling_params": ("SamplingParams", "sampling")}

MSG = [{"role": "user", "content": "Tell me about radix trees."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ROUTES: dict[str, tuple[str, str, dict, list[str]]] = {
    # name: (path, auth, valid body, fields to mutate)
    "chat": ("/v1/chat/completions", KEY, {"model": MODEL, "messages": MSG, "max_tokens": 4}, CHAT_FIELDS),
    "chat_relayed": ("/v1/chat/completions", KEY, {"model": RELAYED, "messages": MSG, "max_tokens": 4}, CHAT_FIELDS),
    "chat_text": ("/v1/chat/completions", KEY, {"model": MODEL, "messages": MSG, "max_tokens": 4}, CHAT_FIELDS),
    "chat_tools": ("/v1/chat/completions", KEY, {"model": MODEL, "messages": MSG, "max_tokens": 4, "tools": TOOLS,
                                                 "tool_choice": "required"}, CHAT_FIELDS),
    "completions": ("/v1/completions", KEY, {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4},
                    COMPLETION_FIELDS),
    "completions_relayed": ("/v1/completions", KEY, {"model": RELAYED, "prompt": "Once upon a time", "max_tokens": 4},
                            COMPLETION_FIELDS),
    "generate": ("/generate", KEY, {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 4}},
                 GENERATE_FIELDS),
    "retrieve_from_text": ("/retrieve_from_text", KEY, {"text": "Once upon a time"}, ["text"]),
}


class Case:
    """One generated request, with what was done to the valid body (for the error-message check)."""

    def __init__(self, route: str, body: bytes, ctype: str | None, touched: list[str], corrupt: str | None,
                 stream: bool):
        self.route = route
        self.body = body
        self.ctype = ctype
        self.touched = touched  # top-level fields mutated, in order
        self.corrupt = corrupt  # how the bytes were broken, or None
        self.stream = stream

    def __repr__(self) -> str:
        return (f"Case({self.route}, touched={self.touched}, corrupt={self.corrupt}, ctype={self.ctype!r}, "
                f"body={self.body[:600]!r})")


@st.composite
def cases(draw, routes: tuple[str, ...] = tuple(ROUTES)) -> Case:
    route = draw(st.sampled_from(routes))
    _path, _auth, base, fields = ROUTES[route]
    obj: dict[str, Any] = json.loads(json.dumps(base))
    touched: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "set", "set", "del", "unknown", "nested", "deep"]))
        if op == "set":
            key = draw(st.sampled_from(fields))
            obj[key] = draw(FIELD_VALUES.get(key, junk))
            touched.append(key)
        elif op == "del":
            if obj:
                key = draw(st.sampled_from(sorted(obj)))
                del obj[key]
                touched.append(key)
        elif op == "deep":
            # nested past what orjson writes back (254 levels) and up to what it reads (1024): the router must
            # not fail re-encoding it (relayed models too: see test_relayed_body_nested_too_deeply_is_a_400)
            key = draw(st.sampled_from(fields))
            d = draw(st.integers(250, 1030))
            obj[key] = Raw(draw(st.sampled_from(["[" * d + "]" * d, '{"a":' * d + "1" + "}" * d])))
            touched.append(key)
        elif op == "unknown":
            obj[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in fields and k != "sim"))] = draw(junk)
        elif route.startswith("chat") and isinstance(obj.get("messages"), list):
            msgs = list(obj["messages"])
            if draw(st.booleans()) and msgs and isinstance(msgs[0], dict):
                m = dict(msgs[0])
                m[draw(st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id"]))] = draw(
                    st.one_of(content, junk))
                msgs[0] = m
            else:
                msgs.insert(draw(st.integers(0, len(msgs))), draw(message))
            obj["messages"] = msgs
            touched.append("messages")
        elif route == "generate" and isinstance(obj.get("sampling_params"), dict):
            sp = dict(obj["sampling_params"])
            key = draw(st.sampled_from(SGLANG_SAMPLING))
            sp[key] = draw(junk)
            obj["sampling_params"] = sp
            touched.append(key)  # the worker names the sampling parameter
    stream = obj.get("stream") is True
    corrupt = draw(st.sampled_from([None] * 6 + ["truncate", "utf8", "not_object", "dup", "garbage", "bom",
                                                 "empty", "not_json"]))
    if corrupt == "dup" and obj:
        key = draw(st.sampled_from(sorted(obj)))
        pairs = list(obj.items())
        dup = (key, draw(junk))
        pairs.insert(draw(st.integers(0, len(pairs))), dup)
        text = enc(Pairs(pairs))
    elif corrupt == "not_object":
        text = enc(draw(st.one_of(atoms, st.lists(junk, max_size=3), st.just([obj]))))
    else:
        text = enc(obj)
    body = text.encode("utf-8")
    if corrupt == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif corrupt == "utf8":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])) \
            + body[at:]
    elif corrupt == "garbage":
        body += draw(st.sampled_from([b"x", b" ,", b"}", b"{}", b"\x00", b"\n[]"]))
    elif corrupt == "bom":
        body = b"\xef\xbb\xbf" + body
    elif corrupt == "empty":
        body = draw(st.sampled_from([b"", b" ", b"\n", b"null"]))
    elif corrupt == "not_json":
        body = draw(st.sampled_from([b"hello", b"model=x&prompt=y", b"<xml/>", b"{'a': 1}", b"{a:1}", b"NaN",
                                     b"Infinity", b"[1,]", b'{"a":1,}', b"\x00\x01\x02"]))
    ctype = draw(st.sampled_from(["application/json"] * 4 + [None, "text/plain", "application/x-www-form-urlencoded",
                                                             "application/json; charset=latin-1", "multipart/form-data",
                                                             "", "application/json, text/plain"]))
    return Case(route, body, ctype, touched, corrupt, stream)


# ------------------------------------------------------------------------------------------ the property


def check_error(r: httpx.Response, case: Any = None) -> dict:
    """A 4xx in OpenAI's error shape, whose message names the field at fault when one field was changed."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500], case)
    assert r.headers.get("content-type", "").startswith("application/json"), (r.headers, case)
    obj = r.json()
    assert isinstance(obj, dict) and set(obj) == {"error"}, (obj, case)
    err = obj["error"]
    assert set(err) == {"message", "type", "param", "code"}, (err, case)
    assert isinstance(err["message"], str) and err["message"].strip(), (err, case)
    assert isinstance(err["type"], str) and err["type"], (err, case)
    assert err["param"] is None or isinstance(err["param"], str), (err, case)
    assert err["code"] is None or isinstance(err["code"], str), (err, case)
    if err["param"]:
        assert err["param"].split(".")[0].split("[")[0].lower() in err["message"].lower(), (err, case)
    # (a relayed model's upstream, and the workers in text mode, word their own errors)
    if isinstance(case, Case) and case.corrupt is None and len(case.touched) == 1 and r.status_code == 400 \
            and not case.route.endswith("_relayed") and not (case.route == "chat_text" and err["param"] is None) \
            and not err["message"].startswith("invalid JSON body: "):  # a number no double holds, a lone surrogate
        key = case.touched[0]
        names = (key, *WORKER_NAMES.get(key, ()))
        assert any(n in err["message"] for n in names) or err["param"] == key, (err, case)
    return err


def check_sse(raw: bytes, case: Any) -> None:
    """The SSE rules: every line `data: <payload>` (or a `:` comment), events separated by one blank line,
    and the last event `[DONE]`, or an error object in OpenAI's shape."""
    assert raw.endswith(b"\n\n"), (raw[-300:], case)
    assert b"\r" not in raw, case
    events = raw[:-2].split(b"\n\n")
    datas = []
    for ev in events:
        assert ev, (raw[-300:], case)
        for line in ev.split(b"\n"):
            assert line.startswith(b"data: ") or line.startswith(b":"), (line, case)
            if line.startswith(b"data: "):
                datas.append(line[6:])
    assert datas, case
    for d in datas[:-1]:
        assert d != b"[DONE]", case
        obj = json.loads(d)
        assert isinstance(obj, dict) and "error" not in obj, (obj, case)
    last = datas[-1]
    if last != b"[DONE]":
        err = json.loads(last)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (err, case)


def check_ok(case_route: str, r: httpx.Response, case: Any) -> None:
    """A 2xx is complete: a stream ends with [DONE], an answer has every choice finished."""
    assert 200 <= r.status_code < 300, (r.status_code, r.text[:500], case)
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        check_sse(r.content, case)
        return
    assert ctype.startswith("application/json"), (ctype, case)
    obj = r.json()
    if case_route.startswith(("chat", "completions")):
        assert obj["choices"], (obj, case)
        for ch in obj["choices"]:
            assert ch["finish_reason"] in ("stop", "length", "tool_calls"), (obj, case)
    elif case_route == "generate":  # a list for n > 1
        for o in obj if isinstance(obj, list) else [obj]:
            assert o["meta_info"]["finish_reason"]["type"] in ("stop", "length"), (obj, case)
    elif case_route == "retrieve_from_text":
        assert obj["token_length"] == len(obj["tokens"]), (obj, case)


def send(client: httpx.Client, case: Case) -> httpx.Response:
    path, auth, _base, _fields = ROUTES[case.route]
    headers = {"authorization": f"Bearer {auth}"}
    if case.ctype is not None:
        headers["content-type"] = case.ctype
    return client.post(path, content=case.body, headers=headers)


def check_case(client: httpx.Client, case: Case) -> httpx.Response:
    r = send(client, case)
    if r.status_code >= 400:
        check_error(r, case)
    else:
        check_ok(case.route, r, case)
    return r


# ------------------------------------------------------------------------------------------ after the fuzz


def _metric_lines(text: str, name: str) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2))) for m in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, re.M)]


def five_xx(client: httpx.Client) -> dict[str, float]:
    """The router's 5xx answers so far, by route and status (from /metrics)."""
    text = client.get("/metrics").text
    return {labels: v for labels, v in _metric_lines(text, "radixrouter_requests_total")
            if re.search(r'status="5\d\d"', labels) and v > 0}


def assert_router_sound(router: RouterProcess, sims: SimWorkers, client: httpx.Client,
                        before: dict[str, float]) -> None:
    """The router serves a normal request, counted no 5xx since `before` (a `five_xx`), and nothing is in
    flight on it or its workers."""
    r = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                    json={"model": MODEL, "messages": MSG, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    assert router.proc is not None and router.proc.poll() is None
    deadline = time.monotonic() + 5
    while True:
        assert five_xx(client) == before
        text = client.get("/metrics").text
        in_flight = [v for _l, v in _metric_lines(text, "radixrouter_worker_in_flight")]
        running = [(w.stats()["running_requests"], w.stats()["waiting"]) for w in sims]
        if all(v == 0 for v in in_flight) and all(r == (0, 0) for r in running):
            break
        assert time.monotonic() < deadline, (in_flight, running)
        time.sleep(0.05)
    workers = client.get("/list_workers", headers={"authorization": f"Bearer {ADMIN}"}).json()
    assert sorted(workers["urls"]) == sorted(sims.urls)
    assert all(w["healthy"] and w["in_flight"] == 0 for w in workers["workers"]), workers


# ------------------------------------------------------------------------------------------ the fuzz tests


FUZZ_RUNS = [("rsgi", r) for r in ROUTES] + [("asgi", r) for r in ROUTES if r not in ("chat_tools", "chat_text")]
OWN_ROUTER = {"chat_tools": "parser_router", "chat_text": "text_router"}


@pytest.mark.parametrize("interface,route", FUZZ_RUNS)
def test_fuzz_route(request, capsys, sims, interface, route):
    # the default interface gets the full count; ASGI, which differs in how bodies are read and answers
    # sent, a third; /retrieve_from_text (one field) a third of that. chat_tools runs on a router with the
    # tool-call and reasoning parsers, chat_text on one without a tokenizer.
    fixture = OWN_ROUTER.get(route) or ("router" if interface == "rsgi" else "asgi_router")
    router = request.getfixturevalue(fixture)
    n = PROFILE.max_examples // (1 if interface == "rsgi" else 3) // (3 if route == "retrieve_from_text" else 1)
    with httpx.Client(base_url=router.url, timeout=httpx.Timeout(15.0)) as client:
        statuses: dict[int, int] = {}
        before = five_xx(client)

        @settings(PROFILE, max_examples=max(10, n))
        @given(case=cases((route,)))
        def run(case: Case) -> None:
            status = check_case(client, case).status_code
            statuses[status] = statuses.get(status, 0) + 1

        run()
        assert_router_sound(router, sims, client, before)
    if PROFILE is LONG:
        with capsys.disabled():
            print(f"\n{interface} {route}: {sum(statuses.values())} requests, statuses {sorted(statuses.items())}")


not_str = junk.filter(lambda v: not isinstance(v, (str, Raw)))  # any string is a host name the router would try
ADMIN_BODIES = st.one_of(
    not_str, st.fixed_dictionaries({}, optional={"url": not_str, "worker_url": not_str}),
    # worker URLs the router must refuse (no host, another scheme, spaces, a host no DNS name can have...)
    st.fixed_dictionaries({"url": st.sampled_from(["", " ", "http://", "https://", "ftp://h:1", "://x", "http://a b",
                                                   "http:// x", "http://\ufffd", "\ufffd", "http://h:x",
                                                   "http://h:99999", "http://h:-1", "http://[::1", "http://h\x00",
                                                   "http://:80"])}),
)


@PROFILE
@given(route=st.sampled_from(["/add_worker", "/remove_worker"]), body=ADMIN_BODIES,
       qs=st.one_of(st.none(), st.sampled_from(["url=", "url", "url=%ff", "url=%00%zz", "url=http%3A%2F%2Fh%3Ax",
                                                "url=http://%EF%BF%BD", "x=1"])),
       auth=st.sampled_from([ADMIN, ADMIN, KEY, "nope"]))
def test_fuzz_admin(router, sims, client, route, body, qs, auth):
    # no body here names a reachable worker: the fleet must come out of this unchanged
    r = client.post(route + (f"?{qs}" if qs else ""), content=enc(body).encode(),
                    headers={"authorization": f"Bearer {auth}", "content-type": "application/json"})
    check_error(r, (route, body, qs))
    if auth != ADMIN:
        assert r.status_code == 401
    assert r.json()["error"]["message"]


GET_PATHS = ["/v1/models", "/health", "/readiness", "/metrics", "/list_workers"]
ALL_PATHS = [*GET_PATHS, "/v1/chat/completions", "/v1/completions", "/generate", "/retrieve_from_text",
             "/add_worker", "/remove_worker"]


@PROFILE
@given(path=st.sampled_from([*ALL_PATHS, "/nope", "/v1/chat/completions/", "/v1", "//generate", "/v1/models/x"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       qs=st.one_of(st.none(), st.text(max_size=10)), body=st.binary(max_size=40))
def test_fuzz_paths_and_methods(router, client, path, method, qs, body):
    headers = {"authorization": f"Bearer {ADMIN if path == '/list_workers' else KEY}"}
    r = client.request(method, path, params=qs and {"q": qs}, content=body or None, headers=headers)
    if r.status_code >= 400:
        check_error(r, (method, path, qs, body))
    else:
        assert method == "GET" and path in GET_PATHS, (method, path, r.status_code)


# ------------------------------------------------------------------------------------------ raw bytes on the wire


def raw_exchange(router: RouterProcess, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, half-close, read until the server closes or has answered one response."""
    with socket.create_connection(("127.0.0.1", router.port), timeout=timeout) as s:
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
    return out


def _request(body: bytes, extra: bytes = b"", cl: bytes | None = None, path: bytes = b"/v1/chat/completions") -> bytes:
    length = str(len(body)).encode() if cl is None else cl
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\n" + extra + b"Content-Length: " + length + b"\r\n\r\n" + body)


GOOD = json.dumps({"model": MODEL, "messages": MSG, "max_tokens": 4}).encode()
WIRE_CASES = [
    ("content-length not a number", _request(GOOD, cl=b"abc")),
    ("content-length negative", _request(GOOD, cl=b"-1")),
    ("content-length huge", _request(GOOD, cl=b"99999999999999999999999")),
    ("content-length shorter than the body", _request(GOOD, cl=b"10")),
    ("content-length longer than the body", _request(GOOD, cl=str(len(GOOD) + 50).encode())),
    ("bad chunked encoding", _request(b"zz\r\n" + GOOD + b"\r\n0\r\n\r\n", extra=b"Transfer-Encoding: chunked\r\n")
     .replace(b"Content-Length: " + str(len(GOOD) + 11).encode() + b"\r\n", b"")),
    ("chunked and content-length", _request(b"5\r\nhello\r\n0\r\n\r\n", extra=b"Transfer-Encoding: chunked\r\n")),
    ("gzip content-encoding", _request(GOOD, extra=b"Content-Encoding: gzip\r\n")),
    ("invalid UTF-8 in the body", _request(GOOD.replace(b"radix", b"\xff\xfe\xfd"))),
    ("lone surrogate escape", _request(GOOD.replace(b"radix", b"\\ud800"))),
    ("NUL in a header", _request(GOOD, extra=b"X-Test: a\x00b\r\n")),
    ("non-ASCII authorization", _request(GOOD).replace(KEY.encode(), "sk-é".encode())),
    ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)),
    ("absolute-form target", _request(GOOD, path=b"http://x/v1/chat/completions")),
    ("path with a query and fragment", _request(GOOD, path=b"/v1/chat/completions?x=%ff#frag")),
    ("percent-encoded path", _request(GOOD, path=b"/v1/chat/%63ompletions")),
]


def _parse_status(raw: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def any_router(request):
    """The router over each interface: the two read bodies differently."""
    return request.getfixturevalue("router" if request.param == "rsgi" else "asgi_router")


@pytest.mark.parametrize("name,data", WIRE_CASES, ids=[c[0] for c in WIRE_CASES])
def test_malformed_bytes_on_the_wire(any_router, name, data):
    raw = raw_exchange(any_router, data)
    status = _parse_status(raw)
    # the server may also just close a connection that does not speak HTTP; it must never answer 5xx or hang
    assert status is None or status < 500, (name, raw[:500])
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: (\d+)", head)
    if status is not None and status >= 400 and length and int(length.group(1)):
        # the router's own answer (granian answers HTTP-level errors itself, with an empty body)
        err = json.loads(rest[: int(length.group(1))])["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (name, raw[:500])
    assert httpx.get(any_router.url + "/health").status_code == 200


def test_bad_requests_among_accepted_ones_lose_nothing(router, sims, client):
    """Valid streams and answers in flight while bad requests arrive on other connections are all served in full."""
    stop = threading.Event()
    failures: list[Any] = []
    done = [0]

    def good(i: int) -> None:
        with httpx.Client(base_url=router.url, timeout=20) as c:
            while not stop.is_set():
                body = {"text": f"story {i}", "stream": i % 2 == 0, "sampling_params": {"max_new_tokens": 6},
                        "sim": {"stall_s": 0.05}}
                try:
                    r = c.post("/generate", json=body, headers={"authorization": f"Bearer {KEY}"})
                    check_ok("generate", r, body) if i % 2 else check_sse(r.content, body)
                    if i % 2 == 0:
                        assert r.content.endswith(b"data: [DONE]\n\n")
                    done[0] += 1
                except (AssertionError, httpx.HTTPError) as e:
                    failures.append(e)

    before = five_xx(client)
    threads = [threading.Thread(target=good, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        bad_bodies = [b"", b"[", b"\xff", b'{"model": 1}', b'{"messages": null}', b'{"text": 5}', b"null",
                      b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "robot", "content": "x"}]}']
        k = 0
        deadline = time.monotonic() + 20
        while (k < 60 or done[0] < 12) and time.monotonic() < deadline:  # until the good ones went round a few times
            k += 1
            path = ["/v1/chat/completions", "/v1/completions", "/generate"][k % 3]
            r = client.post(path, content=bad_bodies[k % len(bad_bodies)], headers={"authorization": f"Bearer {KEY}"})
            check_error(r, (path, bad_bodies[k % len(bad_bodies)]))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    assert done[0] >= 12
    assert_router_sound(router, sims, client, before)


# ------------------------------------------------------------------------------------------ regressions
# Inputs the fuzz found (or hand probes beside it): each was a 500 or a message that did not name the field.

BIG = "1180591620717411303424"  # 2**70: orjson reads integers past 2**64 as floats


DEEP = "[" * 300 + "]" * 300
DEEPER = "[" * 1000 + "]" * 1000  # orjson reads up to 1024 levels


def chat_with(fields: str) -> str:
    """A valid chat body (as JSON text) with `fields` (raw JSON members) added."""
    return '{"model": "' + MODEL + '", "messages": [{"role": "user", "content": "x"}], ' + fields + "}"


def completion_with(fields: str) -> str:
    return '{"model": "' + MODEL + '", ' + fields + "}"


REGRESSIONS = [
    # (name, path, body, status, param, words in the message)
    ("role not a string", "/v1/chat/completions",
     '{"model": "' + MODEL + '", "messages": [{"role": [], "content": "x"}]}', 400, "messages", "role"),
    ("seed past 64 bits", "/v1/chat/completions", chat_with('"seed": ' + BIG), 400, "seed", "64-bit"),
    ("top_k past 64 bits", "/v1/chat/completions", chat_with('"top_k": ' + BIG), 400, "top_k", "64-bit"),
    ("max_tokens 2**64", "/v1/completions", completion_with('"prompt": "x", "max_tokens": 18446744073709551616'),
     400, "max_tokens", "64-bit"),
    ("token id past 63 bits", "/v1/completions", completion_with('"prompt": [9223372036854775808]'), 400,
     "prompt", "token ids"),
    ("chat_template_kwargs sets tools", "/v1/chat/completions", chat_with('"chat_template_kwargs": {"tools": 5}'),
     400, "chat_template_kwargs", "'tools'"),
    ("chat_template_kwargs sets messages", "/v1/chat/completions",
     chat_with('"chat_template_kwargs": {"messages": []}'), 400, "chat_template_kwargs", "'messages'"),
    ("chat_template_kwargs sets add_generation_prompt", "/v1/chat/completions",
     chat_with('"chat_template_kwargs": {"add_generation_prompt": false}'), 400, "chat_template_kwargs",
     "'add_generation_prompt'"),
    ("min_tokens above max_tokens", "/v1/chat/completions", chat_with('"max_tokens": 4, "min_tokens": 5'),
     400, "min_tokens", "'min_tokens' (5)"),
    ("min_tokens above the completions default", "/v1/completions",
     completion_with('"prompt": "x", "min_tokens": 17'), 400, "min_tokens", "(16)"),
    ("web_search_options", "/v1/chat/completions", chat_with('"web_search_options": []'),
     400, "web_search_options", "'web_search_options'"),
    ("modalities", "/v1/chat/completions", chat_with('"modalities": []'), 400, "modalities", "'modalities'"),
    ("/generate nested 300 deep (orjson writes 254)", "/generate",
     '{"text": "x", "sampling_params": {"max_new_tokens": 2, "json_schema": ' + DEEP + "}}", 400, "sampling_params",
     "254 levels"),
    ("response_format schema nested 300 deep", "/v1/chat/completions",
     chat_with('"response_format": {"type": "json_schema", "json_schema": {"schema": {"a": ' + DEEP + "}}}"), 400,
     "response_format", "254 levels"),
    ("tool_choice required with parameters nested 300 deep", "/v1/chat/completions",
     chat_with('"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f", "parameters": '
               '{"type": "object", "properties": {"a": ' + DEEP + "}}}}]"), 400, "tools", "254 levels"),
    ("content part type nested 1000 deep (its repr recursed)", "/v1/chat/completions",
     '{"model": "' + MODEL + '", "messages": [{"role": "user", "content": [{"type": ' + DEEPER + "}]}]}", 400,
     "messages", "content part type a list"),
    ("tool type nested 1000 deep", "/v1/chat/completions", chat_with('"tools": [{"type": ' + DEEPER + "}]"), 400,
     "tools[0].type", "a list"),
    ("tool name nested 1000 deep", "/v1/chat/completions",
     chat_with('"tools": [{"type": "function", "function": {"name": ' + DEEPER + "}}]"), 400, "tools[0].function.name",
     "got a list"),
    ("add_worker host no IDNA name can have", "/add_worker", '{"url": "http://\\ufffd"}', 400, "url",
     "invalid worker URL"),
    ("add_worker port out of range", "/add_worker", '{"url": "http://h:99999"}', 400, "url", "invalid worker URL"),
    ("add_worker port not a number", "/add_worker", '{"url": "http://h:x"}', 400, "url", "invalid worker URL"),
    ("remove_worker unknown", "/remove_worker", '{"url": "http://h:1"}', 404, "url", "unknown worker URL"),
]


@pytest.mark.parametrize("name,path,body,status,param,words", REGRESSIONS, ids=[c[0] for c in REGRESSIONS])
def test_regressions(router, sims, client, name, path, body, status, param, words):
    auth = ADMIN if path.endswith("_worker") else KEY
    r = client.post(path, content=body.encode(), headers={"authorization": f"Bearer {auth}"})
    assert r.status_code == status, r.text
    err = check_error(r, name)
    assert err["param"] == param and words in err["message"], err
    workers = client.get("/list_workers", headers={"authorization": f"Bearer {ADMIN}"}).json()
    assert sorted(workers["urls"]) == sorted(sims.urls)  # nothing added on the way to the error


@pytest.mark.parametrize("chunked", [False, True])
def test_body_cut_short_by_the_client_is_a_400(any_router, chunked):
    """The client sends part of its body and closes its sending side: it still reads a 400 that says so (was
    granian's empty 500 for the unanswered request, over both interfaces)."""
    if chunked:
        data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                + b"\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + GOOD[:20])
    else:
        data = _request(GOOD[:20], cl=str(len(GOOD)).encode())
    raw = raw_exchange(any_router, data)
    assert _parse_status(raw) == 400, raw[:300]
    err = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
    # over RSGI granian ends a chunked body cut short as if it were whole: the JSON parse is what notices
    assert "incomplete" in err["message"] or (chunked and "invalid JSON body" in err["message"]), err


def test_relayed_body_nested_too_deeply_is_a_400(client):
    r = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                    content=('{"model": "' + RELAYED + '", "messages": [{"role": "user", "content": "x"}], '
                             '"metadata": ' + DEEP + "}").encode())
    assert r.status_code == 400, r.text
    check_error(r)
    assert r.json()["error"]["param"] == "metadata" and "254 levels" in r.json()["error"]["message"]
