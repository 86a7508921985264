"""End-to-end tests of the router: a real `radixrouter serve` (granian) process, real HTTP on 127.0.0.1, simulated
SGLang workers. Also home of `RouterProcess`, which the other router / API tests import."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import pytest

from radixrouter import SseDecoder
from radixrouter.tokenizer import qwen3_files
from simutil import SimWorker, SimWorkers, free_port, http_json

MODEL = "qwen3-sim"
KEY = "sk-router-test"


class RouterProcess:
    """`radixrouter serve` as a subprocess on a free port; killed on exit."""

    def __init__(self, urls: list[str], *, qwen3: bool = True, wait_ready: bool = True, env: dict | None = None,
                 **flags: Any):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "radixrouter.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "warning"]
        for w in urls:
            argv += ["--worker-url", w]
        if qwen3:
            argv += ["--model-path", str(qwen3_files()), "--served-model-name", MODEL]
        for k, v in flags.items():
            if v is None or v is False:
                continue
            argv.append("--" + k.replace("_", "-"))
            if v is not True:
                argv.append(str(v))
        self.argv = argv
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.wait_ready = wait_ready
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> RouterProcess:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        path = "/readiness" if self.wait_ready else "/health"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _ = http_json("GET", self.url + path, timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise TimeoutError(f"router not ready:\n{out}")
            time.sleep(0.05)

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sse_lines(raw: bytes) -> list[str]:
    return raw.decode().split("\n")


def check_stream_bytes(raw: bytes) -> list[dict]:
    """The stream obeys the framing rules: every line is `data: ...` or a comment, blank lines only between
    frames, no empty data, `[DONE]` last. Returns the parsed JSON chunks."""
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
    assert b"\r" not in raw
    chunks = []
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    for block in blocks[:-1]:
        assert block, "an empty block"
        for line in block.split("\n"):
            assert line.startswith("data: ") or line.startswith(":"), line
        data_lines = [ln[6:] for ln in block.split("\n") if ln.startswith("data: ")]
        if not data_lines:
            continue
        data = "\n".join(data_lines)
        assert data.strip(), "empty data"
        if data == "[DONE]":
            continue
        chunks.append(json.loads(data))
    assert blocks[-2] == "data: [DONE]"
    return chunks


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sims():
    with SimWorkers(2, model=MODEL, tokenizer="qwen3") as ws:
        yield ws


@pytest.fixture(scope="module")
def slow_sim():
    # 25 tokens/s: a 12-token answer takes about half a second to stream
    with SimWorker(model=MODEL, tokenizer="qwen3", decode_tokens_per_s=25) as w:
        yield w


@pytest.fixture(scope="module")
def router(sims):
    with RouterProcess(sims.urls, api_key=KEY, admin_key="admin-secret") as r:
        yield r


def post(url: str, body: Any, *, key: str | None = KEY, raw: bytes | None = None, timeout: float = 30,
         headers: dict | None = None) -> httpx.Response:
    h = {"content-type": "application/json"}
    if key:
        h["authorization"] = f"Bearer {key}"
    if headers:
        h.update(headers)
    return httpx.post(url, content=raw if raw is not None else json.dumps(body).encode(), headers=h, timeout=timeout)


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about radix trees."}], "max_tokens": 12}


# ------------------------------------------------------------------------------------------ streaming bytes


def test_stream_bytes_follow_the_spec(router):
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", router.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json=dict(CHAT, stream=True, stream_options={"include_usage": True})) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-accel-buffering"] == "no"
            assert r.headers["x-radixrouter-worker"].startswith("http://127.0.0.1:")
            raw = b"".join(r.iter_raw())
    chunks = check_stream_bytes(raw)
    assert len({c["id"] for c in chunks}) == 1
    assert len({c["created"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {MODEL}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    body = chunks[1:-2]
    assert body and all(set(c["choices"][0]["delta"]) == {"content"} for c in body)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    last, usage = chunks[-2], chunks[-1]
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(body)
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    assert "cached_tokens" in usage["usage"]["prompt_tokens_details"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert all("error" not in c for c in chunks)


def test_stream_without_include_usage_has_no_usage_key(router):
    r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True))
    chunks = check_stream_bytes(r.content)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_first_chunk_arrives_before_the_worker_finishes(slow_sim):
    with RouterProcess([slow_sim.url]) as router:
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", router.url + "/v1/chat/completions",
                          json=dict(CHAT, max_tokens=40, stream=True)) as r:
                it = r.iter_raw()
                dec = SseDecoder()
                events = []
                while not events:
                    events = dec.feed(next(it))
                # the worker is still generating when the client holds the first chunk
                assert slow_sim.stats()["running_requests"] == 1
                first = json.loads(events[0].data)
                assert first["choices"][0]["delta"]["role"] == "assistant"
                rest = b"".join(it)
        assert rest.endswith(b"data: [DONE]\n\n")
        assert slow_sim.stats()["running_requests"] == 0


def test_incremental_worker_streams_give_the_same_deltas():
    with SimWorker(model=MODEL, tokenizer="qwen3") as cum, \
            SimWorker(model=MODEL, tokenizer="qwen3", incremental_streaming_output=True) as inc:
        outs = []
        for w in (cum, inc):
            with RouterProcess([w.url]) as router:
                r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True), key=None)
                chunks = check_stream_bytes(r.content)
                outs.append([c["choices"][0]["delta"].get("content") for c in chunks])
                full = post(router.url + "/v1/chat/completions", CHAT, key=None).json()
                assert "".join(d or "" for d in outs[-1]) == full["choices"][0]["message"]["content"]
        assert outs[0] == outs[1]
        assert len(outs[0]) > 3


# ------------------------------------------------------------------------------------------ bad requests


BAD = [
    ("invalid JSON", b'{"model": "x", "messages": [', 400),
    ("not an object", b"[1, 2]", 400),
    ("missing messages", json.dumps({"model": MODEL}).encode(), 400),
    ("empty messages", json.dumps({"model": MODEL, "messages": []}).encode(), 400),
    ("messages not a list", json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400),
    ("message not an object", json.dumps({"model": MODEL, "messages": ["hi"]}).encode(), 400),
    ("bad role", json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}).encode(), 400),
    ("content wrong type", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 5}]}).encode(), 400),
    ("image part", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}).encode(), 400),
    ("unknown model", json.dumps(dict(CHAT, model="gpt-9")).encode(), 404),
    ("negative max_tokens", json.dumps(dict(CHAT, max_tokens=-1)).encode(), 400),
    ("max_tokens string", json.dumps(dict(CHAT, max_tokens="12")).encode(), 400),
    ("temperature too high", json.dumps(dict(CHAT, temperature=7)).encode(), 400),
    ("stream not bool", json.dumps(dict(CHAT, stream="yes")).encode(), 400),
    ("stop wrong type", json.dumps(dict(CHAT, stop=5)).encode(), 400),
    ("n zero", json.dumps(dict(CHAT, n=0)).encode(), 400),
    ("top_logprobs without logprobs", json.dumps(dict(CHAT, top_logprobs=3)).encode(), 400),
    ("bad response_format", json.dumps(dict(CHAT, response_format={"type": "yaml"})).encode(), 400),
    ("tool_choice required", json.dumps(dict(CHAT, tools=[{"type": "function", "function": {"name": "f"}}],
                                             tool_choice="required")).encode(), 400),
    ("functions (deprecated)", json.dumps(dict(CHAT, functions=[{"name": "f"}])).encode(), 400),
    ("invalid UTF-8", b'{"model": "qwen3-sim", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    ("empty body", b"", 400),
]


@pytest.mark.parametrize("name,raw,status", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_clear_4xx(router, name, raw, status):
    r = post(router.url + "/v1/chat/completions", None, raw=raw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    if status == 404:
        assert err["code"] == "model_not_found"
    assert httpx.get(router.url + "/health").status_code == 200


def test_server_healthy_after_bad_requests_and_serves(router):
    for _name, raw, _status in BAD:
        post(router.url + "/v1/chat/completions", None, raw=raw)
    r = post(router.url + "/v1/chat/completions", CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_oversized_body_is_413_and_auth_401(sims):
    with RouterProcess(sims.urls[:1], api_key=KEY, max_body_bytes=4096) as router:
        big = dict(CHAT, messages=[{"role": "user", "content": "x" * 10000}])
        r = post(router.url + "/v1/chat/completions", big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = post(router.url + "/v1/chat/completions", CHAT, key="wrong")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = post(router.url + "/v1/chat/completions", CHAT, key=None)
        assert r.status_code == 401
        assert post(router.url + "/v1/chat/completions", CHAT).status_code == 200


def test_unknown_route_and_method(router):
    assert httpx.get(router.url + "/nope").status_code == 404
    r = httpx.get(router.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_worker_4xx_is_returned_and_not_counted_against_the_worker(router, sims):
    # an unknown sampling key is a 400 at the worker: passed through /generate as is
    for _ in range(12):
        r = post(router.url + "/generate", {"text": "hi", "sampling_params": {"bogus": 1}})
        assert r.status_code == 400
        assert "bogus" in r.json()["error"]["message"]
    workers = httpx.get(router.url + "/list_workers", headers={"authorization": "Bearer admin-secret"}).json()
    assert all(w["healthy"] for w in workers["workers"])
    assert post(router.url + "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 3}}).status_code == 200


# ------------------------------------------------------------------------------------------ retries, disconnects


def test_retry_on_503_before_the_first_byte(sims):
    # failures must not mark a worker unhealthy here (that would change which worker gets traffic)
    with RouterProcess(sims.urls, policy="round_robin", retry_backoff=0, health_failure_threshold=1000) as router:
        for w in sims:
            w.reset()
        sims[0].fault(status=503, count=1)
        sims[1].fault(status=503, count=1)
        # both workers answer 503 once; the third attempt (max_retries 2) goes back to one of them
        r = post(router.url + "/v1/chat/completions", CHAT, key=None)
        assert r.status_code == 200
        assert sum(s.stats()["faults_applied"] for s in sims) == 2
        # a worker that keeps failing: the client gets its status once the attempts are used up
        for w in sims:
            w.fault(status=503, count=-1)
        try:
            r = post(router.url + "/v1/chat/completions", CHAT, key=None)
            assert r.status_code == 503 and r.json()["error"]["message"]
        finally:
            for w in sims:
                w.clear_faults()
        sims[0].fault(status=503, count=1)
        for _ in range(2):
            r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True), key=None)
            assert r.status_code == 200
            check_stream_bytes(r.content)
        assert sims[0].stats()["pending_faults"] == []
        metrics = httpx.get(router.url + "/metrics").text
        assert re.search(r'radixrouter_retries_total\{reason="worker_failure"\} [1-9]', metrics)


def test_worker_dying_mid_stream_gives_an_error_frame_and_no_done(sims):
    with RouterProcess(sims.urls[:1]) as router:
        sims[0].reset()
        sims[0].fault(close_after_tokens=3, count=1)
        r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True, max_tokens=20), key=None)
        assert r.status_code == 200
        raw = r.content
        assert b"[DONE]" not in raw
        blocks = [b for b in raw.decode().split("\n\n") if b]
        last = json.loads(blocks[-1][len("data: "):])
        assert last["error"]["message"]
        assert len(blocks) >= 2


def test_client_disconnect_aborts_on_the_worker(slow_sim):
    with RouterProcess([slow_sim.url]) as router:
        slow_sim.reset()
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", router.url + "/v1/chat/completions",
                          json=dict(CHAT, max_tokens=200, stream=True)) as r:
                it = r.iter_raw()
                next(it)
        # the router sends /abort_request for the rid as soon as the client is gone
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s = slow_sim.stats()
            if s["abort_rids"] and s["running_requests"] == 0:
                break
            time.sleep(0.02)
        s = slow_sim.stats()
        assert len(s["abort_rids"]) == 1 and s["abort_rids"][0]
        assert s["running_requests"] == 0
        m = httpx.get(router.url + "/metrics").text
        assert re.search(r"radixrouter_aborts_total 1\.0", m)
        assert re.search(r'radixrouter_worker_in_flight\{worker="[^"]+"\} 0\.0', m)


def test_disconnect_during_prefill_aborts(sims):
    with SimWorker(model=MODEL, tokenizer="qwen3", prefill_tokens_per_s=5) as w, RouterProcess([w.url]) as router:
        # a ~30-token prompt takes seconds to "prefill"; the client gives up after 0.3 s
        with pytest.raises(httpx.ReadTimeout):
            post(router.url + "/v1/chat/completions", CHAT, key=None, timeout=0.3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not w.stats()["abort_rids"]:
            time.sleep(0.02)
        assert len(w.stats()["abort_rids"]) == 1


def test_keepalive_comments_while_waiting_for_the_first_token(sims):
    with RouterProcess(sims.urls[:1], keepalive_interval=0.1) as router:
        sims[0].reset()
        sims[0].fault(stall_s=0.5, count=1)
        r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True), key=None)
        assert r.status_code == 200
        assert r.content.startswith(b": keep-alive\n\n")
        chunks = check_stream_bytes(r.content)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


# ------------------------------------------------------------------------------------------ admin, health, metrics


def test_readiness_health_and_worker_admin(router, sims):
    assert httpx.get(router.url + "/health").status_code == 200
    assert httpx.get(router.url + "/readiness").json()["healthy_workers"] == 2
    admin = {"authorization": "Bearer admin-secret"}
    assert httpx.get(router.url + "/list_workers").status_code == 401
    assert httpx.get(router.url + "/list_workers", headers={"authorization": f"Bearer {KEY}"}).status_code == 401
    urls = httpx.get(router.url + "/list_workers", headers=admin).json()["urls"]
    assert sorted(urls) == sorted(sims.urls)
    r = httpx.post(router.url + "/remove_worker", params={"url": sims.urls[1]}, headers=admin)
    assert r.status_code == 200 and list(r.json()["worker_urls"]) == [sims.urls[0]]
    assert httpx.get(router.url + "/list_workers", headers=admin).json()["urls"] == [sims.urls[0]]
    assert httpx.post(router.url + "/remove_worker", params={"url": sims.urls[1]}, headers=admin).status_code == 404
    r = httpx.post(router.url + "/add_worker", json={"url": sims.urls[1]}, headers=admin)
    assert r.status_code == 200 and sorted(r.json()["worker_urls"]) == sorted(sims.urls)
    assert httpx.post(router.url + "/add_worker", json={}, headers=admin).status_code == 400


def test_readiness_is_503_without_a_healthy_worker():
    # a port bound but not listening refuses connections, and nobody else can take it meanwhile
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{hold.getsockname()[1]}"
    with hold, RouterProcess([dead], wait_ready=False, health_check_interval=0.2) as router:
        r = httpx.get(router.url + "/readiness")
        assert r.status_code == 503
        r = post(router.url + "/v1/chat/completions", CHAT, key=None)
        assert r.status_code == 503 and r.json()["error"]["message"]  # no worker can take traffic (issue 6)
        with SimWorker(model=MODEL, tokenizer="qwen3") as w:
            httpx.post(router.url + "/add_worker", params={"url": w.url})
            assert httpx.get(router.url + "/readiness").status_code == 200
            assert post(router.url + "/v1/chat/completions", CHAT, key=None).status_code == 200


def test_metrics_exposition(router):
    post(router.url + "/v1/chat/completions", dict(CHAT, stream=True))
    post(router.url + "/v1/chat/completions", CHAT)
    text = httpx.get(router.url + "/metrics").text
    for name in ("radixrouter_requests_total", "radixrouter_time_to_first_token_seconds_bucket",
                 "# TYPE radixrouter_inter_token_latency_seconds histogram", "radixrouter_e2e_latency_seconds_bucket",
                 "radixrouter_prompt_tokens_total", "radixrouter_cached_tokens_total",
                 "radixrouter_completion_tokens_total", "radixrouter_worker_in_flight", "radixrouter_worker_healthy",
                 "radixrouter_retries", "radixrouter_aborts_total"):
        assert name in text, name
    assert re.search(r'radixrouter_requests_total\{route="chat",status="200"\} [1-9]', text)
    # the prefix cache holds the two conversations: tokens, nodes and bytes above zero; no request runs, no pin
    for gauge in ("radixrouter_cache_tokens", "radixrouter_cache_nodes", "radixrouter_cache_bytes"):
        assert float(re.search(rf"^{gauge} (\S+)$", text, re.M).group(1)) > 0, gauge
    assert re.search(r"^radixrouter_cache_pins 0\.0$", text, re.M)
    assert re.search(r'^radixrouter_worker_breaker_open\{worker="[^"]+"\} 0\.0$', text, re.M)


def test_generate_passthrough_streams_sglang_format(router):
    r = post(router.url + "/generate", {"text": "Once upon a time", "stream": True,
                                        "sampling_params": {"max_new_tokens": 5, "temperature": 0}})
    assert r.status_code == 200
    raw = r.content
    events = [e for e in SseDecoder().feed(raw)]
    assert events[-1].data == "[DONE]"
    last = json.loads(events[-2].data)
    assert last["meta_info"]["finish_reason"]["type"] == "length"
    assert len(last["output_ids"]) == 5
    full = post(router.url + "/generate", {"text": "Once upon a time",
                                           "sampling_params": {"max_new_tokens": 5, "temperature": 0}}).json()
    assert full["text"] == last["text"]


# ------------------------------------------------------------------------------------------ TCP_NODELAY


def _pidfd_getfd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        pytest.skip(f"pidfd_open unavailable (errno {ctypes.get_errno()})")
    try:
        nfd = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if nfd < 0:
            pytest.skip(f"pidfd_getfd not permitted (errno {ctypes.get_errno()})")
        return nfd
    finally:
        os.close(pidfd)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux pidfd syscalls")
def test_accepted_sockets_have_tcp_nodelay(router):
    """granian sets TCP_NODELAY on its listening socket and Linux copies it to accepted sockets: check the
    router's own end of a keep-alive client connection."""
    with socket.create_connection(("127.0.0.1", router.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        local = s.getsockname()[1]
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{router.port} )"],
                             capture_output=True, text=True).stdout
        m = None
        for line in out.splitlines():
            if f":{local}" in line:
                m = re.search(r"pid=(\d+),fd=(\d+)", line)
        if m is None:
            pytest.skip("ss did not show the router's socket")
        nfd = _pidfd_getfd(int(m.group(1)), int(m.group(2)))
        ss = socket.socket(fileno=nfd)
        try:
            assert ss.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            ss.close()


