//! PyO3 bindings: the only place pyo3 is used. Builds `radixrouter._core`.

use pyo3::prelude::*;

mod cache;
mod sse;
mod tok;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    sse::register(m)?;
    cache::register(m)?;
    tok::register(m)?;
    Ok(())
}
