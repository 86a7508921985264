//! Criterion benchmarks of the prefix cache (filled in with the cache).
fn main() {}
