"""The router's ASGI application (framework-free; served by granian).

`create_app(config)` returns an ASGI callable. Routes come from a dict; long-lived state (HTTP session,
worker pool, health probes) is created in the lifespan startup (or on the first request when the server
runs no lifespan). Streams are sent frame by frame as the worker produces them, with
``content-type: text/event-stream`` exactly, and always end with ``more_body: False``. A task watching
``receive()`` turns a client disconnect into a cancellation of the request, which aborts the request on its
worker (``POST /abort_request``) and releases the worker's in-flight count.

Chat output text passes through an optional per-request *output processor* (reasoning / tool-call parsing):
``App.output_processor_factory(chat_request, prompt_text)`` returns ``None`` or an object with
``feed(text) -> list[delta]``, ``finish() -> list[delta]`` and an optional ``finish_reason`` attribute
(for example ``"tool_calls"``) read after ``finish()``; a delta is an OpenAI delta dict such as
``{"content": ...}``, ``{"reasoning_content": ...}`` or ``{"tool_calls": [...]}``.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

import radixrouter
from radixrouter import SseDecodeError, SseDecoder, encode_event
from radixrouter.config import Config
from radixrouter.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from radixrouter.metrics import Metrics, mark_frame
from radixrouter.openai_api import (
    ApiError,
    ChatRequest,
    abort_error,
    bad,
    chat_logprobs,
    completion_logprobs,
    dumps_request,
    finish_reason,
    parse_chat,
    parse_completion,
    transport_error,
    usage_obj,
)
from radixrouter.relay import reframe
from radixrouter.upstream import TRANSPORT_ERRORS, Upstream
from radixrouter.workers import RouteContext, Worker, WorkerError, WorkerPool, make_policy, pool_options

log = logging.getLogger("radixrouter")

_loads = orjson.loads
_dumps = orjson.dumps

# ---------------------------------------------------------------------------- prebuilt messages

_H_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_START_JSON_200 = {"type": "http.response.start", "status": 200, "headers": [_H_JSON]}
_START_METRICS = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", METRICS_CONTENT_TYPE)]}
_KEEPALIVE = encode_event(comment="keep-alive")
_DONE = encode_event(b"[DONE]")
_ROLE_DELTA = b'{"role":"assistant","content":""}'
_EMPTY_DELTA = b"{}"
_NULL = b"null"
_FINISH = {"stop": b'"stop"', "length": b'"length"', "tool_calls": b'"tool_calls"', "content_filter": b'"content_filter"'}


_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def _with_rid(body: bytes, rid: str) -> bytes:
    """`body` (a JSON object) with its "rid" replaced (retries only: parsing again costs nothing that matters)."""
    obj = _loads(body)
    obj["rid"] = rid
    return _dumps(obj)


def new_id() -> str:
    """A request id unique to this process run (random prefix + counter; no syscall per request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def _body(data: bytes, more: bool = False) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": more}


class UpstreamFailure(Exception):
    """A worker failed (transport error, early end, timeout). Retryable if nothing reached the client yet."""

    def __init__(self, error: ApiError, retryable: bool):
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable


def _tune_gc() -> None:
    """Garbage-collector settings for a process that only serves the router. A request allocates a few
    thousand container objects, so CPython's default (a young collection every 700 net allocations, 700 /
    10 / 10) ran several collections per request; at 50,000 the router's CPU per non-streaming request fell
    by about a seventh (docs/bench-router.md). ``gc.freeze()`` first moves everything startup allocated
    (tokenizer tables, the template, modules) out of the full collections."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Exchange:
    """One HTTP request/response in flight, over ASGI. The handlers use ``receive()`` / ``send(message)``
    with ASGI messages, ``header(name)``, ``headers()``, ``path``, ``method`` and ``query_string``;
    ``RsgiExchange`` offers the same over granian's RSGI protocol."""

    __slots__ = ("scope", "receive", "send", "started", "disconnected", "t0", "worker_header", "session")

    def __init__(self, scope, receive, send):
        self.scope = scope
        self.receive = receive
        self.send = send
        self.started = False
        self.disconnected = False
        self.t0 = time.perf_counter()
        self.worker_header: bytes | None = None
        self.session: str | None = None  # session-affinity key (App._session)

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def query_string(self) -> bytes:
        return self.scope.get("query_string") or b""

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.scope["headers"]:
            if k == name:
                return v
        return None

    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.scope["headers"]

    async def respond(self, start: dict, body: bytes) -> None:
        """A whole response: ``start`` (an ``http.response.start`` message) and its body."""
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


_DISCONNECT = {"type": "http.disconnect"}


class RsgiExchange:
    """One HTTP request/response over granian's RSGI protocol, with the ASGI-shaped ``receive`` / ``send``
    the handlers use, so one code path serves both. What it saves per request is granian's ASGI layer: the
    scope dict, the header list, the message dicts converted in Rust, an awaitable per ``receive``.

    ``receive()`` gives the body (at once when a Content-Length within ``body_limit`` announces it, else
    chunk by chunk, so an oversized body is drained, never buffered), then a future that resolves to
    ``http.disconnect`` when the client goes away. ``send`` answers a body sent with ``more_body: False``
    as one response and opens a stream otherwise; a send after the client left is dropped (as granian's
    ASGI does)."""

    __slots__ = ("scope", "proto", "started", "disconnected", "t0", "worker_header", "session", "path", "method",
                 "_limit", "_body_done", "_chunks", "_start", "_stream", "_gone")

    def __init__(self, scope, proto, body_limit: int):
        self.scope = scope
        self.proto = proto
        self.path: str = scope.path
        self.method: str = scope.method
        self.started = False
        self.disconnected = False
        self.t0 = time.perf_counter()
        self.worker_header: bytes | None = None
        self.session: str | None = None
        self._limit = body_limit
        self._body_done = False
        self._chunks: Any = None
        self._start: dict | None = None
        self._stream: Any = None
        self._gone: Any = None

    @property
    def query_string(self) -> bytes:
        return self.scope.query_string.encode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        v = self.scope.headers.get(name.decode("latin-1"))
        return None if v is None else v.encode("latin-1")

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.scope.headers.items()]

    def receive(self) -> Any:
        if not self._body_done:
            return self._read()
        fut = asyncio.get_running_loop().create_future()

        def gone(g: Any) -> None:
            if not fut.done():
                if g.cancelled():
                    fut.cancel()
                else:
                    fut.set_result(_DISCONNECT)

        self.disconnect_future().add_done_callback(gone)
        return fut

    def disconnect_future(self) -> Any:
        """granian's future that resolves when the client goes away (one per exchange; cancelled by
        ``release()``: granian never resolves it for a request that completed normally, and what its
        callbacks hold would otherwise stay in memory)."""
        f = self._gone
        if f is None:
            f = self._gone = self.proto.client_disconnect()
        return f

    async def _read(self) -> dict:
        it = self._chunks
        try:
            if it is None:
                cl = self.scope.headers.get("content-length")
                if cl is not None and cl.isdigit() and int(cl) <= self._limit:
                    self._body_done = True
                    return {"type": "http.request", "body": await self.proto(), "more_body": False}
                it = self._chunks = self.proto.__aiter__()
            chunk = await it.__anext__()
        except StopAsyncIteration:
            self._body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        except _RsgiClosed:  # the client closed (its sending side, or the connection) before the body's end
            self._body_done = True
            return _DISCONNECT
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def respond(self, start: dict, body: bytes) -> None:
        """A whole response: ``start`` (an ``http.response.start`` message) and its body, in one call."""
        self._stream = False
        self.proto.response_bytes(start["status"], _rsgi_headers(start), body)

    async def send(self, msg: dict) -> None:
        if msg["type"] == "http.response.start":
            self._start = msg
            return
        stream = self._stream
        body = msg.get("body", b"")
        if stream is None:
            start = self._start
            if start is None:
                raise RuntimeError("http.response.body before http.response.start")
            headers = _rsgi_headers(start)
            if not msg.get("more_body", False):
                self._stream = False
                self.proto.response_bytes(start["status"], headers, body)
                return
            stream = self._stream = self.proto.response_stream(start["status"], headers)
        if body and stream is not False:
            try:
                await stream.send_bytes(body)
            except _RsgiClosed:
                self.disconnected = True

    def release(self) -> None:
        """The handler is done. granian ends a streamed response when its transport is released; a
        traceback cycle that still holds this exchange must not keep the client waiting for the garbage
        collector. The disconnect future is cancelled (see ``disconnect_future``)."""
        self._stream = None
        f = self._gone
        if f is not None:
            self._gone = None
            if not f.done():
                f.cancel()


def _rsgi_headers(start: dict) -> list[tuple[str, str]]:
    """The headers of an ``http.response.start`` message as RSGI wants them (str pairs), kept in the
    message: the router's common starts are built once and reused."""
    h = start.get("rsgi_headers")
    if h is None:
        h = start["rsgi_headers"] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    return h


try:
    from granian.rsgi import ProtocolClosed as _RsgiClosed
except ImportError:  # granian is a dependency; this keeps the module importable without it
    class _RsgiClosed(Exception):  # type: ignore[no-redef]
        pass


