"""`radixrouter demo`: two simulated SGLang workers, the router in front, a streamed multi-turn chat.

Everything runs on 127.0.0.1 with free ports and is shut down at the end. The workers are SIMULATED (no
model: text made of real Qwen3 tokens), so the answers are word salad; what the demo shows is the router:
streaming through the official `openai` client, which worker served each turn, and how many prompt tokens
that worker already had in its KV cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO

MODEL = "qwen3-sim"

SCRIPT = [
    "Hi! I am planning a trip to the mountains. What should I pack?",
    "Good. And what if it rains the whole time?",
    "Which of those would you skip to keep the backpack light?",
    "Thanks. Summarize the plan in one sentence.",
]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are chosen (a port released by one choice could
    otherwise come back as the next, and the router would find its port taken by a worker)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start(cmd: list[str]) -> tuple[subprocess.Popen, IO[bytes]]:
    """A child process whose output goes to a temporary file, read only if it exits early (to say why)."""
    log = tempfile.TemporaryFile()
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log


def _wait(url: str, proc: subprocess.Popen, log: IO[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            out = log.read().decode(errors="replace").strip()
            raise RuntimeError(f"{what} exited with code {proc.returncode}" + (f": {out[-500:]}" if out else ""))
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="radixrouter demo", description=__doc__.splitlines()[0])
    ap.add_argument("--decode-tokens-per-s", type=float, default=60.0,
                    help="simulated decode speed, so tokens visibly stream (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=24, help="tokens per answer (default %(default)s)")
    ap.add_argument("--policy", default="cache_aware", help="router policy (default %(default)s)")
    args = ap.parse_args(argv)

    import openai

    from radixrouter.tokenizer import qwen3_files

    py = sys.executable
    procs: list[subprocess.Popen] = []
    t0 = time.monotonic()
    try:
        workers = []
        *ports, rport = _free_ports(3)
        for port in ports:
            p, log = _start([py, "-m", "radixrouter.cli", "sim-worker", "--host", "127.0.0.1", "--port", str(port),
                             "--model", MODEL, "--tokenizer", "qwen3",
                             "--decode-tokens-per-s", str(args.decode_tokens_per_s)])
            procs.append(p)
            workers.append((f"http://127.0.0.1:{port}", p, log))
        router_url = f"http://127.0.0.1:{rport}"
        cmd = [py, "-m", "radixrouter.cli", "serve", "--host", "127.0.0.1", "--port", str(rport),
               "--model-path", str(qwen3_files()), "--served-model-name", MODEL, "--policy", args.policy,
               "--log-level", "warning"]
        for url, _p, _log in workers:
            cmd += ["--worker-url", url]
        for url, p, log in workers:
            _wait(url + "/health", p, log, f"simulated worker {url}")
        router, log = _start(cmd)
        procs.append(router)
        _wait(router_url + "/readiness", router, log, "the router")
        names = {url: f"worker-{i + 1} ({url})" for i, (url, _p, _log) in enumerate(workers)}
        print(f"radixrouter demo: router {router_url} (policy {args.policy}) in front of two simulated SGLang "
              f"workers with the Qwen3 tokenizer; started in {time.monotonic() - t0:.1f} s\n", flush=True)

        client = openai.OpenAI(base_url=router_url + "/v1", api_key="demo", max_retries=0, timeout=30)
        messages: list[dict] = [{"role": "system", "content": "You are a concise travel assistant."}]
        for turn, question in enumerate(SCRIPT, 1):
            messages.append({"role": "user", "content": question})
            print(f"[turn {turn}] user: {question}", flush=True)
            print(f"[turn {turn}] assistant:", end="", flush=True)
            with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=messages, max_tokens=args.max_tokens, stream=True,
                stream_options={"include_usage": True},
            ) as resp:
                worker = resp.headers.get("x-radixrouter-worker", "?")
                answer = ""
                usage = None
                for chunk in resp.parse():
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        piece = choice.delta.content or ""
                        answer += piece
                        print(piece, end="", flush=True)
            messages.append({"role": "assistant", "content": answer})
            cached = usage.prompt_tokens_details.cached_tokens if usage and usage.prompt_tokens_details else 0
            prompt = usage.prompt_tokens if usage else 0
            print(f"\n[turn {turn}] served by {names.get(worker, worker)}: {prompt} prompt tokens, "
                  f"{cached} of them cached by that worker, {usage.completion_tokens if usage else 0} generated\n",
                  flush=True)
        client.close()
        print(f"demo finished in {time.monotonic() - t0:.1f} s; shutting down", flush=True)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001
        print(f"\nradixrouter demo: failed: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        _stop(procs)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
