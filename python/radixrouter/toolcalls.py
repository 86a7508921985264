"""Tool calls: request validation and incremental parsing of the model's tool-call markup.

The router renders ``tools`` into the prompt with the chat template; the model then answers with tool calls
written in its own markup.  :class:`ToolCallParser` is fed the generated text delta by delta and returns
OpenAI delta pieces, so text outside the markup keeps streaming as ``content`` while calls come out as
``tool_calls`` fragments exactly as OpenAI streams them::

    {"content": "Let me check."}
    {"tool_calls": [{"index": 0, "id": "call_...", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]}
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\\"city\\": \\"Paris\\"}"}}]}

Formats (``--tool-call-parser``; :func:`detect_tool_format` guesses one from a chat template):

``hermes`` (aliases ``qwen``, ``qwen25``, ``qwen3``)
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, any number of them.
``llama3`` (alias ``llama3_json``)
    ``{"name": ..., "parameters": {...}}`` at the start of the output or after ``<|python_tag|>``; several
    calls separated by ``;``.  A JSON object without ``name`` and ``parameters``/``arguments`` is content.
``mistral``
    ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (or a single object), and the newer
    ``[TOOL_CALLS]name[ARGS]{...}`` (optionally ``name[CALL_ID]id[ARGS]{...}``), once per call.
    ``[TOOL_CALLS]`` and ``<|python_tag|>`` are special tokens: ask the worker for
    ``skip_special_tokens: false`` when tools are in play, or the markers never reach the parser.

Output rules (identical in streaming and non-streaming use, whatever the chunking):
- ``function.arguments`` is the model's own JSON text for the arguments object, verbatim (it is
  valid JSON by construction; it re-renders byte-identically through templates that insert the string
  as is, which keeps the prefix cache warm for the next turn).  A call with arguments given as a JSON
  string gets that string; a call without arguments gets ``"{}"`` (not for ``llama3``).
- Malformed markup or JSON (not an object, no ``name``, arguments not an object, invalid JSON, a call
  cut off by the end of the output) is returned as content, raw, never raised.
- Content is the text outside the markup; whitespace touching the markup is dropped (the content before a
  call loses its trailing whitespace, whitespace between or after calls is dropped unless more text
  follows).  Before any call, leading whitespace is kept.
- Only what may still become markup is held back: a partial start marker at the end of a delta, trailing
  whitespace, and the call itself until its JSON object is complete.

``stream_arguments=True`` streams each call's arguments as they are generated instead of once the call's
JSON is complete: the first fragment goes out as soon as the name is known and the arguments object has
begun.  A call sent that way cannot be taken back: if its arguments then turn out malformed or cut off,
the call keeps what was sent and ``broken_calls`` counts it (OpenAI's own non-strict calls behave the same
way).  The default (``False``) never sends a call whose JSON is not valid; calls then arrive as two
fragments (the head, then the whole arguments) when their JSON closes.

Request side: :func:`validate_tools` and :func:`validate_tool_choice` check ``tools`` / ``tool_choice`` and
raise :class:`ToolRequestError` (a ``ValueError`` carrying the OpenAI ``param``) for a 400.  What the
router does per ``tool_choice``:
- ``none``: render without tools (as SGLang does) and do not parse; ``auto``: render tools, parse.
- ``required`` / a named function: either constrain the output (send :func:`tool_choice_json_schema` as
  ``sampling_params["json_schema"]``, parse with ``constrained=True``; render reasoning models with thinking
  off, since the constraint binds from the first token), or, without constraints, render tools and parse
  as for ``auto``: the model is then only asked, and an answer without a (matching) call is returned as is.
:class:`OutputParser` composes reasoning separation (:mod:`radixrouter.reasoning`) and tool-call parsing
into the router's output processor; :func:`make_output_processor_factory` builds it per request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from radixrouter.reasoning import (
    ReasoningParser,
    _partial_suffix,
    normalize_reasoning_format,
    prompt_in_reasoning,
)

__all__ = [
    "TOOL_FORMATS",
    "OutputParser",
    "ToolCallParser",
    "ToolChoice",
    "ToolRequestError",
    "detect_tool_format",
    "group_deltas",
    "make_output_processor_factory",
    "merge_deltas",
    "new_call_id",
    "normalize_tool_format",
    "shown",
    "parse_tool_calls",
    "tool_choice_json_schema",
    "validate_tool_choice",
    "validate_tools",
]

#: The canonical ``--tool-call-parser`` names.
TOOL_FORMATS: tuple[str, ...] = ("hermes", "llama3", "mistral")
_ALIASES = {
    "hermes": "hermes",
    "qwen": "hermes",
    "qwen25": "hermes",
    "qwen2.5": "hermes",
    "qwen2": "hermes",
    "qwen3": "hermes",
    "chatml": "hermes",
    "llama3": "llama3",
    "llama3-json": "llama3",
    "llama": "llama3",
    "llama31": "llama3",
    "llama3.1": "llama3",
    "llama32": "llama3",
    "llama3.2": "llama3",
    "llama4-json": "llama3",
    "mistral": "mistral",
}

_HERMES_OPEN = "<tool_call>"
_HERMES_CLOSE = "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL_OPEN = "[TOOL_CALLS]"
_MISTRAL_ARGS = "[ARGS]"
_MISTRAL_CALL_ID = "[CALL_ID]"
_ARG_KEYS = ("arguments", "parameters")


def normalize_tool_format(name: str) -> str:
    """Canonical format for a ``--tool-call-parser`` value (case, ``_``/``-`` ignored); ValueError if unknown."""
    key = name.strip().lower().replace("_", "-")
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(
            f"unknown tool-call parser {name!r}; expected one of: hermes (qwen), llama3, mistral"
        ) from None


def detect_tool_format(chat_template: str | None) -> str | None:
    """Guess the tool-call format from a chat template's text; ``None`` if the template shows no tool calls."""
    if not chat_template:
        return None
    if _MISTRAL_OPEN in chat_template:
        return "mistral"
    if _HERMES_OPEN in chat_template:
        return "hermes"
    if _PYTHON_TAG in chat_template or (
        "<|start_header_id|>" in chat_template and '"parameters"' in chat_template
    ):
        return "llama3"
    return None


