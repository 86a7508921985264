"""Type stubs for the Rust extension ``radixrouter._core`` (the contract; checked by stubtest)."""

from typing import final

__version__: str
__all__ = ["SseDecodeError", "SseDecoder", "SseEvent", "__version__", "encode_event"]

# ---- SSE codec -------------------------------------------------------------

class SseDecodeError(ValueError):
    """An SSE line or event exceeded the decoder's size limit."""

@final
class SseEvent:
    """One dispatched server-sent event."""

    @property
    def event(self) -> str:
        """The event type ("message" unless an ``event`` field set it)."""
    @property
    def data(self) -> str:
        """The block's data lines joined by LF."""
    @property
    def id(self) -> str:
        """The last event id at dispatch ("" if none was ever set)."""
    @property
    def retry(self) -> int | None:
        """A valid ``retry`` value from the same block, else None."""
    def __new__(cls, data: str = "", event: str = "message", id: str = "", retry: int | None = None) -> SseEvent: ...

@final
class SseDecoder:
    """Incremental WHATWG event-stream decoder.

    Any chunking of the same bytes yields the same events; each event is
    returned by the ``feed`` call that completes it.
    """

    def __new__(cls, *, max_line_bytes: int = 16777216, max_event_bytes: int = 16777216) -> SseDecoder: ...
    def feed(self, data: bytes) -> list[SseEvent]:
        """Feed bytes; return the events they complete. Raises SseDecodeError past a size limit."""
    def close(self) -> None:
        """End of stream: the unfinished line and undispatched block are discarded."""
    @property
    def last_event_id(self) -> str: ...
    @property
    def reconnection_time(self) -> int | None: ...

def encode_event(
    data: str | bytes | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one event: comments, id, event, data lines, retry, blank line; ``data: `` with the space."""

# ---- Prefix cache ----------------------------------------------------------
