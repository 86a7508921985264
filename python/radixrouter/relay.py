"""Relay of OpenAI requests to OpenAI-compatible upstreams (vLLM, SGLang's OpenAI server, OpenAI, one-api...).

The models come from :mod:`radixrouter.models_config`. Each relayed model has its own
:class:`~radixrouter.workers.WorkerPool` (one ``Worker`` per upstream, ``kind`` ``openai`` or ``sglang``)
and goes through the router's own upstream call (``App._call``): the same policy choice, retries before the
first byte (transport errors, timeouts, 429, 5xx; an upstream's 4xx goes back to the client and never
counts against it), health bookkeeping, first-token timeout with ``: keep-alive`` frames, and disconnect
handling (the upstream connection is closed, which is how an OpenAI-compatible server learns to stop;
``sglang`` upstreams also get ``POST /abort_request``).

Per request:
- the body is the client's JSON with ``model`` replaced by the upstream's name for it; every other field,
  known or not, goes through untouched (only the JSON bytes are re-serialized);
- headers are built from scratch: ``Content-Type``, ``Accept-Encoding: identity`` and the upstream's own
  ``Authorization: Bearer <key>`` from its key variable; the client's ``Authorization`` is never forwarded
  (tracing headers ``x-request-id``, ``traceparent``, ``tracestate`` are);
- a stream is decoded leniently with the Rust decoder (``data:`` with or without the space, CRLF / CR,
  comments, multi-line data, ``event:`` / ``id:`` lines) and each event's data re-encoded strictly on one
  line (``data: <json>\\n\\n``; multi-line data is joined with spaces), the usage chunk with empty
  ``choices`` included, ``data: [DONE]`` last. An upstream ``{"error": ...}`` event, or a stream that ends
  without ``[DONE]``, becomes an error (retried if nothing reached the client yet, else one error frame and
  no ``[DONE]``);
- a non-streaming answer is relayed with its status, body and the headers worth keeping (request id,
  rate-limit headers, processing time); upstream errors keep their message, type, param and code in
  OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson

from radixrouter import SseDecoder, encode_event
from radixrouter.httpclient import RequestHeaders
from radixrouter.metrics import mark_frame
from radixrouter.models_config import ModelSpec
from radixrouter.openai_api import ApiError, bad, dumps_request, transport_error
from radixrouter.upstream import TRANSPORT_ERRORS
from radixrouter.workers import RouteContext, Worker, WorkerPool, make_policy, pool_options

log = logging.getLogger("radixrouter.relay")

_loads = orjson.loads
_DONE = encode_event(b"[DONE]")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_FORWARD_REQUEST = tuple((n, n.decode()) for n in (b"x-request-id", b"traceparent", b"tracestate"))
_KEEP_RESPONSE = ("x-request-id", "openai-processing-ms", "openai-version", "retry-after")
_PATHS = {"chat": "/chat/completions", "completions": "/completions"}
_USAGE_AT = re.compile(rb'"usage"\s*:\s*\{')
_BRACKETS = re.compile(rb"[\[\]{]")
_PARSE_WHOLE_UP_TO = 2048  # bytes of a non-streamed answer parsed whole for its usage


class Weighted:
    """Smooth weighted round robin (nginx's): over any window each upstream gets its weight's share, spread
    evenly; unhealthy or already-tried upstreams are simply not among the candidates."""

    name = "weighted"

    def __init__(self) -> None:
        self._current: dict[int, float] = {}

    def choose(self, candidates: list[Worker], ctx: RouteContext) -> Worker:
        cur = self._current
        total = 0.0
        best = None
        best_v = 0.0
        for w in candidates:
            weight = w.extra.get("weight", 1.0)
            total += weight
            v = cur.get(id(w), 0.0) + weight
            cur[id(w)] = v
            if best is None or v > best_v:
                best, best_v = w, v
        assert best is not None
        cur[id(best)] = best_v - total
        return best


class RelayModel:
    __slots__ = ("name", "pool", "passthrough")

    def __init__(self, name: str, pool: WorkerPool, passthrough: bool):
        self.name = name
        self.pool = pool
        self.passthrough = passthrough


def _error_from_body(status: int, data: bytes) -> ApiError:
    """An OpenAI error from an upstream's error body (OpenAI's nested shape, SGLang's / vLLM's flat one, or text)."""
    msg = typ = param = code = None
    try:
        obj = _loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        src = err if isinstance(err, dict) else obj
        msg = src.get("message") if isinstance(src.get("message"), str) else (err if isinstance(err, str) else None)
        if msg is None and isinstance(obj.get("detail"), str):
            msg = obj["detail"]
        typ = src.get("type") if isinstance(src.get("type"), str) else None
        param = src.get("param") if isinstance(src.get("param"), str) else None
        c = src.get("code")
        code = c if isinstance(c, str) else None
    elif data:
        msg = data[:500].decode("utf-8", "replace").strip() or None
    return ApiError(status, msg or f"upstream answered HTTP {status}", type=typ, param=param, code=code)


class Relay:
    """The relayed models of one App (see the module docstring)."""

    def __init__(self, app: Any, specs: list[ModelSpec]):
        self.app = app
        self.models: dict[str, RelayModel] = {}
        self.passthrough: RelayModel | None = None
        cfg = app.config
        for spec in specs:
            weighted = len({u.weight for u in spec.upstreams}) > 1
            if weighted:
                policy: Any = Weighted()
            elif cfg.policy == "cache_aware":
                policy = make_policy("cache_aware", app.cache, threshold=cfg.cache_threshold,
                                     balance_abs=cfg.balance_abs_threshold, balance_rel=cfg.balance_rel_threshold)
            else:
                policy = make_policy(cfg.policy)
            pool = WorkerPool([], policy, **pool_options(cfg))
            if app.cache is not None:
                pool.on_unhealthy.append(app._forget_worker)
            for u in spec.upstreams:
                ident = u.url
                n = 1
                while ident in pool.workers:
                    n += 1
                    ident = f"{u.url}#{n}"  # the same URL with another key or model name
                w = pool.add(ident, kind=u.kind)
                key = u.api_key()
                headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
                if key:
                    headers["Authorization"] = "Bearer " + key
                headers = RequestHeaders(headers)  # encoded once, not per request
                w.extra.update(root=u.url, base=u.base_url(), headers=headers, model=u.model, weight=u.weight)
            m = RelayModel(spec.name, pool, spec.passthrough)
            if spec.passthrough:
                self.passthrough = m
            else:
                self.models[spec.name] = m
        self._listed: tuple[float, list[str]] = (0.0, [])
        # response starts without upstream headers of their own, per (worker, content type): built once
        self._starts: dict[tuple[str, str | None], dict] = {}
        from radixrouter.app import UpstreamFailure, new_id  # noqa: PLC0415 - app imports this module

        self._new_id = new_id
        self._failure = UpstreamFailure

    # ------------------------------------------------------------------ lookup
    def route(self, req: Any, native: str, native_served: bool) -> RelayModel | None:
        """The relayed model for a request body, or None (the native path answers, or 404s)."""
        if not isinstance(req, dict):
            return None
        model = req.get("model")
        if not isinstance(model, str):
            return None
        m = self.models.get(model)
        if m is not None:
            return m
        if self.passthrough is not None and (model != native or not native_served):
            return self.passthrough
        return None

    def workers(self) -> list[Worker]:
        out = []
        for m in self.all_models():
            out += m.pool.list()
        return out

    def routable(self, now: float) -> int:
        """How many upstreams can take traffic now (healthy, breaker not open)."""
        return sum(1 for m in self.all_models() for w in m.pool.list() if m.pool.routable(w, now))

    def all_models(self) -> list[RelayModel]:
        ms = list(self.models.values())
        if self.passthrough is not None:
            ms.append(self.passthrough)
        return ms

    # ------------------------------------------------------------------ health
    async def probe(self, w: Worker, pool: WorkerPool) -> None:
        """sglang: GET /health; openai: GET {base}/models with the upstream's key."""
        app = self.app
        x = w.extra
        if w.kind == "sglang":
            url, headers = x["root"] + "/health", None
        else:
            url, headers = x["base"] + "/models", {k: v for k, v in x["headers"].items() if k == "Authorization"}
        try:
            resp = await app.upstream.http.request("GET", url, headers=headers,
                                                   timeout=app.config.health_check_timeout)
            try:
                await resp.read()
                ok = resp.status == 200
            finally:
                resp.release()
        except TRANSPORT_ERRORS:
            ok = False
        if ok:
            pool.report_success(w)
        else:
            if not w.healthy:
                w.consecutive_successes = 0
            pool.report_failure(w)

    async def probe_all(self) -> None:
        jobs = [self.probe(w, m.pool) for m in self.all_models() for w in m.pool.list()]
        if jobs:
            await asyncio.gather(*jobs)

    # ------------------------------------------------------------------ /v1/models
    async def model_ids(self) -> list[str]:
        ids = list(self.models)
        p = self.passthrough
        if p is None:
            return ids
        now = time.monotonic()
        at, listed = self._listed
        if now - at > 30.0:
            listed = await self._fetch_models(p) or listed
            self._listed = (now, listed)
        return ids + [i for i in listed if i not in self.models]

    async def _fetch_models(self, m: RelayModel) -> list[str]:
        """The ids a passthrough upstream lists (first healthy one that answers)."""
        for w in sorted(m.pool.list(), key=lambda w: not w.healthy):
            url = w.extra["base"] + "/models"
            headers = {k: v for k, v in w.extra["headers"].items() if k == "Authorization"}
            try:
                resp = await self.app.upstream.http.request("GET", url, headers=headers, timeout=5.0)
                try:
                    data = await resp.read()
                finally:
                    resp.release()
                if resp.status != 200:
                    continue
                items = _loads(data).get("data")
                return [d["id"] for d in items if isinstance(d, dict) and isinstance(d.get("id"), str)]
            except (TRANSPORT_ERRORS + (orjson.JSONDecodeError, AttributeError, TypeError)):
                continue
        return []

    # ------------------------------------------------------------------ the relay itself
    async def handle(self, ex: Any, req: dict, model: RelayModel, endpoint: str) -> int:
        app = self.app
        client_model = req["model"]
        stream = req.get("stream", False)
        if not isinstance(stream, bool):
            raise bad("'stream' must be a boolean", "stream")
        if endpoint == "chat":
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise bad("'messages' must be a non-empty array", "messages")
            key = "\n".join(m["content"] for m in msgs if isinstance(m, dict) and isinstance(m.get("content"), str))
        else:
            prompt = req.get("prompt")
            if prompt is None:
                raise bad("'prompt' is required", "prompt")
            key = prompt if isinstance(prompt, str) else ""
        so = req.get("stream_options")
        if so is not None and not isinstance(so, dict):
            raise bad("'stream_options' must be an object", "stream_options")
        rid = req.get("rid")
        had_rid = "rid" in req
        if not isinstance(rid, str):
            rid = self._new_id()
        path = _PATHS[endpoint]
        fwd = None
        for name, sname in _FORWARD_REQUEST:
            v = ex.header(name)
            if v is not None:
                if fwd is None:
                    fwd = {}
                fwd[sname] = v.decode("latin-1")

        def prepare(w: Worker, attempt_rid: str) -> tuple[str, bytes, dict]:
            x = w.extra
            req["model"] = x["model"] or client_model
            if w.kind == "sglang":
                req["rid"] = attempt_rid  # so /abort_request can name it
            elif not had_rid:
                req.pop("rid", None)
            headers = x["headers"]
            if fwd:
                headers = RequestHeaders(headers, **fwd)
            return x["base"] + path, dumps_request(req), headers  # 400: nested past orjson's 254 levels

        ctx = RouteContext(text=key)
        stats: list = [None, None, 0, (0, 0, 0)]
        consume = self._consume_stream(ex, stats) if stream else self._consume_full
        watcher = app._watch(ex)
        try:
            result = await app._call(ex, ctx, path, b"", rid, consume, pool=model.pool, prepare=prepare,
                                     error=_error_from_body)
        finally:
            watcher.cancel()
        w = result[0]
        log.debug("relayed %s %s (stream=%s) to %s as %r", endpoint, client_model, stream, w.url,
                  w.extra["model"] or client_model)
        if app.cache is not None and key:
            try:
                app.cache.insert(key, [], [], worker=w.url)
            except Exception:  # noqa: BLE001 - affinity is an optimization
                log.exception("recording upstream affinity failed")
        route = "chat" if endpoint == "chat" else "completions"
        if stream:
            app._observe(route, ex, stats[0], stats[1], stats[2], stats[3])
            return 200
        _w, start, data = result
        app._observe(route, ex, None, None, 0, _usage(data))
        ex.started = True
        await ex.respond(start, data)
        return 200

    def _start(self, w: Worker, resp: Any, content_type: str | None) -> dict:
        """The ``http.response.start`` of a relayed answer: status 200, the content type (None: a stream's
        SSE headers), the upstream headers worth keeping and ``x-radixrouter-worker``. Without upstream
        headers to keep (the usual case) the start is built once per worker and content type and reused
        (with the RSGI form of its headers, which ``_rsgi_headers`` caches in it)."""
        kept = None
        for k, v in resp.headers.items():
            k = k.lower()
            if k in _KEEP_RESPONSE or k.startswith("x-ratelimit-"):
                if kept is None:
                    kept = []
                kept.append((k.encode("latin-1"), v.encode("latin-1")))
        if kept is None:
            start = self._starts.get((w.url, content_type))
            if start is not None:
                return start
        headers = list(_SSE) if content_type is None else [(b"content-type", content_type.encode("latin-1"))]
        if kept:
            headers += kept
        headers.append((b"x-radixrouter-worker", w.url.encode()))
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        if kept is None and len(self._starts) < 1024:
            self._starts[(w.url, content_type)] = start
        return start

    async def _consume_full(self, w: Worker, resp: Any):
        try:
            data = await resp.read()
        except TRANSPORT_ERRORS as e:
            raise self._failure(transport_error(f"upstream {w.url}", "failed", e), True) from None
        return w, self._start(w, resp, resp.headers.get("content-type") or "application/json"), data

    def _consume_stream(self, ex: Any, stats: list):
        app = self.app
        failure = self._failure

        async def consume(w: Worker, resp: Any):
            deadline = asyncio.get_running_loop().time() + app.config.first_token_timeout
            content = resp.content
            dec = SseDecoder()
            emitted = False
            while True:
                try:
                    chunk = await (content.readany() if emitted else app._next_chunk(ex, w, content, deadline, True))
                except TRANSPORT_ERRORS as e:
                    raise failure(transport_error(f"upstream {w.url}", "connection failed", e), not emitted) from None
                if not chunk:
                    raise failure(ApiError(502, f"upstream {w.url} ended the stream without [DONE]",
                                           code="upstream_error"), not emitted)
                out, done, err = reframe(dec.feed(chunk), stats, "upstream")
                if err is not None:
                    if out:
                        await self._send(ex, w, resp, b"".join(out), True)
                    raise failure(err, not (emitted or out))
                if out or done:
                    mark_frame(stats)
                if done:
                    out.append(_DONE)
                    await self._send(ex, w, resp, b"".join(out), False)
                    return (w,)
                if out:
                    emitted = True
                    await self._send(ex, w, resp, b"".join(out), True)  # (join returns a lone item as is)

        return consume

    async def _send(self, ex: Any, w: Worker, resp: Any, body: bytes, more: bool) -> None:
        if not ex.started:
            ex.started = True
            await ex.send(self._start(w, resp, None))
        await ex.send({"type": "http.response.body", "body": body, "more_body": more})