# -- call ids ----------------------------------------------------------------------------------------------
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(nchars: int) -> str:
    n = int.from_bytes(os.urandom(nchars), "little")  # 8 bits drawn per 5.95 used: plenty of entropy
    out = []
    for _ in range(nchars):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(out)


def new_call_id(fmt: str | None = None) -> str:
    """A random tool call id: ``call_`` + 24 base62 characters (143 bits).

    Mistral templates only accept 9 alphanumeric characters as an id (they check it when the id comes back in
    the next turn), so ``fmt="mistral"`` gives exactly that.
    """
    if fmt == "mistral":
        return _base62(9)
    return "call_" + _base62(24)


# -- incremental structural scan of one JSON object ----------------------------------------------------------
_STR_STOP = re.compile(r'["\\]')
_STRUCT_STOP = re.compile(r'[{}\[\]",:]')
_NON_WS = re.compile(r"\S")


def _decode_key(raw: str) -> str:
    if "\\" not in raw:
        return raw[1:-1]
    try:
        key = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return key if isinstance(key, str) else raw


class _ObjectScanner:
    """Follows one JSON object (its first character is ``{``) as it arrives, chunk by chunk, without
    validating it; each character is scanned once and the chunks are joined only when the text is needed.

    It knows where the object ends (``end``, exclusive) and where top-level values lie (``spans``: key ->
    (start, end) of the first complete value under that key, with ``arguments`` and ``parameters`` both
    recorded as ``"args"``; ``key``/``val_start`` for the value being read; ``dup`` if a key repeats).
    Offsets count from the object's first character.  Validation is left to orjson once the object is
    complete.
    """

    __slots__ = ("after_colon", "args_start", "depth", "dup", "end", "esc", "expect_key", "in_str", "key", "parts",
                 "size", "spans", "str_start", "val_start")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0  # characters fed (and scanned)
        self.depth = 0
        self.in_str = False
        self.esc = False  # a backslash ended the last chunk inside a string
        self.str_start = -1
        self.expect_key = False
        self.key: str | None = None
        self.after_colon = False
        self.val_start = -1
        self.args_start = -1  # where the first arguments value begins, once known (never changes after)
        self.spans: dict[str, tuple[int, int]] = {}
        self.dup = False
        self.end = -1

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def get(self, a: int, b: int) -> str:
        """``text()[a:b]``, cheap for recent text."""
        out = []
        end = self.size
        for part in reversed(self.parts):
            start = end - len(part)
            if start < b and end > a:
                out.append(part[max(a - start, 0): b - start])
            if start <= a:
                break
            end = start
        return "".join(reversed(out))

    def _close_value(self, end: int) -> None:
        if self.key is not None:
            if self.key in self.spans:
                self.dup = True
            else:
                self.spans[self.key] = (self.val_start, end)
        self.key = None
        self.val_start = -1

    def _close_scalar(self, j: int) -> None:
        if self.val_start >= 0:
            self._close_value(self.val_start + len(self.get(self.val_start, j).rstrip()))

    def feed(self, t: str) -> int:
        """Scan a chunk; returns how many of its characters belong to the object (all, unless it ended)."""
        base = self.size
        n = len(t)
        self.parts.append(t)
        self.size = base + n
        i = 0
        if self.esc and n:
            self.esc = False
            i = 1
        while i < n:
            if self.in_str:
                m = _STR_STOP.search(t, i)
                if m is None:
                    break
                j = m.start()
                if t[j] == "\\":
                    if j + 1 >= n:
                        self.esc = True  # the escaped character comes with the next chunk
                        break
                    i = j + 2
                    continue
                i = j + 1
                self.in_str = False
                if self.depth == 1:
                    if self.expect_key:
                        key = _decode_key(self.get(self.str_start, base + i))
                        self.key = "args" if key in _ARG_KEYS else key
                        self.expect_key = False
                    elif self.val_start == self.str_start:
                        self._close_value(base + i)
                continue
            if self.after_colon:
                m = _NON_WS.search(t, i)
                if m is None:
                    break
                i = m.start()
                self.val_start = base + i
                self.after_colon = False
                if self.key == "args" and self.args_start < 0:
                    self.args_start = self.val_start
            m = _STRUCT_STOP.search(t, i)
            if m is None:
                break
            j = m.start()
            c = t[j]
            i = j + 1
            if c == '"':
                self.in_str = True
                self.str_start = base + j
            elif c == "{" or c == "[":
                if self.depth == 0:
                    self.expect_key = True
                self.depth += 1
            elif c == "}" or c == "]":
                self.depth -= 1
                if self.depth == 1:
                    if self.val_start >= 0:
                        self._close_value(base + i)
                elif self.depth <= 0:
                    self._close_scalar(base + j)
                    self.end = base + i
                    self.parts[-1] = t[:i]
                    self.size = base + i
                    return i
            elif c == ",":
                if self.depth == 1:
                    self._close_scalar(base + j)
                    self.expect_key = True
            elif self.depth == 1 and self.key is not None:  # ':'
                self.after_colon = True
        return n


