//! Python bindings for the SSE codec: `SseDecoder`, `SseEvent`, `encode_event`.

use std::sync::{Mutex, TryLockError};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBytes, PyInt, PyList, PyString};

use crate::sse::{DecodeError, Decoder, EncodeError, EventRef, Frame, DEFAULT_LIMIT};

pyo3::create_exception!(
    radixrouter._core,
    SseDecodeError,
    PyValueError,
    "An SSE line or event exceeded the decoder's size limit, or SseDecoder.feed_data() met a named event."
);

impl From<DecodeError> for PyErr {
    fn from(e: DecodeError) -> PyErr {
        SseDecodeError::new_err(e.to_string())
    }
}

impl From<EncodeError> for PyErr {
    fn from(e: EncodeError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// One dispatched server-sent event.
///
/// Every field is a Python object made once, when the event is decoded, and read
/// through a plain member descriptor. The decoder shares one "message" str, one
/// `id` str while the id does not change, and one str for a repeated event type.
/// (`freelist = N` builds with abi3 but measured no gain: pymalloc already keeps
/// free blocks of this size.)
#[pyclass(frozen, name = "SseEvent", module = "radixrouter._core")]
pub struct PySseEvent {
    #[pyo3(get)]
    event: Py<PyString>,
    #[pyo3(get)]
    data: Py<PyString>,
    #[pyo3(get)]
    id: Py<PyString>,
    #[pyo3(get)]
    retry: Py<PyAny>,
}

/// Decodes UTF-8 into a str in one pass (CPython's decoder, which copies while it
/// checks). Invalid sequences become U+FFFD, one per maximal subpart, as in the
/// WHATWG decoder (and Rust's `from_utf8_lossy`, which the core uses for ids and
/// event types; the tests check the two agree).
fn py_text<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len = ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| PyValueError::new_err("SSE data too large"))?;
    // SAFETY: the pointer and length describe `bytes`; the result is a new reference
    // to a str, or NULL with an exception set.
    unsafe {
        let ptr = ffi::PyUnicode_DecodeUTF8(bytes.as_ptr().cast(), len, c"replace".as_ptr());
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

/// A bytes object holding a copy of `bytes`.
fn py_bytes<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let len = ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| PyValueError::new_err("SSE data too large"))?;
    // SAFETY: the pointer and length describe `bytes`; the result is a new reference
    // to a bytes object, or NULL with an exception set (MemoryError).
    unsafe {
        let ptr = ffi::PyBytes_FromStringAndSize(bytes.as_ptr().cast(), len);
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

fn retry_obj(py: Python<'_>, retry: Option<u64>) -> PyResult<Py<PyAny>> {
    match retry {
        None => Ok(py.None()),
        Some(r) => Ok(r.into_pyobject(py)?.into_any().unbind()),
    }
}

#[pymethods]
impl PySseEvent {
    #[new]
    #[pyo3(
        signature = (data = String::new(), event = String::from("message"), id = String::new(), retry = None),
        text_signature = "(data='', event='message', id='', retry=None)"
    )]
    fn new(
        py: Python<'_>,
        data: String,
        event: String,
        id: String,
        retry: Option<u64>,
    ) -> PyResult<Self> {
        let event = if event.is_empty() || event == "message" {
            pyo3::intern!(py, "message").clone()
        } else {
            PyString::new(py, &event)
        };
        Ok(PySseEvent {
            event: event.unbind(),
            data: PyString::new(py, &data).unbind(),
            id: PyString::new(py, &id).unbind(),
            retry: retry_obj(py, retry)?,
        })
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<PySseEvent>() else {
            return Ok(false);
        };
        let other = other.get();
        let same = |a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>| -> PyResult<bool> {
            a.rich_compare(b, CompareOp::Eq)?.is_truthy()
        };
        Ok(
            same(self.data.bind(py).as_any(), other.data.bind(py).as_any())?
                && same(self.event.bind(py).as_any(), other.event.bind(py).as_any())?
                && same(self.id.bind(py).as_any(), other.id.bind(py).as_any())?
                && same(self.retry.bind(py), other.retry.bind(py))?,
        )
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "SseEvent(data={}, event={}, id={}, retry={})",
            self.data.bind(py).repr()?,
            self.event.bind(py).repr()?,
            self.id.bind(py).repr()?,
            self.retry.bind(py).repr()?,
        ))
    }
}

