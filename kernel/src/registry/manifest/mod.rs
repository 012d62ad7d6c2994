//! `plugin.toml`, the manifest of a plugin bundle: read and validated without running
//! anything, with every problem reported at its line:col in the file, as in `hm.toml`.
//!
//! `model`: what a manifest says; `read`: reading it from a bundle; `check`: the checks.

mod check;
mod model;
mod read;

#[cfg(test)]
mod tests;

pub use check::check_capability;
pub use model::{
    ArgSpec, Claim, DEFAULT_HOOK_TIMEOUT, HOOK_EVENTS, HookPhase, HookSpec, MANIFEST_FILE,
    Manifest, SubcommandSpec,
};
pub use read::{ManifestError, NAME_RULE, display_path, parse, read, valid_name};
