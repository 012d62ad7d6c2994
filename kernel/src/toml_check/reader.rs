//! Typed readers over a parsed TOML document: each checks one key's shape, records a
//! positioned diagnostic when it is wrong, and keeps going so every problem is found in one pass.
//! `hm.toml` (`config/`) and `plugin.toml` (`registry/manifest.rs`) are both read with these,
//! so a problem reads the same, and is placed the same way, in either file.
//!
//! A reader returns `None` after reporting; the file's value is only assembled when nothing was
//! reported, so partial values never escape.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Document, Item, Key, TableLike, Value};

use super::diag::Reporter;
use crate::config::Limits;
use crate::config::values;
use crate::suggest::did_you_mean;

pub(crate) const LIMITS_KEYS: &[&str] = &["memory", "pids", "cpu"];

/// Walks one document (or several: a pipeline and what it includes), collecting diagnostics.
pub(crate) struct Checker<'a> {
    /// The text of the file being read now.
    pub(crate) text: &'a str,
    /// Every file's text, by number (the first is the one the checker was made for).
    texts: Vec<&'a str>,
    pub(crate) report: Reporter<'a>,
    /// Absolute directory of the file; relative paths in it (a step's `dir`) are checked
    /// against it.
    pub(crate) root: PathBuf,
}

/// A table whose unknown keys have already been reported.
pub(crate) struct Section<'t> {
    /// Dotted path for messages: `steps.build.limits`.
    pub(crate) path: String,
    pub(crate) span: Option<Range<usize>>,
    pub(crate) entries: Vec<(&'t Key, &'t Item)>,
}

impl<'t> Section<'t> {
    pub(crate) fn get(&self, name: &str) -> Option<Field<'t>> {
        self.entries
            .iter()
            .find(|(key, _)| key.get() == name)
            .map(|&(key, item)| Field {
                key,
                item,
                label: match self.path.is_empty() {
                    true => format!("`{}`", key.get()),
                    false => format!("`{}` in [{}]", key.get(), self.path),
                },
            })
    }
}

/// One key and its value, with how messages name it: "`timeout` in [steps.build]".
pub(crate) struct Field<'t> {
    pub(crate) key: &'t Key,
    pub(crate) item: &'t Item,
    pub(crate) label: String,
}

impl Field<'_> {
    /// Where the value is, or the key when the value has no position of its own.
    pub(crate) fn span(&self) -> Option<Range<usize>> {
        self.item.span().or_else(|| self.key.span())
    }
}

/// Extra hints for unknown keys that are known elsewhere ("`run` is set per step").
pub(crate) type SpecialHint = fn(&str) -> Option<String>;

pub(crate) fn no_special_hint(_: &str) -> Option<String> {
    None
}

