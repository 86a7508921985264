//! Canonical SSE framing: comment lines, `id`, `event`, `data` lines, `retry`,
//! then a blank line; always `data: ` with the space; LF line ends only.

use std::fmt;

/// Invalid input for a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    EventHasLineBreak,
    IdHasLineBreak,
    IdHasNul,
    DataNotUtf8,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::EventHasLineBreak => "SSE event type must not contain CR or LF",
            EncodeError::IdHasLineBreak => "SSE id must not contain CR or LF",
            EncodeError::IdHasNul => "SSE id must not contain NUL",
            EncodeError::DataNotUtf8 => "SSE data bytes must be valid UTF-8",
        })
    }
}

impl std::error::Error for EncodeError {}

/// One event to encode. `data` is UTF-8 text given as bytes (validated).
#[derive(Debug, Clone, Copy, Default)]
pub struct Frame<'a> {
    pub comment: Option<&'a str>,
    pub id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub data: Option<&'a [u8]>,
    pub retry: Option<u64>,
}

/// Call `f` with each piece of `text` split on CRLF, CR and LF.
#[inline]
fn for_each_line(text: &[u8], mut f: impl FnMut(&[u8])) {
    let mut rest = text;
    loop {
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                f(rest);
                return;
            }
            Some(pos) => {
                f(&rest[..pos]);
                let skip = if rest[pos] == b'\r' && rest.get(pos + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[pos + skip..];
            }
        }
    }
}

#[inline]
fn has_line_break(s: &str) -> bool {
    memchr::memchr2(b'\r', b'\n', s.as_bytes()).is_some()
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

impl<'a> Frame<'a> {
    /// A data-only frame.
    pub fn data(data: &'a [u8]) -> Self {
        Frame {
            data: Some(data),
            ..Frame::default()
        }
    }

    /// Check the fields (see [`EncodeError`]).
    pub fn validate(&self) -> Result<(), EncodeError> {
        if let Some(event) = self.event {
            if has_line_break(event) {
                return Err(EncodeError::EventHasLineBreak);
            }
        }
        if let Some(id) = self.id {
            if has_line_break(id) {
                return Err(EncodeError::IdHasLineBreak);
            }
            if memchr::memchr(0, id.as_bytes()).is_some() {
                return Err(EncodeError::IdHasNul);
            }
        }
        if let Some(data) = self.data {
            if std::str::from_utf8(data).is_err() {
                return Err(EncodeError::DataNotUtf8);
            }
        }
        Ok(())
    }

    /// The exact encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        let mut n = 1; // the closing blank line
        if let Some(c) = self.comment {
            for_each_line(c.as_bytes(), |l| n += 3 + l.len());
        }
        if let Some(id) = self.id {
            n += 5 + id.len();
        }
        if let Some(e) = self.event {
            n += 8 + e.len();
        }
        if let Some(d) = self.data {
            for_each_line(d, |l| n += 7 + l.len());
        }
        if let Some(r) = self.retry {
            n += 8 + digits(r);
        }
        n
    }

    /// Write the frame into `out`, which must be exactly `encoded_len()` bytes.
    pub fn write_to(&self, out: &mut [u8]) {
        let mut w = SliceWriter { buf: out, pos: 0 };
        if let Some(c) = self.comment {
            for_each_line(c.as_bytes(), |l| w.line(b": ", l));
        }
        if let Some(id) = self.id {
            w.line(b"id: ", id.as_bytes());
        }
        if let Some(e) = self.event {
            w.line(b"event: ", e.as_bytes());
        }
        if let Some(d) = self.data {
            for_each_line(d, |l| w.line(b"data: ", l));
        }
        if let Some(r) = self.retry {
            let mut tmp = [0u8; 20];
            let len = digits(r);
            let mut v = r;
            for i in (0..len).rev() {
                tmp[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
            w.line(b"retry: ", &tmp[..len]);
        }
        w.put(b"\n");
        debug_assert_eq!(w.pos, w.buf.len());
    }

    /// Validate and encode into a new vector (one allocation of the exact size).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.validate()?;
        let mut out = vec![0u8; self.encoded_len()];
        self.write_to(&mut out);
        Ok(out)
    }
}

struct SliceWriter<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl SliceWriter<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    #[inline]
    fn line(&mut self, prefix: &[u8], value: &[u8]) {
        self.put(prefix);
        self.put(value);
        self.put(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Decoder;

    #[test]
    fn data_only() {
        assert_eq!(
            Frame::data(b"{\"a\":1}").encode().unwrap(),
            b"data: {\"a\":1}\n\n"
        );
        assert_eq!(Frame::data(b"").encode().unwrap(), b"data: \n\n");
        assert_eq!(Frame::data(b" x").encode().unwrap(), b"data:  x\n\n");
        assert_eq!(
            Frame::data(b"a\r\nb\rc\nd").encode().unwrap(),
            b"data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn all_fields_in_order() {
        let f = Frame {
            comment: Some("c1\nc2"),
            id: Some("7"),
            event: Some("update"),
            data: Some(b"x"),
            retry: Some(1500),
        };
        let out = f.encode().unwrap();
        assert_eq!(
            out,
            b": c1\n: c2\nid: 7\nevent: update\ndata: x\nretry: 1500\n\n"
        );
        assert_eq!(out.len(), f.encoded_len());
        let ev = Decoder::default().feed(&out).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].event.as_str(), ev[0].data.as_str(), ev[0].id.as_str()),
            ("update", "x", "7")
        );
        assert_eq!(ev[0].retry, Some(1500));
        let keepalive = Frame {
            comment: Some("keep-alive"),
            ..Frame::default()
        };
        assert_eq!(keepalive.encode().unwrap(), b": keep-alive\n\n");
        let zero = Frame {
            retry: Some(0),
            ..Frame::default()
        };
        assert_eq!(zero.encode().unwrap(), b"retry: 0\n\n");
    }

    #[test]
    fn rejects() {
        let e = |f: Frame| f.encode().unwrap_err();
        assert_eq!(
            e(Frame {
                event: Some("a\nb"),
                ..Frame::default()
            }),
            EncodeError::EventHasLineBreak
        );
        assert_eq!(
            e(Frame {
                id: Some("a\rb"),
                ..Frame::default()
            }),
            EncodeError::IdHasLineBreak
        );
        assert_eq!(
            e(Frame {
                id: Some("a\0b"),
                ..Frame::default()
            }),
            EncodeError::IdHasNul
        );
        assert_eq!(e(Frame::data(b"\xff")), EncodeError::DataNotUtf8);
    }
}
