"""OpenAI request validation, OpenAI -> SGLang sampling parameters, and response shapes.

Accepted and mapped (chat and completions): ``max_tokens`` / ``max_completion_tokens`` -> ``max_new_tokens``,
``temperature``, ``top_p``, ``top_k``, ``min_p``, ``frequency_penalty``, ``presence_penalty``,
``repetition_penalty``, ``stop``, ``seed`` -> ``sampling_seed``, ``n``, ``logprobs`` / ``top_logprobs``,
``response_format`` (``json_object``, ``json_schema``), ``logit_bias``, and SGLang's extensions
``min_tokens``, ``ignore_eos``, ``stop_token_ids``, ``skip_special_tokens``, ``no_stop_trim``, ``regex``,
``ebnf``, ``chat_template_kwargs``.

Accepted and ignored (they do not change the generated text): ``user``, ``metadata``, ``store``,
``service_tier``, ``parallel_tool_calls``, ``stream_options`` without streaming, and any unknown key.

Rejected with a 400 (not silently wrong): non-text content parts (images, audio), ``audio`` /
``modalities`` other than text, ``prediction``, ``functions`` / ``function_call``, ``web_search_options``,
``suffix``, ``best_of`` other than ``n``, and ``tool_choice`` ``required`` or a named function when the router
does not parse tool calls (no ``--tool-call-parser``). With a parser, ``required`` and a named function are
enforced by constrained decoding (``sampling_params.json_schema``) and the constrained output is returned as
``tool_calls``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from radixrouter.toolcalls import (
    ToolChoice,
    ToolRequestError,
    shown,
    tool_choice_json_schema,
    validate_tool_choice,
    validate_tools,
)

# ---------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered with OpenAI's error object and an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> bytes:
        return orjson.dumps(self.error_obj())

    def error_obj(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def transport_error(who: str, what: str, e: BaseException) -> ApiError:
    """502 for a failed upstream exchange: "<who> <what>: <reason>", the reason being the exception's text, or
    its class when it has none (a timeout)."""
    return ApiError(502, f"{who} {what}: {str(e) or e.__class__.__name__}", code="upstream_error")


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


_DEPTH = 254  # orjson writes JSON nested at most this deep (it reads 1024 levels)


def dumps_field(obj: Any, param: str) -> bytes:
    """``orjson.dumps`` of request data; a 400 naming ``param`` when it nests deeper than orjson writes."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # parsed input: the nesting is the only thing orjson cannot write back
        raise bad(f"'{param}' nests more than {_DEPTH} levels deep", param) from None


def dumps_request(req: dict) -> bytes:
    """``orjson.dumps`` of a request body to pass on; a 400 naming the field that nests too deeply."""
    try:
        return orjson.dumps(req)
    except orjson.JSONEncodeError:
        for k, v in req.items():  # the error path only: find the field
            dumps_field({k: v}, k)
        raise


# ---------------------------------------------------------------------------- field checks

_MISSING = object()


def _num(req: dict, key: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"'{key}' must be a number", key)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise bad(f"'{key}' must be {'>' if lo_open else '>='} {lo}, got {v}", key)
    if hi is not None and v > hi:
        raise bad(f"'{key}' must be <= {hi}, got {v}", key)
    return v


_INT64 = 1 << 63


def _int(req: dict, key: str, lo: int | None = None, hi: int | None = None):
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise bad(f"'{key}' must be an integer", key)
    if not -_INT64 <= v < _INT64:  # what the worker takes (JSON integers past 2**64 arrive as floats)
        raise bad(f"'{key}' must be a 64-bit integer, got {v}", key)
    if lo is not None and v < lo:
        raise bad(f"'{key}' must be >= {lo}, got {v}", key)
    if hi is not None and v > hi:
        raise bad(f"'{key}' must be <= {hi}, got {v}", key)
    return v


def _bool(req: dict, key: str, default: bool = False) -> bool:
    v = req.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{key}' must be a boolean", key)
    return v


