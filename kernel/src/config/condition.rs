//! When a step runs: `if = { changed, exists, env }`, `when`, and `needs` entries that may be
//! optional. The readers check every form and position every problem; what a condition means
//! at run time is in `crate::condition`.

use std::ops::Range;

use toml_edit::{Item, Value};

use super::model::{Condition, When};
use super::prepare::{DirProblem, normalize_dir};
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, Field, backticked, join_path};

const IF_KEYS: &[&str] = &["changed", "exists", "env"];
const NEED_KEYS: &[&str] = &["step", "optional"];
const WHEN_VALUES: &[&str] = &["on_success", "always", "on_failure", "manual"];
const IF_HINT: &str = "write `if = { changed = [\"src/**\"], exists = [\"Cargo.toml\"], env = { BRANCH = \"main\" } }`";

/// One entry of `needs`, as written.
#[derive(Debug, Clone)]
pub(crate) struct Need {
    pub(crate) step: String,
    pub(crate) span: Option<Range<usize>>,
    /// `{ step = "...", optional = true }`: the step may be skipped by its condition (or as
    /// manual) without skipping this one.
    pub(crate) optional: bool,
}

impl Checker<'_> {
    /// `if = { changed = [globs], exists = [globs], env = { NAME = "value" | ["v", ...] } }`.
    pub(crate) fn condition(&mut self, field: &Field<'_>, parent: &str) -> Option<Condition> {
        let section = self.open(field, join_path(parent, "if"), IF_KEYS, IF_HINT)?;
        if field.item.as_table_like().is_some_and(|t| t.is_empty()) {
            self.report.error(
                section.span.clone(),
                format!("{} is empty, so it says nothing", field.label),
                Some(IF_HINT.to_owned()),
            );
            return None;
        }
        let mut condition = Condition::default();
        let mut ok = true;
        if let Some(f) = section.get("changed") {
            match self.globs(&f) {
                Some(globs) => condition.changed = Some(globs),
                None => ok = false,
            }
        }
        if let Some(f) = section.get("exists") {
            match self.globs(&f) {
                Some(globs) => condition.exists = Some(globs),
                None => ok = false,
            }
        }
        if let Some(f) = section.get("env") {
            match self.env_condition(&f) {
                Some(env) => condition.env = env,
                None => ok = false,
            }
        }
        (ok && section.entries.len() == field.item.as_table_like().map_or(0, |t| t.len()))
            .then_some(condition)
    }

    /// A non-empty array of globs relative to the project: `src/**`, `*.toml`, `Cargo.lock`.
    fn globs(&mut self, field: &Field<'_>) -> Option<Vec<String>> {
        let Some(array) = field.item.as_array() else {
            let hint = match field.item.as_str() {
                Some(glob) => format!("write `{} = [\"{glob}\"]`", field.key.get()),
                None => format!("write `{} = [\"src/**\"]`", field.key.get()),
            };
            self.wrong_type(field, "an array of globs", Some(hint));
            return None;
        };
        if array.is_empty() {
            self.report.error(
                field.span(),
                format!("{} is empty, so it could never hold", field.label),
                Some(format!(
                    "list paths or globs, or leave `{}` out",
                    field.key.get()
                )),
            );
            return None;
        }
        let mut globs = Vec::with_capacity(array.len());
        for element in array.iter() {
            if let Some(glob) = self.glob(element, &field.label) {
                globs.push(glob);
            }
        }
        (globs.len() == array.len()).then_some(globs)
    }

    fn glob(&mut self, element: &Value, label: &str) -> Option<String> {
        let Some(text) = element.as_str() else {
            let found = self.found_value(element);
            self.report.error(
                element.span(),
                format!("{label} must list globs as strings, found {found}"),
                None,
            );
            return None;
        };
        let relative = "globs are relative to the directory that holds hm.toml: `src/**`";
        let problem = match normalize_dir(text.trim_end_matches('/')) {
            Err(DirProblem::Empty) => Some(("must not be empty".to_owned(), None)),
            Err(DirProblem::Absolute) => Some(("must be relative".to_owned(), Some(relative))),
            Err(DirProblem::LeavesRoot) => {
                Some(("leaves the pipeline's directory".to_owned(), Some(relative)))
            }
            Ok(_) => crate::condition::glob(text)
                .err()
                .map(|e| (format!("is not a valid glob: {e}"), None)),
        };
        match problem {
            Some((what, hint)) => {
                self.report.error(
                    element.span(),
                    format!("`{text}` in {label} {what}"),
                    hint.map(str::to_owned),
                );
                None
            }
            None => Some(text.to_owned()),
        }
    }

    /// `env = { NAME = "value" }` or `{ NAME = ["a", "b"] }` (any of them).
    fn env_condition(&mut self, field: &Field<'_>) -> Option<Vec<(String, Vec<String>)>> {
        let Some(table) = field.item.as_table_like() else {
            self.wrong_type(
                field,
                "a table",
                Some("write `env = { BRANCH = \"main\" }`".to_owned()),
            );
            return None;
        };
        if table.is_empty() {
            self.report.error(
                field.span(),
                format!("{} is empty, so it says nothing", field.label),
                Some("write `env = { BRANCH = \"main\" }`".to_owned()),
            );
            return None;
        }
        let mut env = Vec::new();
        let mut ok = true;
        for (name, item) in table.iter() {
            let label = format!("`{name}` in {}", field.label);
            let values = match item.as_value() {
                Some(Value::String(s)) => Some(vec![s.value().clone()]),
                Some(Value::Array(array)) if !array.is_empty() => array
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            match values {
                Some(values) => env.push((name.to_owned(), values)),
                None => {
                    let found = self.found(item);
                    self.report.error(
                        item.span(),
                        format!("{label} must be a string or a non-empty array of strings, found {found}"),
                        Some(format!("write `{name} = \"main\"`, or `{name} = [\"main\", \"release\"]` for any of them")),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(env)
    }

    /// `when = "on_success" | "always" | "on_failure" | "manual"`.
    pub(crate) fn when(&mut self, field: &Field<'_>) -> Option<When> {
        let text = self.string(field)?;
        let when = match text {
            "on_success" => When::OnSuccess,
            "always" => When::Always,
            "on_failure" => When::OnFailure,
            "manual" => When::Manual,
            _ => {
                let hint = match did_you_mean(text, WHEN_VALUES.iter().copied()) {
                    Some(value) => format!("did you mean `{value}`?"),
                    None => format!("one of {}", backticked(WHEN_VALUES)),
                };
                self.report.error(
                    field.span(),
                    format!(
                        "{} must be one of {}, found `{text}`",
                        field.label,
                        backticked(WHEN_VALUES)
                    ),
                    Some(hint),
                );
                return None;
            }
        };
        Some(when)
    }

    /// `needs = ["a", { step = "b", optional = true }]`: names with their positions, resolved
    /// once all steps are known. Good entries are returned even when others are wrong, so that
    /// they are still checked against the step names.
    pub(crate) fn needs(&mut self, field: &Field<'_>, parent: &str) -> Vec<Need> {
        let Some(array) = field.item.as_array() else {
            let hint = match field.item.as_str() {
                Some(name) => format!("write `needs = [\"{name}\"]`"),
                None => "write `needs = [\"step\", ...]`".to_owned(),
            };
            self.wrong_type(field, "an array of step names", Some(hint));
            return Vec::new();
        };
        let mut needs = Vec::new();
        for element in array.iter() {
            match element {
                Value::String(name) => needs.push(Need {
                    step: name.value().clone(),
                    span: self.report.global(element.span()),
                    optional: false,
                }),
                Value::InlineTable(table) => {
                    let entry = Item::Value(element.clone());
                    let entry_field = Field {
                        key: field.key,
                        item: &entry,
                        label: format!("an entry of {}", field.label),
                    };
                    let shape = "write `{ step = \"NAME\", optional = true }`";
                    let Some(section) =
                        self.open(&entry_field, join_path(parent, "needs"), NEED_KEYS, shape)
                    else {
                        continue;
                    };
                    let optional = match section.get("optional") {
                        Some(f) => match self.boolean(&f) {
                            Some(optional) => optional,
                            None => continue,
                        },
                        None => false,
                    };
                    match section
                        .get("step")
                        .map(|f| (self.non_empty_string(&f).map(str::to_owned), f.span()))
                    {
                        Some((Some(step), span)) => needs.push(Need {
                            step,
                            span: self.report.global(span),
                            optional,
                        }),
                        Some((None, _)) => {}
                        None => self.report.error(
                            table.span().or_else(|| element.span()),
                            format!("an entry of {} needs `step`", field.label),
                            Some(shape.to_owned()),
                        ),
                    }
                }
                _ => {
                    let found = self.found_value(element);
                    let message = format!(
                        "{} must list step names as strings, found {found}",
                        field.label
                    );
                    self.report.error(
                        element.span(),
                        message,
                        Some(
                            "write `\"NAME\"` or `{ step = \"NAME\", optional = true }`".to_owned(),
                        ),
                    );
                }
            }
        }
        needs
    }
}