def reframe(events: Any, stats: list, source: str) -> tuple[list[bytes], bool, ApiError | None]:
    """Strict re-encoding of a lenient upstream's decoded events: each non-empty data as one canonical
    frame (a multi-line JSON data joined with spaces, so line-based clients get it whole), until
    ``[DONE]``. Usage seen in an event goes to ``stats[3]``. Returns (frames, saw [DONE], the 502 error of
    an error event, which ends the stream (message "<source> error: ..."), or None)."""
    out = []
    for ev in events:
        data = ev.data
        if not data:
            continue
        if data == "[DONE]":
            return out, True, None
        if '"error"' in data[:16] or '"usage":{' in data:
            try:
                obj = _loads(data)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                if obj.get("error"):
                    err = _error_from_body(502, data.encode())
                    err.message = f"{source} error: {err.message}"
                    return out, False, err
                u = obj.get("usage")
                if isinstance(u, dict):
                    stats[3] = _usage_tuple(u)
        if "\n" in data:
            # multi-line data: one JSON text split over lines; LF can only sit between JSON tokens, so a
            # space keeps it valid and a line-based client (one-api) gets it on one line
            data = data.replace("\n", " ")
        out.append(encode_event(data))
    return out, False, None


def _usage_tuple(u: dict) -> tuple[int, int, int]:
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return _num(u.get("prompt_tokens")), _num(cached), _num(u.get("completion_tokens"))