def test_streams_on_a_keepalive_connection_are_not_delayed_by_nagle(slow_sim):
    """Several streamed responses on one keep-alive connection: every chunk is forwarded as its own frame
    (not coalesced), which is what Nagle + delayed ACK would do to small writes."""
    with RouterProcess([slow_sim.url]) as router, httpx.Client(timeout=30) as c:
        for _ in range(3):
            with c.stream("POST", router.url + "/v1/chat/completions",
                          json=dict(CHAT, max_tokens=8, stream=True)) as r:
                reads = [chunk for chunk in r.iter_raw() if chunk]
            # 8 tokens at 25/s arrive ~40 ms apart and go out as 9 writes: the client reads them (nearly
            # all) separately rather than coalesced (some slack for a busy machine)
            assert len(reads) >= 4


# ------------------------------------------------------------------------------------------ serve CLI errors


def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radixrouter.cli", "serve", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, **(env or {})))


def test_serve_bad_flag_is_one_clear_line():
    r = _serve("--port", "notaport")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--port" in r.stderr
    r = _serve("--policy", "fastest")
    assert r.returncode == 2 and "--policy" in r.stderr and r.stderr.strip().count("\n") == 0
    r = _serve(env={"RADIXROUTER_PORT": "x"})
    assert r.returncode == 2 and "RADIXROUTER_PORT" in r.stderr and r.stderr.strip().count("\n") == 0


