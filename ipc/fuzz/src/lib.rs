//! The fuzzing support of `hm-ipc`: what a fuzz target does with arbitrary bytes. The crate is
//! all in `frames.rs`, which `ipc/tests/random_frames.rs` includes too, so the deterministic
//! corpus on stable and libFuzzer on nightly exercise exactly the same code.

mod frames;

pub use frames::{Exercised, assert_split_invariant, decode_and_validate};
