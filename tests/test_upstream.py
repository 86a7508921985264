"""OpenAI-compatible upstreams behind a real `radixrouter serve` (granian) process: the official `openai` client
against the router in front of (a) the simulated worker's /v1/chat/completions and (b) a deliberately sloppy
upstream written here (``data:`` without the space, CRLF line ends, comments, multi-line data, ``event:``
lines), which also records what it receives (headers, bodies, disconnects)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from simutil import SimWorker, free_port, http_json
from test_router import MODEL, RouterProcess

SIM_MODEL = "sim-model"
CLIENT_KEY = "sk-client-6f1d2c77e0"
UPSTREAM_KEY = "sk-upstream-93a4b1c5d8"
MSG = [{"role": "user", "content": "Say hello."}]
WORDS = ["Hel", "lo", ",", " wor", "ld", "!"]


# ------------------------------------------------------------------------------------------ the sloppy upstream


class SloppyUpstream:
    """A tiny HTTP/1.1 OpenAI-compatible server (asyncio, own thread) that streams the way careless upstreams
    do. The first user message steers it: "status N" -> an error with status N; "slow" -> 200 chunks 20 ms
    apart; "error-mid" -> two chunks then an error event; "truncate" -> two chunks then EOF without [DONE]."""

    def __init__(self, name: str = "sloppy", tls: ssl.SSLContext | None = None):
        self.name = name
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1"
        self.tls = tls
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        self.disconnects = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SloppyUpstream:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, ssl=self.tls)
            self._ready.set()
            async with server:
                await self._stop.wait()

        self.loop.run_until_complete(main())
        self.loop.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for ln in lines[1:]:
                    if ln:
                        k, _, v = ln.partition(":")
                        headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                body = json.loads(await reader.readexactly(n)) if n else None
                self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
                await self._answer(method, path, body, writer)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body, writer) -> None:
        if method == "GET" and path == "/v1/models":
            return await self._json(writer, 200, {"object": "list", "data": [
                {"id": f"{self.name}-a", "object": "model"}, {"id": f"{self.name}-b", "object": "model"}]})
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return await self._json(writer, 404, {"error": {"message": f"no route {path}", "type": "not_found",
                                                            "param": None, "code": None}})
        text = body["messages"][0]["content"] if "messages" in body else body.get("prompt", "")
        if text.startswith("status "):
            status = int(text.split()[1])
            return await self._json(writer, status, {"error": {
                "message": f"sloppy says {status}", "type": "invalid_request_error" if status < 500 else "server_error",
                "param": "messages" if status == 400 else None, "code": f"code_{status}"}})
        model = body.get("model")
        if not body.get("stream"):
            return await self._json(writer, 200, {
                "id": "chatcmpl-sloppy", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13},
                "upstream_extra": body.get("x_custom")}, extra=b"x-request-id: req-sloppy-1\r\n"
                                                            b"x-ratelimit-remaining-requests: 99\r\n"
                                                            b"set-cookie: secret=1\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                     b"x-request-id: req-sloppy-2\r\n\r\n")

        async def chunk(data: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

        def ev(delta: dict | None, finish=None, usage=None) -> dict:
            return {"id": "chatcmpl-sloppy", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **({"usage": usage} if usage is not None else {})}

        await chunk(b": sloppy-processing\r\n\r\n")
        await chunk(b"data:" + json.dumps(ev({"role": "assistant", "content": ""})).encode() + b"\r\n\r\n")
        words = WORDS * 40 if text == "slow" else WORDS
        for i, w in enumerate(words):
            if text == "slow":
                await asyncio.sleep(0.02)
            if text in ("error-mid", "truncate") and i == 2:
                if text == "error-mid":
                    await chunk(b'data:{"error":{"message":"upstream overloaded","type":"server_error",'
                                b'"param":null,"code":"overloaded"}}\r\n\r\n')
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            data = json.dumps(ev({"content": w}))
            if i % 3 == 1:  # one JSON split over two data lines (joined with LF: still valid JSON)
                cut = data.index('"choices"')
                await chunk(b"event: message\r\ndata:" + data[:cut].encode() + b"\r\ndata: "
                            + data[cut:].encode() + b"\r\n\r\n")
            elif i % 3 == 2:  # split across writes in the middle of a line, LF only
                raw = b"data:" + data.encode() + b"\n\n"
                await chunk(raw[:9])
                await chunk(raw[9:])
            else:
                await chunk(b"data:" + data.encode() + b"\r\n\r\n")
        await chunk(b"data:" + json.dumps(ev({}, "stop")).encode() + b"\r\n\r\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await chunk(b": usage next\r\ndata:" + json.dumps(ev(None, usage={
                "prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)})).encode()
                        + b"\r\n\r\n")
        await chunk(b"data:[DONE]\r\n\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _json(self, writer, status: int, obj, extra: bytes = b"") -> None:
        data = json.dumps(obj).encode()
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                     % (status, len(data), extra, data))
        await writer.drain()


# ------------------------------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def sim():
    with SimWorker(model=SIM_MODEL, tokenizer="qwen3", decode_tokens_per_s=0) as w:
        yield w


@pytest.fixture(scope="module")
def sloppy():
    with SloppyUpstream() as s:
        yield s


@pytest.fixture(scope="module")
def router(sim, sloppy, tmp_path_factory):
    """Native: none. Relayed: `simchat` -> the sim's OpenAI server (upstream name sim-model), `sloppy` -> the
    sloppy upstream with its key; the client's own key is the router's --api-key."""
    cfg = tmp_path_factory.mktemp("cfg") / "models.toml"
    cfg.write_text(f'[models.simchat]\nupstreams = [{{ url = "{sim.url}/v1", model = "{SIM_MODEL}" }}]\n'
                   # the error tests get their own model (pool, breaker) on the same upstream; the 5xx case a
                   # model of its own again: its failures open that pool's breaker, and a 4xx case run after it
                   # (another test order) would get the router's 503 "no worker available"
                   f'[models.sloppy-err]\nupstreams = [{{ url = "{sloppy.url}", api_key_env = "UPSTREAM_KEY" }}]\n'
                   f'[models.sloppy-5xx]\nupstreams = [{{ url = "{sloppy.url}", api_key_env = "UPSTREAM_KEY" }}]\n')
    with RouterProcess([], qwen3=False, env={"UPSTREAM_KEY": UPSTREAM_KEY}, api_key=CLIENT_KEY,
                       openai_url=f"sloppy={sloppy.url}", openai_api_key_env="UPSTREAM_KEY", config=str(cfg),
                       log_level="debug", health_check_interval=3600) as r:
        yield r


def client(router, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30, **kw)


def strict_reader(raw: bytes) -> list[bytes]:
    """What one-api keeps of a stream: lines (LF, one trailing CR stripped) starting with the 6 bytes `data: `."""
    out = []
    for line in raw.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line.startswith(b"data: "):
            out.append(line[6:])
    return out


def raw_stream(router, body: dict) -> httpx.Response:
    return httpx.post(router.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {CLIENT_KEY}"})


# ------------------------------------------------------------------------------------------ tests


def test_models_lists_every_relayed_model(router):
    ids = [m.id for m in client(router).models.list()]
    assert sorted(ids) == ["simchat", "sloppy", "sloppy-5xx", "sloppy-err"]


@pytest.mark.parametrize("model", ["simchat", "sloppy"])
def test_openai_client_stream_and_not(router, model):
    c = client(router)
    full = c.chat.completions.create(model=model, messages=MSG, max_tokens=16)
    assert full.model in (model, SIM_MODEL) and full.choices[0].message.content
    assert full.usage.prompt_tokens > 0 and full.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model=model, messages=MSG, max_tokens=16, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    if model == "sloppy":
        assert text == full.choices[0].message.content == "".join(WORDS)
    else:
        assert text and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_sloppy_stream_reaches_a_strict_reader_whole(router, sloppy):
    """The upstream writes `data:` without the space, CRLF, comments, split lines and multi-line data; a
    reader that keeps only `data: ` lines (one-api) still gets every chunk, the usage chunk and [DONE]."""
    r = raw_stream(router, {"model": "sloppy", "messages": MSG, "stream": True,
                            "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    assert b"\r" not in r.content and b"event:" not in r.content
    assert r.headers["x-request-id"] == "req-sloppy-2"
    datas = strict_reader(r.content)
    assert datas[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    # role chunk + one per word + finish chunk + usage chunk: nothing lost, nothing added
    assert len(chunks) == 1 + len(WORDS) + 1 + 1
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "".join(WORDS)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(WORDS)
    # every line of the output is `data: ...` or blank (the comments are not forwarded)
    assert all(ln.startswith(b"data: ") or ln == b"" for ln in r.content.split(b"\n"))


def test_unknown_fields_pass_through_and_model_is_mapped(router, sloppy, sim):
    before = len(sloppy.requests)
    r = raw_stream(router, {"model": "sloppy", "messages": MSG, "x_custom": {"keep": [1, 2]}, "logit_bias": {"5": 1},
                            "metadata": {"a": "b"}})
    assert r.status_code == 200
    body = r.json()
    assert body["upstream_extra"] == {"keep": [1, 2]}  # the upstream saw it (and its own answer came back)
    got = sloppy.requests[before]["body"]
    assert got["x_custom"] == {"keep": [1, 2]} and got["logit_bias"] == {"5": 1} and got["metadata"] == {"a": "b"}
    assert got["model"] == "sloppy" and "rid" not in got
    # relevant headers are relayed, cookies are not
    assert r.headers["x-request-id"] == "req-sloppy-1" and r.headers["x-ratelimit-remaining-requests"] == "99"
    assert "set-cookie" not in r.headers
    # the config maps simchat -> sim-model for the sim's OpenAI server
    out = client(router).chat.completions.create(model="simchat", messages=MSG, max_tokens=4)
    assert out.model == SIM_MODEL


def test_upstream_key_injected_and_never_logged(router, sloppy):
    before = len(sloppy.requests)
    client(router).chat.completions.create(model="sloppy", messages=MSG)
    list(client(router).chat.completions.create(model="sloppy", messages=MSG, stream=True))
    seen = sloppy.requests[before:]
    assert len(seen) == 2
    for req in seen:
        assert req["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert CLIENT_KEY not in json.dumps(req)
    # a wrong client key is refused by the router (never reaches the upstream)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=router.url + "/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
            model="sloppy", messages=MSG)
    assert len(sloppy.requests) == before + 2
    log = router.output()
    assert "DEBUG radixrouter.relay: relayed chat sloppy" in log  # the log level really was debug
    assert UPSTREAM_KEY not in log and CLIENT_KEY not in log


@pytest.mark.parametrize("status,exc", [(400, openai.BadRequestError), (404, openai.NotFoundError),
                                        (422, openai.UnprocessableEntityError), (500, openai.InternalServerError)])
def test_upstream_errors_relayed_in_openai_shape(router, status, exc):
    model = "sloppy-5xx" if status >= 500 else "sloppy-err"
    for stream in (False, True):
        with pytest.raises(exc) as e:
            client(router).chat.completions.create(model=model, stream=stream,
                                                   messages=[{"role": "user", "content": f"status {status}"}])
        assert e.value.status_code == status
        err = e.value.body
        assert err["message"] == f"sloppy says {status}"
        assert err["code"] == f"code_{status}"
        if status == 400:
            assert err["type"] == "invalid_request_error" and err["param"] == "messages"


def test_sim_errors_relayed_in_openai_shape(router, sim):
    """The sim answers SGLang's flat error shape ({"object":"error","message",...}); clients get OpenAI's."""
    sim.fault(status=400, count=1)
    with pytest.raises(openai.BadRequestError) as e:
        client(router).chat.completions.create(model="simchat", messages=MSG)
    assert e.value.body["message"] and e.value.body["type"]
    sim.fault(status=503, count=-1)
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(router).chat.completions.create(model="simchat", messages=MSG)
        assert e.value.status_code == 503
    finally:
        sim.clear_faults()
    assert client(router).chat.completions.create(model="simchat", messages=MSG, max_tokens=3).choices


def test_error_after_the_first_byte_is_an_error_frame_without_done(router):
    for text in ("error-mid", "truncate"):
        r = raw_stream(router, {"model": "sloppy", "messages": [{"role": "user", "content": text}], "stream": True})
        assert r.status_code == 200
        datas = strict_reader(r.content)
        assert datas[-1] != b"[DONE]" and b"[DONE]" not in datas
        last = json.loads(datas[-1])
        assert set(last) == {"error"} and last["error"]["message"]
        if text == "error-mid":
            assert "upstream overloaded" in last["error"]["message"]
        with pytest.raises(openai.APIError):
            list(client(router).chat.completions.create(model="sloppy", stream=True,
                                                        messages=[{"role": "user", "content": text}]))


def test_unknown_model_is_404_and_bad_body_400(router):
    with pytest.raises(openai.NotFoundError):
        client(router).chat.completions.create(model="nope", messages=MSG)
    r = raw_stream(router, {"model": "sloppy", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = raw_stream(router, {"model": "sloppy", "messages": MSG, "stream": "yes"})
    assert r.status_code == 400


def test_completions_relay(router):
    out = client(router).completions.create(model="simchat", prompt="Once upon a time", max_tokens=5)
    assert out.choices[0].text and out.usage.completion_tokens == 5
    chunks = list(client(router).completions.create(model="simchat", prompt="Once upon a time", max_tokens=5,
                                                    stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_client_disconnect_closes_the_upstream_connection(router, sloppy):
    before = sloppy.disconnects
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", router.url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": "sloppy", "stream": True, "messages": [{"role": "user", "content": "slow"}]}) as r:
            it = r.iter_raw()
            next(it)
            next(it)
    deadline = time.monotonic() + 10
    while sloppy.disconnects == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sloppy.disconnects > before  # it stopped well before its 240 chunks


def test_mixed_native_and_relayed_and_passthrough(sim, tmp_path):
    """--worker-url (native, the router renders the Qwen3 template) + a named --openai-url + a passthrough
    --openai-url; retries before the first byte move to the next upstream; weights split the traffic."""
    with SloppyUpstream("pass") as p, SloppyUpstream("w1") as w1, SloppyUpstream("w3") as w3:
        cfg = tmp_path / "models.yaml"
        cfg.write_text(f"models:\n  weighted:\n    api_key_env: UPSTREAM_KEY\n    upstreams:\n"
                       f"      - {{url: '{w1.url}', weight: 1, model: up-w}}\n"
                       f"      - {{url: '{w3.url}', weight: 3, model: up-w}}\n")
        with RouterProcess([sim.url], env={"UPSTREAM_KEY": UPSTREAM_KEY}, openai_url=p.url, config=str(cfg),
                           served_model_name="qwen-native", health_check_interval=3600) as r:
            ids = {m["id"] for m in http_json("GET", r.url + "/v1/models")[1]["data"]}
            assert ids == {"qwen-native", "weighted", "pass-a", "pass-b"}
            c = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0)
            native = c.chat.completions.create(model="qwen-native", messages=MSG, max_tokens=4)
            assert native.model == "qwen-native" and native.usage.prompt_tokens > 5
            out = c.chat.completions.create(model="gpt-anything", messages=MSG)
            assert out.model == "gpt-anything" and p.requests[-1]["body"]["model"] == "gpt-anything"
            assert "authorization" not in p.requests[-1]["headers"]  # no key configured for it: none sent
            for _ in range(8):
                c.chat.completions.create(model="weighted", messages=MSG)
            n1 = sum(1 for q in w1.requests if q["method"] == "POST")
            n3 = sum(1 for q in w3.requests if q["method"] == "POST")
            assert (n1, n3) == (2, 6)
            assert all(q["body"]["model"] == "up-w" for q in w1.requests + w3.requests if q["method"] == "POST")


def test_retry_before_first_byte_moves_to_another_upstream(tmp_path):
    """One upstream refuses connections: every request (streamed or not) is served by the other one."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with SloppyUpstream("b") as b:
        cfg = tmp_path / "m.toml"
        cfg.write_text(f'[models.m]\nupstreams = ["{dead}", "{b.url}"]\n')
        with RouterProcess([], qwen3=False, config=str(cfg), policy="round_robin", health_check_interval=3600,
                           retry_backoff=0) as r:
            c = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0)
            for i in range(4):
                if i % 2:
                    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                        model="m", messages=MSG, stream=True) if ch.choices)
                else:
                    text = c.chat.completions.create(model="m", messages=MSG).choices[0].message.content
                assert text == "".join(WORDS)
            assert sum(1 for q in b.requests if q["method"] == "POST") == 4


