"""Protocol conformance of the simulated SGLang worker, over real HTTP against a real granian process."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from radixrouter.sim.tokenizer import SimTokenizer
from simutil import SimWorker

QWEN_EOS = 151645  # <|im_end|>


@pytest.fixture(scope="module")
def tok() -> SimTokenizer:
    return SimTokenizer.load(tokenizer="qwen3")


@pytest.fixture(scope="module")
def worker():
    with SimWorker(model="sim-model", tokenizer="qwen3", min_output_tokens=8, max_output_tokens=40) as w:
        yield w


@pytest.fixture(scope="module")
def slow_worker():
    # 200 tokens/s: long generations take seconds, so aborts and disconnects land mid-generation
    with SimWorker(model="slow", tokenizer="qwen3", decode_tokens_per_s=200) as w:
        yield w


@pytest.fixture(scope="module")
def incr_worker():
    with SimWorker(model="incr", tokenizer="qwen3", incremental_streaming_output=True) as w:
        yield w


@pytest.fixture()
def client(worker):
    with httpx.Client(base_url=worker.url, timeout=30) as c:
        yield c


def gen(c: httpx.Client, **body) -> dict:
    r = c.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse_frames(raw: bytes) -> list[str]:
    """Split a response body into SSE data payloads, asserting the exact framing `data: <x>\\n\\n`."""
    assert raw.endswith(b"\n\n"), raw[-50:]
    parts = raw.split(b"\n\n")
    assert parts[-1] == b""
    out = []
    for p in parts[:-1]:
        assert p.startswith(b"data: ") and b"\n" not in p, p
        out.append(p[6:].decode())
    return out


def stream_events(c: httpx.Client, path: str, body: dict) -> list[dict]:
    with c.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read()
    frames = sse_frames(raw)
    assert frames[-1] == "[DONE]" and "[DONE]" not in frames[:-1]
    return [json.loads(f) for f in frames[:-1]]


# ------------------------------------------------------------------------------------------ info endpoints
def test_health_and_info_endpoints(client, worker, tok):
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200
    info = client.get("/model_info").json()
    assert info == client.get("/get_model_info").json()
    assert info["is_generation"] is True and info["weight_version"] == "default"
    assert (
        info["model_path"] == tok.model_dir
    )  # a local folder with tokenizer.json: sglang-router can load it
    server = client.get("/server_info").json()
    assert server == client.get("/get_server_info").json() | {"internal_states": server["internal_states"]}
    assert server["served_model_name"] == "sim-model" and server["simulated"] is True
    assert server["version"].endswith("-sim")
    load = client.get("/get_load").json()
    assert load == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["sim-model"]
    assert client.get("/v1/models/sim-model").json()["id"] == "sim-model"
    assert client.get("/v1/models/other").status_code == 404
    metrics = client.get("/metrics").text
    assert 'sglang:num_running_reqs{model_name="sim-model"} 0' in metrics
    assert client.get("/nope").status_code == 404
    assert client.get("/generate").status_code == 405


# ------------------------------------------------------------------------------------------ /generate
def test_generate_shapes_and_stop_token_asymmetry(client, tok):
    out = gen(client, text="Tell me a story.", sampling_params={"max_new_tokens": 200})
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    for k in (
        "id",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "weight_version",
        "e2e_latency",
    ):
        assert k in meta, k
    assert len(meta["id"]) == 32
    assert meta["prompt_tokens"] == len(tok.encode("Tell me a story."))
    assert meta["completion_tokens"] == len(out["output_ids"])
    # natural end: EOS id kept in output_ids, not in the text
    assert meta["finish_reason"] == {"type": "stop", "matched": QWEN_EOS}
    assert out["output_ids"][-1] == QWEN_EOS and "<|im_end|>" not in out["text"]
    assert tok.decode(out["output_ids"]) == out["text"]  # made of the tokenizer's real tokens
    assert out["text"].strip()


def test_generate_is_deterministic_per_prompt_and_seed(client, tok):
    a = gen(client, text="same prompt", sampling_params={"max_new_tokens": 30})
    b = gen(client, input_ids=tok.encode("same prompt"), sampling_params={"max_new_tokens": 30})
    assert a["output_ids"] == b["output_ids"] and a["text"] == b["text"]
    c = gen(client, text="same prompt", sampling_params={"max_new_tokens": 30, "sampling_seed": 7})
    assert c["output_ids"] != a["output_ids"]
    d = gen(client, text="other prompt", sampling_params={"max_new_tokens": 30})
    assert d["output_ids"] != a["output_ids"]
    assert a["meta_info"]["id"] != b["meta_info"]["id"]
    assert gen(client, text="x", rid="my-rid")["meta_info"]["id"] == "my-rid"


def test_max_new_tokens_and_ignore_eos(client):
    out = gen(client, text="count", sampling_params={"max_new_tokens": 5})
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert len(out["output_ids"]) == 5 == out["meta_info"]["completion_tokens"]
    out = gen(client, text="count", sampling_params={"max_new_tokens": 300, "ignore_eos": True})
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 300}
    assert QWEN_EOS not in out["output_ids"]
    out = gen(client, text="count", sampling_params={"max_new_tokens": 0})
    assert out["output_ids"] == [] and out["meta_info"]["finish_reason"]["type"] == "length"


def test_stop_string_trimmed_from_text(client, tok):
    base = gen(client, text="stop words", sampling_params={"max_new_tokens": 30, "ignore_eos": True})
    word = tok.decode([base["output_ids"][6]])  # e.g. " river"
    assert word.strip()
    out = gen(
        client, text="stop words", sampling_params={"max_new_tokens": 30, "ignore_eos": True, "stop": [word]}
    )
    cut = base["text"].index(word)
    assert out["text"] == base["text"][:cut]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": word}
    assert len(out["output_ids"]) <= 7 and out["output_ids"] == base["output_ids"][: len(out["output_ids"])]
    kept = gen(
        client,
        text="stop words",
        sampling_params={"max_new_tokens": 30, "ignore_eos": True, "stop": word, "no_stop_trim": True},
    )
    assert kept["text"] == base["text"][: cut + len(word)]


def test_stop_token_ids_keep_id_trim_text(client, tok):
    base = gen(client, text="stop ids", sampling_params={"max_new_tokens": 20, "ignore_eos": True})
    stop_id = base["output_ids"][4]
    k = base["output_ids"].index(stop_id)
    out = gen(
        client,
        text="stop ids",
        sampling_params={"max_new_tokens": 20, "ignore_eos": True, "stop_token_ids": [stop_id]},
    )
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}
    assert out["output_ids"] == base["output_ids"][: k + 1]  # the stop id is kept
    assert out["text"] == tok.decode(base["output_ids"][:k])  # its text is not


def test_n_samples_and_batches(client):
    outs = gen(client, text="sample", sampling_params={"n": 3, "max_new_tokens": 12, "temperature": 0.8})
    assert isinstance(outs, list) and [o["index"] for o in outs] == [0, 1, 2]
    assert len({tuple(o["output_ids"]) for o in outs}) == 3
    greedy = gen(client, text="sample", sampling_params={"n": 2, "max_new_tokens": 12, "temperature": 0})
    assert greedy[0]["output_ids"] == greedy[1]["output_ids"]
    batch = gen(client, text=["first", "second"], sampling_params={"max_new_tokens": 4})
    assert [b["index"] for b in batch] == [0, 1] and batch[0]["output_ids"] != batch[1]["output_ids"]


def test_logprob_triples(client, tok):
    out = gen(client, text="lp", return_logprob=True, sampling_params={"max_new_tokens": 6})
    lps = out["meta_info"]["output_token_logprobs"]
    assert [t[1] for t in lps] == out["output_ids"]
    assert all(isinstance(t[0], float) and t[0] < 0 and t[2] is None for t in lps)
    assert out["meta_info"]["input_token_logprobs"] == []
    out = gen(
        client,
        text="lp",
        return_logprob=True,
        return_text_in_logprobs=True,
        top_logprobs_num=2,
        logprob_start_len=0,
        sampling_params={"max_new_tokens": 6},
    )
    meta = out["meta_info"]
    assert [t[2] for t in meta["output_token_logprobs"]] == [tok.decode([i]) for i in out["output_ids"]]
    assert [t[1] for t in meta["input_token_logprobs"]] == tok.encode("lp")
    assert meta["input_token_logprobs"][0][0] is None
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])
    assert "output_token_logprobs" not in gen(client, text="lp")["meta_info"]


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"text": "x", "sampling_params": {"max_new_tokens": 4, "bogus": 1}},
            "unexpected keyword argument 'bogus'",
        ),
        ({"text": "x", "sampling_params": {"temperature": -1}}, "temperature"),
        ({"text": "x", "sampling_params": {"top_p": 0}}, "top_p"),
        ({"text": "x", "sampling_params": {"top_k": 0}}, "top_k"),
        ({"text": "x", "sampling_params": {"max_new_tokens": "ten"}}, "max_new_tokens"),
        ({"text": "x", "sampling_params": {"min_new_tokens": 9, "max_new_tokens": 3}}, "min_new_tokens"),
        ({"text": "x", "sampling_params": {"presence_penalty": 3}}, "presence_penalty"),
        ({"text": "x", "sampling_params": {"regex": "a", "json_schema": "{}"}}, "Only one of"),
        ({"text": "x", "sampling_params": {"stop": 5}}, "stop"),
        ({"text": "x", "sampling_params": [1]}, "sampling_params"),
        ({"sampling_params": {}}, "Either text, input_ids"),
        ({"text": "x", "input_ids": [1]}, "Either text, input_ids"),
        ({"input_ids": [1, -2]}, "input_ids"),
        ({"input_ids": [10**9]}, "input_ids"),
        ({"input_ids": []}, "empty"),
        ({"text": 5}, "text"),
        ({"text": "x", "top_logprobs_num": -1}, "top_logprobs_num"),
        ({"text": "x", "sampling_params": {"max_new_tokens": 10**6}}, "context length"),
    ],
)
def test_generate_bad_requests_are_400(client, body, message):
    r = client.post("/generate", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def test_generate_bad_json_is_400(client):
    for raw in (b"{", b"[1, 2]", b""):
        r = client.post("/generate", content=raw)
        assert r.status_code == 400 and "error" in r.json()


def test_unknown_top_level_keys_are_ignored(client):
    assert (
        gen(client, text="x", lora_path=None, extra_key="k", priority=1, anything={"a": 1})["text"]
        is not None
    )


# ------------------------------------------------------------------------------------------ streaming
def test_stream_cumulative_events(client):
    body = {"text": "stream me", "sampling_params": {"max_new_tokens": 25}}
    full = gen(client, **body)
    events = stream_events(client, "/generate", body | {"stream": True})
    assert len(events) == len(full["output_ids"])
    for prev, cur in zip(events, events[1:], strict=False):
        assert cur["text"].startswith(prev["text"])
        assert cur["output_ids"][: len(prev["output_ids"])] == prev["output_ids"]
        assert prev["meta_info"]["finish_reason"] is None
    last = events[-1]
    assert last["text"] == full["text"] and last["output_ids"] == full["output_ids"]
    assert last["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
    assert last["meta_info"]["completion_tokens"] == len(full["output_ids"])
    assert "index" not in last


def test_stream_interval_groups_tokens(client):
    body = {
        "text": "interval",
        "stream": True,
        "sampling_params": {"max_new_tokens": 12, "stream_interval": 4, "ignore_eos": True},
    }
    events = stream_events(client, "/generate", body)
    assert [len(e["output_ids"]) for e in events] == [1, 5, 9, 12]


def test_stream_incremental_events_are_disjoint(incr_worker):
    with httpx.Client(base_url=incr_worker.url, timeout=30) as c:
        body = {"text": "stream me", "sampling_params": {"max_new_tokens": 25}, "return_logprob": True}
        full = gen(c, **body)
        events = stream_events(c, "/generate", body | {"stream": True})
        assert "".join(e["text"] for e in events) == full["text"]
        assert [i for e in events for i in e["output_ids"]] == full["output_ids"]
        assert all(len(e["output_ids"]) <= 1 for e in events)
        lps = [t for e in events for t in e["meta_info"]["output_token_logprobs"]]
        assert lps == full["meta_info"]["output_token_logprobs"]
        assert events[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]
        assert c.get("/server_info").json()["stream_output"] is True


def test_stream_n_samples_carry_index(client):
    events = stream_events(
        client,
        "/generate",
        {"text": "many", "stream": True, "sampling_params": {"n": 2, "max_new_tokens": 5}},
    )
    assert {e["index"] for e in events} == {0, 1}
    finals = [e for e in events if e["meta_info"]["finish_reason"] is not None]
    assert sorted(e["index"] for e in finals) == [0, 1]


# ------------------------------------------------------------------------------------------ abort / disconnect
def test_abort_request_streaming(slow_worker):
    async def run() -> tuple[list[dict], dict]:
        async with httpx.AsyncClient(base_url=slow_worker.url, timeout=30) as c:
            body = {
                "text": "long",
                "rid": "abort-me",
                "stream": True,
                "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True},
            }
            events = []
            async with c.stream("POST", "/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    if line == "data: [DONE]":
                        break
                    events.append(json.loads(line.removeprefix("data: ")))
                    if len(events) == 3:
                        a = await c.post("/abort_request", json={"rid": "abort-me"})
                        assert a.status_code == 200 and a.content == b""
            return events, (await c.get("/sim/stats")).json()

    events, stats = asyncio.run(run())
    fin = events[-1]["meta_info"]["finish_reason"]
    assert fin["type"] == "abort" and "abort-me" in fin["message"]
    assert events[-1]["meta_info"]["completion_tokens"] < 2000
    assert "abort-me" in stats["abort_rids"] and stats["aborted"] >= 1


def test_abort_during_stall_and_abort_all(slow_worker):
    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=slow_worker.url, timeout=30) as c:
            reqs = [
                asyncio.ensure_future(c.post("/generate", json={"text": f"q{i}", "sim": {"stall_s": 60}}))
                for i in range(3)
            ]
            for _ in range(1000):  # bounded wait until all three are running
                if (await c.get("/sim/stats")).json()["running_requests"] == 3:
                    break
                await asyncio.sleep(0.01)
            await c.post("/abort_request", json={"abort_all": True})
            return [(await r).json() for r in reqs]

    outs = asyncio.run(run())
    assert [o["meta_info"]["finish_reason"]["type"] for o in outs] == ["abort"] * 3
    assert all(o["meta_info"]["completion_tokens"] == 0 for o in outs)


def test_client_disconnect_stops_generation(slow_worker):
    before = slow_worker.stats()

    async def run() -> None:
        async with httpx.AsyncClient(base_url=slow_worker.url, timeout=30) as c:
            body = {
                "text": "bye",
                "stream": True,
                "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True},
            }
            async with c.stream("POST", "/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break  # leave after the first event: the connection is closed
            # non-streaming request stalled before its first token, then the client gives up
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/generate", json={"text": "x", "sim": {"stall_s": 60}}, timeout=0.3)

    asyncio.run(run())
    for _ in range(1000):  # bounded: at most ~10 s on a very busy machine
        s = slow_worker.stats()
        if s["running"] == 0 and s["disconnects"] >= before["disconnects"] + 2:
            break
        time.sleep(0.01)
    assert s["running"] == 0 and s["disconnects"] == before["disconnects"] + 2
    assert s["completion_tokens"] - before["completion_tokens"] < 2000


# ------------------------------------------------------------------------------------------ faults
def test_fault_status_count(client, worker):
    worker.fault(status=503, count=2)
    assert [client.post("/generate", json={"text": "f"}).status_code for _ in range(3)] == [503, 503, 200]
    worker.fault(status=429, body={"error": {"message": "slow down"}})
    r = client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 429 and r.json() == {"error": {"message": "slow down"}}
    r = client.post("/generate", json={"text": "f", "sim": {"status": 500}})
    assert r.status_code == 500 and "error" in r.json()
    assert client.post("/sim/fault", json={"status": 99}).status_code == 400
    assert client.post("/sim/fault", json={"explode": True}).status_code == 400
    worker.fault(status=503, count=-1)
    assert client.post("/generate", json={"text": "f"}).status_code == 503
    worker.clear_faults()
    assert client.post("/generate", json={"text": "f"}).status_code == 200


def test_fault_close_after_tokens(client, worker):
    worker.fault(close_after_tokens=3)
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/generate", json={"text": "cut", "stream": True}) as r:
            for line in r.iter_lines():
                lines.append(line)
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: ")]
    assert len(events) == 3 and events[-1]["meta_info"]["finish_reason"] is None
    worker.fault(close_after_tokens=2)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/generate", json={"text": "cut"})
    assert client.post("/generate", json={"text": "ok"}).status_code == 200  # the worker itself is fine


def test_fault_scripted_reply_and_stall(client, worker, tok):
    script = (
        '<think>\nadd them\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    )
    worker.fault(reply=script, stall_s=0.05)
    out = gen(client, text="what is 1+1?", sampling_params={"skip_special_tokens": False})
    assert out["text"] == script
    assert out["output_ids"] == tok.encode(script) + [QWEN_EOS]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}], "sim": {"reply": "Hi there."}},
    )
    assert r.json()["choices"][0]["message"]["content"] == "Hi there."


def test_duplicate_rid_and_linger(client, worker):
    """A rid the worker still holds is rejected like SGLang does; `linger_s` keeps an ended request's rid."""
    # a linger far longer than the gap between two requests, however busy the machine
    worker.fault(linger_s=60)
    assert client.post("/generate", json={"text": "a", "rid": "same-1"}).status_code == 200
    r = client.post("/generate", json={"text": "b", "rid": "same-1"})
    assert r.status_code == 400 and "Duplicate request ID: same-1" in r.json()["error"]["message"]
    assert client.post("/generate", json={"text": "c", "rid": "same-2"}).status_code == 200  # no fault: no linger
    assert client.post("/generate", json={"text": "d", "rid": "same-2"}).status_code == 200
    # the rid is free again once the linger is over
    worker.fault(linger_s=0.2)
    assert client.post("/generate", json={"text": "e", "rid": "same-3"}).status_code == 200
    deadline = time.monotonic() + 10
    while client.post("/generate", json={"text": "f", "rid": "same-3"}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.post("/sim/fault", json={"linger_s": -1}).status_code == 400


def test_unhealthy_and_reset(client, worker):
    worker.set_healthy(False)
    assert client.get("/health").status_code == 503
    assert client.get("/health_generate").status_code == 503
    assert client.post("/sim/health", json={"healthy": "no"}).status_code == 400
    worker.fault(status=500, count=5)
    stats = worker.reset()
    assert stats["requests"] == 0 and stats["pending_faults"] == [] and stats["healthy"] is True
    assert client.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------ OpenAI endpoints
def test_openai_chat_non_streaming_and_streaming(worker, tok):
    c = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused")
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello?"}]
    r = c.chat.completions.create(model="sim-model", messages=messages, max_tokens=30)
    prompt = tok.render(messages)
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    r2 = c.chat.completions.create(model="sim-model", messages=messages, max_tokens=30)
    assert (
        r2.usage.prompt_tokens_details.cached_tokens == r2.usage.prompt_tokens
    )  # repeated prompt: all cached
    assert r2.choices[0].message.content == r.choices[0].message.content

    chunks = list(
        c.chat.completions.create(
            model="sim-model",
            messages=messages,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({ch.id for ch in chunks}) == 1
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_openai_chat_raw_stream_framing(client):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    events = stream_events(client, "/v1/chat/completions", body)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert "usage" not in events[0]  # only with stream_options.include_usage


def test_openai_completions(worker):
    c = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused")
    r = c.completions.create(model="sim-model", prompt="Once upon a time", max_tokens=10, stop=None)
    assert r.object == "text_completion" and r.choices[0].text
    s = list(c.completions.create(model="sim-model", prompt="Once upon a time", max_tokens=10, stream=True))
    assert "".join(ch.choices[0].text for ch in s) == r.choices[0].text
    assert s[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_openai_bad_requests(worker):
    c = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="sim-model", messages=[], max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "x"}], temperature=-3
        )
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="sim-model", prompt=[], max_tokens=3)
    with httpx.Client(base_url=worker.url) as h:
        r = h.post("/v1/chat/completions", content=b"{nope")
        assert r.status_code == 400 and r.json()["object"] == "error"


