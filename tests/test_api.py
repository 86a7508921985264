"""The router through the official `openai` client (a real granian process, simulated SGLang workers)."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from simutil import SimWorker, SimWorkers
from test_router import KEY, MODEL, RouterProcess

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three rivers."}]


@pytest.fixture(scope="module")
def sims():
    with SimWorkers(2, model=MODEL, tokenizer="qwen3") as ws:
        yield ws


@pytest.fixture(scope="module")
def router(sims):
    with RouterProcess(sims.urls, api_key=KEY) as r:
        yield r


@pytest.fixture()
def client(router):
    with openai.OpenAI(base_url=router.url + "/v1", api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def test_chat_non_streaming(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSGS, max_tokens=10, temperature=0)
    assert raw.headers["x-radixrouter-worker"].startswith("http://127.0.0.1:")
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=10, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)


def test_chat_streaming_include_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=7, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    u = chunks[-1].usage
    assert u.completion_tokens == sum(1 for c in chunks[:-1] if c.choices and c.choices[0].delta.content)
    assert u.prompt_tokens_details.cached_tokens >= 0
    assert all(c.usage is None for c in chunks[:-1])


def test_cached_tokens_grow_on_the_same_worker(sims):
    with RouterProcess(sims.urls[:1]) as router, openai.OpenAI(base_url=router.url + "/v1", api_key="x",
                                                                max_retries=0) as c:
        msgs = [{"role": "user", "content": "A long question about the history of caches " * 5}]
        c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
        r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
        assert r.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens // 2


def test_n2(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6, n=2, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens <= 12
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6, n=2, seed=7, stream=True,
                                            stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    roles = set()
    finishes = {}
    usage = None
    for ch in stream:
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            if c.delta.role:
                roles.add(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert roles == {0, 1} and set(finishes) == {0, 1}
    assert texts[0] == r.choices[0].message.content and texts[1] == r.choices[1].message.content
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_stop_sequences(client, sims):
    for w in sims:
        w.fault(reply="alpha beta gamma delta epsilon", count=2)
    try:
        r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, stop=[" gamma"])
        assert r.choices[0].message.content == "alpha beta"
        assert r.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, stop=" delta",
                                                stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "alpha beta gamma"
        assert chunks[-1].choices[0].finish_reason == "stop"
    finally:
        for w in sims:
            w.clear_faults()


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens
    assert "".join(e.token for e in lp) == r.choices[0].message.content
    assert all(e.logprob <= 0 and len(e.top_logprobs) <= 2 for e in lp)
    stream = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, logprobs=True, stream=True)
    entries = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in entries] == [e.token for e in lp]


def test_response_format_and_seed_are_accepted(client):
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5, seed=3,
                                       response_format={"type": "json_object"})
    assert r.choices[0].message.content is not None
    r = client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6)
    assert r.object == "text_completion" and r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 6
    r2 = client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=3)
    assert [c.index for c in r2.choices] == [0, 1]
    ids = client.completions.create(model=MODEL, prompt=[785, 6722, 315, 9625, 374], max_tokens=3)
    assert ids.choices[0].text
    echo = client.completions.create(model=MODEL, prompt="Echo this", max_tokens=3, echo=True)
    assert echo.choices[0].text.startswith("Echo this")
    stream = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_error_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=5)
    assert "messages" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=-3)


def test_error_401(router):
    with openai.OpenAI(base_url=router.url + "/v1", api_key="wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=5)


def test_error_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MSGS, max_tokens=5)
    assert e.value.code == "model_not_found"


def test_error_413_and_429():
    with SimWorker(model=MODEL, tokenizer="qwen3", decode_tokens_per_s=20) as w, \
            RouterProcess([w.url], max_body_bytes=2048, max_concurrent_requests=1) as router, \
            openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=30) as c:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "y" * 5000}], max_tokens=2)
        assert e.value.status_code == 413
        # one slow stream holds the only slot; a second request gets 429 with Retry-After
        started = threading.Event()
        done: list[str] = []

        def hold():
            s = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, stream=True)
            for _ in s:
                started.set()
            done.append("ok")

        t = threading.Thread(target=hold)
        t.start()
        assert started.wait(10)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
        assert e.value.response.headers["retry-after"] == "1"
        t.join(30)
        assert done == ["ok"]
        deadline = time.monotonic() + 5
        while True:  # the slot frees when the stream ends
            try:
                c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_streamed_worker_failure_raises_in_the_sdk(sims):
    with RouterProcess(sims.urls[:1]) as router, openai.OpenAI(base_url=router.url + "/v1", api_key="x",
                                                                max_retries=0) as c:
        sims[0].fault(close_after_tokens=2, count=1)
        stream = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=20, stream=True)
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass


def test_completions_streaming_variants(client):
    # several prompts x n, echo, logprobs: each choice index streams its own text, then finish
    full = client.completions.create(model=MODEL, prompt=["alpha", "beta"], n=2, max_tokens=4, seed=1)
    assert sorted(c.index for c in full.choices) == [0, 1, 2, 3]
    stream = client.completions.create(model=MODEL, prompt=["alpha", "beta"], n=2, max_tokens=4, seed=1,
                                       stream=True, echo=True, logprobs=1)
    texts: dict[int, str] = {}
    tokens: dict[int, list] = {}
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.logprobs and c.logprobs.tokens:
                tokens.setdefault(c.index, []).extend(c.logprobs.tokens)
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2, 3}
    by_index = {c.index: c.text for c in full.choices}
    for i in range(4):
        prompt = ["alpha", "beta"][i // 2]
        assert texts[i] == prompt + by_index[i]  # echo first, then the same text as without streaming
        assert "".join(tokens[i]) == by_index[i]


def test_two_granian_workers(sims):
    with RouterProcess(sims.urls, workers=2) as router, openai.OpenAI(base_url=router.url + "/v1", api_key="x",
                                                                       max_retries=0) as c:
        for _ in range(6):
            r = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4)
            assert r.choices[0].message.content