def test_bad_config_is_one_clear_line(tmp_path):
    def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "radixrouter.cli", "serve", "--port", str(free_port()), *args],
                              capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})))

    bad = tmp_path / "bad.toml"
    cases = [
        ('[models.m]\nupstreams = [{ url = "http://x", kind = "grpc" }]\n', "kind"),
        ('[models.m]\nupstreams = []\n', "upstreams"),
        ('[models.m]\nupstreams = ["http://x"]\nweigth = 2\n', "weigth"),
        ('[models.m]\nupstreams = [{ url = "http://x", weight = 0 }]\n', "weight"),
        ('[models.m]\nupstreams = [{ url = "https://u:p@x/v1" }]\n', "credentials"),
        ("[models.m\n", "invalid TOML"),
        ('[models.m]\nupstreams = [{ url = "http://x", api_key_env = "NOT_SET_ANYWHERE_42" }]\n', "NOT_SET_ANYWHERE_42"),
    ]
    for text, word in cases:
        bad.write_text(text)
        r = serve("--config", str(bad))
        assert r.returncode == 2 and word in r.stderr and r.stderr.strip().count("\n") == 0, (text, r.stderr)
    r = serve("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "missing.toml" in r.stderr
    r = serve("--openai-url", "http://127.0.0.1:1/v1", "--openai-api-key-env", "NOT_SET_ANYWHERE_42")
    assert r.returncode == 2 and "NOT_SET_ANYWHERE_42" in r.stderr
    r = serve(env={"RADIXROUTER_OPENAI_URL": "m=ftp://x"})
    assert r.returncode == 2 and "ftp://x" in r.stderr


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.mark.skipif(not any(os.access(os.path.join(d, "openssl"), os.X_OK)
                            for d in os.environ.get("PATH", "").split(os.pathsep)), reason="no openssl CLI")
def test_tls_upstream_certificate_is_verified(tmp_path):
    """A self-signed upstream is refused (no request gets through); trusting its certificate via SSL_CERT_FILE
    (OpenSSL's standard variable, read by the router's default SSL context) or `--upstream-ca-file` makes it
    work, with both upstream clients."""
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with SloppyUpstream("tls", tls=ctx) as up:
        cases = (({}, {}, False), ({"SSL_CERT_FILE": cert}, {}, True), ({}, {"upstream_ca_file": cert}, True),
                 ({}, {"upstream_ca_file": cert, "upstream_client": "aiohttp"}, True),
                 ({}, {"upstream_client": "aiohttp"}, False))
        for env, flags, ok in cases:
            up.requests.clear()
            with RouterProcess([], qwen3=False, openai_url=f"m={up.url}", wait_ready=False, env=env,
                               health_check_interval=3600, max_retries=0, **flags) as r, \
                    openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0) as c:
                if ok:
                    assert c.chat.completions.create(model="m", messages=MSG).choices[0].message.content
                else:
                    with pytest.raises(openai.APIStatusError) as e:
                        c.chat.completions.create(model="m", messages=MSG)
                    # the health probe already failed the handshake (503 no worker), or the request did (502)
                    assert e.value.status_code in (502, 503)
                    assert up.requests == []  # no HTTP request got through the refused handshake