_V11_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_V11_HEAD = re.compile(r"([A-Za-z0-9_.:\-]{1,128})(?:\[CALL_ID\][A-Za-z0-9_\-]{0,64})?")
_V11_WAIT = re.compile(r"[A-Za-z0-9_.:\-]{0,128}(?:\[[A-Z_]{0,7}\]?[A-Za-z0-9_\-]{0,64})?\[?[A-Z]{0,4}")

# parser states
_TEXT, _OPEN, _CALL, _AFTER, _ARRAY_ITEM, _ARRAY_NEXT, _LLAMA_NEXT, _V11_HEADER = range(8)
# what the object scanned in _CALL is: a {"name", "arguments"} wrapper, or the arguments themselves
_WRAPPER, _ARGS_ONLY = 0, 1


class _Call:
    __slots__ = ("id", "name", "parts")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = call_id
        self.name = name
        self.parts: list[str] = []

    def as_message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": "".join(self.parts)}}


class ToolCallParser:
    """Incremental tool-call parser for one generated choice (see the module docstring for the formats).

    ``feed(delta)`` and ``finish()`` return lists of OpenAI delta pieces, each ``{"content": str}`` or
    ``{"tool_calls": [fragment]}`` (use :func:`merge_deltas` to fold them into one delta).  After
    ``finish()``: ``has_tool_calls`` (set ``finish_reason`` to ``"tool_calls"``), ``tool_calls`` (message
    shape), ``content`` (everything returned as content).  Never raises on model output.
    """

    def __init__(self, fmt: str, *, stream_arguments: bool = False, parallel_tool_calls: bool = True) -> None:
        self.format = normalize_tool_format(fmt)
        self._stream = stream_arguments
        self._parallel = parallel_tool_calls
        self._buf = ""
        self._raw = ""  # markup consumed since the current call started (returned as content if malformed)
        self._ws = ""  # trailing whitespace of the content, held back
        self._calls: list[_Call] = []
        self.broken_calls = 0
        self._content: list[str] = []
        self._scanner: _ObjectScanner | None = None
        self._kind = _WRAPPER
        self._pending_name = ""  # name of an _ARGS_ONLY call
        self._streaming: _Call | None = None  # call whose head was already sent (stream_arguments)
        self._no_stream = False  # stream_arguments: this call cannot stream (its name is not first / not valid)
        self._args_start = 0
        self._sent = 0  # scanner offset up to which its arguments were sent
        self._at_start = True  # llama3: a bare "{" here opens a call
        self._final_text = False  # after a constrained call: the rest is content, no markup
        self._open_kind = self.format
        self._after_kind = self.format
        self._marker = {"hermes": _HERMES_OPEN, "llama3": _PYTHON_TAG, "mistral": _MISTRAL_OPEN}[self.format]
        self._state = _TEXT

    @classmethod
    def for_tool_choice(cls, choice: ToolChoice, *, fmt: str = "hermes", stream_arguments: bool = True,
                        parallel_tool_calls: bool = True) -> ToolCallParser:
        """Parser for output generated under :func:`tool_choice_json_schema` (``required`` / a named function).

        A named function's output is its arguments object alone; ``required`` output is a JSON array of
        ``{"name", "parameters"}`` objects.  ``fmt`` only picks the call-id style.  Arguments stream by
        default here, since the constrained JSON is valid as it is generated.
        """
        if choice.mode not in ("required", "function"):
            raise ValueError("for_tool_choice() needs tool_choice 'required' or a named function")
        self = cls(fmt, stream_arguments=stream_arguments, parallel_tool_calls=parallel_tool_calls)
        self._marker = ""
        self._at_start = False
        self._state = _OPEN
        if choice.mode == "function":
            self._open_kind = self._after_kind = "args"
            self._pending_name = choice.name or ""
        else:
            self._open_kind = self._after_kind = "array"
        return self

    # -- public --------------------------------------------------------------------------------------------
    @property
    def has_tool_calls(self) -> bool:
        return bool(self._calls)

    @property
    def content(self) -> str:
        """Everything returned as content so far."""
        return "".join(self._content)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The calls so far in the OpenAI message shape (``id``, ``type``, ``function.name/arguments``)."""
        return [c.as_message() for c in self._calls]

    def feed(self, delta: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if delta:
            self._buf += delta
            self._run(out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """End of output: flush held text; a call left incomplete is returned as content (or counted broken)."""
        out: list[dict[str, Any]] = []
        self._run(out)
        st = self._state
        if st == _CALL:
            sc = self._scanner
            assert sc is not None
            if self._streaming is not None:
                self._end_streamed_call()
            else:
                self._text(out, self._raw + sc.text() + self._buf)
        elif st == _AFTER:
            self._text(out, self._buf.lstrip())  # whitespace right after a call is dropped, as in _step
        elif st in (_OPEN, _ARRAY_ITEM, _ARRAY_NEXT, _V11_HEADER, _LLAMA_NEXT):
            if st in (_LLAMA_NEXT, _ARRAY_NEXT) and not self._buf.strip():
                pass  # only whitespace after a complete call, or an unclosed array after its calls
            else:
                self._text(out, self._raw + self._buf)
        else:
            self._text(out, self._buf)
        self._buf = self._raw = ""
        self._scanner = None
        self._state = _TEXT
        self._final_text = True
        if self._ws and not self._calls:
            self._emit(out, self._ws)
        self._ws = ""
        return out

    # -- output helpers ------------------------------------------------------------------------------------
    def _emit(self, out: list[dict[str, Any]], text: str) -> None:
        self._content.append(text)
        if out and "content" in out[-1]:
            out[-1]["content"] += text
        else:
            out.append({"content": text})

    def _text(self, out: list[dict[str, Any]], s: str) -> None:
        """Content, with whitespace touching the markup held back (see the module docstring)."""
        if not s:
            return
        core = s.rstrip()
        if not core:
            self._ws += s
            return
        tail = s[len(core):]
        body = core.lstrip()
        ws = self._ws + core[: len(core) - len(body)]
        if ws and (self._content or not self._calls):
            body = ws + body
        self._ws = tail
        self._at_start = False
        self._emit(out, body)

    def _new_call(self, out: list[dict[str, Any]], name: str) -> _Call | None:
        if self._calls and not self._parallel:
            return None
        ids = {c.id for c in self._calls}
        call_id = new_call_id(self.format)
        while call_id in ids:
            call_id = new_call_id(self.format)
        call = _Call(call_id, name)
        out.append({"tool_calls": [{"index": len(self._calls), "id": call_id, "type": "function",
                                    "function": {"name": name, "arguments": ""}}]})
        self._calls.append(call)
        self._at_start = False
        return call

    def _args(self, out: list[dict[str, Any]], call: _Call, piece: str) -> None:
        if not piece:
            return
        call.parts.append(piece)
        out.append({"tool_calls": [{"index": len(self._calls) - 1, "function": {"arguments": piece}}]})

    # -- state machine -------------------------------------------------------------------------------------
    def _run(self, out: list[dict[str, Any]]) -> None:
        step = self._step
        while step(out):
            pass

    def _step(self, out: list[dict[str, Any]]) -> bool:
        """Consume what can be decided from the buffer; True if the state changed and the loop should go on."""
        st = self._state
        if st == _TEXT:
            return self._step_text(out)
        if st == _CALL:
            return self._step_call(out)
        if st == _V11_HEADER:
            return self._step_v11(out)
        buf = self._buf
        stripped = buf.lstrip()
        if not stripped:
            if st != _AFTER:
                self._raw += buf
            self._buf = ""
            return False
        ws = buf[: len(buf) - len(stripped)]
        c = stripped[0]
        if st == _OPEN:
            kind = self._open_kind
            if kind == "mistral":
                if c == "[":
                    self._raw += ws + "["
                    self._buf = stripped[1:]
                    self._after_kind = "array"
                    self._state = _ARRAY_ITEM
                    return True
                if _V11_NAME.match(c):
                    self._raw += ws
                    self._buf = stripped
                    self._state = _V11_HEADER
                    return True
                if c == "{":  # a single call object without the array
                    self._raw += ws
                    self._after_kind = "mistral"
                    self._start_call(_WRAPPER, stripped)
                    return True
                return self._malformed(out, ws, stripped)
            if kind == "array":
                if c == "[":
                    self._raw += ws + "["
                    self._buf = stripped[1:]
                    self._state = _ARRAY_ITEM
                    return True
                return self._malformed(out, ws, stripped)
            if c == "{":
                self._raw += ws
                self._start_call(_ARGS_ONLY if kind == "args" else _WRAPPER, stripped)
                return True
            return self._malformed(out, ws, stripped)
        if st == _ARRAY_ITEM:
            if c == "{":
                self._raw += ws
                self._start_call(_WRAPPER, stripped)
                return True
            return self._malformed(out, ws, stripped)  # includes an empty array: no call, so it is text
        if st == _ARRAY_NEXT:
            if c == ",":
                self._raw += ws + ","
                self._buf = stripped[1:]
                self._state = _ARRAY_ITEM
                return True
            if c == "]":
                self._raw = ""
                self._buf = stripped[1:]
                self._to_text()
                return True
            return self._malformed(out, ws, stripped)
        # _AFTER / _LLAMA_NEXT: what follows a complete call
        kind = self._after_kind
        if kind == "hermes":
            if c == "{":  # several objects in one <tool_call> block (seen with Qwen2.5)
                self._start_call(_WRAPPER, stripped)
                return True
            if stripped.startswith(_HERMES_CLOSE):
                self._buf = stripped[len(_HERMES_CLOSE):]
            elif _HERMES_CLOSE.startswith(stripped):
                return False  # a partial closing tag
            else:
                self._buf = stripped  # closing tag missing: tolerated, the rest is text
            self._to_text()
            return True
        if kind == "llama3":
            if st == _AFTER and c == ";":
                self._buf = stripped[1:]
                self._state = _LLAMA_NEXT
                return True
            if c == "{":
                self._raw = ""
                self._start_call(_WRAPPER, stripped)
                return True
            if stripped.startswith(_PYTHON_TAG):
                self._raw = _PYTHON_TAG
                self._buf = stripped[len(_PYTHON_TAG):]
                self._open_kind = "llama3"
                self._state = _OPEN
                return True
            if _PYTHON_TAG.startswith(stripped):
                return False
            self._buf = stripped
            self._to_text()
            return True
        # mistral [ARGS] form or single object, constrained named call: back to text
        self._buf = stripped
        self._to_text()
        return True

    def _to_text(self) -> None:
        self._state = _TEXT
        self._raw = ""
        self._open_kind = self.format
        self._after_kind = self.format

    def _malformed(self, out: list[dict[str, Any]], ws: str, rest: str) -> bool:
        """The markup since the last call is not a valid call: it becomes content; go on with ``rest``."""
        self._text(out, self._raw + ws)
        self._raw = ""
        self._buf = rest
        self._state = _TEXT
        self._open_kind = self.format
        self._after_kind = self.format
        if not self._marker:
            self._final_text = True
        return True

    def _step_text(self, out: list[dict[str, Any]]) -> bool:
        buf = self._buf
        if not buf:
            return False
        if self._final_text or not self._marker:
            self._buf = ""
            self._text(out, buf)
            return False
        if self.format == "llama3" and self._at_start:
            stripped = buf.lstrip()
            if not stripped:
                self._ws += buf
                self._buf = ""
                return False
            if stripped[0] == "{":
                self._ws += buf[: len(buf) - len(stripped)]
                self._raw = ""
                self._after_kind = "llama3"
                self._start_call(_WRAPPER, stripped)
                return True
            self._at_start = False
        marker = self._marker
        i = buf.find(marker)
        if i >= 0:
            self._text(out, buf[:i])
            self._raw = marker
            self._buf = buf[i + len(marker):]
            self._state = _OPEN
            return True
        hold = _partial_suffix(buf, marker)
        cut = len(buf) - hold
        self._text(out, buf[:cut])
        self._buf = buf[cut:]
        return False

    def _step_v11(self, out: list[dict[str, Any]]) -> bool:
        buf = self._buf
        i = buf.find(_MISTRAL_ARGS)
        if i < 0:
            if _V11_WAIT.fullmatch(buf):
                return False
            return self._malformed(out, "", buf)
        m = _V11_HEAD.fullmatch(buf, 0, i)
        if m is None:
            return self._malformed(out, "", buf)
        self._pending_name = m.group(1)
        self._raw += buf[: i + len(_MISTRAL_ARGS)]
        self._buf = buf[i + len(_MISTRAL_ARGS):]
        self._open_kind = "args"
        self._after_kind = "mistral"
        self._state = _OPEN
        return True

    # -- one JSON object -----------------------------------------------------------------------------------
    def _start_call(self, kind: int, text: str) -> None:
        self._kind = kind
        self._scanner = _ObjectScanner()
        self._buf = text
        self._no_stream = False
        self._streaming = None
        self._sent = 0
        self._state = _CALL

    def _step_call(self, out: list[dict[str, Any]]) -> bool:
        sc = self._scanner
        assert sc is not None
        buf = self._buf
        close = self._after_kind == "hermes"
        while True:
            tag = -1
            if close:
                tag = buf.find(_HERMES_CLOSE)
                limit = tag if tag >= 0 else len(buf) - _partial_suffix(buf, _HERMES_CLOSE)
            else:
                limit = len(buf)
            used = sc.feed(buf[:limit]) if limit > 0 else 0
            buf = buf[used:]
            if self._stream and not self._no_stream:
                self._stream_progress(out, sc)
            if sc.end >= 0:
                self._buf = buf
                self._end_call(out, sc)
                return True
            if tag < 0:
                self._buf = buf
                return False
            # buf starts with the closing tag
            if sc.in_str:  # the tag is inside a JSON string: part of the value
                sc.feed(buf[: len(_HERMES_CLOSE)])
                buf = buf[len(_HERMES_CLOSE):]
                continue
            # the closing tag came before the object was complete
            self._scanner = None
            self._buf = buf
            if self._streaming is not None:
                self._end_streamed_call()
                self._state = _AFTER
            else:
                self._text(out, self._raw + sc.text())
                self._raw = ""
                self._state = _TEXT
                self._open_kind = self._after_kind = self.format
            return True

    def _stream_progress(self, out: list[dict[str, Any]], sc: _ObjectScanner) -> None:
        """stream_arguments: send the head once the name and the start of the arguments object are known,
        then the arguments text scanned so far.  Decisions depend on positions only, not on chunking."""
        call = self._streaming
        if call is None:
            if self._kind == _ARGS_ONLY:
                start = 0
            else:
                start = sc.args_start
                if start < 0:
                    return
                # decided once, on facts that never change (the first arguments value's start, the name
                # before it), so the outcome does not depend on the chunking: stream now or never
                self._no_stream = True
                span = sc.spans.get("name")
                if span is None or span[1] > start or sc.get(start, start + 1) != "{":
                    return
                try:
                    name = orjson.loads(sc.get(span[0], span[1]))
                except orjson.JSONDecodeError:
                    return
                if not isinstance(name, str) or not name:
                    return
                self._no_stream = False
                self._pending_name = name
            call = self._new_call(out, self._pending_name)
            if call is None:
                self._no_stream = True
                return
            self._streaming = call
            self._sent = self._args_start = start
        if self._kind == _ARGS_ONLY:
            end = sc.end if sc.end >= 0 else sc.size
        else:
            span = sc.spans.get("args")
            end = span[1] if span is not None and span[0] == self._args_start else sc.size
        if end > self._sent:
            self._args(out, call, sc.get(self._sent, end))
            self._sent = end

    def _end_streamed_call(self) -> None:
        """A call whose head was sent is over: count it broken unless what was sent is a JSON object."""
        call = self._streaming
        assert call is not None
        sent = "".join(call.parts)
        ok = False
        if sent:
            try:
                ok = isinstance(orjson.loads(sent), dict)
            except orjson.JSONDecodeError:
                ok = False
        if not ok:
            self.broken_calls += 1
        self._streaming = None

    def _end_call(self, out: list[dict[str, Any]], sc: _ObjectScanner) -> None:
        obj_text = sc.text()
        self._scanner = None
        if self._streaming is not None:
            self._end_streamed_call()
            self._raw = ""
            self._state = _ARRAY_NEXT if self._after_kind == "array" else _AFTER
            return
        decoded = self._decode(sc, obj_text)
        if decoded is None:
            # malformed: the markup so far is content; what follows is text again
            self._text(out, self._raw + obj_text)
            self._raw = ""
            self._state = _TEXT
            self._open_kind = self._after_kind = self.format
            if not self._marker:
                self._final_text = True
            return
        name, arguments = decoded
        call = self._new_call(out, name)
        if call is not None:
            self._args(out, call, arguments)
        self._raw = ""
        self._state = _ARRAY_NEXT if self._after_kind == "array" else _AFTER

    def _decode(self, sc: _ObjectScanner, text: str) -> tuple[str, str] | None:
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        if self._kind == _ARGS_ONLY:
            return (self._pending_name, text) if self._pending_name else None
        name = obj.get("name")
        if not isinstance(name, str) or not name or sc.dup:
            return None
        key = next((k for k in _ARG_KEYS if k in obj), None)
        if key is None:
            if self.format == "llama3":
                return None  # a bare JSON object there is only a call if it says so
            return name, "{}"
        value = obj[key]
        if isinstance(value, dict):
            span = sc.spans.get("args")
            if span is None:
                return None
            return name, text[span[0]:span[1]]
        if isinstance(value, str):
            try:
                inner = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
            return (name, value) if isinstance(inner, dict) else None
        return None


def parse_tool_calls(text: str, fmt: str, **options: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """Non-streaming form: ``(content or None, tool_calls)`` for a whole output (same rules as streaming)."""
    parser = ToolCallParser(fmt, **options)
    parser.feed(text)
    parser.finish()
    return (parser.content or None), parser.tool_calls


def merge_deltas(pieces: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold delta pieces into one OpenAI delta: texts concatenated, fragments of one call index merged.

    Returns ``{}`` when there is nothing to send.
    """
    delta: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for piece in pieces:
        for key, value in piece.items():
            if key == "tool_calls":
                for frag in value:
                    if calls and calls[-1]["index"] == frag["index"]:
                        last = calls[-1]
                        last["function"] = {**last["function"],
                                            "arguments": last["function"].get("arguments", "")
                                            + frag["function"].get("arguments", "")}
                    else:
                        calls.append({**frag, "function": dict(frag["function"])})
            elif value:
                delta[key] = delta.get(key, "") + value
    if calls:
        delta["tool_calls"] = calls
    return delta


