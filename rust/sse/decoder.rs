//! Incremental SSE decoder (WHATWG HTML, "Parsing an event stream" and
//! "Interpreting an event stream").
//!
//! Bytes are split into lines at CR, LF or CRLF before UTF-8 decoding. Line
//! ends are ASCII, so they can never sit inside a multi-byte character, and
//! decoding each finished line (lossily: invalid sequences become U+FFFD) gives
//! the same text as decoding the whole stream first. A CR ends its line at once;
//! an LF that follows it, in the same read or the next, is skipped. So every
//! event is returned by the `feed` call that delivers its blank line.

use std::borrow::Cow;
use std::fmt;

/// Default limit on one line and on one event's data, in bytes.
pub const DEFAULT_LIMIT: usize = 16 * 1024 * 1024;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event type: the last `event` field of the block, or "message".
    pub event: String,
    /// The data lines of the block joined by LF.
    pub data: String,
    /// The last event id at dispatch time ("" if none was ever set).
    pub id: String,
    /// A valid `retry` value given in the same block, if any.
    pub retry: Option<u64>,
}

/// An event borrowed from the decoder's buffers, as given to [`Decoder::feed_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// The event type, or None for the default "message".
    pub event: Option<&'a str>,
    /// The data as raw bytes (UTF-8 unless the stream held invalid sequences).
    pub data: &'a [u8],
    pub id: &'a str,
    pub retry: Option<u64>,
}

impl<'a> EventRef<'a> {
    /// The event type, "message" by default.
    pub fn event_type(&self) -> &str {
        self.event.unwrap_or("message")
    }

    /// The data as text; invalid UTF-8 sequences become U+FFFD.
    pub fn data_str(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.data)
    }

    /// The data as valid UTF-8 bytes: borrowed when it already is (the common
    /// case: ASCII, checked first eight bytes at a time), else a copy with every
    /// invalid sequence replaced by U+FFFD, as in [`Self::data_str`].
    pub fn data_utf8(&self) -> Cow<'a, [u8]> {
        if is_ascii(self.data) || std::str::from_utf8(self.data).is_ok() {
            Cow::Borrowed(self.data)
        } else {
            Cow::Owned(String::from_utf8_lossy(self.data).into_owned().into_bytes())
        }
    }

    /// An owned copy.
    pub fn to_event(&self) -> Event {
        Event {
            event: self.event_type().to_owned(),
            data: self.data_str().into_owned(),
            id: self.id.to_owned(),
            retry: self.retry,
        }
    }
}

/// Whether all bytes are ASCII: ORs 8-byte words and tests their high bits (about
/// three times faster than `<[u8]>::is_ascii` or `str::from_utf8` on 250-byte payloads).
fn is_ascii(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut acc = 0u64;
    for w in &mut words {
        acc |= u64::from_ne_bytes(w.try_into().expect("chunks of 8 bytes"));
    }
    let tail = words.remainder().iter().fold(0u8, |a, b| a | b);
    acc & 0x8080_8080_8080_8080 == 0 && tail < 0x80
}

/// A line or an event grew past the configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    LineTooLong { limit: usize },
    EventTooLarge { limit: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::LineTooLong { limit } => {
                write!(f, "SSE line longer than the limit of {limit} bytes")
            }
            DecodeError::EventTooLarge { limit } => {
                write!(f, "SSE event data larger than the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BomState {
    /// Still reading the first bytes of the stream; holds how many BOM bytes matched.
    Pending(usize),
    Done,
}

/// The decoder state. Feed it bytes in any chunking; it returns the same events.
///
/// The hot path copies nothing: a block whose only data line lies whole in the
/// current read is handed to the sink as a slice of that read. Data is copied
/// into the decoder's buffer only when a block has several data lines or spans
/// reads. The buffers are reused, so a long stream allocates only while they grow.
#[derive(Debug, Clone)]
pub struct Decoder {
    bom: BomState,
    /// The unfinished line, when a read ended inside one.
    line: Vec<u8>,
    /// The previous read ended with CR: a leading LF in the next read belongs to it.
    skip_lf: bool,
    /// The data buffer of the block, each data line followed by LF (as in the spec).
    data: Vec<u8>,
    /// The event type buffer; empty means "message".
    event_type: String,
    id_buf: String,
    block_retry: Option<u64>,
    last_event_id: String,
    reconnection_time: Option<u64>,
    max_line: usize,
    max_event: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_LIMIT, DEFAULT_LIMIT)
    }
}