def test_serve_missing_tokenizer_is_one_clear_line(tmp_path):
    r = _serve("--tokenizer", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and "nope.json" in r.stderr and r.stderr.strip().count("\n") == 0
    r = _serve("--model-path", str(tmp_path))
    assert r.returncode == 2 and "tokenizer.json" in r.stderr and r.stderr.strip().count("\n") == 0
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    r = _serve("--tokenizer", str(bad))
    assert r.returncode == 2 and "tokenizer" in r.stderr and r.stderr.strip().count("\n") == 0


def test_serve_port_in_use_is_one_clear_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = _serve("--port", str(port))
    assert r.returncode == 2 and "already in use" in r.stderr and r.stderr.strip().count("\n") == 0


def test_env_variables_configure_serve(sims):
    with RouterProcess([], qwen3=False, env={"RADIXROUTER_WORKER_URL": ",".join(sims.urls),
                                             "RADIXROUTER_SERVED_MODEL_NAME": "env-model",
                                             "RADIXROUTER_API_KEY": "env-key"}) as router:
        r = httpx.get(router.url + "/v1/models", headers={"authorization": "Bearer env-key"})
        assert r.json()["data"][0]["id"] == "env-model"
        assert httpx.get(router.url + "/v1/models").status_code == 401
        urls = httpx.get(router.url + "/list_workers", headers={"authorization": "Bearer env-key"}).json()["urls"]
        assert sorted(urls) == sorted(sims.urls)


def test_concurrent_streams_all_complete(router):
    results: list[bytes] = []
    errors: list[BaseException] = []

    def one():
        try:
            results.append(post(router.url + "/v1/chat/completions", dict(CHAT, stream=True)).content)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 16
    for raw in results:
        check_stream_bytes(raw)


def test_aiohttp_upstream_client_works_too(sims):
    with RouterProcess(sims.urls, upstream_client="aiohttp") as router:
        r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True), key=None)
        chunks = check_stream_bytes(r.content)
        full = post(router.url + "/v1/chat/completions", CHAT, key=None).json()
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
            full["choices"][0]["message"]["content"]
        r = post(router.url + "/generate", {"text": "hi", "sampling_params": {"bogus": 1}}, key=None)
        assert r.status_code == 400


