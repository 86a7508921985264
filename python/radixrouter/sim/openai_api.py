"""OpenAI-compatible endpoints of the simulated worker (`/v1/chat/completions`, `/v1/completions`,
`/v1/models`), shaped like SGLang's own OpenAI server: the worker templates and tokenizes itself."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from .engine import BadRequest, Request, SamplingParams, Seq
from .tokenizer import SimTokenizer

if TYPE_CHECKING:
    from .app import SimApp

JSON_H = [("content-type", "application/json")]
SSE_H = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
CUT_H = [("content-length", "1000000000")]
DONE = b"data: [DONE]\n\n"

# OpenAI request fields mapped onto SGLang sampling params (the rest pass through under the same name)
_PASS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "skip_special_tokens",
    "no_stop_trim",
    "stop_token_ids",
    "n",
    "logit_bias",
    "regex",
    "ebnf",
)


def _oai_err(message: str, status: int = 400, typ: str = "BadRequestError") -> bytes:
    return orjson.dumps({"object": "error", "message": message, "type": typ, "param": None, "code": status})


def _finish(seq: Seq) -> str | None:
    f = seq.finish
    if f is None:
        return None
    return "length" if f["type"] == "length" else ("abort" if f["type"] == "abort" else "stop")


def _matched(seq: Seq) -> Any:
    f = seq.finish
    return f.get("matched") if f else None


def _message_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise BadRequest("only text content parts are supported by the simulated worker")
            parts.append(p["text"])
        return "".join(parts)
    raise BadRequest("message content must be a string or a list of content parts")


class OpenAIRoutes:
    def __init__(self, app: SimApp) -> None:
        self.app = app
        self.tok: SimTokenizer = app.tok

    # ---------------------------------------------------------------- /v1/models
    def _model_card(self) -> dict:
        cfg = self.app.cfg
        return {
            "id": cfg.model,
            "object": "model",
            "created": int(self.app.engine.started),
            "owned_by": "sglang",
            "root": cfg.model,
            "max_model_len": cfg.context_length,
        }

    async def models(self, scope: Any, proto: Any) -> None:
        proto.response_bytes(200, JSON_H, orjson.dumps({"object": "list", "data": [self._model_card()]}))

    async def model(self, scope: Any, proto: Any) -> None:
        name = scope.path[len("/v1/models/") :]
        if scope.method != "GET" or name != self.app.cfg.model:
            msg = f"The model `{name}` does not exist."
            return proto.response_bytes(404, JSON_H, _oai_err(msg, 404, "NotFoundError"))
        proto.response_bytes(200, JSON_H, orjson.dumps(self._model_card()))

    # ---------------------------------------------------------------- request mapping
    def _sampling(self, data: dict, prompt_len: int) -> SamplingParams:
        raw: dict[str, Any] = {}
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        if max_tokens is None:
            max_tokens = max(1, self.app.cfg.context_length - prompt_len)
        raw["max_new_tokens"] = max_tokens
        for k in _PASS:
            if data.get(k) is not None:
                raw["min_new_tokens" if k == "min_tokens" else k] = data[k]
        if data.get("stop") is not None:
            raw["stop"] = data["stop"]
        if data.get("seed") is not None:
            raw["sampling_seed"] = data["seed"]
        return SamplingParams(raw)

    # ---------------------------------------------------------------- endpoints
    async def chat(self, scope: Any, proto: Any) -> None:
        await self._endpoint(proto, chat=True)

    async def completions(self, scope: Any, proto: Any) -> None:
        await self._endpoint(proto, chat=False)

    async def _endpoint(self, proto: Any, chat: bool) -> None:
        app = self.app
        try:
            data = await app.read_json(proto)
        except BadRequest as e:
            return proto.response_bytes(400, JSON_H, _oai_err(str(e)))
        fault = app.start_request(data, "chat_requests" if chat else "completion_requests")
        if fault is not None and fault.status is not None:
            return app.fault_response(proto, fault, oai=True)
        try:
            prompts = self._chat_prompt(data) if chat else self._completion_prompts(data)
            sp = self._sampling(data, max(len(p) for p in prompts))
            req = app.new_request(data.get("rid"), fault)
            seqs = app.engine.make_seqs(req, prompts, sp)
            so = data.get("stream_options") or {}
            if not isinstance(so, dict):
                raise BadRequest("stream_options must be an object")
        except BadRequest as e:
            app.engine.stats["errors"] += 1
            return proto.response_bytes(e.status, JSON_H, _oai_err(str(e), e.status))
        want_lp = bool(data.get("logprobs")) if chat else data.get("logprobs") is not None
        model = data.get("model") if isinstance(data.get("model"), str) else app.cfg.model
        if data.get("stream"):
            await self._stream(proto, req, seqs, chat, model, want_lp, bool(so.get("include_usage")))
        else:
            await self._complete(proto, req, seqs, chat, model, want_lp)

    def _chat_prompt(self, data: dict) -> list[list[int]]:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        msgs = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest("each message must be an object with a string role")
            m = dict(m)
            m["content"] = _message_text(m.get("content"))
            msgs.append(m)
        tools = data.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        kwargs = data.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise BadRequest("chat_template_kwargs must be an object")
        cont = bool(data.get("continue_final_message"))
        try:
            text = self.tok.render(msgs, tools=tools, add_generation_prompt=not cont, **kwargs)
        except Exception as e:  # template errors (raise_exception, bad structure) are client errors
            raise BadRequest(f"chat template error: {e}") from None
        ids = self.tok.encode(text)
        if not ids:
            raise BadRequest("the rendered prompt is empty")
        return [ids]

    def _completion_prompts(self, data: dict) -> list[list[int]]:
        p = data.get("prompt")
        vocab = self.tok.vocab_size
        if isinstance(p, str):
            prompts = [self.tok.encode(p)]
        elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            prompts = [self.tok.encode(x) for x in p]
        elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            prompts = [p]
        elif isinstance(p, list) and p and all(isinstance(x, list) for x in p):
            prompts = p
        else:
            raise BadRequest("prompt must be a string, a list of strings, or token ids")
        for ids in prompts:
            if not ids:
                raise BadRequest("The input is empty (0 tokens).")
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
                raise BadRequest(f"prompt token ids must be integers in [0, {vocab})")
        return prompts

    def _logprobs(self, seq: Seq, start: int, chat: bool) -> Any:
        entries = seq.logprobs[start:]
        tok = self.tok
        if chat:
            return {
                "content": [
                    {
                        "token": tok.token_text(t),
                        "logprob": lp,
                        "bytes": list(tok.token_text(t).encode()),
                        "top_logprobs": [],
                    }
                    for lp, t, _ in entries
                ]
            }
        return {
            "tokens": [tok.token_text(t) for _, t, _ in entries],
            "token_logprobs": [lp for lp, _, _ in entries],
            "top_logprobs": None,
            "text_offset": None,
        }

    @staticmethod
    def _usage(seqs: list[Seq]) -> dict:
        prompt = sum(len(p) for p in {id(s.prompt): s.prompt for s in seqs}.values())
        completion = sum(len(s.out) for s in seqs)
        cached = sum(s.cached for s in {id(s.prompt): s for s in seqs}.values())
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    async def _complete(
        self, proto: Any, req: Request, seqs: list[Seq], chat: bool, model: str, want_lp: bool
    ) -> None:
        from .engine import CloseConnection

        try:
            await self.app.execute(proto, req, seqs, want_lp=want_lp, interval=16, emit=None)
        except CloseConnection:
            t = proto.response_stream(200, JSON_H + CUT_H)
            await t.send_bytes(b'{"id": "')
            return
        choices = []
        for s in seqs:
            lp = self._logprobs(s, 0, chat) if want_lp else None
            if chat:
                choices.append(
                    {
                        "index": s.index,
                        "message": {
                            "role": "assistant",
                            "content": s.text,
                            "reasoning_content": None,
                            "tool_calls": None,
                        },
                        "logprobs": lp,
                        "finish_reason": _finish(s),
                        "matched_stop": _matched(s),
                    }
                )
            else:
                choices.append(
                    {
                        "index": s.index,
                        "text": s.text,
                        "logprobs": lp,
                        "finish_reason": _finish(s),
                        "matched_stop": _matched(s),
                    }
                )
        body = {
            "id": req.rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": self._usage(seqs),
            "metadata": {"weight_version": "default"},
        }
        proto.response_bytes(200, JSON_H, orjson.dumps(body))

    async def _stream(
        self,
        proto: Any,
        req: Request,
        seqs: list[Seq],
        chat: bool,
        model: str,
        want_lp: bool,
        include_usage: bool,
    ) -> None:
        from .engine import CloseConnection

        app = self.app
        cut = req.fault is not None and req.fault.close_after_tokens is not None
        transport = proto.response_stream(200, SSE_H + CUT_H if cut else SSE_H)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": req.rid, "object": obj, "created": created, "model": model}
        closed = False

        def chunk(s: Seq, delta_text: str | None, finish: str | None, lp: Any) -> bytes:
            if chat:
                delta: dict[str, Any] = {} if delta_text is None else {"content": delta_text}
                choice = {
                    "index": s.index,
                    "delta": delta,
                    "logprobs": lp,
                    "finish_reason": finish,
                    "matched_stop": _matched(s) if finish else None,
                }
            else:
                choice = {
                    "index": s.index,
                    "text": delta_text or "",
                    "logprobs": lp,
                    "finish_reason": finish,
                    "matched_stop": _matched(s) if finish else None,
                }
            c = dict(head)
            c["choices"] = [choice]
            if include_usage:
                c["usage"] = None
            return b"data: " + orjson.dumps(c) + b"\n\n"

        async def send(data: bytes) -> None:
            nonlocal closed
            if closed:
                return
            try:
                await transport.send_bytes(data)
            except Exception:
                closed = True
                if req.aborted is None:
                    app.engine.stats["disconnects"] += 1
                    req.abort("client disconnected")

        if chat:
            first = []
            for s in seqs:
                c = dict(head)
                c["choices"] = [
                    {
                        "index": s.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                        "matched_stop": None,
                    }
                ]
                if include_usage:
                    c["usage"] = None
                first.append(b"data: " + orjson.dumps(c) + b"\n\n")
            await send(b"".join(first))

        async def emit(seqs: list[Seq], final: bool) -> None:
            buf = []
            for s in seqs:
                if s.sent_text < 0:
                    continue
                new_ids = len(s.out) > s.sent_ids
                text = s.text[s.sent_text :] if s.sent_text <= len(s.text) else ""
                lp = self._logprobs(s, s.sent_lp, chat) if want_lp and new_ids else None
                s.sent_ids, s.sent_lp = len(s.out), len(s.logprobs)
                if s.finish is not None:
                    if text or lp:
                        buf.append(chunk(s, text, None, lp))
                    buf.append(chunk(s, None if chat else "", _finish(s), None))
                    s.sent_text = -1
                elif text or lp:
                    buf.append(chunk(s, text, None, lp))
                    s.sent_text = len(s.text)
            if final and include_usage:
                u = dict(head)
                u["choices"] = []
                u["usage"] = self._usage(seqs)
                buf.append(b"data: " + orjson.dumps(u) + b"\n\n")
            if final:
                buf.append(DONE)
            if buf:
                await send(b"".join(buf))

        try:
            await app.execute(proto, req, seqs, want_lp=want_lp, interval=app.cfg.stream_interval, emit=emit)
        except CloseConnection:
            return
        await emit(seqs, True)
