//! The step cache: a step with `inputs` is skipped when nothing it depends on changed, and
//! what it left (its log, outputs and artifacts) is replayed instead.
//!
//! [`key`] computes a step's key; [`store`] keeps entries on disk, content-addressed and
//! written atomically. Everything here blocks: the run loop calls it off its thread.

pub mod key;
pub mod store;
pub mod volumes;

pub use key::{KeyInputs, compute_key};
pub use store::{Entry, Lookup, Store};

/// The version of hm's cache format, part of every key: a change of what a key covers or of
/// how an entry is written bumps it, and old entries are simply never found again.
pub const FORMAT: u32 = 1;
