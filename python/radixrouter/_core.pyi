"""Type stubs for the Rust extension ``radixrouter._core`` (the contract; checked by stubtest)."""

from array import array
from collections.abc import Iterable, Sequence
from typing import Literal, final

from typing_extensions import Buffer

__version__: str
__all__ = [
    "ByteLevelBpe",
    "PrefixCache",
    "PrefixMatch",
    "PrefixPin",
    "SseDecodeError",
    "SseDecoder",
    "SseEvent",
    "__version__",
    "encode_event",
    "token_char_ends",
]

# ---- SSE codec -------------------------------------------------------------

class SseDecodeError(ValueError):
    """An SSE line or event exceeded the decoder's size limit, or ``SseDecoder.feed_data`` met a named event."""

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
    def feed_data(self, data: bytes) -> list[bytes]:
        """Feed bytes; return only the data of the events they complete, each as UTF-8 bytes.

        The fast path for streams whose consumer needs only the data (OpenAI-style chat streams).
        Same decoding as ``feed``: item ``i`` equals ``feed(data)[i].data.encode()`` (invalid UTF-8
        already replaced by U+FFFD, so every item is valid UTF-8, ready for ``orjson.loads`` or
        ``encode_event``); ``last_event_id`` and ``reconnection_time`` are tracked as by ``feed``.
        ``feed`` and ``feed_data`` may be mixed on one decoder.

        Only "message" events are expected: an event whose type is anything else (an ``event``
        field with a non-empty value other than ``message``) raises SseDecodeError naming it. The
        whole read is decoded first, so the decoder's state is as after ``feed``, but the data of
        that read's events is not returned; use ``feed`` for streams with named events. Raises
        SseDecodeError past a size limit, like ``feed``.
        """
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

@final
class PrefixCache:
    """A radix-tree prefix cache: text -> token ids, logprobs, loss mask and worker affinity.

    Keyed by text; positions are ``str`` indices. Each insert brings its token ids and every
    token's end offset in the text. ``match`` returns the longest cached prefix, cut at the
    last whole token inside it (never a token that straddles the point of divergence).

    Rules:

    * Tokenization conflicts: the existing tokens win. Token data on a cached path is never
      rewritten; an insert adds its tokens only past the tokens already on its path, and only
      if its ids/ends for the shared part equal those on the path (otherwise its text and
      worker are still recorded, without new tokens). Re-inserting a text refreshes it.
    * Budget: a node costs its token count (one unit per 4 characters for nodes without
      tokens). An insert that takes the total past ``max_tokens`` evicts least-recently-used
      unpinned leaves until it fits. Pinned paths are never evicted.
    * Workers: ``insert(..., worker=w)`` records ``w`` on every node of the path; eviction and
      ``remove_worker`` forget it.

    Thread-safe; long inputs are processed with the thread detached from the interpreter.
    """

    def __new__(cls, max_tokens: int = 16000000) -> PrefixCache: ...
    @property
    def max_tokens(self) -> int: ...
    def insert(
        self,
        text: str,
        token_ids: Sequence[int] | Buffer | None = None,
        token_ends: Sequence[int] | Buffer | None = None,
        *,
        logprobs: Iterable[float] | Buffer | None = None,
        loss_mask: Iterable[int] | Buffer | None = None,
        worker: str | None = None,
    ) -> None:
        """Insert ``text`` with its tokens (none: text and worker affinity only).

        ``token_ids`` / ``token_ends``: ints, bytes of native uint32, or a buffer of integers
        (``array("I")``, the fastest, or any other integer ``array`` / ``memoryview`` / numpy
        array; read without creating Python ints). ``token_ends``: non-decreasing ``str``
        indices, at most ``len(text)`` (several tokens may share one end). ``logprobs`` (floats,
        or a float32/float64 buffer) / ``loss_mask`` (0 or 1; ints or an integer buffer such as
        bytes or ``array("B")``): one per token. ``ValueError`` on mismatched
        lengths, decreasing or out-of-range ends, a mask value other than 0/1; ``UnicodeEncodeError``
        (a ``ValueError``) for a text with lone surrogates.
        """
    def match(self, text: str) -> PrefixMatch:
        """The longest cached prefix of ``text`` (refreshes its LRU position)."""
    def pin(self, text: str) -> PrefixPin:
        """Protect the cached path ``text`` reaches from eviction until the pin is released."""
    def remove_worker(self, worker: str) -> None:
        """Forget ``worker`` on every node."""
    def clear(self) -> None:
        """Drop every entry, pin and worker (the counters in ``stats`` are kept)."""
    def stats(self) -> dict[str, int | float]:
        """Counters: nodes, tokens, charged (budget units), max_tokens, bytes (estimated heap),
        evictions, pins, workers, lookups, looked_up_tokens, matched_tokens, hit_rate
        (matched / looked-up tokens; the unmatched rest of a text is estimated at the matched
        part's characters per token, or 4), looked_up_chars, matched_chars, char_hit_rate."""