/// The core decoder and what the binding reuses across calls.
struct State {
    dec: Decoder,
    /// The last event id and its str.
    id: Cached,
    /// The last non-default event type and its str.
    event: Cached,
    /// The objects one call makes, before they go into its list (kept for its allocation).
    items: Vec<Py<PyAny>>,
}

/// A str and the text it was made from.
struct Cached {
    text: String,
    obj: Py<PyString>,
}

impl Cached {
    fn new(text: &str, obj: Bound<'_, PyString>) -> Self {
        Cached {
            text: text.to_owned(),
            obj: obj.unbind(),
        }
    }

    /// The str for `text`, made only when `text` differs from the last one.
    fn get<'py>(&mut self, py: Python<'py>, text: &str) -> Bound<'py, PyString> {
        if self.text != text {
            self.text.clear();
            self.text.push_str(text);
            self.obj = PyString::new(py, text).unbind();
        }
        self.obj.bind(py).clone()
    }
}

/// What a `feed` variant makes of one event: an object for the result list, or
/// Ok(None) to leave the event out. An error ends the call.
type MakeItem<'a, 'py> = &'a mut dyn FnMut(
    &mut Cached,
    &mut Cached,
    EventRef<'_>,
) -> PyResult<Option<Bound<'py, PyAny>>>;

/// Incremental WHATWG server-sent-events decoder.
///
/// One decoder reads one stream: a call made while another thread is inside
/// `feed` on the same decoder raises RuntimeError instead of waiting (waiting
/// while holding the interpreter could deadlock).
#[pyclass(frozen, name = "SseDecoder", module = "radixrouter._core")]
pub struct PySseDecoder {
    inner: Mutex<State>,
}

impl PySseDecoder {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, State>> {
        match self.inner.try_lock() {
            Ok(guard) => Ok(guard),
            // A panic while holding the lock cannot leave the decoder in an unsafe state.
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "SseDecoder is already in use by another thread",
            )),
        }
    }

    /// Runs the core over `data` and returns the list of what `make` gives for the
    /// completed events. The whole read is decoded even when `make` fails, so the
    /// stream state is the same as after a successful call.
    fn run<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        what: &str,
        make: MakeItem<'_, 'py>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut state = self.lock()?;
        let State {
            dec,
            id,
            event,
            items,
        } = &mut *state;
        items.clear();
        let mut failure: Option<PyErr> = None;
        let mut sink = |e: EventRef<'_>| {
            if failure.is_none() {
                match make(id, event, e) {
                    Ok(Some(obj)) => items.push(obj.unbind()),
                    Ok(None) => {}
                    Err(err) => failure = Some(err),
                }
            }
        };
        let result = if let Ok(b) = data.cast::<PyBytes>() {
            dec.feed_with(b.as_bytes(), &mut sink)
        } else if let Ok(bytes) = data.extract::<Vec<u8>>() {
            dec.feed_with(&bytes, &mut sink)
        } else {
            return Err(PyTypeError::new_err(format!(
                "SseDecoder.{what}() takes bytes"
            )));
        };
        if let Some(err) = failure.or_else(|| result.err().map(PyErr::from)) {
            items.clear();
            return Err(err);
        }
        PyList::new(py, items.drain(..))
    }
}