def test_text_mode_without_tokenizer(sims):
    """No tokenizer: chat is relayed to the worker's own OpenAI endpoint (it templates), completions and
    /generate send `text`."""
    with RouterProcess(sims.urls, qwen3=False, served_model_name=MODEL) as router:
        r = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}),
                 key=None)
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        chunks = check_stream_bytes(r.content)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
        full = post(router.url + "/v1/chat/completions", CHAT, key=None)
        assert full.status_code == 200 and full.json()["choices"][0]["message"]["content"]
        assert post(router.url + "/v1/chat/completions", dict(CHAT, messages=[]), key=None).status_code == 400
        c = post(router.url + "/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 4}, key=None)
        assert c.status_code == 200 and c.json()["choices"][0]["text"]
        g = post(router.url + "/generate", {"text": "Hello", "sampling_params": {"max_new_tokens": 3}}, key=None)
        assert g.status_code == 200 and len(g.json()["output_ids"]) == 3


def test_tokenizer_and_chat_template_files(sims, tmp_path):
    """--tokenizer FILE --chat-template FILE renders exactly like --model-path with the same files."""
    cfg = json.loads((qwen3_files() / "tokenizer_config.json").read_text())
    tpl = tmp_path / "template.jinja"
    tpl.write_text(cfg["chat_template"])
    with RouterProcess(sims.urls[:1], qwen3=False, tokenizer=str(qwen3_files() / "tokenizer.json"),
                       chat_template=str(tpl), served_model_name=MODEL) as a, \
            RouterProcess(sims.urls[:1]) as b:
        ra = post(a.url + "/v1/chat/completions", dict(CHAT, temperature=0), key=None).json()
        rb = post(b.url + "/v1/chat/completions", dict(CHAT, temperature=0), key=None).json()
        assert ra["usage"]["prompt_tokens"] == rb["usage"]["prompt_tokens"] > 5
        assert ra["choices"][0]["message"]["content"] == rb["choices"][0]["message"]["content"]


def test_generate_records_and_retrieve_from_text(sims):
    """slime's flow: /generate with text (the router tokenizes and records prompt + output), then
    /retrieve_from_text gives the token ids, loss mask (1 on generated tokens) and logprobs."""
    import radixrouter
    from radixrouter.tokenizer import ChatTokenizer

    tok = ChatTokenizer.qwen3()
    prompt = "<|im_start|>user\nWrite a line.<|im_end|>\n<|im_start|>assistant\n"
    with RouterProcess(sims.urls[:1]) as router:
        g = post(router.url + "/generate", {"text": prompt, "return_logprob": True,
                                            "sampling_params": {"max_new_tokens": 6, "temperature": 0}}, key=None)
        assert g.status_code == 200
        out = g.json()
        r = post(router.url + "/retrieve_from_text", {"text": prompt + out["text"]}, key=None)
        assert r.status_code == 200
        got = r.json()
        assert got["response"] == prompt + out["text"]
        assert got["token_length"] == len(got["tokens"]) == got["loss_mask_length"] == len(got["loss_mask"])
        assert len(got["rollout_logp"]) == len(got["tokens"])
        n_prompt = len(tok.encode(prompt))
        assert got["tokens"][:n_prompt] == tok.encode(prompt)
        if hasattr(radixrouter, "PrefixCache"):
            # the worker's output ids with mask 1 and their logprobs
            gen = out["output_ids"][: len(got["tokens"]) - n_prompt]
            assert got["tokens"][n_prompt:] == gen and gen
            assert got["loss_mask"] == [0] * n_prompt + [1] * len(gen)
            lps = [e[0] for e in out["meta_info"]["output_token_logprobs"]][: len(gen)]
            assert got["rollout_logp"][n_prompt:] == pytest.approx(lps)
        else:
            assert got["tokens"] == tok.encode(prompt + out["text"])
            assert set(got["loss_mask"]) == {0}
        bad = post(router.url + "/retrieve_from_text", {"text": 5}, key=None)
        assert bad.status_code == 400


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", dict(CHAT, stream=True)),
    ("/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "stream": True}),
    ("/v1/chat/completions", dict(CHAT, stream=True, n=2)),
], ids=["chat", "completions", "chat-n2"])
def test_first_token_timeout_retries_and_aborts(sims, path, body):
    with RouterProcess(sims.urls[:1], first_token_timeout=1.0, retry_backoff=0) as router:
        sims[0].reset()
        # linger_s: the worker still knows the stalled attempt's rid after the abort, as SGLang does until its
        # scheduler acknowledged it; the retry goes to the same (only) worker and must not reuse that rid
        sims[0].fault(stall_s=5, count=1, linger_s=4)
        r = post(router.url + path, body, key=None)
        assert r.status_code == 200
        check_stream_bytes(r.content)
        # The abort of the stalled attempt is sent in the background while the retry runs: wait (bounded).
        deadline = time.monotonic() + 10
        while not (s := sims[0].stats())["abort_rids"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(s["abort_rids"]) == 1  # the stalled attempt was aborted on the worker
        assert s["pending_faults"] == []


def test_worker_abort_becomes_an_error(slow_sim):
    """A generation the worker aborts (finish_reason abort) is an error: an error frame mid-stream (no
    [DONE]), an error status before the response started."""
    with RouterProcess([slow_sim.url]) as router:
        slow_sim.reset()
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", router.url + "/v1/chat/completions",
                          json=dict(CHAT, max_tokens=100, stream=True)) as r:
                it = r.iter_raw()
                first = next(it)
                assert first.startswith(b"data: ")
                slow_sim.post("/abort_request", {"abort_all": True})
                rest = b"".join(it)
        raw = first + rest
        assert b"[DONE]" not in raw
        last = json.loads([b for b in raw.decode().split("\n\n") if b][-1][len("data: "):])
        assert "abort" in last["error"]["message"]

        result: dict = {}

        def call():
            result["r"] = post(router.url + "/v1/chat/completions", dict(CHAT, max_tokens=100), key=None)

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while slow_sim.stats()["running_requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        slow_sim.post("/abort_request", {"abort_all": True})
        t.join(30)
        r = result["r"]
        assert r.status_code >= 400 and "abort" in r.json()["error"]["message"]
        assert httpx.get(router.url + "/health").status_code == 200


def test_reasoning_parser_flag(sims):
    with RouterProcess(sims.urls[:1], reasoning_parser="qwen3") as router:
        sims[0].fault(reply="<think>\nLet me think.\n</think>\n\nThe answer.", count=2)
        r = post(router.url + "/v1/chat/completions", CHAT, key=None).json()
        msg = r["choices"][0]["message"]
        assert msg["reasoning_content"] == "Let me think." and msg["content"] == "The answer."
        raw = post(router.url + "/v1/chat/completions", dict(CHAT, stream=True), key=None).content
        chunks = check_stream_bytes(raw)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Let me think."
        assert "".join(d.get("content") or "" for d in deltas) == "The answer."
    r = _serve("--tool-call-parser", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", dict(CHAT, stream=True, n=3, max_tokens=20, logprobs=True)),
    ("/v1/completions", {"model": MODEL, "prompt": ["a b c", "d e f"], "n": 2, "max_tokens": 20, "stream": True,
                         "logprobs": 1}),
], ids=["chat-n3", "completions-2x2"])
def test_merged_streams_keep_each_choice_in_order(router, path, body):
    """Several choices in one stream: per index, deltas (and their logprobs) come before exactly one finish."""
    raw = post(router.url + path, body).content
    chunks = check_stream_bytes(raw)
    n = 3 if "messages" in body else 4
    finished: dict[int, int] = {}
    texts: dict[int, str] = {}
    lp_tokens: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            i = ch["index"]
            piece = ch["delta"].get("content") if "delta" in ch else ch["text"]
            assert i not in finished, f"choice {i} got output after its finish_reason"
            texts[i] = texts.get(i, "") + (piece or "")
            lp = ch.get("logprobs")
            if lp:
                toks = [e["token"] for e in lp["content"]] if "content" in lp else lp["tokens"]
                lp_tokens[i] = lp_tokens.get(i, "") + "".join(toks)
            if ch["finish_reason"] is not None:
                finished[i] = 1
    assert sorted(finished) == list(range(n))
    for i in range(n):
        assert lp_tokens[i] == texts[i]  # logprob tokens travel with their text