/// `a.b` for messages, quoting keys that TOML would need quoted.
pub(crate) fn join_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if bare {
        key.to_owned()
    } else {
        format!("\"{}\"", key.escape_default())
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

impl<'a> Checker<'a> {
    /// A checker of `text`, named `file` in messages, whose relative paths start at `root`.
    pub(crate) fn new(text: &'a str, file: &Path, root: PathBuf) -> Self {
        Self {
            text,
            texts: vec![text],
            report: Reporter::new(text, file),
            root,
        }
    }

    /// Adds another file to check; its number is the count of files before it.
    pub(crate) fn add_file(&mut self, text: &'a str, file: &Path) -> usize {
        self.texts.push(text);
        self.report.add(text, file)
    }

    /// Makes file `n` the one being read: local spans, snippets and `document` are about it.
    pub(crate) fn enter(&mut self, n: usize) {
        self.text = self.texts[n];
        self.report.enter(n);
    }

    /// The parsed document, or `None` after reporting the syntax error (nothing else can be
    /// checked in a file that is not TOML).
    pub(crate) fn document(&mut self) -> Option<Document<&'a str>> {
        match Document::parse(self.text) {
            Ok(document) => Some(document),
            Err(err) => {
                self.report.error(
                    err.span(),
                    format!("invalid TOML: {}", err.message()),
                    Some(
                        "the file must be valid TOML before the rest of it can be checked"
                            .to_owned(),
                    ),
                );
                None
            }
        }
    }

    /// The source text of a span, shortened to one line for messages.
    pub(crate) fn snippet(&self, span: Option<Range<usize>>) -> Option<String> {
        const MAX_CHARS: usize = 40;
        let text = self.text.get(span?)?.trim();
        let first_line = text.lines().next().unwrap_or("");
        if first_line.len() < text.len() || first_line.chars().count() > MAX_CHARS {
            Some(format!(
                "{}…",
                first_line.chars().take(MAX_CHARS).collect::<String>()
            ))
        } else {
            Some(first_line.to_owned())
        }
    }

    /// "an integer `10`": what was found, with its text, for type errors.
    pub(crate) fn found(&self, item: &Item) -> String {
        match item {
            Item::Value(value) => self.found_value(value),
            Item::Table(_) => "a table".to_owned(),
            Item::ArrayOfTables(_) => "an array of tables".to_owned(),
            Item::None => "nothing".to_owned(),
        }
    }

    pub(crate) fn found_value(&self, value: &Value) -> String {
        let kind = match value {
            Value::Integer(_) => "an integer",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
            Value::String(_) => "a string",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
        };
        let text = self
            .snippet(value.span())
            .unwrap_or_else(|| value.to_string().trim().to_owned());
        format!("{kind} `{text}`")
    }

    pub(crate) fn wrong_type(&mut self, field: &Field<'_>, expected: &str, hint: Option<String>) {
        let message = format!(
            "{} must be {expected}, found {}",
            field.label,
            self.found(field.item)
        );
        self.report.error(field.span(), message, hint);
    }

    /// Lists a table's entries after reporting every key not in `allowed`.
    pub(crate) fn section<'t>(
        &mut self,
        table: &'t dyn TableLike,
        span: Option<Range<usize>>,
        path: String,
        allowed: &[&str],
        special: SpecialHint,
    ) -> Section<'t> {
        let mut entries = Vec::new();
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            if allowed.contains(&name) {
                entries.push((key, item));
                continue;
            }
            let hint = special(name)
                .or_else(|| {
                    did_you_mean(name, allowed.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                })
                .or_else(|| Some(format!("expected one of {}", backticked(allowed))));
            let place = match path.is_empty() {
                true => "at the top level".to_owned(),
                false => format!("in [{path}]"),
            };
            self.report
                .error(key.span(), format!("unknown key `{name}` {place}"), hint);
        }
        Section {
            path,
            span,
            entries,
        }
    }

    /// Opens a field that must be a table (`[x.y]`, `y = { .. }` or dotted keys).
    pub(crate) fn open<'t>(
        &mut self,
        field: &Field<'t>,
        path: String,
        allowed: &[&str],
        shape_hint: &str,
    ) -> Option<Section<'t>> {
        let Some(table) = field.item.as_table_like() else {
            self.wrong_type(field, "a table", Some(shape_hint.to_owned()));
            return None;
        };
        Some(self.section(table, field.span(), path, allowed, no_special_hint))
    }

    pub(crate) fn string<'t>(&mut self, field: &Field<'t>) -> Option<&'t str> {
        let value = field.item.as_str();
        if value.is_none() {
            let hint = match field.item {
                Item::Value(Value::Integer(_) | Value::Float(_) | Value::Boolean(_)) => {
                    Some(format!(
                        "quote it: `{} = \"{}\"`",
                        field.key.display_repr(),
                        self.snippet(field.item.span()).unwrap_or_default()
                    ))
                }
                _ => None,
            };
            self.wrong_type(field, "a string", hint);
        }
        value
    }

    pub(crate) fn non_empty_string<'t>(&mut self, field: &Field<'t>) -> Option<&'t str> {
        let value = self.string(field)?;
        if value.trim().is_empty() {
            self.report.error(
                field.span(),
                format!("{} must not be empty", field.label),
                None,
            );
            return None;
        }
        Some(value)
    }

    pub(crate) fn boolean(&mut self, field: &Field<'_>) -> Option<bool> {
        let value = field.item.as_bool();
        if value.is_none() {
            let hint = match field.item.as_str() {
                Some(s @ ("true" | "false")) => Some(format!(
                    "write it without quotes: `{} = {s}`",
                    field.key.display_repr()
                )),
                _ => None,
            };
            self.wrong_type(field, "true or false", hint);
        }
        value
    }

    /// An integer in `min..=max`.
    pub(crate) fn integer(
        &mut self,
        field: &Field<'_>,
        min: i64,
        max: i64,
        zero_hint: Option<&str>,
    ) -> Option<i64> {
        let Some(value) = field.item.as_integer() else {
            let hint = field
                .item
                .as_str()
                .filter(|s| s.trim().parse::<i64>().is_ok())
                .map(|s| {
                    format!(
                        "write it without quotes: `{} = {}`",
                        field.key.display_repr(),
                        s.trim()
                    )
                });
            self.wrong_type(field, "an integer", hint);
            return None;
        };
        if value < min {
            let hint = if value == 0 {
                zero_hint.map(str::to_owned)
            } else {
                None
            };
            self.report.error(
                field.span(),
                format!("{} must be at least {min}, found `{value}`", field.label),
                hint,
            );
            return None;
        }
        if value > max {
            self.report.error(
                field.span(),
                format!("{} must be at most {max}, found `{value}`", field.label),
                None,
            );
            return None;
        }
        Some(value)
    }

    /// A positive humantime duration written as a string.
    pub(crate) fn duration(&mut self, field: &Field<'_>, zero_hint: &str) -> Option<Duration> {
        const SHAPES: &str = "durations look like \"90s\", \"5m\" or \"1h30m\"";
        let Some(text) = field.item.as_str() else {
            let hint = match field.item {
                Item::Value(Value::Integer(_) | Value::Float(_)) => Some(format!(
                    "durations need a unit: `{} = \"{}s\"`",
                    field.key.display_repr(),
                    self.snippet(field.item.span()).unwrap_or_default()
                )),
                _ => Some(SHAPES.to_owned()),
            };
            self.wrong_type(field, "a duration string", hint);
            return None;
        };
        match values::parse_duration(text) {
            Ok(duration) if duration.is_zero() => {
                self.report.error(
                    field.span(),
                    format!("{} must be longer than zero", field.label),
                    Some(zero_hint.to_owned()),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(reason) => {
                self.report.error(
                    field.span(),
                    format!("invalid duration `{text}` for {}: {reason}", field.label),
                    Some(SHAPES.to_owned()),
                );
                None
            }
        }
    }

    /// A size: a TOML integer of bytes or a string for [`values::parse_size`]; never zero,
    /// since a zero limit can only ever kill.
    pub(crate) fn size(&mut self, field: &Field<'_>) -> Option<u64> {
        const SHAPES: &str = "sizes look like \"512MiB\", \"1GiB\", \"1G\" or a number of bytes";
        let bytes = match field.item {
            Item::Value(Value::Integer(i)) => match u64::try_from(*i.value()) {
                Ok(bytes) => bytes,
                Err(_) => {
                    self.report.error(
                        field.span(),
                        format!("{} must not be negative", field.label),
                        Some(SHAPES.to_owned()),
                    );
                    return None;
                }
            },
            Item::Value(Value::String(s)) => match values::parse_size(s.value()) {
                Ok(bytes) => bytes,
                Err(reason) => {
                    self.report.error(
                        field.span(),
                        format!("invalid size `{}` for {}: {reason}", s.value(), field.label),
                        Some(SHAPES.to_owned()),
                    );
                    return None;
                }
            },
            _ => {
                self.wrong_type(field, "a size", Some(SHAPES.to_owned()));
                return None;
            }
        };
        if bytes == 0 {
            let hint = format!("leave `{}` out for no limit", field.key.get());
            self.report.error(
                field.span(),
                format!("{} must be more than 0 bytes", field.label),
                Some(hint),
            );
            return None;
        }
        Some(bytes)
    }

    /// A number of cores: an integer or a float above zero.
    pub(crate) fn cpu(&mut self, field: &Field<'_>) -> Option<f64> {
        #[expect(clippy::cast_precision_loss, reason = "core counts are far below 2^52")]
        let cores = match field.item {
            Item::Value(Value::Integer(i)) => *i.value() as f64,
            Item::Value(Value::Float(f)) => *f.value(),
            _ => {
                let hint = field
                    .item
                    .as_str()
                    .filter(|s| s.trim().parse::<f64>().is_ok())
                    .map(|s| format!("write it without quotes: `cpu = {}`", s.trim()))
                    .or_else(|| {
                        Some("`cpu` counts cores, fractions allowed: `cpu = 1.5`".to_owned())
                    });
                self.wrong_type(field, "a number of cores", hint);
                return None;
            }
        };
        if !(cores.is_finite() && cores > 0.0) {
            let hint = Some("leave `cpu` out for no limit".to_owned());
            self.report.error(
                field.span(),
                format!("{} must be a number of cores above 0", field.label),
                hint,
            );
            return None;
        }
        Some(cores)
    }

    /// `limits = { memory, pids, cpu }`; fields left out stay `None`.
    pub(crate) fn limits(&mut self, field: &Field<'_>, parent: &str) -> Option<Limits> {
        let section = self.open(
            field,
            join_path(parent, "limits"),
            LIMITS_KEYS,
            "write `limits = { memory = \"1GiB\", pids = 512, cpu = 2.0 }`",
        )?;
        let mut ok = true;
        let mut limits = Limits::default();
        if let Some(f) = section.get("memory") {
            limits.memory_bytes = self.size(&f);
            ok &= limits.memory_bytes.is_some();
        }
        if let Some(f) = section.get("pids") {
            limits.pids = self
                .integer(&f, 1, i64::MAX, Some("leave `pids` out for no limit"))
                .and_then(|n| u64::try_from(n).ok());
            ok &= limits.pids.is_some();
        }
        if let Some(f) = section.get("cpu") {
            limits.cpu = self.cpu(&f);
            ok &= limits.cpu.is_some();
        }
        ok.then_some(limits)
    }
}

/// "`a`, `b` or `c`".
pub(crate) fn backticked(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}