def _str_list(v: Any, key: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return v
    raise bad(f"'{key}' must be a string or a list of strings", key)


def check_model(req: dict, served: str) -> str:
    model = req.get("model")
    if model is None:
        return served
    if not isinstance(model, str):
        raise bad("'model' must be a string", "model")
    if model != served:
        raise ApiError(
            404, f"The model '{model}' does not exist (this router serves '{served}')", param="model",
            code="model_not_found",
        )
    return model


_REJECTED_CHAT = {
    "functions": "'functions' is deprecated and not supported; use 'tools'",
    "function_call": "'function_call' is deprecated and not supported; use 'tool_choice'",
    "prediction": "'prediction' (predicted outputs) is not supported",
    "audio": "audio output is not supported",
    "web_search_options": "'web_search_options' (web search) is not supported",
}


@dataclass(slots=True)
class GenParams:
    """What both OpenAI endpoints turn into a /generate request."""

    model: str
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    sampling: dict = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


def _numeric(parse: Callable, out: str, lo: float | None, hi: float | None = None, lo_open: bool = False):
    def check(req: dict, key: str, sp: dict) -> None:
        v = parse(req, key, lo, hi, lo_open=lo_open) if lo_open else parse(req, key, lo, hi)
        if v is not None:
            sp[out] = v
    return check


def _top_k(req: dict, key: str, sp: dict) -> None:
    v = _int(req, key, -1)
    if v is not None:
        if v == 0:
            raise bad("'top_k' must be -1 (disabled) or >= 1", "top_k")
        sp["top_k"] = v


def _stop(req: dict, key: str, sp: dict) -> None:
    stop = req[key]
    if stop is not None:
        stops = _str_list(stop, "stop")
        if any(not s for s in stops):
            raise bad("'stop' strings must not be empty", "stop")
        if stops:
            sp["stop"] = stops


def _stop_token_ids(req: dict, key: str, sp: dict) -> None:
    v = req[key]
    if v is not None:
        if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
            raise bad("'stop_token_ids' must be a list of token ids", "stop_token_ids")
        sp["stop_token_ids"] = v


def _flag(req: dict, key: str, sp: dict) -> None:
    if req[key] is not None:
        sp[key] = _bool(req, key)


def _grammar(req: dict, key: str, sp: dict) -> None:
    v = req[key]
    if v is not None:
        if not isinstance(v, str):
            raise bad(f"'{key}' must be a string", key)
        sp[key] = v


def _logit_bias(req: dict, key: str, sp: dict) -> None:
    lb = req[key]
    if lb is not None:
        if not isinstance(lb, dict):
            raise bad("'logit_bias' must be an object of token id -> bias", "logit_bias")
        out = {}
        for k, b in lb.items():
            if not str(k).isdigit() or isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
                raise bad("'logit_bias' maps token ids to numbers in [-100, 100]", "logit_bias")
            out[str(k)] = float(b)
        if out:
            sp["logit_bias"] = out


def _response_format(req: dict, key: str, sp: dict) -> None:
    rf = req[key]
    if rf is not None:
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise bad("'response_format' must be an object with a 'type'", "response_format")
        t = rf["type"]
        if t == "json_object":
            sp["json_schema"] = '{"type":"object"}'
        elif t == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, dict):
                raise bad("'response_format.json_schema.schema' must be a JSON schema object", "response_format")
            sp["json_schema"] = dumps_field(schema, "response_format").decode()
        elif t != "text":
            raise bad(f"unsupported response_format type {shown(t)}", "response_format")


# The request fields that become SGLang sampling parameters, each with its check. sampling_params visits
# only the fields a request has (a typical request has two or three of these, not all seventeen).
_SAMPLING_FIELDS: dict[str, Callable[[dict, str, dict], None]] = {
    "temperature": _numeric(_num, "temperature", 0, 2),
    "top_p": _numeric(_num, "top_p", 0, 1, lo_open=True),
    "top_k": _top_k,
    "min_p": _numeric(_num, "min_p", 0, 1),
    "frequency_penalty": _numeric(_num, "frequency_penalty", -2, 2),
    "presence_penalty": _numeric(_num, "presence_penalty", -2, 2),
    "repetition_penalty": _numeric(_num, "repetition_penalty", 0, 2, lo_open=True),
    "min_tokens": _numeric(_int, "min_new_tokens", 0),
    "stop": _stop,
    "stop_token_ids": _stop_token_ids,
    "ignore_eos": _flag,
    "skip_special_tokens": _flag,
    "no_stop_trim": _flag,
    "regex": _grammar,
    "ebnf": _grammar,
    "logit_bias": _logit_bias,
    "response_format": _response_format,
}


def sampling_params(req: dict, *, max_tokens_keys: tuple[str, ...]) -> tuple[dict, int | None]:
    """The SGLang ``sampling_params`` for an OpenAI request (only keys SGLang accepts), and the seed."""
    sp: dict[str, Any] = {}
    for key in max_tokens_keys:
        v = _int(req, key, 0)
        if v is not None:
            sp["max_new_tokens"] = v
            break
    fields = _SAMPLING_FIELDS
    for key in req:  # in the request's order, so the first bad field is the one reported
        check = fields.get(key)
        if check is not None:
            check(req, key, sp)
    seed = _int(req, "seed")
    return sp, seed