def group_deltas(pieces: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pack delta pieces into as few deltas as keep OpenAI's streaming shape, in order.

    Text pieces are concatenated; a call's head (``id``, ``type``, ``name``, ``arguments: ""``) goes out in
    a delta of its own fragment, never merged with its arguments, and consecutive argument pieces of one
    call are joined.  A new delta starts when text follows a tool-call fragment or when a fragment cannot
    join the previous one.
    """
    deltas: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    for piece in pieces:
        frags = piece.get("tool_calls")
        if frags is None:
            if "tool_calls" in cur:
                deltas.append(cur)
                cur = {}
            for key, value in piece.items():
                if value:
                    cur[key] = cur.get(key, "") + value
            continue
        for frag in frags:
            calls = cur.get("tool_calls")
            if calls is None:
                cur["tool_calls"] = [{**frag, "function": dict(frag["function"])}]
                continue
            last = calls[-1]
            if "id" not in frag and "id" not in last and last["index"] == frag["index"]:
                last["function"]["arguments"] += frag["function"].get("arguments", "")
                continue
            deltas.append(cur)
            cur = {"tool_calls": [{**frag, "function": dict(frag["function"])}]}
    if cur:
        deltas.append(cur)
    return deltas


# -- request side: tools and tool_choice ---------------------------------------------------------------------
class ToolRequestError(ValueError):
    """Invalid ``tools`` / ``tool_choice``; ``param`` names the offending field as OpenAI does."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def shown(v: Any) -> str:
    """A client's value as an error message quotes it: the repr of a scalar (at most 60 characters), the type of
    anything else (a repr of JSON nested a thousand levels deep raises RecursionError)."""
    if v is None or isinstance(v, (str, int, float)):
        r = repr(v)
        return r if len(r) <= 60 else r[:57] + "..."
    return f"a {type(v).__name__}"


def validate_tools(tools: Any) -> list[dict[str, Any]]:
    """Check a request's ``tools`` (OpenAI function tools); returns them, or raises :class:`ToolRequestError`."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ToolRequestError("Invalid type for 'tools': expected an array of tool objects.", "tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ToolRequestError(f"Invalid type for '{where}': expected an object.", where)
        kind = tool.get("type", "function")
        if kind != "function":
            raise ToolRequestError(
                f"Invalid value for '{where}.type': {shown(kind)}; only 'function' tools are supported.",
                f"{where}.type",
            )
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ToolRequestError(f"Missing required parameter: '{where}.function'.", f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise ToolRequestError(
                f"Invalid '{where}.function.name': expected 1-64 characters of letters, digits, '_', '-', '.' "
                f"or ':'; got {shown(name)}.",
                f"{where}.function.name",
            )
        if name in seen:
            raise ToolRequestError(f"Duplicate function name in 'tools': {name!r}.", f"{where}.function.name")
        seen.add(name)
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ToolRequestError(
                f"Invalid type for '{where}.function.description': expected a string.", f"{where}.function.description"
            )
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ToolRequestError(
                f"Invalid type for '{where}.function.parameters': expected a JSON Schema object.",
                f"{where}.function.parameters",
            )
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ToolRequestError(
                f"Invalid type for '{where}.function.strict': expected a boolean.", f"{where}.function.strict"
            )
    return tools


@dataclass(frozen=True)
class ToolChoice:
    """A validated ``tool_choice``: ``mode`` is ``none``, ``auto``, ``required`` or ``function`` (then ``name``)."""

    mode: str
    name: str | None = None

    @property
    def parse_output(self) -> bool:
        """Whether the output should go through a tool-call parser (everything but ``none``)."""
        return self.mode != "none"


_NONE = ToolChoice("none")
_AUTO = ToolChoice("auto")


def validate_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]] | None) -> ToolChoice:
    """Check ``tool_choice`` against the (validated) ``tools``; raises :class:`ToolRequestError`.

    Default as OpenAI: ``auto`` when tools are given, ``none`` otherwise.
    """
    if tool_choice is None:
        return _AUTO if tools else _NONE
    names = [t["function"]["name"] for t in tools or ()]
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolRequestError(
                f"Invalid value for 'tool_choice': {tool_choice!r}; expected 'none', 'auto', 'required' or "
                "an object naming a function.",
                "tool_choice",
            )
        if tool_choice != "none" and not names:
            raise ToolRequestError(
                f"Invalid value for 'tool_choice': {tool_choice!r} is only allowed when 'tools' are specified.",
                "tool_choice",
            )
        return ToolChoice(tool_choice)
    if isinstance(tool_choice, dict):
        kind = tool_choice.get("type")
        fn = tool_choice.get("function")
        if kind != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolRequestError(
                "Invalid value for 'tool_choice': expected {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                "tool_choice",
            )
        name = fn["name"]
        if name not in names:
            raise ToolRequestError(
                f"Invalid value for 'tool_choice': function {name!r} is not among the 'tools'.",
                "tool_choice.function.name",
            )
        return ToolChoice("function", name)
    raise ToolRequestError("Invalid type for 'tool_choice': expected a string or an object.", "tool_choice")


def tool_choice_json_schema(tools: Sequence[Mapping[str, Any]], choice: ToolChoice) -> dict[str, Any] | None:
    """JSON schema that forces the output for ``required`` / a named function (``None`` otherwise).

    Send it to the SGLang worker as ``sampling_params["json_schema"]`` (a JSON string) and parse the output
    with :meth:`ToolCallParser.for_tool_choice`: for a named function the output is its arguments object;
    for ``required`` it is an array of ``{"name", "parameters"}`` objects (at least one).
    """
    if choice.mode == "function":
        for tool in tools:
            fn = tool["function"]
            if fn["name"] == choice.name:
                return dict(fn.get("parameters") or {"type": "object"})
        raise ValueError(f"function {choice.name!r} is not among the tools")
    if choice.mode != "required":
        return None
    items = []
    for tool in tools:
        fn = tool["function"]
        items.append({
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [fn["name"]]},
                "parameters": fn.get("parameters") or {"type": "object"},
            },
            "required": ["name", "parameters"],
        })
    return {"type": "array", "minItems": 1, "items": {"anyOf": items}}


# -- composition: reasoning, then tool calls -----------------------------------------------------------------
class OutputParser:
    """Everything the router does to one choice's generated text: reasoning separation, then tool calls.

    It is the router's *output processor* (``App.output_processor_factory`` in :mod:`radixrouter.app`):
    ``feed(text_delta)`` and ``finish()`` return a list of OpenAI deltas (``{"reasoning_content"?,
    "content"?, "tool_calls"?}``, packed by :func:`group_deltas`: usually zero or one per worker event; a
    call's head and its arguments are separate deltas, as OpenAI streams them); ``finish_reason`` is
    ``"tool_calls"`` once a call was made, else ``None`` (keep the worker's).  One instance per choice::

        parser = OutputParser(tool_format="hermes", reasoning_format="qwen3",
                              in_reasoning=prompt_in_reasoning(prompt_text, "qwen3"))
        for text_delta in worker_deltas:
            for delta in parser.feed(text_delta):
                send_chunk(delta)
        for delta in parser.finish():
            send_chunk(delta)
        finish_reason = parser.finish_reason or worker_finish_reason

    Non-streaming: ``OutputParser(...).parse(text)`` -> ``{"content", "reasoning_content"?, "tool_calls"?}``.
    ``tool_format=None`` (or tool_choice ``none``) disables tool parsing; ``reasoning_format=None`` disables
    reasoning separation; with both off, text passes through untouched.  ``constrained=True`` with tool_choice
    ``required`` / a named function parses output generated under :func:`tool_choice_json_schema`.
    """

    def __init__(
        self,
        *,
        tool_format: str | None = None,
        reasoning_format: str | None = None,
        in_reasoning: bool | None = None,
        tool_choice: ToolChoice | None = None,
        stream_arguments: bool = False,
        parallel_tool_calls: bool = True,
        constrained: bool = False,
    ) -> None:
        self.reasoning = (ReasoningParser(reasoning_format, in_reasoning=in_reasoning)
                          if reasoning_format else None)
        self.tools: ToolCallParser | None = None
        if constrained and tool_choice is not None and tool_choice.mode in ("required", "function"):
            self.tools = ToolCallParser.for_tool_choice(tool_choice, fmt=tool_format or "hermes",
                                                        parallel_tool_calls=parallel_tool_calls)
        elif tool_format and (tool_choice is None or tool_choice.parse_output):
            self.tools = ToolCallParser(tool_format, stream_arguments=stream_arguments,
                                        parallel_tool_calls=parallel_tool_calls)

    @property
    def has_tool_calls(self) -> bool:
        return self.tools is not None and self.tools.has_tool_calls

    @property
    def finish_reason(self) -> str | None:
        """``"tool_calls"`` when the output made a call; ``None`` means "keep the worker's finish reason"."""
        return "tool_calls" if self.has_tool_calls else None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.tools.tool_calls if self.tools is not None else []

    def _route(self, pieces: list[dict[str, str]], final: bool) -> list[dict[str, Any]]:
        tools = self.tools
        if tools is None:
            out: list[Mapping[str, Any]] = list(pieces)
        else:
            out = []
            for piece in pieces:
                text = piece.get("content")
                if text is None:
                    out.append(piece)
                else:
                    out.extend(tools.feed(text))
            if final:
                out.extend(tools.finish())
        if not out:
            return []
        if len(out) == 1 and "tool_calls" not in out[0]:
            return [dict(out[0])]  # the common case: one text piece
        return group_deltas(out)

    def feed(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        if self.reasoning is not None:
            return self._route(self.reasoning.feed(delta), False)
        return self._route([{"content": delta}], False)

    def finish(self) -> list[dict[str, Any]]:
        pieces = self.reasoning.finish() if self.reasoning is not None else []
        return self._route(pieces, True)

    def parse(self, text: str) -> dict[str, Any]:
        """Non-streaming: the message fields for a whole output.

        ``content`` is ``None`` when empty and tool calls were made (as OpenAI does), ``""`` when empty
        otherwise; ``reasoning_content`` and ``tool_calls`` are present only when non-empty.
        """
        merged = merge_deltas(self.feed(text) + self.finish())
        message: dict[str, Any] = {}
        content = merged.get("content", "")
        calls = self.tool_calls
        message["content"] = content if (content or not calls) else None
        if merged.get("reasoning_content"):
            message["reasoning_content"] = merged["reasoning_content"]
        if calls:
            message["tool_calls"] = calls
        return message


def make_output_processor_factory(
    tool_format: str | None,
    reasoning_format: str | None,
    *,
    stream_arguments: bool = False,
    constrained: bool = False,
) -> Callable[[Any, str], OutputParser | None] | None:
    """The router's ``output_processor_factory`` for ``--tool-call-parser`` / ``--reasoning-parser``.

    ``None`` when both are off.  Per request, the factory reads the parsed chat request: ``tools`` (tool
    parsing only when the request has tools; the router drops them for tool_choice ``none``), and, when
    present, ``tool_choice`` (raw or :class:`ToolChoice`) and ``parallel_tool_calls``; the rendered prompt
    tells whether the output starts inside a reasoning block (:func:`prompt_in_reasoning`).
    ``constrained=True``: the router sends :func:`tool_choice_json_schema` to the worker for tool_choice
    ``required`` / a named function, so those outputs are parsed as constrained JSON.
    """
    tool_fmt = normalize_tool_format(tool_format) if tool_format else None
    reasoning_fmt = normalize_reasoning_format(reasoning_format) if reasoning_format else None
    if tool_fmt is None and reasoning_fmt is None:
        return None

    def factory(request: Any, prompt_text: str) -> OutputParser | None:
        tools = getattr(request, "tools", None) if tool_fmt else None
        choice = getattr(request, "tool_choice", None)
        if choice is not None and not isinstance(choice, ToolChoice):
            choice = validate_tool_choice(choice, tools)
        parallel = getattr(request, "parallel_tool_calls", None)
        in_reasoning = prompt_in_reasoning(prompt_text, reasoning_fmt) if reasoning_fmt else None
        use_tools = bool(tools) and (choice is None or choice.parse_output)
        if not use_tools and (reasoning_fmt is None or in_reasoning is False):
            return None
        return OutputParser(
            tool_format=tool_fmt if use_tools else None,
            reasoning_format=reasoning_fmt if in_reasoning is not False else None,
            in_reasoning=in_reasoning,
            tool_choice=choice,
            stream_arguments=stream_arguments,
            parallel_tool_calls=parallel is not False,
            constrained=constrained and use_tools,
        )

    return factory
