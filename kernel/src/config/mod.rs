//! `hm.toml`: finding it, parsing it with positions, validating it into a [`Pipeline`].
//!
//! Start at [`load`]: it reads the file and hands the text to [`parse_str`], which walks the
//! TOML document section by section (`parse.rs`) with typed readers (`fields.rs`) that record a
//! [`Diagnostic`] for every problem instead of stopping at the first.

mod fields;
mod model;
mod parse;
mod shell;
pub(crate) mod values;

#[cfg(test)]
mod tests;

pub use crate::toml_check::{Diagnostic, Diagnostics};
pub use model::*;
pub use parse::{FILE_NAME, LoadError, find_pipeline_file, load, parse_str};
pub use values::{parse_duration, parse_retry_class, parse_size};
