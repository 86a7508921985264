//! Python bindings for the prefix cache: `PrefixCache`, `PrefixMatch`, `PrefixPin`.

use std::os::raw::c_ulong;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};

use crate::cache::{json_len, write_json, Error, Match, PrefixCache, Tokens};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Texts at least this long are matched / inserted with the thread detached from Python.
/// A 4,000-token lookup takes about a microsecond: releasing the GIL for that long would cost
/// more than it frees, and getting it back can wait a whole switch interval when other
/// threads are busy. Past ~64K tokens the work reaches tens of microseconds and is detached.
/// O(cache size) operations (`remove_worker`, `clear`, `stats`) always detach.
const DETACH_BYTES: usize = 256 * 1024;

static ARRAY_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn out_of_range(what: &str, i: usize, item: &Bound<'_, PyAny>) -> PyErr {
    PyValueError::new_err(format!("{what}[{i}] = {item} is not in 0..2**32"))
}

fn not_int(what: &str, i: usize, item: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{what}[{i}] must be an int, not {}",
        type_name(item)
    ))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn u32_item(what: &str, i: usize, item: &Bound<'_, PyAny>) -> PyResult<u32> {
    match item.extract::<u32>() {
        Ok(v) => Ok(v),
        Err(_) if item.is_instance_of::<PyInt>() => Err(out_of_range(what, i, item)),
        Err(_) => Err(not_int(what, i, item)),
    }
}

/// Native-endian u32s from raw bytes (the buffer form of `array('I')`).
fn u32s_from_bytes(what: &str, b: &[u8]) -> PyResult<Vec<u32>> {
    if b.len() % 4 != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: a byte buffer must hold 4-byte unsigned integers"
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The hot path for `list[int]`: read each item as a C unsigned long without creating an
/// owned reference; anything unusual (non-int items, errors) goes through `u32_item`.
fn list_u32s(what: &str, list: &Bound<'_, PyList>) -> PyResult<Vec<u32>> {
    let py = list.py();
    let n = list.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: `list` is a live list for the whole loop. PyList_GetItem returns a borrowed
        // reference (or NULL with an exception set when out of range). PyLong_AsUnsignedLong
        // runs no Python code (it reads int objects and raises TypeError for anything else),
        // so the list cannot change under us while the reference is used. This module is
        // built for the stable ABI, which always has a GIL.
        let v = unsafe {
            let item = ffi::PyList_GetItem(list.as_ptr(), i as ffi::Py_ssize_t);
            if item.is_null() {
                return Err(PyErr::fetch(py));
            }
            ffi::PyLong_AsUnsignedLong(item)
        };
        match u32::try_from(v) {
            Ok(v) => out.push(v),
            Err(_) => {
                // Out of range, negative, or not an int: let the slow path decide and explain.
                if v == c_ulong::MAX {
                    PyErr::take(py);
                }
                out.push(u32_item(what, i, &list.get_item(i)?)?);
            }
        }
    }
    Ok(out)
}

/// A list / tuple / iterable of ints, bytes holding native u32, or an `array('I')` / memoryview of format 'I'.
fn extract_u32s(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(list) = obj.cast::<PyList>() {
        return list_u32s(what, list);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(t.len());
        for (i, item) in t.iter().enumerate() {
            out.push(u32_item(what, i, &item)?);
        }
        return Ok(out);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return u32s_from_bytes(what, b.as_bytes());
    }
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a sequence of ints, not str"
        )));
    }
    // array.array('I') and memoryview(format='I'): copy their bytes in one go.
    let code = obj
        .getattr("typecode")
        .or_else(|_| obj.getattr("format"))
        .ok()
        .and_then(|c| c.extract::<String>().ok());
    if let Some(code) = code {
        let itemsize = obj
            .getattr("itemsize")
            .ok()
            .and_then(|s| s.extract::<usize>().ok());
        if matches!(code.as_str(), "I" | "L" | "=I" | "<I" | "@I") && itemsize == Some(4) {
            let raw = obj.call_method0("tobytes")?;
            return u32s_from_bytes(what, raw.cast::<PyBytes>()?.as_bytes());
        }
    }
    let mut out = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        out.push(u32_item(what, i, &item?)?);
    }
    Ok(out)
}

fn extract_f32s(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    let mut out = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        let v = item.extract::<f64>().map_err(|_| {
            PyTypeError::new_err(format!(
                "logprobs[{i}] must be a float, not {}",
                type_name(&item)
            ))
        })?;
        out.push(v as f32);
    }
    Ok(out)
}