@final
class PrefixMatch:
    """The longest cached prefix of a text (a snapshot; see ``PrefixCache.match``)."""

    @property
    def length(self) -> int:
        """Matched ``str`` index at the end of the last whole matched token (0 if none)."""
    @property
    def matched_chars(self) -> int:
        """Raw matched characters (may be beyond ``length``)."""
    @property
    def token_count(self) -> int: ...
    @property
    def token_ids(self) -> list[int]:
        """The matched ids as a new list (see ``ids_json``/``ids_bytes`` for cheaper forms)."""
    @property
    def logprobs(self) -> list[float]:
        """One per token; 0.0 for tokens inserted without logprobs."""
    @property
    def loss_mask(self) -> list[int]:
        """One per token; 0 for tokens inserted without a mask."""
    @property
    def workers(self) -> dict[str, int]:
        """Worker -> matched characters up to that worker's deepest node on the path."""
    @property
    def worker_ages(self) -> dict[str, int]:
        """Worker -> cache operations (inserts, matches, pins) since it last inserted through its
        deepest node on the path: smaller is more recent (1: the operation just before this match)."""
    def ids_json(self) -> bytes:
        """The ids as a JSON array, e.g. ``b"[1,2,3]"``."""
    def ids_bytes(self) -> bytes:
        """The ids as native-endian uint32 bytes (``memoryview(b).cast("I")``)."""
    def ids_array(self) -> array[int]:
        """The ids as ``array.array("I")``."""
    def ends_array(self) -> array[int]:
        """The matched tokens' end offsets (``str`` indices) as ``array.array("I")``; the last is
        ``length``."""
    def logprobs_array(self) -> array[float]:
        """The logprobs as ``array.array("f")`` (float32, as stored; 0.0 where none was recorded)."""
    def loss_mask_array(self) -> array[int]:
        """The loss mask as ``array.array("B")`` (0 where none was recorded); e.g.
        ``m.loss_mask_array()[-1]`` without building a list."""
    def __len__(self) -> int:
        """The number of matched tokens."""

@final
class PrefixPin:
    """A pin on a cached path; a context manager. Released by ``release()``, on leaving
    the ``with`` block, or when garbage-collected."""

    @property
    def matched_chars(self) -> int:
        """Characters of the text that were cached when it was pinned."""
    @property
    def active(self) -> bool:
        """True until released (False from the start if nothing of the text was cached)."""
    def release(self) -> None:
        """Release the pin (idempotent)."""
    def __enter__(self) -> PrefixPin: ...
    def __exit__(self, *args: object) -> bool: ...

def token_char_ends(ids: Sequence[int] | Buffer, table: Buffer, start: int = 0) -> array[int]:
    """Each token's end offset (``str`` index) in the text that ``ids`` spell, counted from
    ``start``, as ``array.array("I")``: ``table[id]`` is the number of characters that begin in
    token ``id`` (for byte-level BPE, the UTF-8 lead bytes among its bytes). ``table``: a buffer
    of uint8 (``bytes``, ``array("B")``) or uint32 (``array("I")``). ``ids`` as for
    ``PrefixCache.insert``. ``ValueError`` for an id outside the table."""

# ---- Byte-level BPE ----------------------------------------------------------

@final
class ByteLevelBpe:
    """Byte-level BPE with the ids of Hugging Face ``tokenizers`` (the Qwen2/3 and Llama-3
    pre-tokenizer regexes), and that library's ``ByteLevel`` decoder for any ids.

    ``encode`` does what ``Tokenizer.encode(text, add_special_tokens=False)`` does for such a
    tokenizer, for any text: split at added tokens (leftmost, longest at a position), check each
    segment between them against the normalizer, split it with the pre-tokenizer regex (a
    hand-written scanner with ``\\p{L}`` / ``\\p{N}`` tables read off tokenizers' own regex engine,
    Unicode ``\\s``, Unicode case folding of the contractions), BPE the UTF-8 bytes of each piece
    (with a cache of piece -> ids for pieces up to 256 bytes, cleared when it reaches 65,536
    pieces or 4 MiB). Thread-safe.
    """

    def __new__(
        cls,
        vocab: dict[str, int],
        merges: Iterable[Sequence[str] | str],
        added_tokens: dict[str, int],
        *,
        max_digits: int,
        ignore_merges: bool = False,
        normalizer: Literal["NFC", "NFD", "NFKC", "NFKD"] | None = None,
    ) -> ByteLevelBpe:
        """``vocab`` and ``merges`` as in tokenizer.json's BPE model (``json.loads(tok.model.__getstate__())``:
        tokens in the byte-level alphabet, merges as ``[left, right]`` pairs or ``"left right"``
        strings, in rank order); ``added_tokens``: content -> id; ``max_digits``: the N of the
        pattern's ``\\p{N}{1,N}`` (1 for Qwen2/3, 3 for Llama-3); ``ignore_merges`` as the model's
        flag; ``normalizer``: the tokenizer's normalizer (None: none; ``"NFC"``: Unicode NFC, as
        Qwen2/3 have; ``"NFD"``, ``"NFKC"``, ``"NFKD"``: not implemented, only ASCII text, which
        they leave unchanged, is encoded). ``ValueError`` for a merge of unknown tokens, a byte
        missing from the vocabulary, an empty added token, ``max_digits < 1`` or another
        normalizer; ``TypeError`` for arguments of the wrong types."""
    def encode(self, text: str) -> list[int] | None:
        """The token ids of ``text`` (added tokens recognized, none added), or None where the
        normalizer would change the text, for the caller to use tokenizers: with ``"NFC"``, a
        segment between added tokens that is not in NFC (rare: keyboards and the web produce NFC
        text; e.g. decomposed accents, U+212B ANGSTROM SIGN, U+2000 EN QUAD); with ``"NFD"`` /
        ``"NFKC"`` / ``"NFKD"``, text that is not all ASCII. ``UnicodeEncodeError`` (a
        ``ValueError``) for a text with lone surrogates."""
    def spells(self, ids: Sequence[int], text: str) -> bool:
        """Whether ``Tokenizer.decode(ids, skip_special_tokens=False)`` with a ``ByteLevel``
        decoder gives exactly ``text`` (ids it does not know are skipped, as tokenizers does)."""
    def decode_bytes(self, ids: Sequence[int]) -> bytes | None:
        """The bytes the ids decode to (the decoder's output before it becomes a ``str``), or None
        if an id is unknown."""
    @property
    def cached_pieces(self) -> int:
        """Pieces in the cache of piece -> ids."""
