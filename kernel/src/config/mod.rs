//! `hm.toml`: finding it, parsing it with positions, validating it into a [`Pipeline`].
//!
//! Start at [`load`]: it reads the file and hands the text to [`parse_str`], which walks the
//! TOML document section by section (`parse.rs`) with typed readers (`fields.rs`) that record a
//! [`Diagnostic`] for every problem instead of stopping at the first.

mod condition;
mod data;
mod draft;
pub mod expr;
mod fields;
mod matrix;
mod model;
mod parse;
mod prepare;
mod resolve;
mod services;
mod shell;
mod sources;
mod templates;
pub(crate) mod values;

#[cfg(test)]
mod tests;

pub use crate::toml_check::{Diagnostic, Diagnostics};
pub use data::referenced_secret;
pub use matrix::{MAX_INSTANCES, instance_name};
pub use model::*;
pub use parse::{FILE_NAME, LoadError, find_pipeline_file, load, parse_str};
pub use prepare::Prepared;
pub use values::{parse_duration, parse_retry_class, parse_size};