def test_unreadable_upstream_ca_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello")
    for path in (str(bad), str(tmp_path / "missing.pem")):
        p = subprocess.run([sys.executable, "-m", "radixrouter.cli", "serve", "--upstream-ca-file", path,
                            "--port", "1"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and "--upstream-ca-file" in err[0] and "cannot load CA certificates" in err[0], err


# ------------------------------------------------------------------------------------------ in process


def test_config_file_defaults_and_flags(tmp_path, monkeypatch):
    from radixrouter.config import Config
    from radixrouter.models_config import ModelConfigError, build_models

    monkeypatch.setenv("K1", "one")
    monkeypatch.setenv("K2", "two")
    f = tmp_path / "m.toml"
    f.write_text('[models.a]\napi_key_env = "K1"\nmodel = "up-a"\nupstreams = [\n'
                 '  "http://h1:8000",\n'
                 '  { url = "http://h1:8000", api_key_env = "K2" },\n'  # same URL, another key: a second upstream
                 '  { url = "https://h2/custom/v1/", model = "other", weight = 2.5 },\n]\n'
                 '[models.native]\nupstreams = [{ url = "http://w9:30000", kind = "sglang" }]\n'
                 '[models.sg]\nupstreams = [{ url = "http://w8:30000", kind = "sglang" }]\n'
                 '[models."*"]\nupstreams = ["http://pass:4000/v1"]\n')
    cfg = Config(config_file=str(f), served_model_name="native",
                 openai_urls=["b=http://h3:1", "http://h4:2/v1"], openai_api_key_env="K2")
    native, models = build_models(cfg)
    assert native == ["http://w9:30000"]  # joins the native fleet
    by = {m.name: m for m in models}
    assert set(by) == {"a", "b", "*", "sg"}
    a = by["a"].upstreams
    assert [(u.url, u.base_url(), u.api_key(), u.model, u.weight) for u in a] == [
        ("http://h1:8000/v1", "http://h1:8000/v1", "one", "up-a", 1.0),
        ("http://h1:8000/v1", "http://h1:8000/v1", "two", "up-a", 1.0),
        ("https://h2/custom/v1", "https://h2/custom/v1", "one", "other", 2.5)]
    assert by["sg"].upstreams[0].base_url() == "http://w8:30000/v1"
    assert [(u.url, u.api_key()) for u in by["b"].upstreams] == [("http://h3:1/v1", "two")]
    # the unnamed --openai-url and the config's "*" are both passthrough upstreams
    assert [u.url for u in by["*"].upstreams] == ["http://h4:2/v1", "http://pass:4000/v1"]
    from radixrouter.app import create_app

    app = create_app(cfg)
    pool = app.relay.models["a"].pool
    assert list(pool.workers) == ["http://h1:8000/v1", "http://h1:8000/v1#2", "https://h2/custom/v1"]
    auth = [w.extra["headers"]["Authorization"] for w in pool.list()]
    assert auth == ["Bearer one", "Bearer two", "Bearer one"]
    assert type(pool.policy).__name__ == "Weighted"  # weights differ
    assert type(app.relay.models["b"].pool.policy).__name__ != "Weighted"
    assert app.relay.passthrough is not None and "http://w9:30000" in app.pool.workers
    with pytest.raises(ModelConfigError, match="different names"):
        build_models(Config(worker_urls=["http://w:1"], served_model_name="b", openai_urls=["b=http://h:1"]))
    monkeypatch.delenv("K2")
    with pytest.raises(ModelConfigError, match="K2"):
        build_models(cfg)


def test_weighted_policy_is_smooth_and_proportional():
    from radixrouter.relay import Weighted
    from radixrouter.workers import RouteContext, Worker

    ws = [Worker(f"http://w{i}") for i in range(3)]
    for w, weight in zip(ws, (5, 1, 1), strict=True):
        w.extra["weight"] = float(weight)
    pol = Weighted()
    picks = [pol.choose(ws, RouteContext()).url for _ in range(14)]
    assert picks.count("http://w0") == 10 and picks.count("http://w1") == picks.count("http://w2") == 2
    # nginx's smooth order: the heavy upstream never takes more than its share in a row
    assert picks[:7] == ["http://w0", "http://w0", "http://w1", "http://w0", "http://w2", "http://w0", "http://w0"]
    # a candidate missing (unhealthy / tried) just drops out
    assert {pol.choose(ws[1:], RouteContext()).url for _ in range(4)} == {"http://w1", "http://w2"}


def test_sglang_kind_relay_aborts_on_disconnect(tmp_path):
    """A `kind = "sglang"` upstream is reached at /v1/... with a `rid`; a client that leaves mid-stream gets the
    request aborted there (POST /abort_request with that rid) besides the closed connection."""
    with SimWorker(model=SIM_MODEL, tokenizer="qwen3", decode_tokens_per_s=20) as slow:
        cfg = tmp_path / "m.toml"
        cfg.write_text(f'[models.sgl]\nupstreams = [{{ url = "{slow.url}", kind = "sglang" }}]\n')
        with RouterProcess([], qwen3=False, config=str(cfg), health_check_interval=3600) as r:
            with httpx.Client(timeout=30) as c:
                with c.stream("POST", r.url + "/v1/chat/completions",
                              json={"model": "sgl", "stream": True, "messages": MSG, "max_tokens": 200,
                                    "ignore_eos": True}) as resp:
                    assert resp.status_code == 200
                    it = resp.iter_raw()
                    next(it)
                    next(it)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = slow.stats()
                if st["abort_requests"] and st["running"] == 0:
                    break
                time.sleep(0.05)
            assert st["abort_requests"] >= 1 and st["abort_rids"][-1] not in ("", "*")
            assert st["running"] == 0 and st["completion_tokens"] < 200


class NamedEventWorker(SloppyUpstream):
    """An SGLang-shaped worker whose /generate stream carries a named event (SGLang never sends one)."""

    async def _answer(self, method: str, path: str, body, writer) -> None:
        if path == "/health":
            return await self._json(writer, 200, {})
        if path != "/generate":
            return await self._json(writer, 404, {"error": {"message": f"no route {path}"}})
        ev = json.dumps({"text": "hi", "output_ids": [1], "meta_info": {"id": body.get("rid"),
                                                                        "finish_reason": None}})
        data = b"event: progress\r\ndata: " + ev.encode() + b"\r\n\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(data), data))
        await writer.drain()


def test_a_named_event_from_a_native_worker_is_a_502():
    """The native stream path reads data only (SseDecoder.feed_data); an event it cannot interpret is an
    upstream error in OpenAI's shape, never a 500 or a hang."""
    with NamedEventWorker() as w, RouterProcess([w.url.removesuffix("/v1")], max_retries=0) as router:
        r = httpx.post(router.url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_error" and "progress" in err["message"]
        assert httpx.get(router.url + "/health").status_code == 200