#[pymethods]
impl PySseDecoder {
    #[new]
    #[pyo3(
        signature = (*, max_line_bytes = DEFAULT_LIMIT, max_event_bytes = DEFAULT_LIMIT),
        text_signature = "(*, max_line_bytes=16777216, max_event_bytes=16777216)"
    )]
    fn new(py: Python<'_>, max_line_bytes: usize, max_event_bytes: usize) -> PyResult<Self> {
        if max_line_bytes == 0 || max_event_bytes == 0 {
            return Err(PyValueError::new_err("SSE size limits must be positive"));
        }
        Ok(PySseDecoder {
            inner: Mutex::new(State {
                dec: Decoder::new(max_line_bytes, max_event_bytes),
                id: Cached::new("", PyString::new(py, "")),
                event: Cached::new("message", pyo3::intern!(py, "message").clone()),
                items: Vec::new(),
            }),
        })
    }

    /// Feed bytes; return the events they complete.
    fn feed<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let message = pyo3::intern!(py, "message");
        self.run(py, data, "feed", &mut |id, event, e| {
            let ev = PySseEvent {
                event: match e.event {
                    None => message.clone().unbind(),
                    Some(name) => event.get(py, name).unbind(),
                },
                data: py_text(py, e.data)?.unbind(),
                id: id.get(py, e.id).unbind(),
                retry: retry_obj(py, e.retry)?,
            };
            let obj = Bound::new(py, ev)?;
            // An event holds only strs, an int or None: it can never be part of a
            // reference cycle, so the cycle collector need not track it (as CPython
            // does for tuples of such objects). Saves the collector's passes over
            // every event a consumer keeps.
            // SAFETY: `obj` is a live object of a GC type; untracking it is always allowed.
            unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
            Ok(Some(obj.into_any()))
        })
    }

    /// Feed bytes; return the data of the events they complete, as UTF-8 bytes
    /// (each equal to `event.data.encode()` for the events `feed` would return).
    /// An event whose type is not "message" raises SseDecodeError, after the whole
    /// read has been decoded (the stream state is as after `feed`).
    fn feed_data<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut named: Option<String> = None;
        let list = self.run(py, data, "feed_data", &mut |_, _, e| {
            if let Some(name) = e.event.filter(|&name| name != "message") {
                named.get_or_insert_with(|| name.to_owned());
                return Ok(None);
            }
            Ok(Some(py_bytes(py, &e.data_utf8())?.into_any()))
        })?;
        match named {
            None => Ok(list),
            Some(name) => Err(SseDecodeError::new_err(format!(
                "SseDecoder.feed_data() got an event of type {name:?}; it returns only the data \
                 of \"message\" events (use feed() for streams with named events)"
            ))),
        }
    }

    /// End of stream: discard the unfinished line and block.
    fn close(&self) -> PyResult<()> {
        self.lock()?.dec.close();
        Ok(())
    }

    #[getter]
    fn last_event_id(&self) -> PyResult<String> {
        Ok(self.lock()?.dec.last_event_id().to_owned())
    }

    #[getter]
    fn reconnection_time(&self) -> PyResult<Option<u64>> {
        Ok(self.lock()?.dec.reconnection_time())
    }
}

/// Encode one event in canonical SSE framing and return the bytes.
#[pyfunction]
#[pyo3(signature = (data = None, *, event = None, id = None, retry = None, comment = None))]
fn encode_event<'py>(
    py: Python<'py>,
    data: Option<&Bound<'py, PyAny>>,
    event: Option<&str>,
    id: Option<&str>,
    retry: Option<&Bound<'py, PyAny>>,
    comment: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    let data_bytes: Option<&[u8]> = match data {
        None => None,
        Some(d) => {
            if let Ok(b) = d.cast::<PyBytes>() {
                Some(b.as_bytes())
            } else if let Ok(s) = d.cast::<PyString>() {
                Some(s.to_str()?.as_bytes())
            } else {
                return Err(PyTypeError::new_err(
                    "encode_event() data must be str or bytes",
                ));
            }
        }
    };
    let retry =
        match retry {
            None => None,
            Some(r) => {
                if r.cast::<PyInt>().is_err() || r.is_instance_of::<pyo3::types::PyBool>() {
                    return Err(PyValueError::new_err(
                        "SSE retry must be a non-negative integer",
                    ));
                }
                Some(r.extract::<u64>().map_err(|_| {
                    PyValueError::new_err("SSE retry must be a non-negative integer")
                })?)
            }
        };
    let frame = Frame {
        comment,
        id,
        event,
        data: data_bytes,
        retry,
    };
    frame.validate()?;
    PyBytes::new_with(py, frame.encoded_len(), |buf| {
        frame.write_to(buf);
        Ok(())
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySseDecoder>()?;
    m.add_class::<PySseEvent>()?;
    m.add_function(wrap_pyfunction!(encode_event, m)?)?;
    m.add("SseDecodeError", m.py().get_type::<SseDecodeError>())?;
    Ok(())
}
