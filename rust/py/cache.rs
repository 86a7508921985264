//! Python bindings for the prefix cache: `PrefixCache`, `PrefixMatch`, `PrefixPin`.

use std::os::raw::c_ulong;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};

use crate::cache::{
    json_len, token_char_ends as token_char_ends_core, CharEndsError, Error, Match, PrefixCache,
    Tokens,
};

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

/// The buffer protocol. `PyObject_GetBuffer`, `PyBuffer_Release` and `Py_buffer` joined the
/// stable ABI in Python 3.11 (so pyo3's abi3-py310 bindings leave them out); the functions and
/// this struct layout are the same in every CPython since 3.3, 3.10 included.
mod pybuf {
    use pyo3::ffi::{PyObject, Py_ssize_t};
    use std::os::raw::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct Py_buffer {
        pub buf: *mut c_void,
        pub obj: *mut PyObject,
        pub len: Py_ssize_t,
        pub itemsize: Py_ssize_t,
        pub readonly: c_int,
        pub ndim: c_int,
        pub format: *mut c_char,
        pub shape: *mut Py_ssize_t,
        pub strides: *mut Py_ssize_t,
        pub suboffsets: *mut Py_ssize_t,
        pub internal: *mut c_void,
    }

    impl Py_buffer {
        pub fn new() -> Self {
            Py_buffer {
                buf: std::ptr::null_mut(),
                obj: std::ptr::null_mut(),
                len: 0,
                itemsize: 0,
                readonly: 0,
                ndim: 0,
                format: std::ptr::null_mut(),
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                suboffsets: std::ptr::null_mut(),
                internal: std::ptr::null_mut(),
            }
        }
    }

    pub const PYBUF_FORMAT: c_int = 0x0004;
    /// PyBUF_C_CONTIGUOUS: 0x0020 | PyBUF_STRIDES (0x0010 | PyBUF_ND (0x0008)).
    pub const PYBUF_C_CONTIGUOUS: c_int = 0x0038;

    extern "C" {
        pub fn PyObject_GetBuffer(obj: *mut PyObject, view: *mut Py_buffer, flags: c_int) -> c_int;
        pub fn PyBuffer_Release(view: *mut Py_buffer);
    }
}

/// A C-contiguous buffer exported by an object (`array`, `memoryview`, numpy array, ...),
/// released on drop.
struct Buffer {
    view: pybuf::Py_buffer,
}

/// How a buffer's items are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Item {
    Unsigned(usize),
    Signed(usize),
    Float(usize),
    Bool,
}

impl Buffer {
    /// The buffer of `obj`, or None if it has none (or not a contiguous one).
    fn get(obj: &Bound<'_, PyAny>) -> Option<Buffer> {
        let mut view = pybuf::Py_buffer::new();
        // SAFETY: `view` is a valid Py_buffer to fill; on failure the exception is cleared and
        // nothing needs releasing. With the GIL held the exporter keeps the memory alive and
        // unmoved until PyBuffer_Release (in Drop).
        let rc = unsafe {
            pybuf::PyObject_GetBuffer(
                obj.as_ptr(),
                &mut view,
                pybuf::PYBUF_FORMAT | pybuf::PYBUF_C_CONTIGUOUS,
            )
        };
        if rc != 0 {
            PyErr::take(obj.py());
            return None;
        }
        Some(Buffer { view })
    }

    fn bytes(&self) -> &[u8] {
        if self.view.buf.is_null() || self.view.len <= 0 {
            return &[];
        }
        // SAFETY: a C-contiguous buffer of `len` bytes at `buf`, alive until released.
        unsafe { std::slice::from_raw_parts(self.view.buf.cast::<u8>(), self.view.len as usize) }
    }

