"""Start and stop simulated SGLang workers (`radixrouter sim-worker`) from tests and benchmarks.

Pytest-free (stdlib only), so any test, bench or script can use it:

    from simutil import SimWorker, SimWorkers

    with SimWorker(model="sim-model", tokenizer="qwen3", decode_tokens_per_s=0) as w:
        w.url                     # "http://127.0.0.1:<free port>"
        w.stats()                 # GET /sim/stats as a dict
        w.fault(status=503, count=2)          # POST /sim/fault: the next 2 generation requests get a 503
        w.set_healthy(False)      # /health and /health_generate answer 503
        w.reset()                 # zero stats, clear faults, flush the KV cache

    with SimWorkers(3, tokenizer="qwen3") as ws:   # several workers; ws.urls, ws[0], iterate, total_stats()
        ...

Keyword flags map onto `radixrouter sim-worker` options: `kv_cache_tokens=5000` -> `--kv-cache-tokens 5000`,
`incremental_streaming_output=True` -> `--incremental-streaming-output` (False/None omit the flag).
`tokenizer=None` (and no `model_path`) runs the byte-level fallback tokenizer. Every subprocess is killed on
exit (SIGTERM, then SIGKILL after 5 s); the port is picked free by binding port 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["SimWorker", "SimWorkers", "free_port", "http_json"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_of_tree(pid: int) -> int:
    """Resident memory (bytes) of process `pid` and its direct children (a granian server and its workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [pid] + [int(c) for c in f.read().split()]
    total = 0
    for p in pids:
        with open(f"/proc/{p}/statm") as f:
            total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def stalled_streams(port: int, n: int, model: str) -> list[socket.socket]:
    """`n` raw clients of the router on `port` that send a long streaming chat and then read nothing (receive
    buffer 4 KiB); close them to leave."""
    body = json.dumps({"model": model, "stream": True, "max_tokens": 100_000,
                       "messages": [{"role": "user", "content": "go"}]}).encode()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        socks.append(s)
    return socks


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A tiny blocking HTTP call: returns (status, parsed JSON body or raw text or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def _flags(flags: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in flags.items():
        if v is None or v is False:
            continue
        opt = "--" + k.replace("_", "-")
        out.append(opt) if v is True else out.extend([opt, str(v)])
    return out


class SimWorker:
    """One `radixrouter sim-worker` subprocess on 127.0.0.1 and a free port."""

    def __init__(
        self,
        model: str = "sim-model",
        tokenizer: str | None = "qwen3",
        model_path: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        python: str = sys.executable,
        **flags: Any,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.model = model
        self.startup_timeout = startup_timeout
        args = {"host": host, "port": self.port, "model": model}
        if model_path:
            args["model_path"] = model_path
        elif tokenizer:
            args["tokenizer"] = tokenizer
        args.update(flags)
        self.argv = [python, "-m", "radixrouter.cli", "sim-worker", *_flags(args)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> SimWorker:
        self._spawn()
        self._wait()
        return self

    def _spawn(self) -> None:
        self._log = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def _wait(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                out = self.output()
                self.stop()
                raise RuntimeError(f"sim worker exited with {code}: {' '.join(self.argv)}\n{out}")
            try:
                status, _ = http_json("GET", self.url + "/health", timeout=1.0)
                if status == 200:
                    self._check_own_port()
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise TimeoutError(f"sim worker not healthy after {self.startup_timeout}s\n{out}")
            time.sleep(0.05)

    def _check_own_port(self) -> None:
        # granian listens with SO_REUSEPORT, so a port taken between free_port() and the bind would be
        # shared silently with another server: make sure the answers come from our own process
        assert self.proc is not None
        for _ in range(3):  # new connections, so the kernel may pick another listener
            _, info = http_json("GET", self.url + "/server_info", timeout=2.0)
            if not isinstance(info, dict) or info.get("pid") != self.proc.pid:
                out = self.output()
                self.stop()
                raise RuntimeError(f"port {self.port} answered by another process ({info!r:.200})\n{out}")

    def output(self) -> str:
        """Everything the worker printed so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SimWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- admin helpers
    def get(self, path: str) -> Any:
        status, body = http_json("GET", self.url + path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json("POST", self.url + path, {} if body is None else body)

    def stats(self) -> dict:
        return self.get("/sim/stats")

    def fault(self, **fault: Any) -> dict:
        """Queue a fault: count, status, body, close_after_tokens, stall_s, linger_s, reply (see radixrouter.sim)."""
        status, body = self.post("/sim/fault", fault)
        if status != 200:
            raise ValueError(f"fault rejected: {status} {body}")
        return body

    def clear_faults(self) -> None:
        http_json("DELETE", self.url + "/sim/fault")

    def set_healthy(self, healthy: bool) -> None:
        self.post("/sim/health", {"healthy": healthy})

    def reset(self, flush_cache: bool = True) -> dict:
        return self.post("/sim/reset", {"flush_cache": flush_cache})[1]


class SimWorkers:
    """Several sim workers started together (in parallel) and stopped together."""

    def __init__(self, n: int, **kwargs: Any) -> None:
        self.workers = [SimWorker(**kwargs) for _ in range(n)]

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def __getitem__(self, i: int) -> SimWorker:
        return self.workers[i]

    def __iter__(self):
        return iter(self.workers)

    def __len__(self) -> int:
        return len(self.workers)

    def start(self) -> SimWorkers:
        try:
            for w in self.workers:  # spawn all, then wait: startups overlap
                w._spawn()
            for w in self.workers:
                w._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    def total_stats(self) -> dict:
        """Sums of the numeric /sim/stats fields over the workers."""
        total: dict[str, float] = {}
        for w in self.workers:
            for k, v in w.stats().items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    total[k] = total.get(k, 0) + v
        total["cache_hit_ratio"] = (
            total["cached_tokens"] / total["prompt_tokens"] if total.get("prompt_tokens") else 0.0
        )
        return total

    def __enter__(self) -> SimWorkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
