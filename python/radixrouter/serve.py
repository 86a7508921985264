"""`radixrouter serve`: parse flags (each also read from a RADIXROUTER_* variable) and run granian."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import socket
import ssl
import sys
from dataclasses import fields

from radixrouter.config import POLICIES, STREAM_MODES, Config

PROG = "radixrouter serve"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, exit 2
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


class _UsageError(Exception):
    pass


def _env_name(flag: str) -> str:
    return "RADIXROUTER_" + flag.lstrip("-").replace("-", "_").upper()


def _positive(kind):
    def conv(s: str):
        v = kind(s)
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
        return v

    conv.__name__ = kind.__name__
    return conv


# (flag, type, help, extra kwargs); the default comes from Config, the env var from the flag name
_FLAGS: list[tuple[str, object, str, dict]] = [
    ("--host", str, "address to listen on", {}),
    ("--port", int, "port to listen on", {}),
    ("--workers", int, "granian worker processes (each has its own prefix cache and metrics)", {}),
    ("--log-level", str, "log level", {"choices": ["debug", "info", "warning", "error", "critical"]}),
    ("--interface", str, "how granian calls the app (rsgi: granian's own protocol, less CPU per request)",
     {"choices": ["rsgi", "asgi"]}),
    ("--worker-url", str, "an SGLang worker, http://host:port (repeatable; env: comma separated)",
     {"action": "append", "dest": "worker_urls"}),
    ("--openai-url", str, "an OpenAI-compatible upstream, [MODEL=]BASE_URL (repeatable; env: comma separated); "
     "without MODEL= every model name not served otherwise goes there unchanged",
     {"action": "append", "dest": "openai_urls"}),
    ("--openai-api-key-env", str, "NAME of the environment variable holding the --openai-url key", {}),
    ("--config", str, "TOML (or YAML) file: models, their upstreams (sglang / openai), weights, key variables, "
     "upstream model names", {"dest": "config_file"}),
    ("--policy", str, "routing policy", {"choices": list(POLICIES)}),
    ("--worker-stream-mode", str, "how workers stream /generate", {"choices": list(STREAM_MODES)}),
    ("--model-path", str, "folder with tokenizer.json and tokenizer_config.json (chat template)", {}),
    ("--tokenizer", str, "a tokenizer.json file (with --chat-template)", {}),
    ("--chat-template", str, "a Jinja chat template file", {}),
    ("--served-model-name", str, "the model id clients use", {}),
    ("--tool-call-parser", str, "parse tool calls in chat output: hermes (qwen), llama3, mistral", {}),
    ("--reasoning-parser", str, "separate <think> reasoning into reasoning_content: qwen3, deepseek-r1, ...", {}),
    ("--api-key", str, "require 'Authorization: Bearer KEY' on API routes", {}),
    ("--admin-key", str, "key for /add_worker, /remove_worker, /list_workers (default: the API key)", {}),
    ("--max-body-bytes", _positive(int), "largest request body (413 beyond)", {}),
    ("--max-concurrent-requests", _positive(int), "generation requests in flight before 429 (0 = no limit)", {}),
    ("--upstream-client", str, "HTTP client for workers", {"choices": ["fast", "aiohttp"]}),
    ("--upstream-ca-file", str, "PEM file of CA certificates to trust for HTTPS upstreams, besides the system's "
     "(verification is never turned off)", {}),
    ("--connect-timeout", _positive(float), "seconds to connect to a worker", {}),
    ("--first-token-timeout", _positive(float), "seconds from request to the worker's first token", {}),
    ("--request-timeout", _positive(float), "seconds for a whole request", {}),
    ("--max-retries", _positive(int), "other workers tried before the first byte reaches the client", {}),
    ("--retry-backoff", _positive(float), "base retry delay in seconds (doubled per attempt, jittered)", {}),
    ("--keepalive-interval", _positive(float), "seconds between ': keep-alive' frames before the first token", {}),
    ("--health-check-interval", _positive(float), "seconds between worker health probes", {}),
    ("--health-check-timeout", _positive(float), "seconds for one health probe", {}),
    ("--health-failure-threshold", _positive(int), "failed probes before a worker is unhealthy", {}),
    ("--health-success-threshold", _positive(int), "good probes before a worker is healthy again", {}),
    ("--breaker-failure-threshold", _positive(int),
     "failed requests in a row (transport, timeout, 5xx) that open a worker's circuit breaker (0 = off)", {}),
    ("--breaker-cooldown", _positive(float), "seconds a breaker stays open before one trial request", {}),
    ("--session-key", str, "session affinity: 'user' (the OpenAI user field) or a header name ('header:NAME')",
     {}),
    ("--shutdown-timeout", _positive(float), "on SIGTERM, seconds running requests get to finish before they "
     "are aborted", {}),
    ("--cache-max-tokens", _positive(int), "token budget of the prefix cache", {}),
    ("--cache-threshold", _positive(float), "cache_aware: minimum matched fraction of the prompt", {}),
    ("--balance-abs-threshold", _positive(int), "cache_aware: in-flight difference that triggers balancing", {}),
    ("--balance-rel-threshold", _positive(float), "cache_aware: in-flight ratio that triggers balancing", {}),
]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run the radixrouter OpenAI-compatible router. Every flag can also be "
                "set with the RADIXROUTER_* environment variable named after it (e.g. RADIXROUTER_PORT).")
    defaults = Config()
    for flag, kind, help_text, extra in _FLAGS:
        dest = extra.get("dest") or flag.lstrip("-").replace("-", "_")
        default = getattr(defaults, dest)
        p.add_argument(flag, type=kind, help=f"{help_text} [env {_env_name(flag)}; default {default!r}]",
                       default=None, **extra)
    return p


def _from_env(p: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Fill unset flags from RADIXROUTER_* variables (flags win)."""
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if getattr(ns, action.dest) is not None:
            continue
        raw = os.environ.get(_env_name(flag))
        if raw is None or raw == "":
            continue
        try:
            if action.dest in ("worker_urls", "openai_urls"):
                value = [u for u in raw.replace(",", " ").split() if u]
            else:
                value = action.type(raw) if action.type else raw
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise _UsageError(f"{_env_name(flag)}={raw!r}: {e}") from None
        if action.choices is not None and value not in action.choices:
            raise _UsageError(f"{_env_name(flag)}={raw!r}: choose from {', '.join(map(str, action.choices))}")
        setattr(ns, action.dest, value)


