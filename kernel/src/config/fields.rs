//! The readers of `hm.toml` values that no other file has: retry policies, environments,
//! `with` tables, `needs` and `dir`. The shared readers are in `toml_check`.

use std::collections::BTreeMap;

use super::draft::DirDraft;
use super::expr;
use super::model::{Retry, RetryClass};
use super::prepare::{DirProblem, normalize_dir};
use super::values::{self, BadJson, RETRY_CLASS_NAMES};
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, Field, join_path};

pub(crate) const RETRY_KEYS: &[&str] = &["attempts", "on"];
const RELATIVE: &str = "paths in hm.toml are relative to the directory that holds it";

impl Checker<'_> {
    /// `retry = { attempts, on }`. `on` left out means any failure; `attempts` is required
    /// because no default would be right for everyone.
    pub(crate) fn retry(&mut self, field: &Field<'_>, parent: &str) -> Option<Retry> {
        let section = self.open(
            field,
            join_path(parent, "retry"),
            RETRY_KEYS,
            "write `retry = { attempts = 3, on = [\"failed\"] }`",
        )?;
        let Some(attempts_field) = section.get("attempts") else {
            self.report.error(
                section.span.clone(),
                format!("{} needs `attempts`", field.label),
                Some(
                    "`attempts` counts every try, the first included: `attempts = 2` retries once"
                        .to_owned(),
                ),
            );
            // Still check `on`, so its problems are reported in the same pass.
            if let Some(on) = section.get("on") {
                self.retry_classes(&on);
            }
            return None;
        };
        let attempts = self
            .integer(&attempts_field, 1, i64::from(u32::MAX), None)
            .and_then(|n| u32::try_from(n).ok());
        let on = match section.get("on") {
            None => Some(vec![RetryClass::Failed]),
            Some(on_field) => {
                let on = self.retry_classes(&on_field)?;
                if on.is_empty() && attempts.is_some_and(|n| n > 1) {
                    self.report.error(
                        on_field.span(),
                        format!("{} is empty, so no attempt after the first would ever run", on_field.label),
                        Some("list the failures to retry on, or leave `on` out to retry on any failure".to_owned()),
                    );
                    return None;
                }
                Some(on)
            }
        };
        Some(Retry {
            attempts: attempts?,
            on: on?,
        })
    }

    fn retry_classes(&mut self, field: &Field<'_>) -> Option<Vec<RetryClass>> {
        let hint = format!("retry classes: {}", RETRY_CLASS_NAMES.join(", "));
        let Some(array) = field.item.as_array() else {
            self.wrong_type(field, "an array of retry classes", Some(hint));
            return None;
        };
        let mut ok = true;
        let mut classes = Vec::new();
        for element in array.iter() {
            let Some(text) = element.as_str() else {
                let found = self.found_value(element);
                let message = format!(
                    "{} must list retry classes as strings, found {found}",
                    field.label
                );
                self.report
                    .error(element.span(), message, Some(hint.clone()));
                ok = false;
                continue;
            };
            match values::parse_retry_class(text) {
                // Listing a class twice means nothing more; keep the first.
                Ok(class) if !classes.contains(&class) => classes.push(class),
                Ok(_) => {}
                Err(reason) => {
                    let suggestion = if text.starts_with("exit") {
                        Some("write `exit:N` with the exit code, e.g. `exit:101`".to_owned())
                    } else {
                        did_you_mean(text, RETRY_CLASS_NAMES.iter().copied())
                            .map(|s| format!("did you mean `{s}`?"))
                    };
                    let message = format!("{reason} in {}", field.label);
                    self.report.error(
                        element.span(),
                        message,
                        suggestion.or_else(|| Some(hint.clone())),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(classes)
    }

    /// `env = { KEY = "value" }`: string values only.
    pub(crate) fn env(
        &mut self,
        field: &Field<'_>,
        parent: &str,
    ) -> Option<BTreeMap<String, String>> {
        let path = join_path(parent, "env");
        let Some(table) = field.item.as_table_like() else {
            self.wrong_type(
                field,
                "a table of strings",
                Some("write `env = { KEY = \"value\" }`".to_owned()),
            );
            return None;
        };
        let mut ok = true;
        let mut env = BTreeMap::new();
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            if name.is_empty() || name.contains(['=', '\0']) {
                self.report.error(
                    key.span(),
                    format!(
                        "invalid environment variable name `{}` in [{path}]",
                        name.escape_default()
                    ),
                    Some("names must be non-empty and cannot contain `=` or NUL".to_owned()),
                );
                ok = false;
                continue;
            }
            let entry = Field {
                key,
                item,
                label: format!("`{name}` in [{path}]"),
            };
            if item.is_table_like() {
                match self.secret(&entry) {
                    Some(reference) => {
                        env.insert(name.to_owned(), reference);
                    }
                    None => ok = false,
                }
                continue;
            }
            match self.string(&entry) {
                Some(value) if value.contains('\0') => {
                    self.report.error(
                        entry.span(),
                        format!("{} must not contain a NUL byte", entry.label),
                        None,
                    );
                    ok = false;
                }
                Some(value) => {
                    env.insert(name.to_owned(), value.to_owned());
                }
                None => ok = false,
            }
        }
        ok.then_some(env)
    }

    /// An opaque table (`with`, `config`) as JSON text.
    pub(crate) fn json(&mut self, field: &Field<'_>) -> Option<String> {
        if field.item.as_table_like().is_none() {
            let hint = format!(
                "write `{} = {{ key = \"value\" }}`",
                field.key.display_repr()
            );
            self.wrong_type(field, "a table", Some(hint));
            return None;
        }
        let mut bad: Vec<BadJson> = Vec::new();
        let json = values::item_to_json(field.item, &mut bad);
        for BadJson { span, value } in &bad {
            self.report.error(
                span.clone(),
                format!(
                    "`{value}` in {} cannot be passed on: JSON has no such number",
                    field.label
                ),
                Some("use a finite number or a string".to_owned()),
            );
        }
        bad.is_empty().then(|| json.to_string())
    }

    /// `dir`: relative, not leaving the root through `..`. Without expressions it is checked
    /// here; with them, once the step's matrix values (or its start) say what it is. Whether it
    /// exists is checked when the step starts: a step it needs may create it.
    pub(super) fn dir(&mut self, field: &Field<'_>) -> Option<DirDraft> {
        let text = self.string(field)?;
        if !expr::is_template(text) {
            if let Err(problem) = normalize_dir(text) {
                let (message, hint) = match problem {
                    DirProblem::Empty => (
                        format!("{} must not be empty", field.label),
                        "leave `dir` out to run in the pipeline's directory",
                    ),
                    DirProblem::Absolute => (
                        format!("{} must be a relative path, found `{text}`", field.label),
                        RELATIVE,
                    ),
                    DirProblem::LeavesRoot => (
                        format!("{} leaves the pipeline's directory: `{text}`", field.label),
                        RELATIVE,
                    ),
                };
                self.report
                    .error(field.span(), message, Some(hint.to_owned()));
                return None;
            }
        }
        Some(DirDraft {
            text: text.to_owned(),
            span: self.report.global(field.span()),
            label: field.label.clone(),
        })
    }
}