    /// The item type, for native byte order only (None: some other format).
    fn item(&self) -> Option<Item> {
        let size = usize::try_from(self.view.itemsize).ok()?;
        let fmt = if self.view.format.is_null() {
            b"B".as_slice()
        } else {
            // SAFETY: `format` is a NUL-terminated string owned by the buffer.
            unsafe { std::ffi::CStr::from_ptr(self.view.format) }.to_bytes()
        };
        let code = match fmt {
            [c] | [b'@', c] | [b'=', c] => *c,
            [b'<', c] if cfg!(target_endian = "little") => *c,
            [b'>' | b'!', c] if cfg!(target_endian = "big") => *c,
            _ => return None,
        };
        let item = match code {
            b'B' | b'H' | b'I' | b'L' | b'Q' | b'N' => Item::Unsigned(size),
            b'b' | b'h' | b'i' | b'l' | b'q' | b'n' => Item::Signed(size),
            b'f' | b'd' => Item::Float(size),
            b'?' => Item::Bool,
            _ => return None,
        };
        let ok = match item {
            Item::Unsigned(n) | Item::Signed(n) => matches!(n, 1 | 2 | 4 | 8),
            Item::Float(n) => matches!(n, 4 | 8),
            Item::Bool => size == 1,
        };
        ok.then_some(item)
    }

    /// The items of an integer buffer as i128 (None for a float buffer).
    fn int_items(&self, item: Item) -> Option<impl Iterator<Item = i128> + '_> {
        let (size, signed) = match item {
            Item::Unsigned(n) => (n, false),
            Item::Signed(n) => (n, true),
            Item::Bool => (1, false),
            Item::Float(_) => return None,
        };
        Some(self.bytes().chunks_exact(size).map(move |c| {
            let mut raw = [0u8; 8];
            if cfg!(target_endian = "little") {
                raw[..size].copy_from_slice(c);
            } else {
                raw[8 - size..].copy_from_slice(c);
            }
            let u = u64::from_ne_bytes(raw);
            if signed {
                let shift = 64 - 8 * size as u32;
                i128::from(((u << shift) as i64) >> shift)
            } else {
                i128::from(u)
            }
        }))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
        // Buffers are only taken with the GIL held and dropped before it is released.
        unsafe { pybuf::PyBuffer_Release(&mut self.view) }
    }
}

/// Ints from an integer buffer, each checked to be in `0..=max`; None for other buffers.
fn buffer_ints(what: &str, obj: &Bound<'_, PyAny>, max: u32) -> Option<PyResult<Vec<u32>>> {
    let buf = Buffer::get(obj)?;
    let item = buf.item()?;
    // (max is 1 or u32::MAX.)
    let bad = |i: usize, v: i128| {
        PyValueError::new_err(if max == 1 {
            format!("{what}[{i}] must be 0 or 1")
        } else {
            format!("{what}[{i}] = {v} is not in 0..2**32")
        })
    };
    let convert = |v: i128| u32::try_from(v).ok().filter(|&x| x <= max);
    let b = buf.bytes();
    let mut out = Vec::with_capacity(b.len() / buf.view.itemsize.max(1) as usize);
    if item == Item::Unsigned(4) && max == u32::MAX {
        // The common case (array('I'), numpy uint32): every value fits, a plain copy.
        return Some(Ok(b
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()));
    }
    for (i, v) in buf.int_items(item)?.enumerate() {
        match convert(v) {
            Some(x) => out.push(x),
            None => return Some(Err(bad(i, v))),
        }
    }
    Some(Ok(out))
}

/// The hot path for `list[int]`: read each item as a C unsigned long without creating an
/// owned reference; anything unusual (non-int items, errors) goes through `u32_item`.
fn list_u32s(what: &str, list: &Bound<'_, PyList>) -> PyResult<Vec<u32>> {
    let py = list.py();
    let n = list.len();
    let mut out = vec![0u32; n];
    for (i, slot) in out.iter_mut().enumerate() {
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
        *slot = match u32::try_from(v) {
            Ok(v) => v,
            Err(_) => {
                // Out of range, negative, or not an int: let the slow path decide and explain.
                if v == c_ulong::MAX {
                    PyErr::take(py);
                }
                u32_item(what, i, &list.get_item(i)?)?
            }
        };
    }
    Ok(out)
}

/// A list / tuple / iterable of ints, bytes holding native uint32, or a buffer of integers
/// (`array('I')` and other `array` / `memoryview` / numpy integer types, read without
/// creating Python ints).
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
    if let Some(v) = buffer_ints(what, obj, u32::MAX) {
        return v;
    }
    let mut out = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        out.push(u32_item(what, i, &item?)?);
    }
    Ok(out)
}