fn extract_mask(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let mut out = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        if !item.is_instance_of::<PyInt>() {
            return Err(PyTypeError::new_err(format!(
                "loss_mask[{i}] must be 0 or 1, not {}",
                type_name(&item)
            )));
        }
        match item.extract::<i64>() {
            Ok(0) => out.push(0),
            Ok(1) => out.push(1),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "loss_mask[{i}] must be 0 or 1"
                )))
            }
        }
    }
    Ok(out)
}

/// A radix-tree prefix cache: text -> token ids, logprobs, loss mask and worker affinity.
#[pyclass(frozen, name = "PrefixCache", module = "radixrouter._core")]
pub struct PyPrefixCache {
    inner: Arc<PrefixCache>,
}

#[pymethods]
impl PyPrefixCache {
    #[new]
    #[pyo3(signature = (max_tokens = 16_000_000))]
    fn new(max_tokens: i64) -> PyResult<Self> {
        let max_tokens = u64::try_from(max_tokens)
            .map_err(|_| PyValueError::new_err("max_tokens must be non-negative"))?;
        Ok(PyPrefixCache {
            inner: Arc::new(PrefixCache::new(max_tokens)),
        })
    }

    #[getter]
    fn max_tokens(&self) -> u64 {
        self.inner.max_tokens()
    }

    #[pyo3(signature = (text, token_ids = None, token_ends = None, *, logprobs = None, loss_mask = None, worker = None))]
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyString>,
        token_ids: Option<&Bound<'_, PyAny>>,
        token_ends: Option<&Bound<'_, PyAny>>,
        logprobs: Option<&Bound<'_, PyAny>>,
        loss_mask: Option<&Bound<'_, PyAny>>,
        worker: Option<&str>,
    ) -> PyResult<()> {
        let text = text.to_str()?;
        let ids = token_ids
            .map(|o| extract_u32s("token_ids", o))
            .transpose()?
            .unwrap_or_default();
        let ends = token_ends
            .map(|o| extract_u32s("token_ends", o))
            .transpose()?
            .unwrap_or_default();
        let logprobs = logprobs.map(extract_f32s).transpose()?;
        let loss_mask = loss_mask.map(extract_mask).transpose()?;
        let tokens = Tokens {
            ids: &ids,
            ends: &ends,
            logprobs: logprobs.as_deref(),
            loss_mask: loss_mask.as_deref(),
        };
        let cache = &self.inner;
        if text.len() >= DETACH_BYTES {
            py.detach(|| cache.insert(text, tokens, worker))?;
        } else {
            cache.insert(text, tokens, worker)?;
        }
        Ok(())
    }

    /// The longest cached prefix of `text`, cut at the last whole token.
    #[pyo3(name = "match")]
    fn match_(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<PyPrefixMatch> {
        let text = text.to_str()?;
        let cache = &self.inner;
        let m = if text.len() >= DETACH_BYTES {
            py.detach(|| cache.lookup(text))
        } else {
            cache.lookup(text)
        };
        Ok(PyPrefixMatch { m })
    }

    /// Pin the path `text` reaches so it is never evicted until the pin is released.
    fn pin(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<PyPrefixPin> {
        let text = text.to_str()?;
        let cache = &self.inner;
        let (pin, matched_chars) = if text.len() >= DETACH_BYTES {
            py.detach(|| cache.pin(text))
        } else {
            cache.pin(text)
        };
        Ok(PyPrefixPin {
            cache: Arc::clone(cache),
            pin: Mutex::new(pin),
            matched_chars,
        })
    }

    fn remove_worker(&self, py: Python<'_>, worker: &str) {
        let cache = &self.inner;
        py.detach(|| cache.remove_worker(worker));
    }

    fn clear(&self, py: Python<'_>) {
        let cache = &self.inner;
        py.detach(|| cache.clear());
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cache = &self.inner;
        let s = py.detach(|| cache.stats());
        let d = PyDict::new(py);
        d.set_item("nodes", s.nodes)?;
        d.set_item("tokens", s.tokens)?;
        d.set_item("charged", s.charged)?;
        d.set_item("max_tokens", s.max_tokens)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("pins", s.pins)?;
        d.set_item("workers", s.workers)?;
        d.set_item("lookups", s.lookups)?;
        d.set_item("looked_up_tokens", s.looked_up_tokens)?;
        d.set_item("matched_tokens", s.matched_tokens)?;
        d.set_item("hit_rate", s.hit_rate())?;
        d.set_item("looked_up_chars", s.looked_up_chars)?;
        d.set_item("matched_chars", s.matched_chars)?;
        d.set_item("char_hit_rate", s.char_hit_rate())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let s = self.inner.stats();
        format!(
            "PrefixCache(max_tokens={}, nodes={}, tokens={})",
            s.max_tokens, s.nodes, s.tokens
        )
    }
}

/// The longest cached prefix of a text (see `PrefixCache.match`).
#[pyclass(frozen, name = "PrefixMatch", module = "radixrouter._core")]
pub struct PyPrefixMatch {
    m: Match,
}

#[pymethods]
impl PyPrefixMatch {
    #[getter]
    fn length(&self) -> usize {
        self.m.length
    }

    #[getter]
    fn matched_chars(&self) -> usize {
        self.m.matched_chars
    }

    #[getter]
    fn token_count(&self) -> usize {
        self.m.token_count()
    }

    #[getter]
    fn token_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.m.id_parts().flatten())
    }

    #[getter]
    fn logprobs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        match self.m.logprobs() {
            Some(v) => PyList::new(py, v.iter().map(|&x| f64::from(x))),
            None => PyList::new(py, std::iter::repeat(0.0f64).take(self.m.token_count())),
        }
    }

    #[getter]
    fn loss_mask<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        match self.m.loss_mask() {
            Some(v) => PyList::new(py, v),
            None => PyList::new(py, std::iter::repeat(0u8).take(self.m.token_count())),
        }
    }

    #[getter]
    fn workers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (w, n) in &self.m.workers {
            d.set_item(&**w, *n)?;
        }
        Ok(d)
    }

    #[getter]
    fn worker_ages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for ((w, _), age) in self.m.workers.iter().zip(&self.m.worker_ages) {
            d.set_item(&**w, *age)?;
        }
        Ok(d)
    }

    /// The ids as a JSON array, e.g. ``b"[1,2,3]"``.
    fn ids_json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let parts = self.m.json_parts();
        PyBytes::new_with(py, json_len(parts.iter().copied()), |buf| {
            write_json(parts, buf);
            Ok(())
        })
    }

    /// The ids as native-endian uint32 bytes (``memoryview(b).cast("I")``, ``numpy.frombuffer(b, "u4")``).
    fn ids_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        PyBytes::new_with(py, self.m.token_count() * 4, |buf| {
            let mut at = 0;
            for part in self.m.id_parts() {
                let dst = &mut buf[at..at + part.len() * 4];
                for (d, id) in dst.chunks_exact_mut(4).zip(part) {
                    d.copy_from_slice(&id.to_ne_bytes());
                }
                at += part.len() * 4;
            }
            Ok(())
        })
    }

    /// The ids as ``array.array("I")``.
    fn ids_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let array = ARRAY_TYPE.import(py, "array", "array")?;
        array.call1(("I", self.ids_bytes(py)?))
    }

    fn __len__(&self) -> usize {
        self.m.token_count()
    }

    fn __repr__(&self) -> String {
        format!(
            "PrefixMatch(length={}, matched_chars={}, token_count={}, workers={:?})",
            self.m.length,
            self.m.matched_chars,
            self.m.token_count(),
            self.m
                .workers
                .iter()
                .map(|(w, n)| (&**w, *n))
                .collect::<Vec<_>>()
        )
    }
}