class DisconnectWatch:
    """Cancels ``task`` when the client disconnects. Over RSGI it is a done-callback on granian's disconnect
    future (no Task, no extra future per request); an ASGI ``receive()`` is awaited through a future (a
    coroutine ``receive``, e.g. from other ASGI servers or tests, in a Task).

    It is set up on the event loop's next turn, which comes when the request first waits: for the
    worker, once the request to it was written. So the set-up (tens of microseconds, granian's part
    included) runs while the worker works, not before the request leaves. A client that left in between
    is still seen: granian resolves a disconnect future created after the fact."""

    __slots__ = ("ex", "task", "fut", "done")

    def __init__(self, ex: Exchange | RsgiExchange, task: asyncio.Task | None) -> None:
        self.ex = ex
        self.task = task
        self.fut: Any = None
        self.done = False
        asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        if self.done:
            return
        ex = self.ex
        if type(ex) is RsgiExchange:
            ex.disconnect_future().add_done_callback(self._on_gone)  # cancelled by ex.release()
        else:
            self._arm()

    def _arm(self) -> None:
        aw = self.ex.receive()
        if not hasattr(aw, "add_done_callback"):
            aw = asyncio.ensure_future(aw)
        self.fut = aw
        aw.add_done_callback(self._on_message)

    def _on_gone(self, fut: Any) -> None:
        if self.done or fut.cancelled():
            return
        self.ex.disconnected = True
        if self.task is not None:
            self.task.cancel()

    def _on_message(self, fut: Any) -> None:
        if self.done or fut.cancelled():
            return
        try:
            msg = fut.result()
        except Exception:  # noqa: BLE001 - the server gave up on the connection: nothing to watch
            return
        if msg.get("type") == "http.disconnect":
            self._on_gone(fut)
        else:
            self._arm()  # (a stray body message: keep watching)

    def cancel(self) -> None:
        self.done = True
        fut = self.fut
        self.fut = self.task = None  # a server may keep a pending receive() (and so this watch) alive
        if fut is not None and not fut.done():
            fut.cancel()


def _route_ctx(text: str, prompt: Any) -> RouteContext:
    """The routing context of a prompt; its cache lookup (if it was tokenized through the cache) goes along
    so that cache_aware does not look the text up again."""
    return RouteContext(text=text, match=prompt.match if prompt is not None else None)


def _worker_error(status: int, data: bytes, url: str) -> ApiError:
    """An OpenAI error object from a worker's error response (SGLang answers {"error": {"message": ...}})."""
    msg = None
    try:
        obj = _loads(data)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            msg = err.get("message")
        elif isinstance(err, str):
            msg = err
        elif isinstance(obj, dict):
            msg = obj.get("message") or obj.get("detail")
    except orjson.JSONDecodeError:
        msg = data[:500].decode("utf-8", "replace") or None
    if not isinstance(msg, str) or not msg:
        msg = f"worker answered HTTP {status}"
    code = "upstream_error" if status >= 500 or status == 429 else None
    return ApiError(status, msg, code=code)


# ---------------------------------------------------------------------------- per-choice stream state


class Choice:
    """The output of one generation as the worker streams it (cumulative or incremental events)."""

    __slots__ = ("index", "mode", "text", "ids", "meta", "lps", "tops", "lp_sent", "finish", "abort", "proc", "emitted",
                 "raw")

    def __init__(self, index: int, mode: str | None):
        self.index = index
        self.mode = mode  # None until detected
        self.text = ""
        self.ids: list[int] = []
        self.meta: dict = {}
        self.lps: list = []
        self.tops: list = []
        self.lp_sent = 0
        self.finish: str | None = None
        self.abort: dict | None = None
        self.proc: Any = None
        self.emitted = False
        self.raw: bytes | None = None  # the last cumulative event as received (its output_ids were skipped)

    def update(self, obj: dict) -> str:
        """Apply one worker event; return the new text."""
        text = obj.get("text") or ""
        meta = obj.get("meta_info") or {}
        ids = obj.get("output_ids")
        mode = self.mode
        if mode is None and (self.text or self.ids):
            ct = meta.get("completion_tokens")
            if ids is not None and isinstance(ct, int) and (self.ids or ids):
                mode = "cumulative" if len(ids) == ct else "incremental"
            else:
                mode = "cumulative" if text.startswith(self.text) else "incremental"
            self.mode = mode
        if mode == "incremental":
            delta = text
            self.text += text
            if ids:
                self.ids.extend(ids)
            lp = meta.get("output_token_logprobs")
            if lp:
                self.lps.extend(lp)
            tp = meta.get("output_top_logprobs")
            if tp:
                self.tops.extend(tp)
        else:
            old = self.text
            delta = text[len(old):] if len(text) > len(old) else ""
            self.text = text
            if ids is not None:
                self.ids = ids if mode is not None else list(ids)
            lp = meta.get("output_token_logprobs")
            if lp is not None:
                self.lps = lp if mode is not None else list(lp)
            tp = meta.get("output_top_logprobs")
            if tp is not None:
                self.tops = tp if mode is not None else list(tp)
        self.meta = meta
        if meta.get("finish_reason") is not None:
            self.finish, self.abort = finish_reason(meta)
        return delta

    def restore_ids(self) -> None:
        """The output ids of the last cumulative event, whose parse skipped them (see App._events)."""
        raw = self.raw
        if raw is not None:
            self.raw = None
            ids = _loads(raw).get("output_ids")
            if ids is not None:
                self.ids = ids

    def logprob_meta(self) -> dict:
        return {"output_token_logprobs": self.lps, "output_top_logprobs": self.tops}


def _merge_deltas(deltas: list[dict], message: dict) -> None:
    """Accumulate processor deltas into a non-streaming chat message."""
    for d in deltas:
        for k, v in d.items():
            if k == "tool_calls":
                calls = message.setdefault("tool_calls", [])
                for tc in v:
                    idx = tc.get("index", len(calls))
                    while len(calls) <= idx:
                        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                    cur = calls[idx]
                    if tc.get("id"):
                        cur["id"] = tc["id"]
                    fn = tc.get("function") or {}
                    if fn.get("name"):
                        cur["function"]["name"] += fn["name"]
                    if fn.get("arguments"):
                        cur["function"]["arguments"] += fn["arguments"]
            elif isinstance(v, str):
                message[k] = (message.get(k) or "") + v


# ---------------------------------------------------------------------------- frame builders


class ChatFrames:
    __slots__ = ("head", "tail", "usage_head", "c_pre", "c_post")

    def __init__(self, cid: str, created: int, model: str, include_usage: bool):
        self.head = b'{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
            cid.encode(), created, _dumps(model))
        self.tail = b'],"usage":null}' if include_usage else b"]}"
        self.usage_head = self.head + b'],"usage":'
        # the common frame (choice 0, a content delta, no logprobs) in two precomputed halves
        self.c_pre = self.head + b'{"index":0,"delta":{"content":'
        self.c_post = b'},"logprobs":null,"finish_reason":null}' + self.tail

    def content(self, text: str) -> bytes:
        return encode_event(self.c_pre + _dumps(text) + self.c_post)

    def frame(self, index: int, delta: bytes, finish: bytes = _NULL, logprobs: bytes = _NULL) -> bytes:
        return encode_event(
            self.head + b'{"index":%d,"delta":%s,"logprobs":%s,"finish_reason":%s}' % (index, delta, logprobs, finish)
            + self.tail
        )

    def usage(self, usage: dict) -> bytes:
        return encode_event(self.usage_head + _dumps(usage) + b"}")


class CompletionFrames:
    __slots__ = ("head", "tail", "usage_head")

    def __init__(self, cid: str, created: int, model: str, include_usage: bool):
        self.head = b'{"id":"%s","object":"text_completion","created":%d,"model":%s,"choices":[' % (
            cid.encode(), created, _dumps(model))
        self.tail = b'],"usage":null}' if include_usage else b"]}"
        self.usage_head = self.head + b'],"usage":'

    def frame(self, index: int, text: str, finish: bytes = _NULL, logprobs: bytes = _NULL) -> bytes:
        return encode_event(
            self.head + b'{"text":%s,"index":%d,"logprobs":%s,"finish_reason":%s}' % (_dumps(text), index, logprobs, finish)
            + self.tail
        )

    def usage(self, usage: dict) -> bytes:
        return encode_event(self.usage_head + _dumps(usage) + b"}")


# ---------------------------------------------------------------------------- the app


