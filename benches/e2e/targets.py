"""Targets of the end-to-end harness: what the load generator talks to, started and stopped here.

Each target fronts the same simulated workers (started by the harness) and exposes an OpenAI-compatible
base URL. `direct` is the first worker itself; the routers run as subprocesses on 127.0.0.1 and free ports.
Add a target by subclassing `Target` and registering it in `TARGETS`.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from simutil import free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and all its live descendants, plus reaped children."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        # fields[1] = ppid; utime, stime, cutime, cstime are fields 14-17 of the full line (11-14 here)
        ppid = int(fields[1])
        cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
        stats[int(entry)] = (ppid, cpu)
    total, todo = 0.0, [pid]
    children: dict[int, list[int]] = {}
    for p, (pp, _) in stats.items():
        children.setdefault(pp, []).append(p)
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
        todo.extend(children.get(p, []))
    return total


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status in ok:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.1)


class Target:
    """A thing to send OpenAI requests to. `start(worker_urls)` -> base URL (no trailing /v1)."""

    name = "target"
    policy: str | None = None
    api_key: str | None = None  # sent as a bearer token by the load generator when set

    def __init__(self, policy: str | None = None) -> None:
        self.policy = policy or self.policy
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._log = None

    @property
    def label(self) -> str:
        return f"{self.name}" + (f" ({self.policy})" if self.policy else "")

    @classmethod
    def available(cls) -> str | None:
        """None if usable here, else the reason it is skipped."""
        return None

    def command(self, host: str, port: int, worker_urls: list[str], model_dir: str) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        return "/health"

    def start(self, worker_urls: list[str], model_dir: str, model: str) -> str:
        port = free_port()
        argv = self.command("127.0.0.1", port, worker_urls, model_dir)
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{self.name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        try:
            wait_http(self.url + self.ready_path(), 90, self.proc)
            self.after_start(worker_urls, model)
        except BaseException:
            self.stop()
            raise
        return self.url

    def after_start(self, worker_urls: list[str], model: str) -> None:
        pass

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()

    def log_tail(self, n: int = 3000) -> str:
        if self._log is None:
            return ""
        return Path(self._log.name).read_text(errors="replace")[-n:]


class Direct(Target):
    """The first worker itself (its own OpenAI-compatible endpoints); no router."""

    name = "direct"

    def start(self, worker_urls: list[str], model_dir: str, model: str) -> str:
        self.url = worker_urls[0]
        return self.url


class SglangRouter(Target):
    name = "sglang-router"
    policy = "cache_aware"

    @classmethod
    def available(cls) -> str | None:
        if importlib.util.find_spec("sglang_router") is None:
            return "sglang-router not installed (pip install 'sglang-router==0.3.2')"
        return None

    def command(self, host: str, port: int, worker_urls: list[str], model_dir: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--worker-urls",
            *worker_urls,
            "--policy",
            self.policy or "cache_aware",
            "--host",
            host,
            "--port",
            str(port),
            "--prometheus-host",
            host,
            "--prometheus-port",
            str(free_port()),
            "--log-level",
            "warn",
        ]

    def ready_path(self) -> str:
        return "/readiness"

    def after_start(self, worker_urls: list[str], model: str) -> None:
        # /readiness turns 200 with the first healthy worker; wait until every worker is registered
        import json

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(self.url + "/workers", timeout=2) as r:
                body = json.loads(r.read())
            workers = body.get("workers", []) if isinstance(body, dict) else body
            if len(workers) >= len(worker_urls):
                return
            time.sleep(0.2)
        raise TimeoutError("sglang-router did not register all workers")


class RadixRouter(Target):
    name = "radixrouter"
    policy = "cache_aware"

    @classmethod
    def available(cls) -> str | None:
        if importlib.util.find_spec("radixrouter.serve") is None:
            return "radixrouter serve is not available in this checkout"
        return None

    def command(self, host: str, port: int, worker_urls: list[str], model_dir: str) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "radixrouter.cli",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--policy",
            self.policy or "cache_aware",
            "--model-path",
            model_dir,
            "--log-level",
            "warning",
            "--served-model-name",
            "sim-model",
        ]
        for u in worker_urls:
            argv += ["--worker-url", u]
        return argv

    def ready_path(self) -> str:
        return "/readiness"


class LiteLLM(Target):
    """LiteLLM proxy in front of the workers' OpenAI endpoints. Optional: used when `litellm` is found
    ($LITELLM_BIN, then PATH, then beside this Python). Install it in its own venv so its pins do not
    disturb the project's: `python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install
    'litellm[proxy]'`, then `LITELLM_BIN=/tmp/litellm-venv/bin/litellm`."""

    name = "litellm"
    policy = "simple-shuffle"
    api_key = "sk-" + secrets.token_hex(16)  # a throwaway key for this local run (litellm requires one)

    @staticmethod
    def exe() -> str | None:
        for cand in (
            os.environ.get("LITELLM_BIN"),
            shutil.which("litellm"),
            str(Path(sys.executable).parent / "litellm"),
        ):
            if cand and Path(cand).is_file():
                return cand
        return None

    @classmethod
    def available(cls) -> str | None:
        if cls.exe() is None:
            return "litellm proxy not installed (set LITELLM_BIN; see benches/e2e/targets.py)"
        return None

    def command(self, host: str, port: int, worker_urls: list[str], model_dir: str) -> list[str]:
        cfg = tempfile.NamedTemporaryFile("w", prefix="litellm-", suffix=".yaml", delete=False)
        lines = ["model_list:"]
        for u in worker_urls:
            lines += [
                "  - model_name: sim-model",
                "    litellm_params:",
                "      model: openai/sim-model",
                f"      api_base: {u}/v1",
                "      api_key: none",
            ]
        lines += ["litellm_settings:", "  drop_params: true", "  num_retries: 0", "  telemetry: false"]
        lines += ["general_settings:", f"  master_key: {self.api_key}"]
        cfg.write("\n".join(lines) + "\n")
        cfg.close()
        return [
            self.exe() or "litellm",
            "--config",
            cfg.name,
            "--host",
            host,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]

    def ready_path(self) -> str:
        return "/health/liveliness"


TARGETS: dict[str, type[Target]] = {
    "direct": Direct,
    "radixrouter": RadixRouter,
    "sglang-router": SglangRouter,
    "litellm": LiteLLM,
}


def make_target(spec: str) -> Target:
    """`name` or `name:policy`, e.g. `sglang-router:round_robin`."""
    name, _, policy = spec.partition(":")
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return TARGETS[name](policy or None)