def _num(v: Any) -> int:
    return v if type(v) is int else 0  # (not a bool)


def _usage(data: bytes) -> tuple[int, int, int]:
    """The usage of a whole answer. In a long answer only its ``"usage"`` object is parsed, when that is a
    member of the outermost object and only scalar members follow it (where OpenAI, vLLM and SGLang put
    it, last or nearly); otherwise, and in a short answer (where finding it costs more than parsing it
    all), the whole answer is."""
    u = None
    i = data.rfind(b'"usage"') if len(data) > _PARSE_WHOLE_UP_TO else -1
    if i >= 0 and data.lstrip()[:1] == b"{":
        m = _USAGE_AT.match(data, i)
        if m is not None:
            j = m.end() - 1  # the usage object's "{"
            k = data.find(b"}", j)
            for _ in range(8):  # usage nests an object or two ("prompt_tokens_details"), not more
                if k < 0 or data.count(b"{", j, k) == data.count(b"}", j, k) + 1:  # k: the matching "}"
                    break
                k = data.find(b"}", k + 1)
            else:
                k = -1
            if k >= 0:
                rest = data[k + 1:]
                # the rest closes the outermost object: one "}" (last) and no other bracket
                if rest.count(b"}") == 1 and rest.rstrip().endswith(b"}") and not _BRACKETS.search(rest):
                    try:
                        u = _loads(data[j:k + 1])
                    except orjson.JSONDecodeError:
                        u = None
    if u is None:
        try:
            u = _loads(data).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            return 0, 0, 0
    return _usage_tuple(u) if isinstance(u, dict) else (0, 0, 0)