def _check_min_tokens(sp: dict) -> None:
    lo, hi = sp.get("min_new_tokens"), sp["max_new_tokens"]
    if lo is not None and hi is not None and lo > hi:
        raise bad(f"'min_tokens' ({lo}) must not exceed the maximum number of tokens ({hi})", "min_tokens")


def _common(req: dict, served: str, max_tokens_keys: tuple[str, ...]) -> GenParams:
    model = check_model(req, served)
    stream = _bool(req, "stream")
    include_usage = False
    so = req.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        if stream:
            include_usage = _bool(so, "include_usage")
    n = _int(req, "n", 1, 128) or 1
    sp, seed = sampling_params(req, max_tokens_keys=max_tokens_keys)
    return GenParams(model=model, stream=stream, include_usage=include_usage, n=n, sampling=sp, seed=seed)


# ---------------------------------------------------------------------------- chat

_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
_TEMPLATE_OWN = frozenset(("messages", "tools", "add_generation_prompt"))  # set by the router when rendering


def _text_content(content: Any, i: int) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise bad(f"messages[{i}].content[{j}] must be an object", "messages")
            ptype = part.get("type")
            if ptype == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad(f"messages[{i}].content[{j}].text must be a string", "messages")
                parts.append(text)
            elif ptype == "refusal":
                continue
            else:
                raise bad(f"messages[{i}].content[{j}]: content part type {shown(ptype)} is not supported (text only)",
                          "messages")
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of content parts", "messages")


@dataclass(slots=True)
class ChatRequest:
    params: GenParams
    messages: list[dict]
    tools: list[dict] | None
    template_kwargs: dict
    tool_choice: ToolChoice | None = None  # validated; read by output processors
    parallel_tool_calls: bool | None = None


