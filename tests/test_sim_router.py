"""sglang-router 0.3.2 (PyPI, the `bench` extra) registers simulated workers and routes through them."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

import httpx
import openai
import pytest

from simutil import SimWorkers, free_port

pytest.importorskip(
    "sglang_router",
    reason="sglang-router is not installed (pip install 'sglang-router==0.3.2', the bench extra)",
)


@pytest.fixture(scope="module")
def routed():
    with SimWorkers(2, model="sim-model", tokenizer="qwen3") as workers:
        port, prom = free_port(), free_port()
        argv = [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--worker-urls",
            *workers.urls,
            "--policy",
            "round_robin",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--prometheus-host",
            "127.0.0.1",
            "--prometheus-port",
            str(prom),
            "--log-level",
            "warn",
        ]
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"sglang-router exited: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    models = httpx.get(url + "/v1/models", timeout=1).json()
                    if (
                        models.get("data")
                        and all(w.stats()["requests"] == 0 for w in workers)
                        and _healthy_workers(url) == 2
                    ):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                assert time.monotonic() < deadline, "sglang-router did not register the workers in 60 s"
                time.sleep(0.2)
            yield url, workers
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()


def _healthy_workers(url: str) -> int:
    body = httpx.get(url + "/workers", timeout=1).json()
    workers = body.get("workers", body) if isinstance(body, dict) else body
    return sum(1 for w in workers if w.get("is_healthy", w.get("healthy", True)))


def test_sglang_router_registers_and_routes_chat(routed):
    url, workers = routed
    assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["sim-model"]
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Route me, please."}]
    r = c.chat.completions.create(model="sim-model", messages=messages, max_tokens=20)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model="sim-model", messages=messages, max_tokens=20, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content  # deterministic per prompt, whichever worker served it
    stats = [w.stats() for w in workers]
    assert sum(s["chat_requests"] for s in stats) == 2
    assert [s["chat_requests"] for s in stats] == [1, 1]  # round_robin spread them


def test_sglang_router_routes_native_generate(routed):
    url, workers = routed
    r = httpx.post(
        url + "/generate", json={"text": "native", "sampling_params": {"max_new_tokens": 5}}, timeout=30
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["completion_tokens"] == 5 and len(out["output_ids"]) == 5
    assert sum(w.stats()["generate_requests"] for w in workers) >= 1
