//! radixrouter core: the SSE codec, the radix-tree prefix cache and ASCII byte-level BPE.
//!
//! Everything outside `py` is plain Rust, compiled and tested by `cargo test`
//! without Python. The PyO3 bindings (`radixrouter._core`) live only in `py/`
//! and are compiled with the `python` feature (maturin enables it).

pub mod cache;
pub mod sse;
pub mod tok;

#[cfg(feature = "python")]
mod py;
