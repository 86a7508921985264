"""Router settings: one dataclass, filled by `radixrouter serve` (flags / RADIXROUTER_* variables) or by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

POLICIES = ("cache_aware", "least_load", "round_robin", "power_of_two", "random")
STREAM_MODES = ("auto", "cumulative", "incremental")


@dataclass
class Config:
    # listening
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # granian worker processes; each has its own prefix cache and metrics
    interface: str = "rsgi"  # how granian calls the app: "rsgi" (its native protocol, less per request) or "asgi"
    log_level: str = "info"

    # fleet
    worker_urls: list[str] = field(default_factory=list)
    policy: str = "cache_aware"
    worker_stream_mode: str = "auto"  # how workers stream /generate: cumulative (SGLang default) or incremental
    # OpenAI-compatible upstreams and other models (radixrouter.models_config, radixrouter.relay)
    openai_urls: list[str] = field(default_factory=list)  # "[NAME=]URL"; without NAME: passthrough
    openai_api_key_env: str | None = None  # the variable holding the key for --openai-url upstreams
    config_file: str | None = None  # TOML / YAML: models, their upstreams, kinds, weights, key variables

    # model, tokenizer, template (no tokenizer -> text mode)
    model_path: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = None
    served_model_name: str | None = None

    # chat output parsing (tool calls, reasoning); None = off
    tool_call_parser: str | None = None  # hermes (qwen), llama3, mistral
    reasoning_parser: str | None = None  # qwen3, deepseek-r1, ...

    # auth and limits
    api_key: str | None = None
    admin_key: str | None = None  # for /add_worker, /remove_worker, /list_workers; falls back to api_key
    max_body_bytes: int = 32 * 1024 * 1024
    max_concurrent_requests: int = 4096  # generation requests in flight; over it -> 429 (0 = unlimited)

    # upstream client, timeouts (seconds) and retries
    upstream_client: str = "fast"  # "fast" (radixrouter.httpclient) or "aiohttp"
    upstream_ca_file: str | None = None  # extra CA certificates (PEM) trusted for HTTPS upstreams
    connect_timeout: float = 5.0
    first_token_timeout: float = 600.0  # from sending the request to the worker's first event
    request_timeout: float = 3600.0  # whole request
    max_retries: int = 2  # extra attempts on other workers before the first byte reaches the client
    retry_backoff: float = 0.05  # base delay, doubled per attempt, with full jitter
    keepalive_interval: float = 15.0  # `: keep-alive` comment frames while waiting for the first token

    # health
    health_check_interval: float = 5.0
    health_check_timeout: float = 2.0
    health_failure_threshold: int = 3
    health_success_threshold: int = 1
    breaker_failure_threshold: int = 5  # failed requests in a row (transport errors, timeouts, 5xx) that open a
    # worker's circuit breaker (0 = no breaker); a worker's 4xx and 429 never count
    breaker_cooldown: float = 10.0  # seconds open before one trial request (half-open)

    # session affinity: "user" (the OpenAI `user` field), "header:NAME" or NAME (a request header); None = off
    session_key: str | None = None

    # graceful shutdown: on SIGTERM stop accepting, let requests finish for this long, then abort them
    shutdown_timeout: float = 30.0

    # prefix cache and cache-aware policy
    cache_max_tokens: int = 16_000_000
    cache_threshold: float = 0.3  # min matched fraction of the prompt for cache affinity to decide
    balance_abs_threshold: int = 32  # in-flight difference (max - min) beyond which load decides
    balance_rel_threshold: float = 1.5  # and max > min * rel

    def admin_secret(self) -> str | None:
        return self.admin_key if self.admin_key else self.api_key

    def model_name(self) -> str:
        """The model id clients must use (and /v1/models lists)."""
        if self.served_model_name:
            return self.served_model_name
        import os

        for path in (self.model_path, self.tokenizer):
            if path:
                base = os.path.basename(os.path.normpath(path))
                if path == self.tokenizer:
                    base = os.path.basename(os.path.dirname(os.path.abspath(path))) or base
                return base
        return "default"
