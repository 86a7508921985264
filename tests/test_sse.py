"""The SSE codec: the Python API, a table of spec cases, and hypothesis properties.

Cases are derived from WHATWG HTML "Interpreting an event stream" (../shared/spec/sse-and-openai-streaming.md).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrouter import SseDecodeError, SseDecoder, SseEvent, encode_event


def ev(data: str, event: str = "message", id: str = "", retry: int | None = None) -> SseEvent:
    return SseEvent(data, event, id, retry)


def decode_all(data: bytes) -> list[SseEvent]:
    return SseDecoder().feed(data)


def decode_chunks(chunks: list[bytes]) -> list[SseEvent]:
    d = SseDecoder()
    out: list[SseEvent] = []
    for c in chunks:
        out += d.feed(c)
    return out


BOM = b"\xef\xbb\xbf"

# (name, stream bytes, expected events)
SPEC_CASES = [
    ("lf", b"data: a\n\n", [ev("a")]),
    ("crlf", b"data: a\r\n\r\n", [ev("a")]),
    ("cr", b"data: a\r\r", [ev("a")]),
    ("mixed line ends", b"data: a\rdata: b\r\ndata: c\n\n", [ev("a\nb\nc")]),
    ("lf then cr is two line ends", b"data: a\n\rdata: b\n\n", [ev("a"), ev("b")]),
    ("no space after colon", b"data:a\n\n", [ev("a")]),
    ("only one space removed", b"data:  a\n\n", [ev(" a")]),
    ("tab not removed", b"data:\ta\n\n", [ev("\ta")]),
    ("field without colon is empty data", b"data\n\n", [ev("")]),
    ("empty data line then text", b"data\ndata: x\n\n", [ev("\nx")]),
    ("two empty data lines", b"data:\ndata:\n\n", [ev("\n")]),
    ("multi-line data", b"data: {\ndata: }\n\n", [ev("{\n}")]),
    ("comment ignored", b": hi\ndata: a\n\n", [ev("a")]),
    ("comment-only block dispatches nothing", b": keep-alive\n\n", []),
    ("event type", b"event: add\ndata: 1\n\n", [ev("1", event="add")]),
    ("event-only block dispatches nothing, type reset", b"event: x\n\ndata: y\n\n", [ev("y")]),
    ("empty event value is message", b"event\ndata: y\n\n", [ev("y")]),
    ("id persists", b"id: 1\ndata: a\n\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")]),
    ("id-only block dispatches nothing but sets id", b"id: 5\n\ndata: a\n\n", [ev("a", id="5")]),
    ("empty id resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [ev("a", id="1"), ev("b", id="")]),
    ("id with NUL ignored", b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")]),
    ("retry digits", b"retry: 1000\ndata: a\n\n", [ev("a", retry=1000)]),
    ("retry leading zeros", b"retry: 007\ndata: a\n\n", [ev("a", retry=7)]),
    ("retry negative ignored", b"retry: -1\ndata: a\n\n", [ev("a")]),
    ("retry float ignored", b"retry: 1.5\ndata: a\n\n", [ev("a")]),
    ("retry space ignored", b"retry:  10\ndata: a\n\n", [ev("a")]),
    ("retry underscore ignored", b"retry: 1_0\ndata: a\n\n", [ev("a")]),
    ("retry non-ascii digit ignored", "retry: \u0661\ndata: a\n\n".encode(), [ev("a")]),
    ("retry empty ignored", b"retry\ndata: a\n\n", [ev("a")]),
    ("retry belongs to its block only", b"retry: 5\ndata: a\n\ndata: b\n\n", [ev("a", retry=5), ev("b")]),
    ("field names case-sensitive", b"Data: a\ndata: b\n\n", [ev("b")]),
    ("trailing space in name", b"data : a\ndata: b\n\n", [ev("b")]),
    ("leading space in name", b" data: a\ndata: b\n\n", [ev("b")]),
    ("unknown field ignored", b"foo: bar\ndata: b\n\n", [ev("b")]),
    ("whitespace line is not blank", b"data: a\n \ndata: b\n\n", [ev("a\nb")]),
    ("colon in value kept", b"data: a:b: c\n\n", [ev("a:b: c")]),
    ("bom stripped", BOM + b"data: a\n\n", [ev("a")]),
    ("second bom is text", BOM + BOM + b"data: a\n\ndata: b\n\n", [ev("b")]),
    ("bom later is text", b"data: a\n\n" + BOM + b"data: b\n\n", [ev("a")]),
    ("invalid utf-8 replaced", b"data: \xff\xfe\n\n", [ev("\ufffd\ufffd")]),
    ("truncated utf-8 before line end", b"data: \xe2\x82\n\n", [ev("\ufffd")]),
    ("unicode", "data: héllo €😀\n\n".encode(), [ev("héllo €😀")]),
    ("u2028 does not end a line", "data: a\u2028b\n\n".encode(), [ev("a\u2028b")]),
    ("vt ff nel do not end a line", "data: a\x0b\x0c\x85b\n\n".encode(), [ev("a\x0b\x0c\x85b")]),
    ("unterminated block discarded", b"data: a\n\ndata: b\n", [ev("a")]),
    ("unterminated line discarded", b"data: a\n\ndata: b", [ev("a")]),
    ("NUL in data kept", b"data: a\x00b\n\n", [ev("a\x00b")]),
]


@pytest.mark.parametrize("name,stream,expected", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_spec_cases_whole_and_every_split(name: str, stream: bytes, expected: list[SseEvent]) -> None:
    assert decode_all(stream) == expected
    # One byte at a time.
    assert decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected
    # Every two-way split.
    for i in range(len(stream) + 1):
        assert decode_chunks([stream[:i], stream[i:]]) == expected, f"split at {i}"


def test_bom_split_across_reads() -> None:
    for chunks in ([b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [b"\xef\xbb", b"\xbf", b"data: a\n\n"]):
        assert decode_chunks(chunks) == [ev("a")]


def test_partial_bom_is_invalid_text() -> None:
    assert decode_chunks([b"\xef\xbb", b"data: a\n\ndata: b\n\n"]) == [ev("b")]


def test_event_returned_by_the_feed_that_completes_it() -> None:
    d = SseDecoder()
    assert d.feed(b"data: a\r") == []
    # The blank line's CR completes the event now; a later LF must not be needed.
    assert d.feed(b"\r") == [ev("a")]
    assert d.feed(b"\n") == []
    assert d.feed(b"data: b\r\n") == []
    assert d.feed(b"\r\n") == [ev("b")]


def test_cr_lf_in_separate_reads_is_one_line_end() -> None:
    d = SseDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\ndata: b\r") == []
    assert d.feed(b"\n\r\n") == [ev("a\nb")]


def test_utf8_char_split_across_reads() -> None:
    raw = "data: 日本😀\n\n".encode()
    for i in range(len(raw) + 1):
        assert decode_chunks([raw[:i], raw[i:]]) == [ev("日本😀")]


def test_stream_state_and_close() -> None:
    d = SseDecoder()
    assert d.last_event_id == "" and d.reconnection_time is None
    d.feed(b"id: 9\nretry: 300\ndata: a\n\n")
    assert d.last_event_id == "9" and d.reconnection_time == 300
    d.feed(b"data: pending\nid: 10\n")
    d.close()
    # Discarded at EOF: no event, and the id of the unfinished block never reached dispatch.
    assert d.last_event_id == "9"
    assert d.feed(b"data: next\n\n") == [ev("next", id="9")]


def test_limits_raise_value_error_subclass() -> None:
    assert issubclass(SseDecodeError, ValueError)
    d = SseDecoder(max_line_bytes=64, max_event_bytes=1024)
    with pytest.raises(SseDecodeError, match="line"):
        d.feed(b"data: " + b"x" * 100)
    d = SseDecoder(max_line_bytes=64, max_event_bytes=1024)
    with pytest.raises(SseDecodeError):
        for _ in range(10):  # the line grows across reads without a line end
            d.feed(b"x" * 10)
    d = SseDecoder(max_line_bytes=1024, max_event_bytes=100)
    with pytest.raises(SseDecodeError, match="event"):
        d.feed(b"data: " + b"y" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")
    # The decoder goes on after the offending event is dropped.
    assert d.feed(b"\ndata: ok\n\n") == [ev("ok")]
    with pytest.raises(ValueError):
        SseDecoder(max_line_bytes=0)


def test_feed_type_errors() -> None:
    d = SseDecoder()
    with pytest.raises(TypeError):
        d.feed("data: a\n\n")  # type: ignore[arg-type]
    assert d.feed(bytearray(b"data: a\n\n")) == [ev("a")]  # type: ignore[arg-type]
    assert d.feed(memoryview(b"data: b\n\n")) == [ev("b")]  # type: ignore[arg-type]


def test_event_object() -> None:
    e = SseEvent("d", "t", "7", 5)
    assert (e.data, e.event, e.id, e.retry) == ("d", "t", "7", 5)
    assert e == SseEvent("d", "t", "7", 5) and e != SseEvent("d")
    assert "SseEvent(" in repr(e)
    with pytest.raises(AttributeError):
        e.data = "x"  # type: ignore[misc]


# ---- feed_data ---------------------------------------------------------------------------------------


def data_chunks(chunks: list[bytes]) -> list[bytes]:
    d = SseDecoder()
    out: list[bytes] = []
    for c in chunks:
        out += d.feed_data(c)
    return out


@pytest.mark.parametrize("name,stream,expected", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_feed_data_spec_cases(name: str, stream: bytes, expected: list[SseEvent]) -> None:
    if any(e.event != "message" for e in expected):
        with pytest.raises(SseDecodeError, match="feed_data"):
            SseDecoder().feed_data(stream)
        return
    want = [e.data.encode() for e in expected]
    assert data_chunks([stream]) == want
    assert data_chunks([stream[i : i + 1] for i in range(len(stream))]) == want
    for i in range(len(stream) + 1):
        assert data_chunks([stream[:i], stream[i:]]) == want, f"split at {i}"


def test_feed_data_returns_bytes_and_tracks_state() -> None:
    d = SseDecoder()
    assert d.feed_data(b'id: 4\nretry: 250\ndata: {"a":1}\n\ndata: [DONE]\n') == [b'{"a":1}']
    assert (d.last_event_id, d.reconnection_time) == ("4", 250)
    # The blank line in the next read completes the event; feed and feed_data mix on one decoder.
    assert d.feed_data(b"\n") == [b"[DONE]"]
    assert d.feed(b"data: x\n\n") == [ev("x", id="4")]
    assert d.feed_data(b"event: message\ndata: explicit default type\n\nevent\ndata: empty type\n\n") == [
        b"explicit default type",
        b"empty type",
    ]
    # Every item is valid UTF-8: invalid sequences are replaced as in feed().
    assert d.feed_data(b"data: \xff\xe2\x82 \xc3\xa9\n\n") == ["\ufffd\ufffd é".encode()]
    with pytest.raises(TypeError, match="feed_data"):
        d.feed_data("data: a\n\n")  # type: ignore[arg-type]
    assert d.feed_data(bytearray(b"data: a\n\n")) == [b"a"]  # type: ignore[arg-type]


def test_feed_data_named_event_raises_after_decoding_the_read() -> None:
    d = SseDecoder()
    stream = b"data: a\n\nid: 7\nevent: error\ndata: {}\n\nretry: 9\ndata: b\n\ndata: partial"
    with pytest.raises(SseDecodeError, match='type "error".*use feed\\(\\)'):
        d.feed_data(stream)
    # The whole read was decoded, as feed() would have: id, retry and the unfinished line are kept.
    assert (d.last_event_id, d.reconnection_time) == ("7", 9)
    assert d.feed_data(b"\n\n") == [b"partial"]
    # The named event's type does not leak into the next block.
    assert d.feed_data(b"data: c\n\n") == [b"c"]
    # The same stream through feed() gives every event.
    assert [e.event for e in SseDecoder().feed(stream)] == ["message", "error", "message"]


def test_feed_data_limits() -> None:
    d = SseDecoder(max_line_bytes=1024, max_event_bytes=100)
    with pytest.raises(SseDecodeError, match="event"):
        d.feed_data(b"data: " + b"y" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")
    assert d.feed_data(b"\ndata: ok\n\n") == [b"ok"]


# Invalid UTF-8 as the WHATWG decoder (and Unicode's "maximal subpart" practice) replaces it.
UTF8_CASES = [
    (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # an encoded surrogate: ED must be followed by 80..9F
    (b"\xf0\x9f\x98", "\ufffd"),  # a truncated 4-byte sequence is one maximal subpart
    (b"\xc0\xaf", "\ufffd\ufffd"),  # an overlong form: C0 never starts a sequence
    (b"\xf4\x90\x80\x80", "\ufffd" * 4),  # above U+10FFFF
    (b"\xe2\x82x\xe2\x82\xac", "\ufffdx€"),
    (b"\x80\xbf", "\ufffd\ufffd"),
]


@pytest.mark.parametrize("raw,text", UTF8_CASES)
def test_invalid_utf8_replacement(raw: bytes, text: str) -> None:
    stream = b"id: " + raw + b"\nevent: e" + raw + b"\ndata: " + raw + b"\n\n"
    (e,) = SseDecoder().feed(stream)
    # data is decoded by CPython, id and event type by the Rust core: both must agree with the spec.
    assert (e.data, e.id, e.event) == (text, text, "e" + text)
    assert SseDecoder().feed_data(b"data: " + raw + b"\n\n") == [text.encode()]


# ---- encoder -----------------------------------------------------------------------------------------

ENCODE_CASES = [
    (dict(data=b'{"a":1}'), b'data: {"a":1}\n\n'),
    (dict(data='{"a":1}'), b'data: {"a":1}\n\n'),
    (dict(data=""), b"data: \n\n"),
    (dict(data=" x"), b"data:  x\n\n"),
    (dict(data="a\nb"), b"data: a\ndata: b\n\n"),
    (dict(data="a\r\nb\rc\n"), b"data: a\ndata: b\ndata: c\ndata: \n\n"),
    (dict(data="a\u2028b"), "data: a\u2028b\n\n".encode()),
    (dict(comment="keep-alive"), b": keep-alive\n\n"),
    (dict(comment="a\r\nb"), b": a\n: b\n\n"),
    (dict(data="x", event="e", id="1", retry=10, comment="c"), b": c\nid: 1\nevent: e\ndata: x\nretry: 10\n\n"),
    (dict(data="[DONE]"), b"data: [DONE]\n\n"),
    (dict(id=""), b"id: \n\n"),
    (dict(retry=0), b"retry: 0\n\n"),
    (dict(data="é€😀"), "data: é€😀\n\n".encode()),
]


@pytest.mark.parametrize("kwargs,expected", ENCODE_CASES)
def test_encode_cases(kwargs: dict, expected: bytes) -> None:
    assert encode_event(**kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(data="x", event="a\nb"),
        dict(data="x", event="a\rb"),
        dict(data="x", id="a\nb"),
        dict(data="x", id="a\x00b"),
        dict(data="x", retry=-1),
        dict(data="x", retry=1.5),
        dict(data="x", retry="10"),
        dict(data="x", retry=True),
        dict(data=b"\xff"),
    ],
)
def test_encode_rejects(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        encode_event(**kwargs)


def test_encode_type_error_for_data() -> None:
    with pytest.raises(TypeError):
        encode_event(123)  # type: ignore[arg-type]


def test_encode_matches_sse_starlette_shape() -> None:
    # sse-starlette's ServerSentEvent(sep="\n") output for the same fields, written out by hand.
    assert encode_event("hello\nworld", event="greet", id="42", retry=100, comment="note") == (
        b": note\nid: 42\nevent: greet\ndata: hello\ndata: world\nretry: 100\n\n"
    )


# ---- properties --------------------------------------------------------------------------------------

# Text without CR/LF (what an id or event type may hold), and data that may contain any line ends.
no_breaks = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=20)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
events_st = st.lists(
    st.tuples(
        any_text,  # data
        st.one_of(st.none(), no_breaks.filter(lambda s: s != "")),  # event
        st.one_of(st.none(), no_breaks.filter(lambda s: "\x00" not in s)),  # id
        st.one_of(st.none(), st.integers(0, 2**40)),  # retry
        st.one_of(st.none(), any_text),  # comment
    ),
    max_size=12,
)


def _normalize_data(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=300, deadline=None)
@given(events_st, st.data())
def test_encoded_stream_decodes_back(events: list, data: st.DataObject) -> None:
    stream = b"".join(encode_event(d, event=e, id=i, retry=r, comment=c) for d, e, i, r, c in events)
    expected = []
    last_id = ""
    for d, e, i, r, _c in events:
        if i is not None:
            last_id = i
        expected.append(ev(_normalize_data(d), event=e or "message", id=last_id, retry=r))
    assert decode_all(stream) == expected
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=False)]
    assert decode_chunks(chunks) == expected


raw_stream = st.lists(
    st.sampled_from(
        [b"data: x", b"data:", b"data", b"id: 1", b"id", b"event: e", b"retry: 5", b": c", b"\r", b"\n", b"\r\n",
         b"\xef\xbb\xbf", b"\xe2\x82\xac", b"\xff", b"\x00", b" ", b":", b"y"]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(raw_stream, st.data())
def test_any_rechunking_gives_same_events(stream: bytes, data: st.DataObject) -> None:
    whole = decode_all(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=False)]
    assert decode_chunks(chunks) == whole
    d = SseDecoder()
    for c in chunks:
        d.feed(c)
    d2 = SseDecoder()
    d2.feed(stream)
    assert (d.last_event_id, d.reconnection_time) == (d2.last_event_id, d2.reconnection_time)


@settings(max_examples=500, deadline=None)
@given(raw_stream, st.data())
def test_feed_data_matches_feed_per_read(stream: bytes, data: st.DataObject) -> None:
    """feed_data over any chunking gives, read by read, the data of the events feed gives (or raises
    SseDecodeError for a read that completes a named event), and leaves the same stream state."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=False)]
    by_events, by_data = SseDecoder(), SseDecoder()
    for c in chunks:
        events = by_events.feed(c)
        if any(e.event != "message" for e in events):
            with pytest.raises(SseDecodeError):
                by_data.feed_data(c)
        else:
            assert by_data.feed_data(c) == [e.data.encode() for e in events]
        assert (by_data.last_event_id, by_data.reconnection_time) == (by_events.last_event_id,
                                                                      by_events.reconnection_time)


message_stream = st.lists(
    st.sampled_from(
        [b"data: x", b"data:", b"data", b"id: 1", b"id", b"retry: 5", b": c", b"\r", b"\n", b"\r\n",
         b"\xef\xbb\xbf", b"\xe2\x82\xac", b"\xe2", b"\xff", b"\x00", b" ", b":", b"y", b'{"k":"v"}']
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(message_stream, st.data())
def test_feed_data_any_chunking_equals_feed_of_whole(stream: bytes, data: st.DataObject) -> None:
    whole = decode_all(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=False)]
    assert data_chunks(chunks) == [e.data.encode() for e in whole]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")))
def test_utf8_decoding_agrees_everywhere(raw: bytes) -> None:
    """CPython's decoder (feed's data), the Rust core's (ids) and feed_data's bytes replace invalid
    UTF-8 identically."""
    text = raw.decode("utf-8", "replace")
    (e,) = SseDecoder().feed(b"id: " + raw + b"\ndata: " + raw + b"\n\n")
    assert e.data == text and e.id == text
    assert SseDecoder().feed_data(b"data: " + raw + b"\n\n") == [text.encode()]
