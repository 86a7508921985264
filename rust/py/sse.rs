//! Python bindings for the SSE codec: `SseDecoder`, `SseEvent`, `encode_event`.

use std::sync::Mutex;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString};

use crate::sse::{DecodeError, Decoder, EncodeError, Event, Frame, DEFAULT_LIMIT};

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
#[pyclass(frozen, eq, name = "SseEvent", module = "radixrouter._core")]
#[derive(PartialEq)]
pub struct PySseEvent {
    #[pyo3(get)]
    event: String,
    #[pyo3(get)]
    data: String,
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    retry: Option<u64>,
}

#[pymethods]
impl PySseEvent {
    #[new]
    #[pyo3(signature = (data = String::new(), event = String::from("message"), id = String::new(), retry = None))]
    fn new(data: String, event: String, id: String, retry: Option<u64>) -> Self {
        PySseEvent { event, data, id, retry }
    }

    fn __repr__(&self) -> String {
        let retry = self.retry.map_or_else(|| "None".to_owned(), |r| r.to_string());
        format!("SseEvent(data={:?}, event={:?}, id={:?}, retry={})", self.data, self.event, self.id, retry)
    }
}

impl From<Event> for PySseEvent {
    fn from(e: Event) -> Self {
        PySseEvent { event: e.event, data: e.data, id: e.id, retry: e.retry }
    }
}

/// Incremental WHATWG server-sent-events decoder.
#[pyclass(frozen, name = "SseDecoder", module = "radixrouter._core")]
pub struct PySseDecoder {
    inner: Mutex<Decoder>,
}

impl PySseDecoder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Decoder> {
        // A panic while holding the lock cannot leave the decoder in an unsafe state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PySseDecoder {
    #[new]
    #[pyo3(signature = (*, max_line_bytes = DEFAULT_LIMIT, max_event_bytes = DEFAULT_LIMIT))]
    fn new(max_line_bytes: usize, max_event_bytes: usize) -> PyResult<Self> {
        if max_line_bytes == 0 || max_event_bytes == 0 {
            return Err(PyValueError::new_err("SSE size limits must be positive"));
        }
        Ok(PySseDecoder { inner: Mutex::new(Decoder::new(max_line_bytes, max_event_bytes)) })
    }

    /// Feed bytes; return the events they complete.
    fn feed<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let mut events = Vec::new();
        let result = {
            let mut dec = self.lock();
            if let Ok(b) = data.cast::<PyBytes>() {
                dec.feed_into(b.as_bytes(), &mut events)
            } else if let Ok(bytes) = data.extract::<Vec<u8>>() {
                dec.feed_into(&bytes, &mut events)
            } else {
                return Err(PyTypeError::new_err("SseDecoder.feed() takes bytes"));
            }
        };
        result?;
        let list = PyList::empty(py);
        for e in events {
            list.append(Bound::new(py, PySseEvent::from(e))?)?;
        }
        Ok(list)
    }

    /// End of stream: discard the unfinished line and block.
    fn close(&self) {
        self.lock().close();
    }

    #[getter]
    fn last_event_id(&self) -> String {
        self.lock().last_event_id().to_owned()
    }

    #[getter]
    fn reconnection_time(&self) -> Option<u64> {
        self.lock().reconnection_time()
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
                return Err(PyTypeError::new_err("encode_event() data must be str or bytes"));
            }
        }
    };
    let retry = match retry {
        None => None,
        Some(r) => {
            if r.cast::<PyInt>().is_err() || r.is_instance_of::<pyo3::types::PyBool>() {
                return Err(PyValueError::new_err("SSE retry must be a non-negative integer"));
            }
            Some(
                r.extract::<u64>()
                    .map_err(|_| PyValueError::new_err("SSE retry must be a non-negative integer"))?,
            )
        }
    };
    let frame = Frame { comment, id, event, data: data_bytes, retry };
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