class App:
    def __init__(self, config: Config):
        self.config = config
        self.model_name = config.model_name()
        self._api_secret = ("Bearer " + config.api_key).encode() if config.api_key else None
        admin = config.admin_secret()
        self._admin_secret = ("Bearer " + admin).encode() if admin else None
        self.tokenizer: Any = None
        self.builder: Any = None
        self.cache: Any = None
        if hasattr(radixrouter, "PrefixCache"):
            self.cache = radixrouter.PrefixCache(max_tokens=config.cache_max_tokens)
        if config.model_path or config.tokenizer:
            self.tokenizer = load_tokenizer(config)
            from radixrouter.tokenizer import PromptBuilder

            self.builder = PromptBuilder(self.tokenizer, self.cache)
        self.policy = make_policy(
            config.policy, self.cache, threshold=config.cache_threshold,
            balance_abs=config.balance_abs_threshold, balance_rel=config.balance_rel_threshold,
        ) if config.policy == "cache_aware" else make_policy(config.policy)
        self.pool = WorkerPool(config.worker_urls, self.policy, **pool_options(config))
        if self.cache is not None:
            self.pool.on_unhealthy.append(self._forget_worker)
        sk = config.session_key or ""
        self._session_user = sk == "user"
        self._session_header = (sk[7:] if sk.startswith("header:") else sk).lower().encode() if sk and sk != "user" \
            else None
        self._running: dict[asyncio.Task, Exchange] = {}  # generation requests in flight (graceful shutdown)
        self._stopping: set[Exchange] = set()  # requests cancelled by the shutdown deadline
        self._draining = False
        self.handle_sigterm = False  # `radixrouter serve` sets it: SIGTERM drains (see _on_sigterm)
        # `radixrouter serve` sets it: the process serves nothing else, so after startup _tune_gc() moves what
        # startup allocated out of the collector's reach and collects the young generation less often
        self.tune_gc = False
        # relayed models (OpenAI-compatible upstreams, other SGLang models): radixrouter.relay
        from radixrouter.models_config import build_models
        from radixrouter.relay import Relay

        native_extra, relayed = build_models(config)
        for url in native_extra:
            self.pool.add(url)
        self.relay = Relay(self, relayed)
        self.metrics = Metrics()
        self.metrics.attach_state(lambda: self.pool.list() + self.relay.workers(), self._cache_stats)
        self.upstream: Upstream | None = None
        self._health_task: asyncio.Task | None = None
        self._started = False
        self.active = 0  # generation requests in flight
        self._fixed_mode = None if config.worker_stream_mode == "auto" else config.worker_stream_mode
        self._sse_starts: dict[str, dict] = {}
        self._json_starts: dict[str, dict] = {}
        # hook for reasoning / tool-call parsing of chat output (see the module docstring)
        self.output_processor_factory: Callable[[ChatRequest, str], Any] | None = None
        if config.tool_call_parser or config.reasoning_parser:
            from radixrouter.toolcalls import make_output_processor_factory

            self.output_processor_factory = make_output_processor_factory(
                config.tool_call_parser, config.reasoning_parser, constrained=True)
        self.routes: dict[str, tuple[str, Callable, str, int]] = {
            # path: (method, handler, metric route name, flags)   flags: 1 = auth, 2 = admin, 4 = generation
            "/v1/chat/completions": ("POST", self.chat_completions, "chat", 5),
            "/v1/completions": ("POST", self.completions, "completions", 5),
            "/v1/models": ("GET", self.models, "models", 1),
            "/generate": ("POST", self.generate, "generate", 5),
            "/retrieve_from_text": ("POST", self.retrieve_from_text, "retrieve_from_text", 1),
            "/add_worker": ("POST", self.add_worker, "add_worker", 2),
            "/remove_worker": ("POST", self.remove_worker, "remove_worker", 2),
            "/list_workers": ("GET", self.list_workers, "list_workers", 2),
            "/health": ("GET", self.health, "health", 0),
            "/readiness": ("GET", self.readiness, "readiness", 0),
            "/metrics": ("GET", self.metrics_endpoint, "metrics", 0),
        }

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        if self._started:
            return
        self._started = True
        cfg = self.config
        self.upstream = Upstream(connect_timeout=cfg.connect_timeout, request_timeout=cfg.request_timeout,
                                 client=cfg.upstream_client, ca_file=cfg.upstream_ca_file)
        await self._probe_all()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())
        if self.handle_sigterm:
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
            except (NotImplementedError, RuntimeError, ValueError) as e:
                log.warning("cannot handle SIGTERM for a graceful shutdown: %s", e)
        if self.tune_gc:
            _tune_gc()

    def _on_sigterm(self) -> None:
        """Graceful shutdown: new generation requests get 503 and /readiness 503; granian (told with SIGINT,
        which keeps its own handler) stops accepting connections and exits once the running requests are
        done; running requests get `shutdown_timeout` seconds, then are cancelled, which aborts them on their
        workers and ends their streams with an error frame."""
        if self._draining:
            return
        self._draining = True
        log.warning("SIGTERM: draining %d running requests (at most %s s)", len(self._running),
                    self.config.shutdown_timeout)
        os.kill(os.getpid(), signal.SIGINT)
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        while self._running and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._running:
            log.warning("shutdown deadline: aborting %d running requests", len(self._running))
        for task, ex in list(self._running.items()):
            self._stopping.add(ex)
            task.cancel()

    def _forget_worker(self, w: Worker) -> None:
        """A worker turned unhealthy or was removed: its KV cache is gone or unreachable, drop its affinity."""
        if self.cache is not None:
            self.cache.remove_worker(w.url)

    def _session(self, ex: Exchange) -> str | None:
        """The session-affinity key of a request: the configured header, else the `user` field (set on
        `ex.session` when the body was parsed)."""
        h = self._session_header
        if h is not None:
            v = ex.header(h)
            if v:
                return "h:" + v.decode("latin-1")
        return ex.session

    async def shutdown(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        if self.upstream is not None:
            pending = [t for t in getattr(self.upstream, "_background", ()) if not t.done()]
            if pending:  # let the last /abort_request calls reach their workers
                await asyncio.wait(pending, timeout=2.0)
            await self.upstream.close()
        self._started = False

    async def _lifespan(self, scope, receive, send) -> None:
        while True:
            msg = await receive()
            t = msg["type"]
            if t == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:  # noqa: BLE001
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                state = scope.get("state")
                if isinstance(state, dict):
                    state["router"] = self
                await send({"type": "lifespan.startup.complete"})
            elif t == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _probe(self, w: Worker) -> None:
        assert self.upstream is not None
        try:
            status, _ = await self.upstream.get(w.url + "/health", self.config.health_check_timeout)
            ok = status == 200
        except TRANSPORT_ERRORS:
            ok = False
        if ok:
            self.pool.report_success(w)
        else:
            if not w.healthy:
                w.consecutive_successes = 0
            self.pool.report_failure(w)

    async def _probe_all(self) -> None:
        ws = self.pool.list()
        if ws:
            await asyncio.gather(*(self._probe(w) for w in ws))
        await self.relay.probe_all()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_check_interval)
            try:
                await self._probe_all()
            except Exception:  # noqa: BLE001
                log.exception("health probe round failed")

    def _cache_stats(self) -> dict | None:
        return self.cache.stats() if self.cache is not None else None

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            return
        if not self._started:
            await self.startup()
        await self._serve(Exchange(scope, receive, send))

    # ------------------------------------------------------------------ RSGI entry (what `radixrouter serve` runs)
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian calls this in the worker process before serving (the loop is not running yet)."""
        loop.run_until_complete(self.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def __rsgi__(self, scope, proto) -> None:
        if not self._started:
            await self.startup()
        ex = RsgiExchange(scope, proto, self.config.max_body_bytes)
        try:
            await self._serve(ex)
        finally:
            ex.release()

    async def _serve(self, ex: Exchange | RsgiExchange) -> None:
        path = ex.path
        route = self.routes.get(path)
        name = "other"
        status = 500
        counted = False
        try:
            if route is None:
                raise ApiError(404, f"no route {path}", code="not_found")
            method, handler, name, flags = route
            if ex.method != method:
                raise ApiError(405, f"{ex.method} is not allowed on {path}; use {method}")
            if flags & 3:
                secret = self._admin_secret if flags & 2 else self._api_secret
                if secret is not None:
                    got = ex.header(b"authorization")
                    if got is None or not hmac.compare_digest(got, secret):
                        raise ApiError(401, "Incorrect or missing API key", code="invalid_api_key")
            if flags & 4:
                if self._draining:
                    raise ApiError(503, "the router is shutting down", code="shutting_down",
                                   headers=[(b"connection", b"close")])
                limit = self.config.max_concurrent_requests
                if limit and self.active >= limit:
                    raise ApiError(
                        429, "Too many concurrent requests, retry shortly", code="rate_limit_exceeded",
                        headers=[(b"retry-after", b"1")],
                    )
                self.active += 1
                counted = True
                self._running[asyncio.current_task()] = ex
            status = await handler(ex)
        except ApiError as e:
            status = e.status
            await self._send_error(ex, e)
        except asyncio.CancelledError:
            stopping = ex in self._stopping
            if not ex.disconnected and not stopping:
                raise
            status = 503 if stopping else 499
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            if stopping:
                self._stopping.discard(ex)
                await self._send_error(ex, ApiError(503, "the router is shutting down", code="shutting_down"))
        except Exception:  # a bug: log it, answer 500 (never leave the client hanging)
            log.exception("unhandled error on %s", path)
            status = 500
            await self._send_error(ex, ApiError(500, "internal router error"))
        finally:
            if counted:
                self.active -= 1
                self._running.pop(asyncio.current_task(), None)
            self.metrics.count_request(name, status)

    async def _send_error(self, ex: Exchange, e: ApiError) -> None:
        if ex.disconnected:
            return
        if ex.started:  # a stream is open: an error frame ends it (no [DONE])
            await ex.send(_body(encode_event(e.body())))
            return
        headers = [_H_JSON]
        if e.headers:
            headers += e.headers
        ex.started = True
        await ex.respond({"type": "http.response.start", "status": e.status, "headers": headers}, e.body())

    # ------------------------------------------------------------------ small helpers
    async def _read_body(self, ex: Exchange) -> bytes:
        limit = self.config.max_body_bytes
        cl = ex.header(b"content-length")
        too_big = False
        if cl is not None:
            try:
                too_big = int(cl) > limit
            except ValueError:
                raise bad("invalid Content-Length header") from None
        receive = ex.receive
        chunks = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                if too_big:
                    break
                # answered, not dropped: a client that closed only its sending side still reads the answer
                # (and granian answers an empty 500 for a request the app leaves unanswered)
                raise bad("the request body is incomplete: the client closed before its end (Content-Length "
                          "or last chunk)")
            b = msg.get("body", b"")
            size += len(b)
            if size > limit:
                too_big = True
            if not too_big:
                chunks.append(b)
            if not msg.get("more_body", False):
                break
            if size > 4 * limit + (64 << 20):
                break  # stop draining an endless body
        if too_big:
            raise ApiError(413, f"request body larger than {limit} bytes", code="request_too_large")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _json_body(self, ex: Exchange) -> Any:
        body = await self._read_body(ex)
        if not body:
            raise bad("the request body is empty; expected a JSON object")
        try:
            obj = _loads(body)
        except orjson.JSONDecodeError as e:
            raise bad(f"invalid JSON body: {e}") from None
        if self._session_user and isinstance(obj, dict):
            user = obj.get("user")
            if isinstance(user, str) and user:
                ex.session = "u:" + user
        return obj

    async def _send_json(self, ex: Exchange, obj: Any, status: int = 200, worker: Worker | None = None) -> int:
        ex.started = True
        if worker is not None:
            start = self._json_starts.get(worker.url)
            if start is None:
                start = self._json_starts[worker.url] = {
                    "type": "http.response.start", "status": 200,
                    "headers": [_H_JSON, (b"x-radixrouter-worker", worker.url.encode())],
                }
            if status != 200:
                start = dict(start, status=status)
        elif status == 200:
            start = _START_JSON_200
        else:
            start = {"type": "http.response.start", "status": status, "headers": [_H_JSON]}
        await ex.respond(start, obj if isinstance(obj, bytes) else _dumps(obj))
        return status

    async def _start_sse(self, ex: Exchange, worker: Worker) -> None:
        start = self._sse_starts.get(worker.url)
        if start is None:
            start = self._sse_starts[worker.url] = {
                "type": "http.response.start", "status": 200,
                "headers": [*_SSE_HEADERS, (b"x-radixrouter-worker", worker.url.encode())],
            }
        ex.started = True
        await ex.send(start)

    def _watch(self, ex: Exchange) -> DisconnectWatch:
        """Cancel the current request when the client disconnects (``.cancel()`` the watch when done)."""
        return DisconnectWatch(ex, asyncio.current_task())

    # ------------------------------------------------------------------ the upstream call with retries
    async def _call(self, ex: Exchange, ctx: RouteContext, path: str, body: bytes, rid: str, consume, *,
                    pool: WorkerPool | None = None, prepare: Callable | None = None,
                    error: Callable | None = None) -> Any:
        """POST `body` to a worker chosen by the policy and hand the 200 response to `consume(worker, resp)`.

        Before anything reached the client, a transport error, timeout, 429 or 5xx (or an UpstreamFailure
        raised by `consume` with retryable=True) moves the request to another worker, at most
        `max_retries` times with jittered backoff. A worker's 4xx goes back to the client and never counts
        against the worker.

        A retry that goes back to a worker already tried is sent with the rid `<rid>.<attempt>`.

        Relayed models (radixrouter.relay) pass their own `pool`, `prepare(worker, rid) -> (url, body, headers)`
        (model name and key per upstream) and `error(status, body) -> ApiError`; `openai` upstreams get no
        /abort_request (closing the connection is the abort).
        """
        cfg = self.config
        if pool is None:
            pool = self.pool
        upstream = self.upstream
        assert upstream is not None
        tried: set[Worker] = set()
        last: ApiError | None = None
        base_rid = rid
        if ctx.session is None:
            ctx.session = self._session(ex)
        for attempt in range(cfg.max_retries + 1):
            w = pool.pick(ctx, tried)
            if w is None and attempt:
                w = pool.pick(ctx)  # every worker was tried: try again after the backoff
            if w is None:
                break
            if attempt:
                self.metrics.retry("worker_failure")
                await asyncio.sleep(random.uniform(0, cfg.retry_backoff * (1 << (attempt - 1))))
            if w in tried and w.kind != "openai":
                # back to a worker that had this rid: its abort may not have landed yet, and SGLang rejects
                # a rid it still holds ("Duplicate request ID"), so this attempt gets a rid of its own
                rid = f"{base_rid}.{attempt}"
                if prepare is None:
                    body = _with_rid(body, rid)
            tried.add(w)
            w.in_flight += 1
            w.total_requests += 1
            resp = None
            ok = False
            try:
                try:
                    if prepare is None:
                        resp = await upstream.post(w.url + path, body)
                    else:
                        url, wbody, wheaders = prepare(w, rid)
                        resp = await upstream.post(url, wbody, wheaders)
                    status = resp.status
                    if status != 200:
                        data = await resp.read()
                except TRANSPORT_ERRORS as e:
                    pool.request_failed(w)
                    last = transport_error(f"worker {w.url}", "failed", e)
                    continue
                if status != 200:
                    err = _worker_error(status, data, w.url) if error is None else error(status, data)
                    if status == 429 or status >= 500:
                        if status >= 500:
                            pool.request_failed(w)
                        last = err
                        continue
                    raise err  # the client's fault: returned as is, the worker stays healthy
                try:
                    result = await consume(w, resp)
                except UpstreamFailure as f:
                    pool.request_failed(w)
                    if w.kind != "openai":
                        upstream.abort(w.url, rid)
                    if not f.retryable:
                        raise f.error from None
                    last = f.error
                    continue
                ok = True
                pool.request_ok(w)
                return result
            except asyncio.CancelledError:
                # the client left (or a sibling choice failed): stop the work on the worker at once
                if w.kind != "openai":
                    upstream.abort(w.url, rid)
                self.metrics.abort()
                raise
            finally:
                w.in_flight -= 1
                pool.request_done(w)
                if resp is not None:
                    if ok:
                        resp.release()
                    else:
                        resp.close()
        if last is None:
            last = ApiError(503, "no worker available", code="no_worker")
        raise last

    async def _read_json(self, w: Worker, resp) -> Any:
        try:
            data = await resp.read()
        except TRANSPORT_ERRORS as e:
            raise UpstreamFailure(transport_error(f"worker {w.url}", "failed", e), True) from None
        try:
            return _loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamFailure(ApiError(502, f"worker {w.url} sent invalid JSON", code="upstream_error"), True) from None

    async def _next_chunk(self, ex: Exchange, w: Worker, content, deadline: float, sse: bool) -> bytes:
        """The worker's next bytes; while waiting for the first token, keep-alive frames (which start the
        response) go out every `keepalive_interval`, and the first-token deadline applies. radixrouter's own
        client waits with a timer (`wait_readable`); another client's read runs in a Task."""
        loop = asyncio.get_running_loop()
        timed = getattr(content, "wait_readable", None)
        task = None if timed is not None else loop.create_task(content.readany())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise UpstreamFailure(
                        ApiError(504, f"worker {w.url} sent no token within {self.config.first_token_timeout} s",
                                 code="upstream_timeout"), True)
                wait = min(self.config.keepalive_interval, remaining)
                if timed is not None:
                    if await timed(wait):
                        return await content.readany()
                else:
                    done, _ = await asyncio.wait((task,), timeout=wait)
                    if done:
                        return task.result()
                if sse and loop.time() < deadline:
                    if not ex.started:
                        await self._start_sse(ex, w)
                    await ex.send(_body(_KEEPALIVE, True))
        finally:
            if task is not None and not task.done():
                task.cancel()

    async def _events(self, ex: Exchange, w: Worker, content, dec, first: bool, deadline: float, retryable: bool,
                      keepalive: bool = True, ch: Choice | None = None):
        """Decode the next batch of worker events: (list of parsed events, done flag). Before the first
        token the first-token deadline applies (and keep-alive frames go out if `keepalive`).

        Once `ch` is known to be a cumulative stream, each event's `output_ids` (the whole output so far,
        so parsing them every event costs O(n^2) over a long generation) are cut out before parsing; the
        last event is kept raw and `Choice.restore_ids()` parses its ids once at the end."""
        try:
            chunk = await (self._next_chunk(ex, w, content, deadline, keepalive) if first else content.readany())
        except TRANSPORT_ERRORS as e:
            raise UpstreamFailure(
                transport_error(f"worker {w.url}", "connection failed", e),
                retryable) from None
        if not chunk:
            raise UpstreamFailure(
                ApiError(502, f"worker {w.url} ended the stream early", code="upstream_error"), retryable)
        out = []
        done = False
        skip_ids = ch is not None and ch.mode == "cumulative"
        try:
            datas = dec.feed_data(chunk)  # SGLang names no events; data as UTF-8 bytes (orjson reads them)
        except SseDecodeError as e:
            raise UpstreamFailure(
                ApiError(502, f"worker {w.url} sent an invalid event stream: {e}", code="upstream_error"),
                retryable) from None
        for data in datas:
            if data == b"[DONE]":
                done = True
                break
            if not data:
                continue
            if skip_ids:
                # `"output_ids":[` with unescaped quotes can only be the key (quotes inside JSON strings are
                # escaped); the ids are integers, so the first `]` closes the array
                i = data.find(b'"output_ids":[')
                if i >= 0:
                    j = data.find(b"]", i)
                    if j > 0:
                        ch.raw = data
                        data = data[: i + 14] + data[j:]
            try:
                obj = _loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamFailure(
                    ApiError(502, f"worker {w.url} sent an invalid event", code="upstream_error"), retryable) from None
            if isinstance(obj, dict) and "error" in obj:
                err = obj["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamFailure(ApiError(502, f"worker error: {msg}", code="upstream_error"), retryable)
            out.append(obj)
        return out, done

    # ------------------------------------------------------------------ prompts and cache
    def _gen_body(self, prompt_ids: list[int] | orjson.Fragment | None, text: str | None, sampling: dict,
                  stream: bool, rid: str, logprobs: bool = False, top: int = 0) -> bytes:
        body: dict[str, Any] = {"sampling_params": sampling, "stream": stream, "rid": rid}
        if prompt_ids is not None:
            body["input_ids"] = prompt_ids
        else:
            body["text"] = text
        if logprobs:
            body["return_logprob"] = True
            body["return_text_in_logprobs"] = True
            if top:
                body["top_logprobs_num"] = top
        return _dumps(body)

    def _prepare(self, text: str):
        """(prompt object or None, input ids or None) for a prompt text."""
        if self.builder is None:
            return None, None
        prompt = self.builder.tokenize(text)
        return prompt, prompt.ids

    def _prepare_json(self, text: str):
        """(prompt object or None, input ids as an orjson.Fragment or None): the JSON array of the ids
        goes into the request body as is, without a Python list of them (most come from the cache)."""
        if self.builder is None:
            return None, None
        prompt = self.builder.tokenize(text)
        return prompt, orjson.Fragment(prompt.ids_json())

    def _pin(self, text: str | None):
        """Pin the cached path of a running request's prompt (never evicted until released)."""
        cache = self.cache
        if cache is None or not text:
            return None
        try:
            return cache.pin(text)
        except Exception:  # noqa: BLE001 - the cache is an optimization
            log.exception("pinning a prompt in the prefix cache failed")
            return None

    def _record(self, prompt: Any, text: str, ch: Choice, worker: Worker, logprobs: bool = False) -> None:
        if ch.finish not in ("stop", "length") or worker.removed or not worker.healthy:
            return  # (a removed or unhealthy worker's affinity was dropped: do not bring it back)
        try:
            if self.builder is not None and prompt is not None:
                lps = [e[0] for e in ch.lps] if logprobs and ch.lps else None
                self.builder.record(prompt, ch.text, ch.ids, output_logprobs=lps,
                                    finish_reason=ch.meta.get("finish_reason"), worker=worker.url)
            elif self.cache is not None and text:
                self.cache.insert(text + ch.text, [], [], worker=worker.url)
        except Exception:  # noqa: BLE001 - the cache is an optimization; never fail a finished request
            log.exception("recording a finished request in the prefix cache failed")

    async def _answer(self, ex: Exchange, route: str, obj: dict, usage: tuple[int, int, int],
                      served: dict[int, Worker], records: list, logprobs: bool) -> int:
        """A whole (non-streamed) answer: metrics, the JSON response, then each (prompt, text, choice) in
        the prefix cache, after the answer went out (the client does not wait for the cache)."""
        self._observe(route, ex, None, None, 0, usage)
        try:
            return await self._send_json(ex, obj, worker=served.get(0))
        finally:
            for prompt, text, ch in records:
                self._record(prompt, text, ch, served[ch.index], logprobs)

    def _observe(self, route: str, ex: Exchange, t_first: float | None, t_last: float | None, chunks: int,
                 usage: tuple[int, int, int]) -> None:
        m = self.metrics
        e2e, ttft, itl = m.route_histograms(route)
        e2e.observe(time.perf_counter() - ex.t0)
        if t_first is not None:
            ttft.observe(t_first - ex.t0)
            if chunks > 1 and t_last is not None:
                itl.observe((t_last - t_first) / (chunks - 1))
        m.usage(*usage)

    # ------------------------------------------------------------------ /v1/chat/completions
    async def chat_completions(self, ex: Exchange) -> int:
        req = await self._json_body(ex)
        relayed = self.relay.route(req, self.model_name, self._native_served())
        if relayed is not None:
            return await self.relay.handle(ex, req, relayed, "chat")
        creq = parse_chat(req, self.model_name)
        if self.tokenizer is None or not self.tokenizer.has_chat_template:
            return await self._relay_chat(ex, req, creq)  # the worker applies its own template
        if creq.tool_choice.mode in ("required", "function") and self.output_processor_factory is None:
            raise bad("'tool_choice' 'required' or a named function needs a tool-call parser on the router "
                      "(radixrouter serve --tool-call-parser ...)", "tool_choice")
        try:
            text = self.tokenizer.render(creq.messages, tools=creq.tools, add_generation_prompt=True,
                                         **creq.template_kwargs)
        except ValueError as e:
            raise bad(f"the chat template failed on these messages: {e}", "messages") from None
        prompt, ids = self._prepare_json(text)
        p = creq.params
        ctx = _route_ctx(text, prompt)
        cid = "chatcmpl-" + new_id()
        created = int(time.time())
        watcher = self._watch(ex)
        pin = self._pin(text)
        try:
            if p.stream:
                return await self._chat_stream(ex, creq, text, prompt, ids, ctx, cid, created)
            return await self._chat_full(ex, creq, text, prompt, ids, ctx, cid, created)
        finally:
            watcher.cancel()
            if pin is not None:
                pin.release()

    async def _relay_chat(self, ex: Exchange, req: dict, creq: ChatRequest) -> int:
        """Text mode (no tokenizer): the worker's own OpenAI endpoint templates and tokenizes; the router
        relays (validated request, strict re-encoding of the stream) and keeps worker affinity by text."""
        rid = new_id()
        req["rid"] = rid
        body = dumps_request(req)
        key = "\n".join(m["content"] if isinstance(m.get("content"), str) else "" for m in creq.messages)
        ctx = RouteContext(text=key)
        loop = asyncio.get_running_loop()
        stream = creq.params.stream
        stats = [None, None, 0, (0, 0, 0)]  # first, last, chunks, usage

        async def consume(w: Worker, resp):
            if not stream:
                try:
                    data = await resp.read()
                except TRANSPORT_ERRORS as e:
                    raise UpstreamFailure(transport_error(f"worker {w.url}", "failed", e),
                                          True) from None
                return w, data
            dec = SseDecoder()
            content = resp.content
            deadline = loop.time() + self.config.first_token_timeout
            emitted = False
            while True:
                try:
                    chunk = await (content.readany() if emitted else self._next_chunk(ex, w, content, deadline, True))
                except TRANSPORT_ERRORS as e:
                    raise UpstreamFailure(transport_error(f"worker {w.url}", "connection failed", e), not emitted) from None
                if not chunk:
                    raise UpstreamFailure(ApiError(502, f"worker {w.url} ended the stream early",
                                                   code="upstream_error"), not emitted)
                out, done, err = reframe(dec.feed(chunk), stats, "worker")
                if out:
                    if not ex.started:
                        await self._start_sse(ex, w)
                    emitted = True
                    mark_frame(stats)
                if err is not None:
                    if out:
                        await ex.send(_body(b"".join(out), True))
                    raise UpstreamFailure(err, not emitted)
                if done:
                    out.append(_DONE)
                    if not ex.started:
                        await self._start_sse(ex, w)
                    await ex.send(_body(b"".join(out), False))
                    return w, None
                if out:
                    await ex.send(_body(b"".join(out), True))

        watcher = self._watch(ex)
        try:
            w, data = await self._call(ex, ctx, "/v1/chat/completions", body, rid, consume)
        finally:
            watcher.cancel()
        if self.cache is not None and key and w.healthy and not w.removed:
            try:
                self.cache.insert(key, [], [], worker=w.url)
            except Exception:  # noqa: BLE001
                log.exception("recording worker affinity failed")
        if stream:
            self._observe("chat", ex, stats[0], stats[1], stats[2], stats[3])
            return 200
        usage = (0, 0, 0)
        try:
            u = _loads(data).get("usage") or {}
            details = u.get("prompt_tokens_details") or {}
            usage = (u.get("prompt_tokens") or 0, details.get("cached_tokens") or 0, u.get("completion_tokens") or 0)
        except (orjson.JSONDecodeError, AttributeError):
            pass
        self._observe("chat", ex, None, None, 0, usage)
        return await self._send_json(ex, data, worker=w)

    def _make_proc(self, creq: ChatRequest, text: str):
        f = self.output_processor_factory
        return f(creq, text) if f is not None else None

    def _sub_requests(self, p, ids, text, stream: bool, rid: str) -> list[tuple[str, bytes]]:
        out = []
        for i in range(p.n):
            sp = p.sampling
            if p.seed is not None:
                sp = dict(sp, sampling_seed=p.seed + i)
            r = rid if p.n == 1 else f"{rid}-{i}"
            out.append((r, self._gen_body(ids, text, sp, stream, r, p.logprobs, p.top_logprobs)))
        return out

    async def _gather(self, coros) -> list:
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _chat_full(self, ex, creq, text, prompt, ids, ctx, cid, created) -> int:
        p = creq.params
        rid = new_id()
        subs = self._sub_requests(p, ids, None if ids is not None else text, False, rid)
        served: dict[int, Worker] = {}

        async def one(i: int, r: str, body: bytes) -> Choice:
            async def consume(w: Worker, resp) -> Choice:
                obj = await self._read_json(w, resp)
                if isinstance(obj, list):
                    obj = obj[0] if obj else {}
                ch = Choice(i, "cumulative")
                ch.update(obj)
                served[i] = w
                if ch.finish == "abort":
                    raise abort_error(ch.abort)
                return ch

            return await self._call(ex, ctx, "/generate", body, r, consume)

        if len(subs) == 1:
            choices = [await one(0, *subs[0])]
        else:
            choices = await self._gather(one(i, r, b) for i, (r, b) in enumerate(subs))
        out_choices = []
        prompt_tokens = cached = completion = 0
        for ch in choices:
            meta = ch.meta
            prompt_tokens = meta.get("prompt_tokens", 0) or prompt_tokens
            cached = max(cached, meta.get("cached_tokens", 0) or 0)
            completion += meta.get("completion_tokens", 0) or 0
            message: dict[str, Any] = {"role": "assistant", "content": ch.text}
            fr = ch.finish or "stop"
            proc = self._make_proc(creq, text)
            if proc is not None:
                message["content"] = None
                _merge_deltas(proc.feed(ch.text) + proc.finish(), message)
                fr = getattr(proc, "finish_reason", None) or fr
                if message.get("content") is None and not message.get("tool_calls"):
                    message["content"] = ""
            lp = None
            if p.logprobs:
                lp = {"content": chat_logprobs(ch.logprob_meta(), 0, p.top_logprobs), "refusal": None}
            out_choices.append({"index": ch.index, "message": message, "logprobs": lp, "finish_reason": fr})
        return await self._answer(ex, "chat", {
            "id": cid, "object": "chat.completion", "created": created, "model": p.model,
            "choices": out_choices, "usage": usage_obj(prompt_tokens, completion, cached),
        }, (prompt_tokens, cached, completion), served, [(prompt, text, ch) for ch in choices], p.logprobs)

    async def _chat_stream(self, ex, creq, text, prompt, ids, ctx, cid, created) -> int:
        p = creq.params
        if p.n > 1:
            return await self._stream_fanout(ex, p, text, prompt, ids, ctx, cid, created, creq)
        rid = new_id()
        body = self._gen_body(ids, None if ids is not None else text, p.sampling if p.seed is None else
                              dict(p.sampling, sampling_seed=p.seed), True, rid, p.logprobs, p.top_logprobs)
        frames = ChatFrames(cid, created, p.model, p.include_usage)
        send = ex.send
        loop = asyncio.get_running_loop()
        stats = [None, None, 0]  # first, last, chunks

        async def consume(w: Worker, resp) -> Choice:
            ch = Choice(0, self._fixed_mode or w.stream_mode)
            ch.proc = self._make_proc(creq, text)
            dec = SseDecoder()
            content = resp.content
            deadline = loop.time() + self.config.first_token_timeout
            while True:
                evs, done = await self._events(ex, w, content, dec, not ch.emitted, deadline, not ch.emitted, ch=ch)
                out = []
                for obj in evs:
                    delta = ch.update(obj)
                    if not ch.emitted:
                        if ch.finish == "abort":
                            raise abort_error(ch.abort)
                        out.append(frames.frame(0, _ROLE_DELTA))
                        ch.emitted = True
                    if ch.proc is not None:
                        if delta:
                            for d in ch.proc.feed(delta):
                                out.append(frames.frame(0, _dumps(d)))
                    elif p.logprobs:
                        if delta or len(ch.lps) > ch.lp_sent:
                            lp = _dumps({"content": chat_logprobs(ch.logprob_meta(), ch.lp_sent, p.top_logprobs)})
                            ch.lp_sent = len(ch.lps)
                            out.append(frames.frame(0, b'{"content":%s}' % _dumps(delta), _NULL, lp))
                    elif delta:
                        out.append(frames.content(delta))
                    if ch.finish is not None:
                        done = True
                        break
                if done:
                    if ch.finish is None:
                        raise UpstreamFailure(ApiError(
                            502, f"worker {w.url} ended the stream without a finish reason",
                            code="upstream_error"), not ch.emitted)
                    if ch.finish == "abort":
                        if out:
                            if not ex.started:
                                await self._start_sse(ex, w)
                            await send(_body(b"".join(out), True))
                        raise abort_error(ch.abort)
                    fr = ch.finish
                    if ch.proc is not None:
                        for d in ch.proc.finish():
                            out.append(frames.frame(0, _dumps(d)))
                        fr = getattr(ch.proc, "finish_reason", None) or fr
                    out.append(frames.frame(0, _EMPTY_DELTA, _FINISH.get(fr, b'"stop"')))
                    meta = ch.meta
                    pt, ct = meta.get("prompt_tokens", 0) or 0, meta.get("completion_tokens", 0) or 0
                    cached = meta.get("cached_tokens", 0) or 0
                    if p.include_usage:
                        out.append(frames.usage(usage_obj(pt, ct, cached)))
                    out.append(_DONE)
                    if not ex.started:
                        await self._start_sse(ex, w)
                    mark_frame(stats)
                    await send(_body(b"".join(out), False))
                    if ch.mode and w.stream_mode is None:
                        w.stream_mode = ch.mode
                    ch.restore_ids()
                    self._record(prompt, text, ch, w, p.logprobs)
                    self._observe("chat", ex, stats[0], stats[1], stats[2], (pt, cached, ct))
                    return ch
                if out:
                    if not ex.started:
                        await self._start_sse(ex, w)
                    mark_frame(stats)
                    await send(_body(b"".join(out), True))

        await self._call(ex, ctx, "/generate", body, rid, consume)
        return 200

    # ------------------------------------------------------------------ n > 1 streams (chat and completions)
    async def _stream_fanout(self, ex, p, text, prompt, ids, ctx, cid, created, creq=None,
                             prompts: list | None = None, echo_texts: list | None = None) -> int:
        """Several generations streamed as one response: choice `index` for each; each sub-request retries
        on its own until it has produced output."""
        chat = creq is not None
        frames = ChatFrames(cid, created, p.model, p.include_usage) if chat else CompletionFrames(
            cid, created, p.model, p.include_usage)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        rid = new_id()
        # (index, prompt object, prompt text, ids, route ctx)
        jobs = []
        if prompts is None:
            prompts = [(prompt, text, ids, ctx)]
        k = 0
        for pr, ptext, pids, pctx in prompts:
            for j in range(p.n):
                sp = p.sampling if p.seed is None else dict(p.sampling, sampling_seed=p.seed + j)
                r = f"{rid}-{k}"
                body = self._gen_body(pids, None if pids is not None else ptext, sp, True, r, p.logprobs,
                                      p.top_logprobs)
                jobs.append((k, r, body, pr, ptext, pctx))
                k += 1

        async def run(index: int, r: str, body: bytes, pctx: RouteContext) -> None:
            async def consume(w: Worker, resp) -> None:
                ch = Choice(index, self._fixed_mode or w.stream_mode)
                dec = SseDecoder()
                deadline = loop.time() + self.config.first_token_timeout
                content = resp.content
                while True:
                    evs, done = await self._events(ex, w, content, dec, not ch.emitted, deadline, not ch.emitted,
                                                   keepalive=False, ch=ch)  # the merging loop sends keep-alives
                    for obj in evs:
                        delta = ch.update(obj)
                        if not ch.emitted and ch.finish == "abort":
                            raise abort_error(ch.abort)
                        ch.emitted = True
                        # finish and logprob count as of this event: later events may already be applied
                        # to `ch` when the merging loop gets to this one
                        queue.put_nowait((ch, delta, w, ch.finish, len(ch.lps)))
                        if ch.finish is not None:
                            done = True
                            break
                    if done:
                        if ch.finish is None or ch.finish == "abort":
                            if ch.finish == "abort":
                                raise abort_error(ch.abort)
                            raise UpstreamFailure(ApiError(
                                502, f"worker {w.url} ended the stream without a finish reason",
                                code="upstream_error"), not ch.emitted)
                        if ch.mode and w.stream_mode is None:
                            w.stream_mode = ch.mode
                        ch.restore_ids()
                        return

            await self._call(ex, pctx, "/generate", body, r, consume)

        tasks = {}
        for index, r, body, _pr, _pt, pctx in jobs:
            t = loop.create_task(run(index, r, body, pctx))
            t.add_done_callback(lambda t, i=index: queue.put_nowait((i, t)))
            tasks[index] = t
        pending = set(tasks)
        choices: dict[int, Choice] = {}
        worker_of: dict[int, Worker] = {}
        procs: dict[int, Any] = {}
        t_first = t_last = None
        chunks = 0
        try:
            while pending:
                if not ex.started:
                    try:
                        item = await asyncio.wait_for(queue.get(), self.config.keepalive_interval)
                    except asyncio.TimeoutError:
                        await self._start_sse_any(ex)
                        await ex.send(_body(_KEEPALIVE, True))
                        continue
                else:
                    item = await queue.get()
                out = []
                items = [item]
                while not queue.empty():
                    items.append(queue.get_nowait())
                for it in items:
                    if isinstance(it[0], int):  # a task finished
                        index, t = it
                        pending.discard(index)
                        exc = t.exception() if not t.cancelled() else None
                        if exc is not None:
                            if out:
                                await self._emit(ex, out, True, worker_of)
                            raise exc
                        continue
                    ch, delta, w, fin, nlp = it
                    i = ch.index
                    if i not in choices:
                        choices[i] = ch
                        worker_of[i] = w
                        if chat:
                            out.append(frames.frame(i, _ROLE_DELTA))
                            procs[i] = self._make_proc(creq, text)
                        elif echo_texts is not None:
                            out.append(frames.frame(i, echo_texts[i // p.n]))
                    proc = procs.get(i)
                    lp = _NULL
                    if p.logprobs and nlp > ch.lp_sent:
                        if chat:
                            lp = _dumps({"content": chat_logprobs(ch.logprob_meta(), ch.lp_sent, p.top_logprobs,
                                                                  nlp)})
                        else:
                            lp = _dumps(completion_logprobs(ch.logprob_meta(), ch.lp_sent, p.top_logprobs, 0, nlp))
                        ch.lp_sent = nlp
                    if chat:
                        if proc is not None:
                            for d in proc.feed(delta) if delta else ():
                                out.append(frames.frame(i, _dumps(d)))
                        elif delta or lp is not _NULL:
                            out.append(frames.frame(i, b'{"content":%s}' % _dumps(delta), _NULL, lp))
                    elif delta or lp is not _NULL:
                        out.append(frames.frame(i, delta, _NULL, lp))
                    if fin is not None:
                        fr = fin
                        if chat:
                            if proc is not None:
                                for d in proc.finish():
                                    out.append(frames.frame(i, _dumps(d)))
                                fr = getattr(proc, "finish_reason", None) or fr
                            out.append(frames.frame(i, _EMPTY_DELTA, _FINISH.get(fr, b'"stop"')))
                        else:
                            out.append(frames.frame(i, "", _FINISH.get(fr, b'"stop"')))
                if out:
                    now = time.perf_counter()
                    if t_first is None:
                        t_first = now
                    t_last = now
                    chunks += 1
                    await self._emit(ex, out, True, worker_of)
        except BaseException:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        pt = cached = ct = 0
        for i, ch in choices.items():
            meta = ch.meta
            pt = pt + (meta.get("prompt_tokens", 0) or 0) if (i % p.n == 0) else pt
            cached = cached + (meta.get("cached_tokens", 0) or 0) if (i % p.n == 0) else cached
            ct += meta.get("completion_tokens", 0) or 0
            _k, _r, _b, pr, ptext, _c = jobs[i]
            self._record(pr, ptext, ch, worker_of[i], p.logprobs)
        out = []
        if p.include_usage:
            out.append(frames.usage(usage_obj(pt, ct, cached)))
        out.append(_DONE)
        await self._emit(ex, out, False, worker_of)
        self._observe("chat" if chat else "completions", ex, t_first, t_last, chunks, (pt, cached, ct))
        return 200

    async def _start_sse_any(self, ex: Exchange) -> None:
        if not ex.started:
            ex.started = True
            await ex.send({"type": "http.response.start", "status": 200, "headers": list(_SSE_HEADERS)})

    async def _emit(self, ex: Exchange, out: list[bytes], more: bool, worker_of: dict) -> None:
        if not ex.started:
            w = worker_of.get(0) or next(iter(worker_of.values()), None)
            if w is not None:
                await self._start_sse(ex, w)
            else:
                await self._start_sse_any(ex)
        await ex.send(_body(b"".join(out), more))

    # ------------------------------------------------------------------ /v1/completions
    async def completions(self, ex: Exchange) -> int:
        req = await self._json_body(ex)
        relayed = self.relay.route(req, self.model_name, self._native_served())
        if relayed is not None:
            return await self.relay.handle(ex, req, relayed, "completions")
        creq = parse_completion(req, self.model_name)
        p = creq.params
        prompts = []  # (prompt object, text, ids, ctx)
        echo_texts = []
        for pr in creq.prompts:
            if isinstance(pr, str):
                prompt, ids = self._prepare(pr)
                prompts.append((prompt, pr, ids, _route_ctx(pr, prompt)))
                echo_texts.append(pr)
            else:
                ptext = ""
                if self.tokenizer is not None:
                    ptext = self.tokenizer.decode(pr, skip_special_tokens=False)
                elif creq.echo:
                    raise bad("'echo' with token-id prompts needs a tokenizer (--model-path)", "echo")
                prompts.append((None, ptext, list(pr), RouteContext(text=ptext)))
                echo_texts.append(ptext)
        cid = "cmpl-" + new_id()
        created = int(time.time())
        watcher = self._watch(ex)
        pins = [self._pin(t) for t in echo_texts] if self.cache is not None else []
        try:
            if p.stream:
                return await self._stream_fanout(ex, p, None, None, None, None, cid, created, None, prompts,
                                                 echo_texts if creq.echo else None)
            return await self._completion_full(ex, creq, prompts, echo_texts, cid, created)
        finally:
            watcher.cancel()
            for pin in pins:
                if pin is not None:
                    pin.release()

    async def _completion_full(self, ex, creq, prompts, echo_texts, cid, created) -> int:
        p = creq.params
        rid = new_id()
        served: dict[int, Worker] = {}
        jobs = []
        k = 0
        for pi, (_prompt, ptext, ids, ctx) in enumerate(prompts):
            for j in range(p.n):
                sp = p.sampling if p.seed is None else dict(p.sampling, sampling_seed=p.seed + j)
                r = rid if len(prompts) * p.n == 1 else f"{rid}-{k}"
                body = self._gen_body(ids, None if ids is not None else ptext, sp, False, r, p.logprobs, p.top_logprobs)
                jobs.append((k, pi, r, body, ctx))
                k += 1

        async def one(index: int, r: str, body: bytes, ctx: RouteContext) -> Choice:
            async def consume(w: Worker, resp) -> Choice:
                obj = await self._read_json(w, resp)
                if isinstance(obj, list):
                    obj = obj[0] if obj else {}
                ch = Choice(index, "cumulative")
                ch.update(obj)
                if ch.finish == "abort":
                    raise abort_error(ch.abort)
                served[index] = w
                return ch

            return await self._call(ex, ctx, "/generate", body, r, consume)

        if len(jobs) == 1:
            k0, _pi, r, body, ctx = jobs[0]
            choices = [await one(k0, r, body, ctx)]
        else:
            choices = await self._gather(one(k, r, b, c) for k, _pi, r, b, c in jobs)
        out = []
        pt = cached = ct = 0
        for ch, (_k, pi, _r, _b, _c) in zip(choices, jobs, strict=True):
            meta = ch.meta
            if ch.index % p.n == 0:
                pt += meta.get("prompt_tokens", 0) or 0
                cached += meta.get("cached_tokens", 0) or 0
            ct += meta.get("completion_tokens", 0) or 0
            echo = echo_texts[pi] if creq.echo else ""
            lp = None
            if p.logprobs:
                lp = completion_logprobs(ch.logprob_meta(), 0, p.top_logprobs, len(echo))
            out.append({"text": echo + ch.text, "index": ch.index, "logprobs": lp, "finish_reason": ch.finish or "stop"})
        return await self._answer(ex, "completions", {
            "id": cid, "object": "text_completion", "created": created, "model": p.model,
            "choices": out, "usage": usage_obj(pt, ct, cached),
        }, (pt, cached, ct), served, [(prompts[pi][0], prompts[pi][1], ch) for ch, (_k, pi, _r, _b, _c)
                                      in zip(choices, jobs, strict=True)], p.logprobs)

    # ------------------------------------------------------------------ /generate (SGLang passthrough)
    async def generate(self, ex: Exchange) -> int:
        req = await self._json_body(ex)
        if not isinstance(req, dict):
            raise bad("the request body must be a JSON object")
        text = req.get("text")
        has_ids = req.get("input_ids") is not None
        if (text is None) == (not has_ids):
            raise bad("exactly one of 'text' and 'input_ids' is required", "text")
        if text is not None and not isinstance(text, str):
            if isinstance(text, list):
                raise bad("batched 'text' is not supported by the router; send one request per prompt", "text")
            raise bad("'text' must be a string", "text")
        if has_ids:
            ids = req["input_ids"]
            # the worker validates each id; the router only needs a flat, non-empty list
            if not isinstance(ids, list) or not ids or isinstance(ids[0], list):
                raise bad("'input_ids' must be a non-empty list of token ids (batches are not supported)", "input_ids")
        sp = req.get("sampling_params")
        if sp is not None and not isinstance(sp, dict):
            raise bad("'sampling_params' must be an object", "sampling_params")
        stream = req.get("stream", False)
        if not isinstance(stream, bool):
            raise bad("'stream' must be a boolean", "stream")
        rid = req.get("rid")
        if rid is None:
            rid = req["rid"] = new_id()
        elif not isinstance(rid, str):
            raise bad("'rid' must be a string (batches are not supported)", "rid")
        prompt = None
        if text is not None and self.builder is not None:
            prompt = self.builder.tokenize(text)
            del req["text"]
            req["input_ids"] = prompt.ids
        body = dumps_request(req)
        ctx = _route_ctx(text or "", prompt)
        want_lp = bool(req.get("return_logprob"))
        watcher = self._watch(ex)
        pin = self._pin(text)
        try:
            if stream:
                return await self._generate_stream(ex, ctx, body, rid, prompt, text, want_lp)
            return await self._generate_full(ex, ctx, body, rid, prompt, text, want_lp)
        finally:
            watcher.cancel()
            if pin is not None:
                pin.release()

    async def _generate_full(self, ex, ctx, body, rid, prompt, text, want_lp) -> int:
        async def consume(w: Worker, resp):
            try:
                data = await resp.read()
            except TRANSPORT_ERRORS as e:
                raise UpstreamFailure(transport_error(f"worker {w.url}", "failed", e), True) from None
            return w, data

        w, data = await self._call(ex, ctx, "/generate", body, rid, consume)
        usage = (0, 0, 0)
        try:
            obj = _loads(data)
            if isinstance(obj, dict):
                ch = Choice(0, "cumulative")
                ch.update(obj)
                m = ch.meta
                usage = (m.get("prompt_tokens", 0) or 0, m.get("cached_tokens", 0) or 0, m.get("completion_tokens", 0) or 0)
                if text is not None:
                    self._record(prompt, text, ch, w, want_lp)
        except orjson.JSONDecodeError:
            pass
        self._observe("generate", ex, None, None, 0, usage)
        return await self._send_json(ex, data, worker=w)

    async def _generate_stream(self, ex, ctx, body, rid, prompt, text, want_lp) -> int:
        """Relay the worker's SSE bytes unchanged, decoding alongside to record the result."""
        send = ex.send
        loop = asyncio.get_running_loop()
        stats = [None, None, 0]

        async def consume(w: Worker, resp):
            content = resp.content
            dec = SseDecoder()
            ch = Choice(0, self._fixed_mode or w.stream_mode)
            deadline = loop.time() + self.config.first_token_timeout
            emitted = False
            last = None
            while True:
                try:
                    chunk = await (self._next_chunk(ex, w, content, deadline, True) if not emitted else content.readany())
                except TRANSPORT_ERRORS as e:
                    raise UpstreamFailure(transport_error(f"worker {w.url}", "connection failed", e), not emitted) from None
                if not chunk:
                    if last is None:
                        raise UpstreamFailure(ApiError(502, f"worker {w.url} ended the stream early",
                                                       code="upstream_error"), not emitted)
                    break
                done = False
                for ev in dec.feed(chunk):
                    if ev.data == "[DONE]":
                        done = True
                    elif ev.data:
                        last = ev.data
                        if ch.mode != "cumulative":
                            try:
                                ch.update(_loads(ev.data))
                            except (orjson.JSONDecodeError, AttributeError):
                                pass
                if not ex.started:
                    await self._start_sse(ex, w)
                emitted = True
                mark_frame(stats)
                await send(_body(chunk, True))
                if done:
                    break
            await send(_body(b"", False))
            if last is not None and ch.mode == "cumulative":
                try:
                    ch.update(_loads(last))
                except (orjson.JSONDecodeError, AttributeError):
                    pass
            m = ch.meta
            if text is not None:
                self._record(prompt, text, ch, w, want_lp)
            self._observe("generate", ex, stats[0], stats[1], stats[2],
                          (m.get("prompt_tokens", 0) or 0, m.get("cached_tokens", 0) or 0,
                           m.get("completion_tokens", 0) or 0))
            return None

        await self._call(ex, ctx, "/generate", body, rid, consume)
        return 200

    # ------------------------------------------------------------------ slime API, admin, health
    async def retrieve_from_text(self, ex: Exchange) -> int:
        req = await self._json_body(ex)
        if not isinstance(req, dict) or not isinstance(req.get("text"), str):
            raise bad("'text' (a string) is required", "text")
        text = req["text"]
        if self.tokenizer is None:
            raise ApiError(501, "/retrieve_from_text needs a tokenizer (--model-path)", code="not_implemented")
        ids: list[int] = []
        lps: list[float] = []
        mask: list[int] = []
        rest = text
        if self.cache is not None:
            m = self.cache.match(text)
            if m.length:
                ids = list(m.token_ids)
                lps = list(m.logprobs)
                mask = list(m.loss_mask)
                rest = text[m.length:]
        if rest:
            more = self.tokenizer.encode(rest)
            ids += more
            lps += [0.0] * len(more)
            mask += [0] * len(more)
        return await self._send_json(ex, {
            "tokens": ids, "response": text, "loss_mask": mask, "token_length": len(ids),
            "loss_mask_length": len(mask), "rollout_logp": lps,
        })

    async def _worker_url_arg(self, ex: Exchange) -> str:
        qs = ex.query_string
        if qs:
            q = parse_qs(qs.decode("latin-1"))
            for key in ("url", "worker_url"):
                if q.get(key):
                    return q[key][0]
        body = await self._read_body(ex)
        if body:
            try:
                obj = _loads(body)
            except orjson.JSONDecodeError:
                raise bad("invalid JSON body") from None
            if isinstance(obj, dict):
                for key in ("url", "worker_url"):
                    if isinstance(obj.get(key), str):
                        return obj[key]
        raise bad("the worker URL is required (?url=... or a JSON body {\"url\": ...})", "url")

    def _worker_counts(self) -> dict:
        return {w.url: w.in_flight for w in self.pool.list()}

    async def add_worker(self, ex: Exchange) -> int:
        url = await self._worker_url_arg(ex)
        try:
            w = self.pool.add(url)
        except WorkerError as e:
            raise bad(str(e), "url") from None
        if self.upstream is not None:
            await self._probe(w)
        return await self._send_json(ex, {"status": "success", "worker_urls": self._worker_counts()})

    async def remove_worker(self, ex: Exchange) -> int:
        url = await self._worker_url_arg(ex)
        try:
            w = self.pool.remove(url)
        except WorkerError as e:
            raise ApiError(404, str(e), param="url", code="worker_not_found") from None
        if self.cache is not None:
            self.cache.remove_worker(w.url)
        self._sse_starts.pop(w.url, None)
        self._json_starts.pop(w.url, None)
        return await self._send_json(ex, {"status": "success", "worker_urls": self._worker_counts()})

    async def list_workers(self, ex: Exchange) -> int:
        return await self._send_json(ex, {
            "urls": [w.url for w in self.pool.list()],
            "workers": [{"url": w.url, "healthy": w.healthy, "in_flight": w.in_flight, "breaker": w.breaker_state()}
                        for w in self.pool.list()],
        })

    def _native_served(self) -> bool:
        """Whether the native model (SGLang workers, `model_name`) is configured at all."""
        cfg = self.config
        return bool(self.pool.workers or cfg.model_path or cfg.tokenizer or cfg.served_model_name
                    or not (self.relay.models or self.relay.passthrough))

    async def models(self, ex: Exchange) -> int:
        ids = [self.model_name] if self._native_served() else []
        ids += [i for i in await self.relay.model_ids() if i not in ids]
        return await self._send_json(ex, {"object": "list", "data": [
            {"id": i, "object": "model", "created": 0, "owned_by": "radixrouter"} for i in ids]})

    async def health(self, ex: Exchange) -> int:
        return await self._send_json(ex, b'{"status":"ok"}')

    async def readiness(self, ex: Exchange) -> int:
        now = time.monotonic()
        healthy = 0 if self._draining else (sum(1 for w in self.pool.list() if self.pool.routable(w, now))
                                            + self.relay.routable(now))
        if healthy:
            return await self._send_json(ex, {"status": "ready", "healthy_workers": healthy})
        return await self._send_json(ex, {"status": "not ready", "healthy_workers": 0}, status=503)

    async def metrics_endpoint(self, ex: Exchange) -> int:
        ex.started = True
        await ex.respond(_START_METRICS, self.metrics.render())
        return 200


def load_tokenizer(config: Config):
    """The chat tokenizer from --model-path, or from --tokenizer (+ --chat-template)."""
    from radixrouter.tokenizer import ChatTokenizer

    if config.model_path:
        return ChatTokenizer.from_model_path(config.model_path)
    beside = os.path.join(os.path.dirname(os.path.abspath(config.tokenizer)), "tokenizer_config.json")
    return ChatTokenizer.from_files(config.tokenizer, config.chat_template,
                                    beside if os.path.isfile(beside) else None)


def create_app(config: Config | None = None) -> App:
    """The router's ASGI application for `config`."""
    return App(config or Config())
