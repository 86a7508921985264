//! radixrouter core: the SSE codec and the radix-tree prefix cache.
//!
//! Everything outside `py` is plain Rust, compiled and tested by `cargo test`
//! without Python. The PyO3 bindings (`radixrouter._core`) live only in `py/`
//! and are compiled with the `python` feature (maturin enables it).

pub mod cache;
pub mod sse;

#[cfg(feature = "python")]
mod py;
