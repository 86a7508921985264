//! Python bindings for the SSE codec: `SseDecoder`, `SseEvent`, `encode_event`.

use std::sync::{Mutex, TryLockError};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString};

use crate::sse::{DecodeError, Decoder, EncodeError, EventRef, Frame, DEFAULT_LIMIT};

pyo3::create_exception!(
    radixrouter._core,
    SseDecodeError,
    PyValueError,
    "An SSE line or event exceeded the decoder's size limit."
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
/// `data` is created as a Python string once, when the event is decoded; the
/// event type is stored only when it is not the default "message".
#[pyclass(frozen, name = "SseEvent", module = "radixrouter._core")]
pub struct PySseEvent {
    event: Option<String>,
    data: Py<PyString>,
    id: String,
    retry: Option<u64>,
}

fn py_text<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(bytes) {
        Ok(s) => PyString::new(py, s),
        Err(_) => PyString::new(py, &String::from_utf8_lossy(bytes)),
    }
}

impl PySseEvent {
    fn from_ref(py: Python<'_>, e: EventRef<'_>) -> Self {
        PySseEvent {
            event: e.event.map(str::to_owned),
            data: py_text(py, e.data).unbind(),
            id: e.id.to_owned(),
            retry: e.retry,
        }
    }

    fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

#[pymethods]
impl PySseEvent {
    #[new]
    #[pyo3(
        signature = (data = String::new(), event = String::from("message"), id = String::new(), retry = None),
        text_signature = "(data='', event='message', id='', retry=None)"
    )]
    fn new(py: Python<'_>, data: String, event: String, id: String, retry: Option<u64>) -> Self {
        let event = if event.is_empty() || event == "message" {
            None
        } else {
            Some(event)
        };
        PySseEvent {
            event,
            data: PyString::new(py, &data).unbind(),
            id,
            retry,
        }
    }

    #[getter]
    fn event<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        match &self.event {
            None => pyo3::intern!(py, "message").clone(),
            Some(e) => PyString::new(py, e),
        }
    }

    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        self.data.bind(py).clone()
    }

    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.retry
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<PySseEvent>() else {
            return Ok(false);
        };
        let other = other.get();
        Ok(self.event_type() == other.event_type()
            && self.id == other.id
            && self.retry == other.retry
            && self.data.bind(py).to_str()? == other.data.bind(py).to_str()?)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let retry = self
            .retry
            .map_or_else(|| "None".to_owned(), |r| r.to_string());
        Ok(format!(
            "SseEvent(data={:?}, event={:?}, id={:?}, retry={})",
            self.data.bind(py).to_str()?,
            self.event_type(),
            self.id,
            retry
        ))
    }
}

/// Incremental WHATWG server-sent-events decoder.
///
/// One decoder reads one stream: a call made while another thread is inside
/// `feed` on the same decoder raises RuntimeError instead of waiting (waiting
/// while holding the interpreter could deadlock).
#[pyclass(frozen, name = "SseDecoder", module = "radixrouter._core")]
pub struct PySseDecoder {
    inner: Mutex<Decoder>,
}

impl PySseDecoder {
    fn lock(&self) -> PyResult<std::sync::MutexGuard<'_, Decoder>> {
        match self.inner.try_lock() {
            Ok(guard) => Ok(guard),
            // A panic while holding the lock cannot leave the decoder in an unsafe state.
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(PyRuntimeError::new_err(
                "SseDecoder is already in use by another thread",
            )),
        }
    }
}

#[pymethods]
impl PySseDecoder {
    #[new]
    #[pyo3(
        signature = (*, max_line_bytes = DEFAULT_LIMIT, max_event_bytes = DEFAULT_LIMIT),
        text_signature = "(*, max_line_bytes=16777216, max_event_bytes=16777216)"
    )]
    fn new(max_line_bytes: usize, max_event_bytes: usize) -> PyResult<Self> {
        if max_line_bytes == 0 || max_event_bytes == 0 {
            return Err(PyValueError::new_err("SSE size limits must be positive"));
        }
        Ok(PySseDecoder {
            inner: Mutex::new(Decoder::new(max_line_bytes, max_event_bytes)),
        })
    }

    /// Feed bytes; return the events they complete.
    fn feed<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let mut failure: Option<PyErr> = None;
        let mut sink = |e: EventRef<'_>| {
            if failure.is_none() {
                let obj = Bound::new(py, PySseEvent::from_ref(py, e)).and_then(|o| list.append(o));
                if let Err(err) = obj {
                    failure = Some(err);
                }
            }
        };
        let mut dec = self.lock()?;
        let result = if let Ok(b) = data.cast::<PyBytes>() {
            dec.feed_with(b.as_bytes(), &mut sink)
        } else if let Ok(bytes) = data.extract::<Vec<u8>>() {
            dec.feed_with(&bytes, &mut sink)
        } else {
            return Err(PyTypeError::new_err("SseDecoder.feed() takes bytes"));
        };
        drop(dec);
        if let Some(err) = failure {
            return Err(err);
        }
        result?;
        Ok(list)
    }

    /// End of stream: discard the unfinished line and block.
    fn close(&self) -> PyResult<()> {
        self.lock()?.close();
        Ok(())
    }

    #[getter]
    fn last_event_id(&self) -> PyResult<String> {
        Ok(self.lock()?.last_event_id().to_owned())
    }

    #[getter]
    fn reconnection_time(&self) -> PyResult<Option<u64>> {
        Ok(self.lock()?.reconnection_time())
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
