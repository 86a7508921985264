"""Token ids the router sends to a worker over a multi-turn Qwen3 conversation.

A recording fake worker (aiohttp, in this process) stands behind a real router process: it keeps every
/generate body it receives and answers with scripted output ids that are NOT the canonical tokenization of
their text ("hello world" sampled as [49122, 385, 1879] where re-encoding gives [14990, 1879]), the case
where re-tokenizing history would silently change what the model saw.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from aiohttp import web

import radixrouter
from radixrouter.tokenizer import ChatTokenizer
from simutil import free_port
from test_router import MODEL, RouterProcess

IM_END = 151645
SAMPLED = {  # text -> ids as a model could sample them (non-canonical BPE splits), then <|im_end|>
    "hello world": [49122, 385, 1879, IM_END],
    "fine thanks": None,  # filled with the canonical ids below
}


class RecordingWorker:
    """A minimal SGLang /generate endpoint that records requests and replays scripted outputs."""

    def __init__(self, tok: ChatTokenizer, replies: list[str]):
        self.tok = tok
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def _ids_for(self, text: str) -> list[int]:
        ids = SAMPLED.get(text)
        return list(ids) if ids else self.tok.encode(text) + [IM_END]

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        text = self.replies.pop(0)
        ids = self._ids_for(text)
        n_in = len(body["input_ids"])
        meta = {"id": body.get("rid"), "prompt_tokens": n_in, "completion_tokens": len(ids), "cached_tokens": 0,
                "finish_reason": {"type": "stop", "matched": IM_END}}
        if not body.get("stream"):
            return web.json_response({"text": text, "output_ids": ids, "meta_info": meta})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        words = text.split(" ")
        for k in range(1, len(words) + 1):  # cumulative events, word by word; ids complete at the end
            last = k == len(words)
            partial = " ".join(words[:k])
            m = dict(meta, completion_tokens=len(ids) if last else k, finish_reason=meta["finish_reason"] if last else None)
            ev = {"text": partial, "output_ids": ids if last else ids[:k], "meta_info": m}
            await resp.write(b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n")  # as SGLang
            await asyncio.sleep(0.01)  # separate reads, as from a decoding model
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main():
            app = web.Application()
            app.router.add_post("/generate", self._generate)
            app.router.add_get("/health", self._health)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def __enter__(self) -> RecordingWorker:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


LONG = "hello world again and again"  # five streamed words: a cumulative stream long enough that the
# router parses later events without their output_ids and restores the ids from the last event


@pytest.fixture(scope="module")
def tok():
    t = ChatTokenizer.qwen3()
    SAMPLED[LONG] = [49122, 385, 1879] + t.encode(" again and again") + [IM_END]
    assert t.decode(SAMPLED[LONG], skip_special_tokens=False) == LONG + "<|im_end|>"
    return t


def _chat(router, messages, stream):
    import httpx

    body = {"model": MODEL, "messages": messages, "max_tokens": 50, "stream": stream}
    r = httpx.post(router.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()["choices"][0]["message"]["content"]
    text = ""
    for block in r.text.split("\n\n"):
        if block.startswith("data: {"):
            d = json.loads(block[6:])
            if d["choices"]:
                text += d["choices"][0]["delta"].get("content") or ""
    return text


CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hi to the world."},
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_multi_turn_ids(tok, stream):
    replies = [LONG, "fine thanks", "bye now"]
    with RecordingWorker(tok, replies) as worker, RouterProcess([worker.url]) as router:
        msgs = list(CONVERSATION)
        for turn, user_next in enumerate(["How are you?", "Goodbye."]):
            out = _chat(router, msgs, stream)
            assert out == replies[turn]
            msgs = msgs + [{"role": "assistant", "content": out}, {"role": "user", "content": user_next}]
        _chat(router, msgs, stream)
        sent = [r["input_ids"] for r in worker.requests]
        assert all("text" not in r for r in worker.requests)

    # turn 1: exactly the full tokenization of the rendered prompt
    p1 = tok.render(CONVERSATION)
    assert sent[0] == tok.encode(p1)

    # later turns: the conversation splits at the end of each earlier assistant turn (after <|im_end|>, a
    # special-token seam); between those spans the ids are a full tokenization
    p3 = tok.render(msgs)
    full3 = tok.encode(p3)
    has_cache = hasattr(radixrouter, "PrefixCache")
    spans = []
    for turn in range(2):
        prefix = tok.render(msgs[: 2 + 2 * turn]) + replies[turn] + "<|im_end|>"
        assert p3.startswith(prefix)
        spans.append((len(prefix) - len(replies[turn]) - len("<|im_end|>"), len(prefix)))
    expected: list[int] = []
    canonical: list[int] = []
    prev = 0
    for turn, (a, b) in enumerate(spans):
        between = tok.encode(p3[prev:a])
        expected += between
        canonical += between
        worker_ids = SAMPLED.get(replies[turn]) or tok.encode(replies[turn]) + [IM_END]
        expected += worker_ids if has_cache else tok.encode(p3[a:b])
        canonical += tok.encode(p3[a:b])
        prev = b
    tail = tok.encode(p3[prev:])
    expected += tail
    canonical += tail
    assert canonical == full3  # splitting at these seams does not change a full tokenization
    assert sent[2] == expected
    if has_cache:
        # the worker's own (non-canonical) ids for "hello world ..." survive into later turns
        assert sent[2] != full3
        i = sent[2].index(49122)
        assert sent[2][i:i + len(SAMPLED[LONG])] == SAMPLED[LONG]
    else:
        assert sent[2] == full3


def test_sampling_params_sent_to_the_worker(tok):
    """OpenAI fields map onto SGLang's sampling_params; nothing else (SGLang 400s on unknown keys)."""
    import httpx

    with RecordingWorker(tok, ["fine thanks"] * 3) as worker, RouterProcess([worker.url]) as router:
        body = {
            "model": MODEL, "messages": CONVERSATION, "max_completion_tokens": 33, "temperature": 0.5,
            "top_p": 0.9, "top_k": 20, "min_p": 0.05, "frequency_penalty": 0.1, "presence_penalty": -0.2,
            "repetition_penalty": 1.1, "stop": ["END", "STOP"], "seed": 42, "user": "someone",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"a": {"type": "integer"}}}}},
            "logprobs": True, "top_logprobs": 2,
        }
        r = httpx.post(router.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.post(router.url + "/v1/chat/completions", json={"model": MODEL, "messages": CONVERSATION},
                       timeout=30)
        assert r.status_code == 200, r.text
        r = httpx.post(router.url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": CONVERSATION, "max_tokens": 5, "response_format": {"type": "json_object"}})
        assert r.status_code == 200, r.text
    first, default, json_object = worker.requests
    assert first["sampling_params"] == {
        "max_new_tokens": 33, "temperature": 0.5, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
        "frequency_penalty": 0.1, "presence_penalty": -0.2, "repetition_penalty": 1.1, "stop": ["END", "STOP"],
        "json_schema": json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}},
                                  separators=(",", ":")),
        "sampling_seed": 42,
    }
    assert first["return_logprob"] is True and first["top_logprobs_num"] == 2
    assert first["return_text_in_logprobs"] is True
    assert isinstance(first["rid"], str) and first["rid"]
    assert set(first) == {"input_ids", "sampling_params", "stream", "rid", "return_logprob", "top_logprobs_num",
                          "return_text_in_logprobs"}
    # no max_tokens: null (SGLang then generates up to the context length; an absent key would mean 128)
    assert default["sampling_params"] == {"max_new_tokens": None}
    assert json_object["sampling_params"] == {"max_new_tokens": 5, "json_schema": '{"type":"object"}'}