def parse_config(argv: list[str]) -> Config:
    p = build_parser()
    ns = p.parse_args(argv)
    _from_env(p, ns)
    kwargs = {f.name: getattr(ns, f.name) for f in fields(Config) if getattr(ns, f.name, None) is not None}
    cfg = Config(**kwargs)
    from radixrouter.workers import WorkerError, normalize_url

    try:
        cfg.worker_urls = [normalize_url(u) for u in cfg.worker_urls]
    except WorkerError as e:
        raise _UsageError(str(e)) from None
    try:
        if cfg.tool_call_parser:
            from radixrouter.toolcalls import normalize_tool_format

            normalize_tool_format(cfg.tool_call_parser)
        if cfg.reasoning_parser:
            from radixrouter.reasoning import normalize_reasoning_format

            normalize_reasoning_format(cfg.reasoning_parser)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    from radixrouter.models_config import ModelConfigError, build_models

    try:
        build_models(cfg)  # a bad --openai-url / --config / missing key variable: one line at startup
    except ModelConfigError as e:
        raise _UsageError(str(e)) from None
    if not 1 <= cfg.port <= 65535:
        raise _UsageError(f"--port {cfg.port} is not a TCP port")
    if cfg.workers < 1:
        raise _UsageError("--workers must be at least 1")
    if cfg.model_path and cfg.tokenizer:
        raise _UsageError("give either --model-path or --tokenizer, not both")
    if cfg.chat_template and not cfg.tokenizer:
        raise _UsageError("--chat-template needs --tokenizer")
    if cfg.model_path and not os.path.isdir(cfg.model_path):
        raise _UsageError(f"--model-path {cfg.model_path}: no such directory")
    if cfg.model_path and not os.path.isfile(os.path.join(cfg.model_path, "tokenizer.json")):
        raise _UsageError(f"--model-path {cfg.model_path}: no tokenizer.json in it")
    if cfg.upstream_ca_file:
        try:
            ssl.create_default_context(cafile=cfg.upstream_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise _UsageError(f"--upstream-ca-file {cfg.upstream_ca_file}: cannot load CA certificates: {e}") from None
    for flag, path in (("--tokenizer", cfg.tokenizer), ("--chat-template", cfg.chat_template)):
        if path and not os.path.isfile(path):
            raise _UsageError(f"{flag} {path}: no such file")
    return cfg


def check_port(host: str, port: int) -> None:
    """Fail fast (one line) when the address is taken; granian binds with SO_REUSEPORT and would share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise _UsageError(f"port {port} on {host} is already in use") from None
        raise _UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    finally:
        s.close()


def _load_app(cfg: Config):
    from radixrouter.app import create_app

    app = create_app(cfg)
    app.handle_sigterm = True  # drain on SIGTERM (App._on_sigterm), then granian stops
    app.tune_gc = True  # gc.freeze() and fewer young collections once started (see app.tune_gc)
    return app


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # one prompt at a time on the event loop: tokenizers' thread pool would only add a thread hop per call
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = parse_config(argv)
        if cfg.model_path or cfg.tokenizer:
            from radixrouter.app import load_tokenizer

            try:
                load_tokenizer(cfg)  # validate here, so a bad file is one line and not a worker crash
            except Exception as e:  # noqa: BLE001
                raise _UsageError(f"cannot load the tokenizer: {e.__class__.__name__}: {e}") from None
        check_port(cfg.host, cfg.port)
    except _UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2

    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not cfg.worker_urls and not cfg.openai_urls and not cfg.config_file:
        logging.getLogger("radixrouter").warning("no --worker-url given; add workers with POST /add_worker")
    if cfg.workers > 1:
        logging.getLogger("radixrouter").warning(
            "--workers %d: each process keeps its own worker list, prefix cache and metrics; "
            "/add_worker and /remove_worker reach only the process that answers them", cfg.workers)
    server = Server(
        "radixrouter.app:create_app",
        address=cfg.host,
        port=cfg.port,
        interface=Interfaces.RSGI if cfg.interface == "rsgi" else Interfaces.ASGI,
        workers=cfg.workers,
        http=HTTPModes.http1,
        websockets=False,
        backlog=2048,
        log_level=LogLevels(cfg.log_level),
        log_access=False,
    )
    server.serve(target_loader=functools.partial(_load_app, cfg), wrap_loader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