# ------------------------------------------------------------------------------------------ tokenizers
def test_model_path_and_byte_fallback(tok):
    with (
        SimWorker(model="mp", tokenizer=None, model_path=tok.model_dir) as w,
        httpx.Client(base_url=w.url) as c,
    ):
        assert c.get("/model_info").json()["model_path"] == tok.model_dir
        assert gen(c, text="hello", sampling_params={"max_new_tokens": 3})["output_ids"][0] < tok.vocab_size
    with SimWorker(model="bytes", tokenizer=None) as w, httpx.Client(base_url=w.url) as c:
        out = gen(c, text="héllo", sampling_params={"max_new_tokens": 200})
        assert out["meta_info"]["prompt_tokens"] == len("héllo".encode())
        assert out["output_ids"][-1] == 258 and bytes(out["output_ids"][:-1]).decode() == out["text"]
        r = c.post(
            "/v1/chat/completions", json={"model": "bytes", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 10  # ChatML template rendered


def test_openai_n_logprobs_and_stream_abort(worker, slow_worker):
    c = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": "pick"}]
    r = c.chat.completions.create(
        model="sim-model", messages=msgs, max_tokens=8, n=2, temperature=0.9, logprobs=True
    )
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    lps = r.choices[0].logprobs.content
    assert "".join(t.token for t in lps) == r.choices[0].message.content
    assert r.usage.completion_tokens == sum(len(ch.logprobs.content) for ch in r.choices)
    comp = c.completions.create(model="sim-model", prompt="x", max_tokens=4, logprobs=1)
    assert len(comp.choices[0].logprobs.token_logprobs) == 4

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=slow_worker.url, timeout=30) as h:
            body = {
                "model": "slow",
                "messages": msgs,
                "max_tokens": 2000,
                "ignore_eos": True,
                "stream": True,
                "rid": "chat-abort",
            }
            chunks = []
            async with h.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunks.append(json.loads(line[6:]))
                    if len(chunks) == 3:
                        await h.post("/abort_request", json={"rid": "chat-abort"})
            return chunks

    chunks = asyncio.run(run())
    assert chunks[-1]["choices"][0]["finish_reason"] == "abort"
    assert len(chunks) < 100
