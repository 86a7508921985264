"""The parsers inside the router: the router's ASGI app (driven directly, in process) with
``make_output_processor_factory`` as its output processor, in front of a simulated SGLang worker (a real
subprocess on 127.0.0.1) scripted to emit a Qwen3 thinking block and tool calls."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from radixrouter import SseDecoder
from radixrouter.toolcalls import make_output_processor_factory
from simutil import SimWorker, http_json

app_mod = pytest.importorskip("radixrouter.app")
config_mod = pytest.importorskip("radixrouter.config")

MODEL = "sim-qwen3"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MESSAGES = [{"role": "user", "content": "Weather in Paris and Zürich?"}]
REPLY = ('<think>\nThe user wants two cities.\n</think>\n\nChecking both.\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>')
MALFORMED = '<think>\nHmm.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": }}\n</tool_call>'


@pytest.fixture(scope="module")
def worker():
    with SimWorker(model=MODEL, tokenizer="qwen3", decode_tokens_per_s=0) as w:
        yield w


@pytest.fixture()
def app(worker):
    from radixrouter.tokenizer import qwen3_files  # noqa: PLC0415

    cfg = config_mod.Config(worker_urls=[worker.url], model_path=str(qwen3_files()), served_model_name=MODEL,
                            health_check_interval=3600)
    application = app_mod.create_app(cfg)
    application.output_processor_factory = make_output_processor_factory("qwen", "qwen3")
    return application


async def _call(app, body: dict, state: dict) -> tuple[int, bytes]:
    raw = orjson.dumps(body)
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json"),
                                                               (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "state": dict(state)}
    done = asyncio.Event()
    sent_body = False
    status = 0
    chunks: list[bytes] = []

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    done.set()
    return status, b"".join(chunks)


def run_requests(app, bodies: list[dict]) -> list[tuple[int, bytes]]:
    """Lifespan startup, the requests one after another, lifespan shutdown: all in one event loop."""

    async def main():
        inbox: asyncio.Queue = asyncio.Queue()
        outbox: asyncio.Queue = asyncio.Queue()
        state: dict = {}
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.3"}, "state": state}
        life = asyncio.create_task(app(scope, inbox.get, outbox.put))
        await inbox.put({"type": "lifespan.startup"})
        assert (await asyncio.wait_for(outbox.get(), 30))["type"] == "lifespan.startup.complete"
        try:
            return [await _call(app, body, state) for body in bodies]
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await asyncio.wait_for(outbox.get(), 30)
            await asyncio.wait_for(life, 30)

    return asyncio.run(main())


def request(app, worker, reply: str, *, stream: bool) -> tuple[int, bytes]:
    status, _ = http_json("POST", worker.url + "/sim/fault", {"reply": reply})
    assert status == 200
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "stream": stream, "max_tokens": 200}
    return run_requests(app, [body])[0]


def sdk_accumulate(raw: bytes):
    events = SseDecoder().feed(raw)
    assert events[-1].data == "[DONE]"
    state = ChatCompletionStreamState()
    for ev in events[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate_json(ev.data))
    return state.get_final_completion().choices[0]


def test_tool_calls_streamed_and_not(app, worker):
    status, raw = request(app, worker, REPLY, stream=False)
    assert status == 200, raw
    full = ChatCompletion.model_validate_json(raw).choices[0]
    assert full.finish_reason == "tool_calls"
    assert full.message.content == "Checking both."
    assert full.message.model_extra.get("reasoning_content") == "The user wants two cities."
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in full.message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Zürich"})]
    assert len({c.id for c in full.message.tool_calls}) == 2

    status, raw = request(app, worker, REPLY, stream=True)
    assert status == 200
    streamed = sdk_accumulate(raw)
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.content == "Checking both."
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in full.message.tool_calls]
    # the chunks carry tool_calls fragments in OpenAI's shape
    frags = [f for ev in SseDecoder().feed(raw)[:-1] for ch in orjson.loads(ev.data)["choices"]
             for f in ch["delta"].get("tool_calls", ())]
    assert [f["index"] for f in frags if "id" in f] == [0, 1]
    assert all(f["type"] == "function" and f["function"]["arguments"] == "" for f in frags if "id" in f)


def test_malformed_tool_call_comes_back_as_content(app, worker):
    for stream in (False, True):
        status, raw = request(app, worker, MALFORMED, stream=stream)
        assert status == 200
        choice = sdk_accumulate(raw) if stream else ChatCompletion.model_validate_json(raw).choices[0]
        assert choice.finish_reason == "stop"
        assert not choice.message.tool_calls
        assert choice.message.content == MALFORMED.split("</think>\n\n")[1]
