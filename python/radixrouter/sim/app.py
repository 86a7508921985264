"""The simulated worker's HTTP surface, as an RSGI application (served by granian)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .engine import (
    SIM_VERSION,
    WEIGHT_VERSION,
    BadRequest,
    CloseConnection,
    Engine,
    Fault,
    Request,
    SamplingParams,
    Seq,
    SimConfig,
    new_rid,
)
from .tokenizer import SimTokenizer

log = logging.getLogger("radixrouter.sim")

JSON_H = [("content-type", "application/json")]
TEXT_H = [("content-type", "text/plain; charset=utf-8")]
SSE_H = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
# a Content-Length the body never reaches: returning early then makes the server drop the connection
CUT_H = [("content-length", "1000000000")]
DONE = b"data: [DONE]\n\n"

Handler = Callable[[Any, Any], Awaitable[None]]


def _err(message: str) -> dict:
    return {"error": {"message": message}}


def _oai_err(message: str, status: int = 400, typ: str = "BadRequestError") -> dict:
    # SGLang's OpenAI-compatible server answers errors in this shape
    return {"object": "error", "message": message, "type": typ, "param": None, "code": status}


def _frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class SimApp:
    """RSGI app. `SimApp(cfg, tok)`; `app.engine` holds the state (stats, faults, KV cache)."""

    def __init__(self, cfg: SimConfig, tok: SimTokenizer) -> None:
        self.cfg = cfg
        self.tok = tok
        self.engine = Engine(cfg, tok)
        from .openai_api import OpenAIRoutes

        self.oai = OpenAIRoutes(self)
        r: dict[tuple[str, str], Handler] = {}
        for m in ("GET", "POST"):
            r[(m, "/health")] = self.health
            r[(m, "/ready")] = self.health
            r[(m, "/health_generate")] = self.health_generate
            r[(m, "/flush_cache")] = self.flush_cache
        for p in ("/model_info", "/get_model_info"):
            r[("GET", p)] = self.model_info
        for p in ("/server_info", "/get_server_info"):
            r[("GET", p)] = self.server_info
        r[("GET", "/get_load")] = self.get_load
        r[("GET", "/metrics")] = self.metrics
        r[("POST", "/generate")] = self.generate
        r[("PUT", "/generate")] = self.generate
        r[("POST", "/abort_request")] = self.abort_request
        r[("POST", "/v1/chat/completions")] = self.oai.chat
        r[("POST", "/v1/completions")] = self.oai.completions
        r[("GET", "/v1/models")] = self.oai.models
        r[("GET", "/sim/stats")] = self.sim_stats
        r[("POST", "/sim/fault")] = self.sim_fault
        r[("DELETE", "/sim/fault")] = self.sim_clear_faults
        r[("POST", "/sim/health")] = self.sim_health
        r[("POST", "/sim/reset")] = self.sim_reset
        self.routes = r
        self.paths = {p for _, p in r}

    # ------------------------------------------------------------------ RSGI entry
    def __rsgi_init__(self, loop: Any) -> None:  # noqa: D105 - granian hook
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        pass

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        handler = self.routes.get((scope.method, scope.path))
        if handler is None:
            if scope.path.startswith("/v1/models/"):
                return await self.oai.model(scope, proto)
            if scope.path in self.paths:
                return proto.response_bytes(405, JSON_H, orjson.dumps(_err("Method Not Allowed")))
            return proto.response_bytes(404, JSON_H, orjson.dumps({"detail": "Not Found"}))
        try:
            await handler(scope, proto)
        except BadRequest as e:
            proto.response_bytes(e.status, JSON_H, orjson.dumps(_err(str(e))))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    async def read_json(proto: Any, *, required: bool = True) -> Any:
        body = await proto()
        if not body:
            if required:
                raise BadRequest("request body is empty; expected a JSON object")
            return {}
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"invalid JSON body: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("expected a JSON object")
        return data

    def prompts_of(self, data: dict) -> tuple[list[list[int]], bool]:
        """Token ids of `text` or `input_ids`; `single` is False for a batch."""
        text, ids = data.get("text"), data.get("input_ids")
        if (text is None) == (ids is None):
            raise BadRequest("Either text, input_ids or input_embeds should be provided.")
        vocab = self.tok.vocab_size
        if text is not None:
            if isinstance(text, str):
                prompts, single = [self.tok.encode(text)], True
            elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
                prompts, single = [self.tok.encode(t) for t in text], False
            else:
                raise BadRequest("text must be a string or a non-empty list of strings")
        else:
            if isinstance(ids, list) and ids and all(isinstance(i, list) for i in ids):
                prompts, single = ids, False
            elif isinstance(ids, list):
                prompts, single = [ids], True
            else:
                raise BadRequest("input_ids must be a list of integers or a list of such lists")
            for p in prompts:
                for i in p:
                    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab:
                        raise BadRequest(f"input_ids must be integers in [0, {vocab}), got {i!r}")
        for p in prompts:
            if not p:
                raise BadRequest("The input is empty (0 tokens).")
        return prompts, single

    def fault_response(self, proto: Any, fault: Fault, oai: bool) -> None:
        status = fault.status or 500
        body = fault.body
        if body is None:
            msg = f"simulated failure (status {status})"
            body = _oai_err(msg, status, "SimulatedError") if oai else _err(msg)
        if isinstance(body, str):
            proto.response_bytes(status, TEXT_H, body.encode())
        else:
            proto.response_bytes(status, JSON_H, orjson.dumps(body))

    def start_request(self, data: dict, kind: str) -> Fault | None:
        eng = self.engine
        eng.stats["requests"] += 1
        eng.stats[kind] += 1
        return eng.take_fault(data.get("sim"))

    def new_request(self, rid: Any, fault: Fault | None) -> Request:
        if rid is None:
            rid = new_rid()
        elif isinstance(rid, list):
            rid = rid[0] if rid and isinstance(rid[0], str) else None
            if rid is None:
                raise BadRequest("rid must be a string")
        elif not isinstance(rid, str):
            raise BadRequest("rid must be a string")
        if rid in self.engine.requests or rid in self.engine.lingering:
            raise BadRequest(f"Duplicate request ID: {rid}")
        return Request(rid, fault)

    async def execute(
        self,
        proto: Any,
        req: Request,
        seqs: list[Seq],
        *,
        want_lp: bool,
        interval: int,
        emit: Callable[[list[Seq], bool], Awaitable[None]] | None,
    ) -> None:
        """Run the request while watching for a client disconnect (which aborts it)."""
        eng = self.engine

        def on_disconnect(fut: asyncio.Future) -> None:
            if not fut.cancelled() and req.rid in eng.requests and req.aborted is None:
                eng.stats["disconnects"] += 1
                req.abort("client disconnected")

        watch: list[asyncio.Future] = []

        def start_watch() -> None:
            fut = asyncio.ensure_future(proto.client_disconnect())
            fut.add_done_callback(on_disconnect)
            watch.append(fut)

        req.on_wait = start_watch
        try:
            await eng.run(req, seqs, want_lp=want_lp, interval=interval, progress=emit)
        finally:
            for fut in watch:
                fut.cancel()

    # ------------------------------------------------------------------ /generate
    async def generate(self, scope: Any, proto: Any) -> None:
        data = await self.read_json(proto)
        eng = self.engine
        fault = self.start_request(data, "generate_requests")
        if fault is not None and fault.status is not None:
            return self.fault_response(proto, fault, oai=False)
        try:
            prompts, single = self.prompts_of(data)
            sp = SamplingParams(data.get("sampling_params"))
            req = self.new_request(data.get("rid"), fault)
            seqs = eng.make_seqs(req, prompts, sp)
        except BadRequest:
            eng.stats["errors"] += 1
            raise
        want_lp = bool(data.get("return_logprob"))
        top_n = data.get("top_logprobs_num") or 0
        if not isinstance(top_n, int) or top_n < 0:
            raise BadRequest("top_logprobs_num must be a non-negative integer")
        lp_text = bool(data.get("return_text_in_logprobs"))
        lp_start = data.get("logprob_start_len", -1)
        if not isinstance(lp_start, int) or isinstance(lp_start, bool):
            raise BadRequest("logprob_start_len must be an integer")
        req.lp_start = lp_start
        multi = not single or sp.n > 1
        cut = fault is not None and fault.close_after_tokens is not None
        interval = sp.stream_interval or self.cfg.stream_interval

        if not data.get("stream"):
            try:
                await self.execute(proto, req, seqs, want_lp=want_lp, interval=interval, emit=None)
            except CloseConnection:
                t = proto.response_stream(200, JSON_H + CUT_H)
                await t.send_bytes(b'{"text": "')
                return
            outs = []
            for s in seqs:
                out = {
                    "text": s.text,
                    "output_ids": s.out,
                    "meta_info": eng.meta(req, s, True, want_lp, top_n, lp_text),
                }
                if multi:
                    out["index"] = s.index
                outs.append(out)
            return proto.response_bytes(200, JSON_H, orjson.dumps(outs if multi else outs[0]))

        incremental = self.cfg.incremental_streaming_output
        transport = proto.response_stream(200, SSE_H + CUT_H if cut else SSE_H)
        closed = False

        async def emit(seqs: list[Seq], final: bool) -> None:
            nonlocal closed
            if closed:
                return
            buf = []
            for s in seqs:
                if s.sent_ids == len(s.out) and (s.finish is None or s.sent_text < 0):
                    continue  # nothing new (a finished sequence is marked by sent_text = -1)
                meta = eng.meta(req, s, not incremental, want_lp, top_n, lp_text)
                if incremental:
                    start = s.sent_text if s.sent_text <= len(s.text) else len(s.text)
                    ev = {"text": s.text[start:], "output_ids": s.out[s.sent_ids :], "meta_info": meta}
                    s.sent_lp = len(s.logprobs)
                else:
                    ev = {"text": s.text, "output_ids": list(s.out), "meta_info": meta}
                if multi:
                    ev["index"] = s.index
                s.sent_ids = len(s.out)
                s.sent_text = -1 if s.finish is not None else len(s.text)
                buf.append(_frame(ev))
            if final:
                buf.append(DONE)
            if buf:
                try:
                    await transport.send_bytes(b"".join(buf))
                except Exception:  # the client went away
                    closed = True
                    if req.aborted is None:
                        eng.stats["disconnects"] += 1
                        req.abort("client disconnected")

        try:
            await self.execute(proto, req, seqs, want_lp=want_lp, interval=interval, emit=emit)
        except CloseConnection:
            return  # the declared Content-Length is never reached: the connection is dropped
        except Exception as e:  # pragma: no cover - defensive: report in-band like SGLang
            log.exception("generation failed")
            if not closed:
                await transport.send_bytes(_frame(_err(f"{type(e).__name__}: {e}")) + DONE)
            return
        await emit(seqs, True)

    # ------------------------------------------------------------------ control endpoints
    async def abort_request(self, scope: Any, proto: Any) -> None:
        data = await self.read_json(proto, required=False)
        rid = data.get("rid")
        if rid is not None and not isinstance(rid, str):
            raise BadRequest("rid must be a string")
        self.engine.abort(rid, bool(data.get("abort_all")))
        proto.response_empty(200, [])

    async def health(self, scope: Any, proto: Any) -> None:
        proto.response_empty(200 if self.engine.healthy else 503, [])

    async def health_generate(self, scope: Any, proto: Any) -> None:
        eng = self.engine
        if not eng.healthy:
            return proto.response_empty(503, [])
        req = Request("HEALTH_CHECK_" + uuid.uuid4().hex[:8], None)
        await eng._acquire(req, 1)  # waits behind queued work, like a real one-token generation
        eng._release(req)
        proto.response_empty(200, [])

    async def flush_cache(self, scope: Any, proto: Any) -> None:
        eng = self.engine
        if eng.requests or eng.waiting:
            return proto.response_bytes(
                400, TEXT_H, b"Cache not flushed. There are running or waiting requests; retry later.\n"
            )
        eng.kv.clear()
        proto.response_bytes(
            200,
            TEXT_H,
            b"Cache flushed.\nPlease check backend logs for more details. (When there are running "
            b"or waiting requests, the operation will not be performed.)\n",
        )

    def model_info_dict(self) -> dict:
        tok = self.tok
        return {
            "model_path": tok.model_dir or self.cfg.model,
            "tokenizer_path": tok.model_dir or tok.tokenizer_path or self.cfg.model,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": WEIGHT_VERSION,
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "simulated",
            "architectures": ["SimulatedForCausalLM"],
        }

    async def model_info(self, scope: Any, proto: Any) -> None:
        proto.response_bytes(200, JSON_H, orjson.dumps(self.model_info_dict()))

    async def server_info(self, scope: Any, proto: Any) -> None:
        cfg, eng = self.cfg, self.engine
        info = dict(cfg.__dict__)
        info.update(
            {
                "model_path": self.model_info_dict()["model_path"],
                "tokenizer_path": self.model_info_dict()["tokenizer_path"],
                "served_model_name": cfg.model,
                "context_length": cfg.context_length,
                "max_running_requests": cfg.max_running,
                "max_total_num_tokens": cfg.kv_cache_tokens,
                "page_size": 1,
                "stream_output": cfg.incremental_streaming_output,
                "dp_size": 1,
                "tp_size": 1,
                "simulated": True,
                "pid": os.getpid(),  # lets a launcher check that it reached its own process
                "version": SIM_VERSION,
                "internal_states": [{"load": eng.running + len(eng.waiting), "last_gen_throughput": 0.0}],
            }
        )
        proto.response_bytes(200, JSON_H, orjson.dumps(info))

    async def get_load(self, scope: Any, proto: Any) -> None:
        eng = self.engine
        tokens = sum(len(s.prompt) + len(s.out) for r in eng.requests.values() for s in r.seqs)
        proto.response_bytes(
            200,
            JSON_H,
            orjson.dumps(
                [
                    {
                        "dp_rank": 0,
                        "num_reqs": eng.running + len(eng.waiting),
                        "num_waiting_reqs": len(eng.waiting),
                        "num_tokens": tokens,
                    }
                ]
            ),
        )

    async def metrics(self, scope: Any, proto: Any) -> None:
        s = self.engine.snapshot()
        name = self.cfg.model
        lines = [
            "# TYPE sglang:num_running_reqs gauge",
            f'sglang:num_running_reqs{{model_name="{name}"}} {s["running"]}',
            "# TYPE sglang:num_queue_reqs gauge",
            f'sglang:num_queue_reqs{{model_name="{name}"}} {s["waiting"]}',
            "# TYPE sglang:prompt_tokens_total counter",
            f'sglang:prompt_tokens_total{{model_name="{name}"}} {s["prompt_tokens"]}',
            "# TYPE sglang:cached_tokens_total counter",
            f'sglang:cached_tokens_total{{model_name="{name}"}} {s["cached_tokens"]}',
            "# TYPE sglang:generation_tokens_total counter",
            f'sglang:generation_tokens_total{{model_name="{name}"}} {s["completion_tokens"]}',
            "# TYPE sglang:cache_hit_rate gauge",
            f'sglang:cache_hit_rate{{model_name="{name}"}} {s["cache_hit_ratio"]}',
            "",
        ]
        proto.response_bytes(200, [("content-type", "text/plain; version=0.0.4")], "\n".join(lines).encode())

    # ------------------------------------------------------------------ /sim admin
    async def sim_stats(self, scope: Any, proto: Any) -> None:
        s = self.engine.snapshot()
        s["uptime_s"] = time.time() - self.engine.started
        proto.response_bytes(200, JSON_H, orjson.dumps(s))

    async def sim_fault(self, scope: Any, proto: Any) -> None:
        data = await self.read_json(proto)
        fault = Fault.parse(data)
        self.engine.add_fault(fault)
        proto.response_bytes(
            200, JSON_H, orjson.dumps({"queued": fault.describe(), "pending": len(self.engine.faults)})
        )

    async def sim_clear_faults(self, scope: Any, proto: Any) -> None:
        self.engine.faults.clear()
        proto.response_bytes(200, JSON_H, b'{"pending":0}')

    async def sim_health(self, scope: Any, proto: Any) -> None:
        data = await self.read_json(proto)
        healthy = data.get("healthy")
        if not isinstance(healthy, bool):
            raise BadRequest('expected {"healthy": true|false}')
        self.engine.healthy = healthy
        proto.response_bytes(200, JSON_H, orjson.dumps({"healthy": healthy}))

    async def sim_reset(self, scope: Any, proto: Any) -> None:
        data = await self.read_json(proto, required=False)
        eng = self.engine
        eng.reset_stats()
        eng.faults.clear()
        eng.healthy = True
        if data.get("flush_cache", True) and not eng.requests:
            eng.kv.clear()
            eng.kv.evicted_tokens = 0
        proto.response_bytes(200, JSON_H, orjson.dumps(eng.snapshot()))