fn extract_f32s(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    if !obj.is_instance_of::<PyList>() {
        if let Some(buf) = Buffer::get(obj) {
            let b = buf.bytes();
            match buf.item() {
                Some(Item::Float(4)) => {
                    return Ok(b
                        .chunks_exact(4)
                        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect())
                }
                Some(Item::Float(8)) => {
                    return Ok(b
                        .chunks_exact(8)
                        .map(|c| f64::from_ne_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                        .collect())
                }
                _ => {}
            }
        }
    }
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
    if !obj.is_instance_of::<PyList>() && !obj.is_instance_of::<PyString>() {
        if let Some(v) = buffer_ints("loss_mask", obj, 1) {
            // Every value is 0 or 1.
            return v.map(|v| v.into_iter().map(|x| x as u8).collect());
        }
    }
    let mut out = Vec::new();
    for (i, item) in obj.try_iter()?.enumerate() {
        let item = item?;
        // Ints and int-likes (numpy integers); floats and others are a TypeError.
        match item.extract::<i64>() {
            Ok(v @ (0 | 1)) => out.push(v as u8),
            Err(_) if !item.is_instance_of::<PyInt>() => {
                return Err(PyTypeError::new_err(format!(
                    "loss_mask[{i}] must be 0 or 1, not {}",
                    type_name(&item)
                )))
            }
            _ => {
                return Err(PyValueError::new_err(format!(
                    "loss_mask[{i}] must be 0 or 1"
                )))
            }
        }
    }
    Ok(out)
}

/// A new `bytes` object of exactly `len` bytes, written by `fill` (not zeroed first: `fill`
/// gets a writer that copies slices in order; any byte it leaves unwritten is set to 0).
fn new_bytes<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut Writer),
) -> PyResult<Bound<'py, PyBytes>> {
    let size =
        ffi::Py_ssize_t::try_from(len).map_err(|_| PyValueError::new_err("result too large"))?;
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new bytes object with room for n
    // bytes (or NULL with an exception set); PyBytes_AsString points at that room. The writer
    // writes only inside it, and every byte is initialized before the object is shared.
    unsafe {
        let obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let bytes = Bound::from_owned_ptr(py, obj).cast_into_unchecked::<PyBytes>();
        let mut w = Writer {
            ptr: ffi::PyBytes_AsString(obj).cast::<u8>(),
            cap: len,
            pos: 0,
        };
        fill(&mut w);
        if w.pos < len {
            std::ptr::write_bytes(w.ptr.add(w.pos), 0, len - w.pos);
        }
        Ok(bytes)
    }
}

/// Copies slices into uninitialized memory, never past its end.
struct Writer {
    ptr: *mut u8,
    cap: usize,
    pos: usize,
}

impl Writer {
    fn put(&mut self, src: &[u8]) {
        let n = src.len().min(self.cap - self.pos);
        // SAFETY: `pos + n <= cap`, and `src` cannot overlap memory we own exclusively.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(self.pos), n) };
        self.pos += n;
    }

    fn put_u32s(&mut self, v: &[u32]) {
        // SAFETY: any u32 slice is a valid byte slice of 4x its length (native byte order).
        self.put(unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 4) });
    }
}

/// uint32 parts as native-endian bytes.
fn u32_bytes<'py, 'a>(
    py: Python<'py>,
    parts: impl Iterator<Item = &'a [u32]> + Clone,
) -> PyResult<Bound<'py, PyBytes>> {
    let n: usize = parts.clone().map(<[u32]>::len).sum();
    new_bytes(py, n * 4, |w| parts.for_each(|p| w.put_u32s(p)))
}

/// uint32 parts as a new `array.array("I")`.
fn u32_array<'py, 'a>(
    py: Python<'py>,
    parts: impl Iterator<Item = &'a [u32]> + Clone,
) -> PyResult<Bound<'py, PyAny>> {
    let array = ARRAY_TYPE.import(py, "array", "array")?;
    array.call1(("I", u32_bytes(py, parts)?))
}

