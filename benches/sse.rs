//! Criterion benchmarks of the SSE codec.
fn main() {}