impl Decoder {
    /// A decoder that refuses lines longer than `max_line` bytes and events whose
    /// data exceeds `max_event` bytes.
    pub fn new(max_line: usize, max_event: usize) -> Self {
        Decoder {
            bom: BomState::Pending(0),
            line: Vec::new(),
            skip_lf: false,
            data: Vec::new(),
            event_type: String::new(),
            id_buf: String::new(),
            block_retry: None,
            last_event_id: String::new(),
            reconnection_time: None,
            max_line,
            max_event,
        }
    }

    /// The last event id (updated at each dispatch, never reset by one).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The stream's reconnection time: the last valid `retry` value seen.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.reconnection_time
    }

    /// Feed bytes; append every event completed by them to `out`.
    ///
    /// On error the offending line or event is discarded; the events completed
    /// before it in this read are still in `out`.
    pub fn feed_into(&mut self, input: &[u8], out: &mut Vec<Event>) -> Result<(), DecodeError> {
        self.feed_with(input, |e| out.push(e.to_event()))
    }

    /// Feed bytes; call `sink` with each event they complete, borrowed from the
    /// input or the decoder's buffers (no allocation per event). The fastest interface.
    ///
    /// On error the offending line or event is discarded, the rest of the read is
    /// not looked at, and the events completed before it have been given to `sink`.
    pub fn feed_with<F: FnMut(EventRef<'_>)>(
        &mut self,
        input: &[u8],
        mut sink: F,
    ) -> Result<(), DecodeError> {
        let Some(mut input) = self.strip_bom(input) else {
            return Ok(());
        };
        if input.is_empty() {
            return Ok(());
        }
        if self.skip_lf {
            self.skip_lf = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        // The block's only data line so far, when it lies in `input` (then `self.data`
        // is empty): it stands for `self.data == value + LF` without the copy.
        let mut pending: Option<&[u8]> = None;
        let result = self.lines(input, &mut pending, &mut sink);
        if let Some(value) = pending {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
        result
    }

    /// Strips one leading BOM, also when its bytes come in separate reads. None:
    /// everything so far may still be a BOM, wait for more bytes.
    fn strip_bom<'a>(&mut self, input: &'a [u8]) -> Option<&'a [u8]> {
        let BomState::Pending(matched) = self.bom else {
            return Some(input);
        };
        let mut m = matched;
        let mut used = 0;
        while m < 3 && used < input.len() && input[used] == BOM[m] {
            m += 1;
            used += 1;
        }
        if m == 3 {
            self.bom = BomState::Done;
            Some(&input[used..])
        } else if used == input.len() {
            self.bom = BomState::Pending(m);
            None
        } else {
            // Not a BOM: the held bytes are ordinary (invalid UTF-8) text.
            self.bom = BomState::Done;
            self.line.extend_from_slice(&BOM[..matched]);
            Some(input)
        }
    }

    fn lines<'a, F: FnMut(EventRef<'_>)>(
        &mut self,
        mut input: &'a [u8],
        pending: &mut Option<&'a [u8]>,
        sink: &mut F,
    ) -> Result<(), DecodeError> {
        loop {
            // The blank line after an event, found without a search.
            if input.first() == Some(&b'\n') && self.line.is_empty() {
                self.dispatch(pending, sink);
                input = &input[1..];
                continue;
            }
            let Some(pos) = memchr::memchr2(b'\n', b'\r', input) else {
                break;
            };
            let rest_start = if input[pos] == b'\n' {
                pos + 1
            } else if pos + 1 < input.len() {
                pos + 1 + usize::from(input[pos + 1] == b'\n')
            } else {
                self.skip_lf = true;
                pos + 1
            };
            if self.line.is_empty() {
                self.process_line(&input[..pos], pending, sink)?;
            } else {
                // The line began in an earlier read. `pending` is None here: this is
                // the first line end of the read.
                if self.line.len() + pos > self.max_line {
                    self.line.clear();
                    return Err(DecodeError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..pos]);
                let mut held = None;
                let result = self.process_line(&line, &mut held, sink);
                if let Some(value) = held {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                }
                line.clear();
                self.line = line;
                result?;
            }
            input = &input[rest_start..];
        }
        if self.line.len() + input.len() > self.max_line {
            self.line.clear();
            return Err(DecodeError::LineTooLong {
                limit: self.max_line,
            });
        }
        self.line.extend_from_slice(input);
        Ok(())
    }

    /// Feed bytes and return the events they complete.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<Event>, DecodeError> {
        let mut out = Vec::new();
        self.feed_into(input, &mut out)?;
        Ok(out)
    }

    /// End of stream: the unfinished line and the undispatched block are
    /// discarded (the spec adds no implicit blank line). The decoder is ready
    /// for a new stream afterwards, keeping the last event id and reconnection
    /// time as an EventSource would across a reconnect.
    pub fn close(&mut self) {
        self.bom = BomState::Pending(0);
        self.line.clear();
        self.skip_lf = false;
        self.data.clear();
        self.event_type.clear();
        self.block_retry = None;
        self.id_buf.clone_from(&self.last_event_id);
    }

    fn process_line<'l, F: FnMut(EventRef<'_>)>(
        &mut self,
        line: &'l [u8],
        pending: &mut Option<&'l [u8]>,
        sink: &mut F,
    ) -> Result<(), DecodeError> {
        if line.len() > self.max_line {
            return Err(DecodeError::LineTooLong {
                limit: self.max_line,
            });
        }
        // The common case first.
        if let Some(value) = line.strip_prefix(b"data:") {
            return self.data_line(value.strip_prefix(b" ").unwrap_or(value), pending);
        }
        if line.is_empty() {
            self.dispatch(pending, sink);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &line[line.len()..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => return self.data_line(value, pending),
            // An empty event type means "message" at dispatch.
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            b"id" if memchr::memchr(0, value).is_none() => {
                self.id_buf.clear();
                self.id_buf.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let n = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.reconnection_time = Some(n);
                self.block_retry = Some(n);
            }
            _ => {}
        }
        Ok(())
    }

    /// Appends a data line's value to the block's data buffer.
    fn data_line<'l>(
        &mut self,
        value: &'l [u8],
        pending: &mut Option<&'l [u8]>,
    ) -> Result<(), DecodeError> {
        let held = pending.map_or(self.data.len(), |p| p.len() + 1);
        if held + value.len() > self.max_event {
            *pending = None;
            self.data.clear();
            self.event_type.clear();
            return Err(DecodeError::EventTooLarge {
                limit: self.max_event,
            });
        }
        if held == 0 {
            *pending = Some(value);
        } else {
            if let Some(first) = pending.take() {
                self.data.extend_from_slice(first);
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
        Ok(())
    }

    fn dispatch<F: FnMut(EventRef<'_>)>(&mut self, pending: &mut Option<&[u8]>, sink: &mut F) {
        if self.last_event_id != self.id_buf {
            self.last_event_id.clone_from(&self.id_buf);
        }
        let retry = self.block_retry.take();
        let data = match pending.take() {
            Some(value) => value,
            None if self.data.is_empty() => {
                self.event_type.clear();
                return;
            }
            // Without the trailing LF.
            None => &self.data[..self.data.len() - 1],
        };
        sink(EventRef {
            event: (!self.event_type.is_empty()).then_some(self.event_type.as_str()),
            data,
            id: &self.last_event_id,
            retry,
        });
        self.data.clear();
        self.event_type.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> Event {
        Event {
            event: "message".into(),
            data: data.into(),
            id: String::new(),
            retry: None,
        }
    }

    fn all(input: &[u8]) -> Vec<Event> {
        Decoder::default().feed(input).unwrap()
    }

    fn bytewise(input: &[u8]) -> Vec<Event> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for b in input {
            d.feed_into(std::slice::from_ref(b), &mut out).unwrap();
        }
        out
    }

    #[test]
    fn basic_and_line_ends() {
        for input in [
            &b"data: a\n\n"[..],
            b"data: a\r\n\r\n",
            b"data: a\r\r",
            b"data:a\n\r\n",
        ] {
            assert_eq!(all(input), vec![ev("a")], "{input:?}");
            assert_eq!(bytewise(input), vec![ev("a")], "{input:?}");
        }
    }

    #[test]
    fn bom_once_and_split() {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        assert_eq!(all(input), vec![ev("x")]);
        assert_eq!(bytewise(input), vec![ev("x")]);
        // A second BOM is ordinary text: the field is unknown.
        assert_eq!(
            all(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\ndata: y\n\n"),
            vec![ev("y")]
        );
        // A broken BOM prefix is invalid UTF-8 in an unknown field name.
        assert_eq!(all(b"\xEF\xBBdata: x\n\ndata: y\n\n"), vec![ev("y")]);
    }

    #[test]
    fn cr_at_end_of_read_dispatches_now() {
        let mut d = Decoder::default();
        assert!(d.feed(b"data: a\r").unwrap().is_empty());
        assert_eq!(d.feed(b"\r").unwrap(), vec![ev("a")]);
        assert!(d.feed(b"\n").unwrap().is_empty());
        assert_eq!(d.feed(b"data: b\n\n").unwrap(), vec![ev("b")]);
    }

    #[test]
    fn fields() {
        let out = all(b"event: e\nid: 7\nretry: 0015\ndata\ndata:  two\n\n");
        assert_eq!(
            out,
            vec![Event {
                event: "e".into(),
                data: "\n two".into(),
                id: "7".into(),
                retry: Some(15)
            }]
        );
        assert!(all(b"id: 1\n\n: c\n\n").is_empty());
        let mut d = Decoder::default();
        d.feed(b"id: a\0b\ndata: x\n\n").unwrap();
        assert_eq!(d.last_event_id(), "");
        for bad in [
            "retry: -1",
            "retry: 1.5",
            "retry:  1",
            "retry: 1_0",
            "retry: \u{0661}",
        ] {
            let mut d = Decoder::default();
            d.feed(format!("{bad}\ndata: x\n\n").as_bytes()).unwrap();
            assert_eq!(d.reconnection_time(), None, "{bad}");
        }
    }

    #[test]
    fn invalid_utf8_and_split_chars() {
        assert_eq!(all(b"data: \xFF\n\n"), vec![ev("\u{FFFD}")]);
        assert_eq!(bytewise("data: é€😀\n\n".as_bytes()), vec![ev("é€😀")]);
    }

    #[test]
    fn eof_discards_block() {
        let mut d = Decoder::default();
        assert!(d.feed(b"data: x\n").unwrap().is_empty());
        d.close();
        assert_eq!(d.feed(b"data: y\n\n").unwrap(), vec![ev("y")]);
    }

    #[test]
    fn limits() {
        let mut d = Decoder::new(8, 8);
        assert!(matches!(
            d.feed(b"data: 0123456789"),
            Err(DecodeError::LineTooLong { .. })
        ));
        let mut d = Decoder::new(100, 8);
        assert!(matches!(
            d.feed(b"data:1234\ndata:1234\n\n"),
            Err(DecodeError::EventTooLarge { .. })
        ));
        assert_eq!(d.feed(b"data:ok\n\n").unwrap(), vec![ev("ok")]);
    }

    #[test]
    fn borrowed_and_buffered_data() {
        // One data line in the read: handed out without a copy; several lines, or a
        // block that spans reads, go through the buffer. Same events either way.
        let mut d = Decoder::default();
        let mut seen = Vec::new();
        d.feed_with(b"data: a\n\ndata: b\ndata: c\n\ndata: d\n", |e| {
            seen.push(e.data.to_vec())
        })
        .unwrap();
        d.feed_with(b"\ndata: e\n", |e| seen.push(e.data.to_vec()))
            .unwrap();
        d.feed_with(b"data: f\n\n", |e| seen.push(e.data.to_vec()))
            .unwrap();
        let want: Vec<&[u8]> = vec![b"a", b"b\nc", b"d", b"e\nf"];
        assert_eq!(seen, want);
    }

    #[test]
    fn errors_keep_the_block_before_them() {
        // The event limit counts a held data line and the next read's line together.
        let mut d = Decoder::new(100, 8);
        assert!(d.feed(b"data:1234\n").unwrap().is_empty());
        assert!(matches!(
            d.feed(b"data:1234\n"),
            Err(DecodeError::EventTooLarge { .. })
        ));
        assert_eq!(d.feed(b"\ndata:ok\n\n").unwrap(), vec![ev("ok")]);
        // A too-long line drops only itself: the data line before it in the same read
        // still belongs to the block.
        let mut d = Decoder::new(8, 100);
        assert!(matches!(
            d.feed(b"data: a\nxxxxxxxxxxxx"),
            Err(DecodeError::LineTooLong { .. })
        ));
        assert_eq!(d.feed(b"\n").unwrap(), vec![ev("a")]);
    }

    #[test]
    fn data_utf8_borrows_valid_and_replaces_invalid() {
        let ev = |data: &'static [u8]| EventRef {
            event: None,
            data,
            id: "",
            retry: None,
        };
        for valid in [
            &b""[..],
            b"plain ascii payload of some length",
            "é€😀 mixed".as_bytes(),
        ] {
            assert!(matches!(ev(valid).data_utf8(), Cow::Borrowed(b) if b == valid));
        }
        let fixed = ev(b"0123456789 \xFF abc \xE2\x82").data_utf8();
        assert_eq!(&*fixed, "0123456789 \u{FFFD} abc \u{FFFD}".as_bytes());
        // A non-ASCII byte in any position of a word or of the tail is seen.
        for i in 0..20 {
            let mut b = vec![b'a'; 20];
            b[i] = 0x80;
            assert!(!is_ascii(&b), "{i}");
        }
        assert!(is_ascii(&[b'a'; 20]));
    }

    #[test]
    fn any_chunking_same_events() {
        let input = "\u{FEFF}: hi\r\nevent: x\rid: 3\r\ndata: a\u{e9}\ndata\n\nretry: 10\ndata: b\r\n\r\nid\ndata: c\n\n";
        let bytes = input.as_bytes();
        let whole = all(bytes);
        assert_eq!(whole.len(), 3);
        for split in 0..=bytes.len() {
            let mut d = Decoder::default();
            let mut out = d.feed(&bytes[..split]).unwrap();
            out.extend(d.feed(&bytes[split..]).unwrap());
            assert_eq!(out, whole, "split at {split}");
        }
        assert_eq!(bytewise(bytes), whole);
    }

    /// A bounded fuzz run (deterministic xorshift): random byte streams built from
    /// SSE-relevant pieces and random bytes never panic, and any chunking gives the
    /// same events and stream state as one read.
    #[test]
    fn fuzz_no_panic_and_chunking_invariance() {
        const PIECES: &[&[u8]] = &[
            b"data: x",
            b"data:",
            b"data",
            b"id: 1",
            b"id",
            b"event: e",
            b"retry: 5",
            b": c",
            b"\r",
            b"\n",
            b"\r\n",
            b"\xEF\xBB\xBF",
            b"\xE2\x82\xAC",
            b"\xFF",
            b"\x00",
            b" ",
            b":",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let iterations: usize = std::env::var("SSE_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        for _ in 0..iterations {
            let mut input = Vec::new();
            for _ in 0..(next() % 40) {
                if next() % 4 == 0 {
                    input.push((next() % 256) as u8);
                } else {
                    input.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
            }
            let mut whole = Decoder::new(32, 32);
            let expected = whole.feed(&input);
            let mut chunked = Decoder::new(32, 32);
            let mut out = Vec::new();
            let mut failed = false;
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len());
                if chunked.feed_into(&rest[..n], &mut out).is_err() {
                    failed = true;
                    break;
                }
                rest = &rest[n..];
            }
            match expected {
                Ok(events) => {
                    assert!(
                        !failed,
                        "chunked read failed where one read did not: {input:?}"
                    );
                    assert_eq!(out, events, "{input:?}");
                    assert_eq!(chunked.last_event_id(), whole.last_event_id());
                    assert_eq!(chunked.reconnection_time(), whole.reconnection_time());
                }
                Err(_) => {
                    // A line can only become too long in both readings, but the one-read
                    // decoder stops at the first error; only check that nothing panicked.
                }
            }
        }
    }
}
