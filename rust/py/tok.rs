//! Python bindings for byte-level BPE: `ByteLevelBpe`.

use std::os::raw::c_ulong;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::tok::{Bpe, BuildError, Normalizer, Spec};

impl From<BuildError> for PyErr {
    fn from(e: BuildError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Texts at least this long are encoded with the thread detached from Python (a chat
/// prompt takes a few microseconds; 64 KiB of new text takes a millisecond or more).
const DETACH_BYTES: usize = 64 * 1024;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map_or_else(|_| type_name(obj), |r| r.to_string())
}

/// An id; `what` names it in the error.
fn id_item(obj: &Bound<'_, PyAny>, what: impl FnOnce() -> String) -> PyResult<u32> {
    obj.extract::<u32>().map_err(|_| {
        PyValueError::new_err(format!(
            "{} must be an int in 0..2**32, not {}",
            what(),
            repr(obj)
        ))
    })
}

/// `{str: int}` as (str, id) pairs.
fn str_ids(what: &str, d: &Bound<'_, PyDict>) -> PyResult<Vec<(String, u32)>> {
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let key = match k.cast::<PyString>() {
            Ok(s) => s.to_str()?.to_owned(),
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "{what} keys must be str, not {}",
                    type_name(&k)
                )))
            }
        };
        let id = id_item(&v, || format!("{what}[{key:?}]"))?;
        out.push((key, id));
    }
    Ok(out)
}

/// One merge as tokenizer.json holds it: a `[left, right]` pair (list or tuple), or a
/// "left right" string.
fn merge_pair(item: &Bound<'_, PyAny>) -> PyResult<Option<(String, String)>> {
    if let Ok(s) = item.cast::<PyString>() {
        let mut parts = s.to_str()?.split(' ');
        return Ok(match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => Some((a.to_owned(), b.to_owned())),
            _ => None,
        });
    }
    let (a, b) = if let Ok(l) = item.cast::<PyList>() {
        if l.len() != 2 {
            return Ok(None);
        }
        (l.get_item(0)?, l.get_item(1)?)
    } else if let Ok(t) = item.cast::<PyTuple>() {
        if t.len() != 2 {
            return Ok(None);
        }
        (t.get_item(0)?, t.get_item(1)?)
    } else {
        return Ok(None);
    };
    match (a.cast::<PyString>(), b.cast::<PyString>()) {
        (Ok(a), Ok(b)) => Ok(Some((a.to_str()?.to_owned(), b.to_str()?.to_owned()))),
        _ => Ok(None),
    }
}

fn merge_pairs(merges: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, item) in merges.try_iter()?.enumerate() {
        let item = item?;
        match merge_pair(&item)? {
            Some(pair) => out.push(pair),
            None => {
                return Err(PyTypeError::new_err(format!(
                    "merges[{i}] must be a pair of str or a str \"left right\", not {}",
                    repr(&item)
                )))
            }
        }
    }
    Ok(out)
}

/// Ids from a list: each item read as a C unsigned long without taking a reference (a
/// worker's output ids are a list of small ints); anything else goes through `id_item`.
fn list_ids(list: &Bound<'_, PyList>) -> PyResult<Vec<u32>> {
    let py = list.py();
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        // SAFETY: `list` is alive for the whole loop and `i` is in range (the list cannot
        // change: nothing here runs Python code). PyList_GetItem returns a borrowed reference
        // or NULL with an exception set; PyLong_AsUnsignedLong only reads an int (TypeError
        // for anything else, OverflowError when out of range) and runs no Python code.
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
                if v == c_ulong::MAX {
                    PyErr::take(py);
                }
                out.push(id_item(&list.get_item(i)?, || format!("ids[{i}]"))?);
            }
        }
    }
    Ok(out)
}

/// Token ids from a list or any iterable of ints.
fn ids_arg(ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if ids.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "ids must be a sequence of ints, not str",
        ));
    }
    if let Ok(list) = ids.cast::<PyList>() {
        return list_ids(list);
    }
    let mut out = Vec::new();
    for (i, item) in ids.try_iter()?.enumerate() {
        out.push(id_item(&item?, || format!("ids[{i}]"))?);
    }
    Ok(out)
}

/// Byte-level BPE with the ids of Hugging Face `tokenizers` (Qwen2/3 and Llama-3
/// pre-tokenizer), and the `ByteLevel` decoder for any ids.
#[pyclass(frozen, name = "ByteLevelBpe", module = "radixrouter._core")]
pub struct PyByteLevelBpe {
    inner: Bpe,
}

#[pymethods]
impl PyByteLevelBpe {
    #[new]
    #[pyo3(signature = (vocab, merges, added_tokens, *, max_digits, ignore_merges = false, normalizer = None))]
    fn new(
        py: Python<'_>,
        vocab: &Bound<'_, PyDict>,
        merges: &Bound<'_, PyAny>,
        added_tokens: &Bound<'_, PyDict>,
        max_digits: i64,
        ignore_merges: bool,
        normalizer: Option<&str>,
    ) -> PyResult<Self> {
        let normalizer = match normalizer {
            None => Normalizer::None,
            Some("NFC") => Normalizer::Nfc,
            Some("NFD" | "NFKC" | "NFKD") => Normalizer::AsciiOnly,
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "normalizer must be None, \"NFC\", \"NFD\", \"NFKC\" or \"NFKD\", not {other:?}"
                )))
            }
        };
        let max_digits = usize::try_from(max_digits)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| PyValueError::new_err("max_digits must be at least 1"))?;
        let spec = Spec {
            vocab: str_ids("vocab", vocab)?,
            merges: merge_pairs(merges)?,
            added: str_ids("added_tokens", added_tokens)?,
            max_digits,
            ignore_merges,
            normalizer,
        };
        let inner = py.detach(|| Bpe::new(spec))?;
        Ok(PyByteLevelBpe { inner })
    }

    /// The ids of `text`, or None where the normalizer would change it.
    fn encode<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Option<Bound<'py, PyList>>> {
        let ids = if text.len() >= DETACH_BYTES {
            py.detach(|| self.inner.encode(text))
        } else {
            self.inner.encode(text)
        };
        ids.map(|ids| PyList::new(py, ids)).transpose()
    }

    /// Whether `tokenizers`' `decode(ids, skip_special_tokens=False)` gives exactly `text`.
    fn spells(&self, ids: &Bound<'_, PyAny>, text: &str) -> PyResult<bool> {
        Ok(self.inner.spells(&ids_arg(ids)?, text))
    }

    /// The bytes the ids decode to, or None if an id is unknown.
    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        Ok(self
            .inner
            .decode_bytes(&ids_arg(ids)?)
            .map(|b| PyBytes::new(py, &b)))
    }

    /// Pieces in the cache of piece -> ids.
    #[getter]
    fn cached_pieces(&self) -> usize {
        self.inner.cached_pieces()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyByteLevelBpe>()?;
    Ok(())
}
