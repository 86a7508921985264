"""radixrouter: an OpenAI-compatible router for LLM inference workers.

The hot paths (the SSE codec and the radix-tree prefix cache) live in the Rust
extension ``radixrouter._core``; this package re-exports them.
"""

from __future__ import annotations

from typing import Any

from radixrouter import _core
from radixrouter._core import SseDecodeError, SseDecoder, SseEvent, encode_event

__version__: str = _core.__version__

__all__ = [
    "SseDecodeError",
    "SseDecoder",
    "SseEvent",
    "__version__",
    "encode_event",
]

if hasattr(_core, "PrefixCache"):
    from radixrouter._core import PrefixCache, PrefixMatch, PrefixPin, token_char_ends  # noqa: F401

    __all__ += ["PrefixCache", "PrefixMatch", "PrefixPin", "token_char_ends"]


def __getattr__(name: str) -> Any:
    # The ASGI app pulls in the HTTP stack; import it only when asked for.
    if name == "create_app":
        from radixrouter.app import create_app

        return create_app
    raise AttributeError(f"module 'radixrouter' has no attribute {name!r}")
