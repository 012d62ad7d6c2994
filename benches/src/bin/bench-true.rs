//! The trivial Rust binary whose spawn + wait is the baseline of the cold-start bench.

fn main() {}