def parse_chat(req: Any, served: str) -> ChatRequest:
    if not isinstance(req, dict):
        raise bad("the request body must be a JSON object")
    if not _REJECTED_CHAT.keys().isdisjoint(req):
        for key, why in _REJECTED_CHAT.items():
            if req.get(key) is not None:
                raise bad(why, key)
    mods = req.get("modalities")
    if mods is not None and mods != ["text"]:
        raise bad("'modalities' must be [\"text\"]: only text output is supported", "modalities")
    msgs = req.get("messages", _MISSING)
    if msgs is _MISSING or msgs is None:
        raise bad("'messages' is required", "messages")
    if not isinstance(msgs, list):
        raise bad("'messages' must be an array", "messages")
    if not msgs:
        raise bad("'messages' must not be empty", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise bad(f"messages[{i}].role must be one of system, developer, user, assistant, tool", "messages")
        content = _text_content(m.get("content"), i)  # validated; the tokenizer normalizes text parts
        if content is None and role != "assistant":
            raise bad(f"messages[{i}].content is required", "messages")
        if role == "developer":
            m = dict(m, role="system")
        out.append(m)
    p = _common(req, served, ("max_completion_tokens", "max_tokens"))
    if "max_new_tokens" not in p.sampling:
        # OpenAI: no limit but the context; SGLang reads null that way (an absent key would mean 128)
        p.sampling["max_new_tokens"] = None
    _check_min_tokens(p.sampling)
    lp = _bool(req, "logprobs")
    tl = _int(req, "top_logprobs", 0, 20)
    if tl and not lp:
        raise bad("'top_logprobs' requires 'logprobs': true", "top_logprobs")
    p.logprobs, p.top_logprobs = lp, tl or 0
    try:
        tools = validate_tools(req.get("tools")) or None
        tc = validate_tool_choice(req.get("tool_choice"), tools)
    except ToolRequestError as e:
        raise bad(str(e), e.param) from None
    kw = req.get("chat_template_kwargs")
    if kw is None:
        kw = {}
    elif not isinstance(kw, dict):
        raise bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    elif not _TEMPLATE_OWN.isdisjoint(kw):
        own = min(_TEMPLATE_OWN.intersection(kw))
        raise bad(f"'chat_template_kwargs' cannot set {own!r} (the request's own field)", "chat_template_kwargs")
    if tc.mode == "none":
        tools = None
    elif tc.mode in ("required", "function"):
        # Constrained decoding: the worker must produce the call (an array of {name, parameters} for
        # 'required', the named function's arguments otherwise); the constraint binds from the first token,
        # so reasoning templates render with thinking off unless the client says otherwise.
        if any(k in p.sampling for k in ("json_schema", "regex", "ebnf")):
            raise bad("'tool_choice' 'required' or a named function cannot be combined with 'response_format', "
                      "'regex' or 'ebnf'", "tool_choice")
        p.sampling["json_schema"] = dumps_field(tool_choice_json_schema(tools or [], tc), "tools").decode()
        kw = dict(kw)
        kw.setdefault("enable_thinking", False)
    ptc = req.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return ChatRequest(params=p, messages=out, tools=tools, template_kwargs=kw, tool_choice=tc,
                       parallel_tool_calls=ptc)


# ---------------------------------------------------------------------------- completions


@dataclass(slots=True)
class CompletionRequest:
    params: GenParams
    prompts: list[str | list[int]]
    echo: bool


def _token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and 0 <= t < _INT64


def parse_completion(req: Any, served: str) -> CompletionRequest:
    if not isinstance(req, dict):
        raise bad("the request body must be a JSON object")
    if req.get("suffix"):
        raise bad("'suffix' is not supported", "suffix")
    prompt = req.get("prompt", _MISSING)
    if prompt is _MISSING or prompt is None:
        raise bad("'prompt' is required", "prompt")
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        elif all(_token_id(t) for t in prompt):
            prompts = [prompt]
        elif all(isinstance(p, list) and p and all(_token_id(t) for t in p) for p in prompt):
            prompts = list(prompt)
        else:
            raise bad("'prompt' must be a string, a list of strings, token ids or lists of token ids", "prompt")
    else:
        raise bad("'prompt' must be a non-empty string, list of strings, or token ids", "prompt")
    p = _common(req, served, ("max_tokens",))
    if "max_new_tokens" not in p.sampling:
        p.sampling["max_new_tokens"] = 16  # OpenAI's default for /v1/completions
    _check_min_tokens(p.sampling)
    bo = _int(req, "best_of", 1)
    if bo is not None and bo != p.n:
        raise bad("'best_of' other than 'n' is not supported", "best_of")
    lp = _int(req, "logprobs", 0, 20)
    if lp is not None:
        p.logprobs, p.top_logprobs = True, lp
    if len(prompts) * p.n > 256:
        raise bad("too many choices (prompts x n > 256)", "n")
    return CompletionRequest(params=p, prompts=prompts, echo=_bool(req, "echo"))


# ---------------------------------------------------------------------------- worker output -> OpenAI


def finish_reason(meta: dict) -> tuple[str | None, dict | None]:
    """(OpenAI finish_reason, abort info). finish_reason is None while generating."""
    fr = meta.get("finish_reason")
    if fr is None:
        return None, None
    if isinstance(fr, dict):
        t = fr.get("type")
        if t == "abort":
            return "abort", fr
        if t == "length":
            return "length", None
        return "stop", None
    if fr == "length":
        return "length", None
    if fr == "abort":
        return "abort", {"message": "the worker aborted the request"}
    return "stop", None


def abort_error(info: dict | None) -> ApiError:
    info = info or {}
    status = info.get("status_code")
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 500
    msg = info.get("message") or "the worker aborted the request"
    return ApiError(status, f"generation aborted by the worker: {msg}", code=str(info.get("err_type") or "aborted"))


def _lp_entry(item: list) -> dict:
    lp, _tid, text = item[0], item[1], item[2] if len(item) > 2 else None
    text = text or ""
    return {"token": text, "logprob": lp if lp is not None else 0.0, "bytes": list(text.encode())}


def chat_logprobs(meta: dict, start: int, top: int, end: int | None = None) -> list[dict]:
    """OpenAI ``logprobs.content`` entries for output tokens ``start:end`` of cumulative meta_info."""
    toks = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    out = []
    for i in range(start, len(toks) if end is None else min(end, len(toks))):
        e = _lp_entry(toks[i])
        if top:
            alts = tops[i] if i < len(tops) and tops[i] else []
            e["top_logprobs"] = [_lp_entry(a) for a in alts[:top]]
        else:
            e["top_logprobs"] = []
        out.append(e)
    return out


def completion_logprobs(meta: dict, start: int, top: int, text_offset: int, end: int | None = None) -> dict:
    """Legacy /v1/completions logprobs for output tokens ``start:end``."""
    toks = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    tokens, lps, top_out, offsets = [], [], [], []
    off = text_offset
    for i in range(start, len(toks) if end is None else min(end, len(toks))):
        item = toks[i]
        text = (item[2] if len(item) > 2 else None) or ""
        tokens.append(text)
        lps.append(item[0])
        offsets.append(off)
        off += len(text)
        if top:
            alts = tops[i] if i < len(tops) and tops[i] else []
            top_out.append({(a[2] if len(a) > 2 else None) or "": a[0] for a in alts[:top]})
        else:
            top_out.append(None)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top_out, "text_offset": offsets}


def usage_obj(prompt: int, completion: int, cached: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