/// Each token's end offset in the text that ``ids`` spell, counted from ``start``, as
/// ``array("I")``: ``table[id]`` is the number of characters that begin in token ``id``.
#[pyfunction]
#[pyo3(signature = (ids, table, start = 0))]
fn token_char_ends<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyAny>,
    table: &Bound<'py, PyAny>,
    start: u32,
) -> PyResult<Bound<'py, PyAny>> {
    let ids = extract_u32s("ids", ids)?;
    let buf = Buffer::get(table).ok_or_else(|| {
        PyTypeError::new_err(
            "table must be a buffer of unsigned integers (bytes, array('B') or array('I'))",
        )
    })?;
    let ends = match buf.item() {
        Some(Item::Unsigned(1)) => token_char_ends_core(&ids, buf.bytes(), start),
        Some(Item::Unsigned(4)) => {
            let wide = u32s_from_bytes("table", buf.bytes())?;
            token_char_ends_core(&ids, &wide, start)
        }
        _ => {
            return Err(PyTypeError::new_err(
                "table must be a buffer of unsigned integers (bytes, array('B') or array('I'))",
            ))
        }
    };
    let table_len = buf.bytes().len() / buf.view.itemsize.max(1) as usize;
    drop(buf);
    let ends = ends.map_err(|e| match e {
        CharEndsError::UnknownId { index, id } => PyValueError::new_err(format!(
            "ids[{index}] = {id} is not in the table ({table_len} entries)"
        )),
        CharEndsError::Overflow { index } => {
            PyValueError::new_err(format!("the end of token {index} is past 2**32 - 1"))
        }
    })?;
    u32_array(py, std::iter::once(&ends[..]))
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
        // len(str) is stored in the object: the core need not count the characters.
        let nchars = text.len()?;
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
            py.detach(|| cache.insert_sized(text, nchars, tokens, worker))?;
        } else {
            cache.insert_sized(text, nchars, tokens, worker)?;
        }
        Ok(())
    }

    /// The longest cached prefix of `text`, cut at the last whole token.
    #[pyo3(name = "match")]
    fn match_(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<PyPrefixMatch> {
        let nchars = text.len()?;
        let text = text.to_str()?;
        let cache = &self.inner;
        let m = if text.len() >= DETACH_BYTES {
            py.detach(|| cache.lookup_sized(text, nchars))
        } else {
            cache.lookup_sized(text, nchars)
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
#[pyclass(
    frozen,
    freelist = 16,
    name = "PrefixMatch",
    module = "radixrouter._core"
)]
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
        for (w, n) in self.m.workers() {
            d.set_item(w, n)?;
        }
        Ok(d)
    }

    #[getter]
    fn worker_ages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (w, age) in self.m.worker_ages() {
            d.set_item(w, age)?;
        }
        Ok(d)
    }

    /// The ids as a JSON array, e.g. ``b"[1,2,3]"``.
    fn ids_json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let parts = self.m.json_parts();
        let len = json_len(parts.clone());
        new_bytes(py, len, |w| {
            w.put(b"[");
            parts.for_each(|p| w.put(p));
            // The last comma becomes the closing bracket ("[]" when there are no ids).
            w.pos = len - 1;
            w.put(b"]");
        })
    }

    /// The ids as native-endian uint32 bytes (``memoryview(b).cast("I")``, ``numpy.frombuffer(b, "u4")``).
    fn ids_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        u32_bytes(py, self.m.id_parts())
    }

    /// The ids as ``array.array("I")``.
    fn ids_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        u32_array(py, self.m.id_parts())
    }

    /// The matched tokens' end offsets (``str`` indices) as ``array.array("I")``.
    fn ends_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        u32_array(py, self.m.end_parts())
    }

    /// The logprobs as ``array.array("f")`` (float32, as stored; 0.0 where none was recorded).
    fn logprobs_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let n = self.m.token_count();
        let bits: Vec<u32> = match self.m.logprobs() {
            Some(v) => v.iter().map(|x| x.to_bits()).collect(),
            None => vec![0; n],
        };
        let raw = u32_bytes(py, std::iter::once(&bits[..]))?;
        ARRAY_TYPE.import(py, "array", "array")?.call1(("f", raw))
    }

    /// The loss mask as ``array.array("B")`` (0 where none was recorded).
    fn loss_mask_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let n = self.m.token_count();
        let mask = self.m.loss_mask().unwrap_or_else(|| vec![0; n]);
        let raw = new_bytes(py, n, |w| w.put(&mask))?;
        ARRAY_TYPE.import(py, "array", "array")?.call1(("B", raw))
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
            self.m.workers().collect::<Vec<_>>()
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
    m.add_function(wrap_pyfunction!(token_char_ends, m)?)?;
    Ok(())
}
