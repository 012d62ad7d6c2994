//! Checking a TOML file a user wrote: every problem found in one pass, each at its
//! `file:line:col` with a hint, printed one way whatever the file (`hm.toml`, `plugin.toml`).
//!
//! `diag`: positioned problems and how they print; `reader`: typed readers over a parsed
//! document that report what is wrong and keep going.

mod diag;
mod reader;

pub use diag::{Diagnostic, Diagnostics, is_diagnostic_line};
pub(crate) use reader::{Checker, Field, Section, backticked, join_path, no_special_hint};