/// A pin on a cached path (see `PrefixCache.pin`); a context manager. Released on `release()`,
/// on leaving the `with` block, or when garbage-collected.
#[pyclass(frozen, name = "PrefixPin", module = "radixrouter._core")]
pub struct PyPrefixPin {
    cache: Arc<PrefixCache>,
    pin: Mutex<Option<u64>>,
    matched_chars: usize,
}

impl PyPrefixPin {
    fn take(&self) -> Option<u64> {
        self.pin.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[pymethods]
impl PyPrefixPin {
    /// Characters of the pinned text that were cached when it was pinned.
    #[getter]
    fn matched_chars(&self) -> usize {
        self.matched_chars
    }

    /// True until released (False at once if nothing of the text was cached).
    #[getter]
    fn active(&self) -> bool {
        self.pin.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Release the pin (idempotent).
    fn release(&self, py: Python<'_>) {
        if let Some(pin) = self.take() {
            let cache = &self.cache;
            py.detach(|| cache.unpin(pin));
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.release(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "PrefixPin(matched_chars={}, active={})",
            self.matched_chars,
            if self.active() { "True" } else { "False" }
        )
    }
}

impl Drop for PyPrefixPin {
    fn drop(&mut self) {
        if let Some(pin) = self.take() {
            self.cache.unpin(pin);
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPrefixCache>()?;
    m.add_class::<PyPrefixMatch>()?;
    m.add_class::<PyPrefixPin>()?;
    Ok(())
}
