//! The readers of how a step's command runs and which failures it may have: `shell` and
//! `allow_failure`.

use toml_edit::Value;

use super::model::{AllowFailure, Shell};
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, Field, join_path};

const SHELL_NAMES: &[&str] = &["sh", "bash"];
const ALLOW_FAILURE_KEYS: &[&str] = &["exit_codes"];
const SHELL_HINT: &str = "`shell = \"sh\"` (the default: `sh -e -c`), `shell = \"bash\"`, or the program and its first arguments: `shell = [\"python3\", \"-c\"]`";
const ALLOW_FAILURE_HINT: &str =
    "write `allow_failure = true`, or `allow_failure = { exit_codes = [77] }` for some codes only";

impl Checker<'_> {
    /// `shell = "sh" | "bash" | ["program", "arg", ...]`.
    pub(crate) fn shell(&mut self, field: &Field<'_>) -> Option<Shell> {
        if let Some(name) = field.item.as_str() {
            return match name {
                "sh" => Some(Shell::Sh),
                "bash" => Some(Shell::Bash),
                _ => {
                    let program = name.split_whitespace().next().unwrap_or(name);
                    let array = format!(
                        "give another program with its arguments: `shell = [\"{program}\", \"-c\"]`"
                    );
                    let hint = match did_you_mean(name, SHELL_NAMES.iter().copied()) {
                        Some(known) => format!("did you mean `{known}`? Or {array}"),
                        None if !program.is_empty() => array.replacen("give", "Give", 1),
                        None => SHELL_HINT.to_owned(),
                    };
                    let message = format!("{} names an unknown shell `{name}`", field.label);
                    self.report.error(field.span(), message, Some(hint));
                    None
                }
            };
        }
        let Some(array) = field.item.as_array() else {
            self.wrong_type(
                field,
                "a shell name or an array of strings",
                Some(SHELL_HINT.to_owned()),
            );
            return None;
        };
        if array.is_empty() {
            let message = format!("{} must name a program, found an empty array", field.label);
            self.report
                .error(field.span(), message, Some(SHELL_HINT.to_owned()));
            return None;
        }
        let mut argv = Vec::with_capacity(array.len());
        for (i, element) in array.iter().enumerate() {
            match element.as_str() {
                Some(word) if i == 0 && word.trim().is_empty() => {
                    let message = format!("{} must start with a program name", field.label);
                    self.report
                        .error(element.span(), message, Some(SHELL_HINT.to_owned()));
                }
                Some(word) => argv.push(word.to_owned()),
                None => {
                    let found = self.found_value(element);
                    let message = format!(
                        "{} must list the program and its arguments as strings, found {found}",
                        field.label
                    );
                    self.report.error(element.span(), message, None);
                }
            }
        }
        (argv.len() == array.len()).then_some(Shell::Argv(argv))
    }

    /// `allow_failure = true | false | { exit_codes = [N, ...] }`.
    pub(crate) fn allow_failure(
        &mut self,
        field: &Field<'_>,
        parent: &str,
    ) -> Option<AllowFailure> {
        if let Some(allowed) = field.item.as_bool() {
            return Some(if allowed {
                AllowFailure::Any
            } else {
                AllowFailure::No
            });
        }
        if !field.item.is_table_like() {
            self.wrong_type(
                field,
                "true, false or a table",
                Some(ALLOW_FAILURE_HINT.to_owned()),
            );
            return None;
        }
        let section = self.open(
            field,
            join_path(parent, "allow_failure"),
            ALLOW_FAILURE_KEYS,
            ALLOW_FAILURE_HINT,
        )?;
        let Some(codes) = section.get("exit_codes") else {
            self.report.error(
                section.span.clone(),
                format!("{} needs `exit_codes`", field.label),
                Some(ALLOW_FAILURE_HINT.to_owned()),
            );
            return None;
        };
        self.exit_codes(&codes).map(AllowFailure::ExitCodes)
    }

    /// `exit_codes = [1, 77]`: failing exit codes, 1 to 255.
    fn exit_codes(&mut self, field: &Field<'_>) -> Option<Vec<i32>> {
        let Some(array) = field.item.as_array() else {
            let hint = match field.item.as_integer() {
                Some(code) => format!("write `exit_codes = [{code}]`"),
                None => ALLOW_FAILURE_HINT.to_owned(),
            };
            self.wrong_type(field, "an array of exit codes", Some(hint));
            return None;
        };
        if array.is_empty() {
            let message = format!("{} is empty, so no failure would be allowed", field.label);
            let hint = "list the exit codes to allow, or leave `allow_failure` out".to_owned();
            self.report.error(field.span(), message, Some(hint));
            return None;
        }
        let mut codes = Vec::with_capacity(array.len());
        for element in array.iter() {
            match element {
                Value::Integer(code) if (1..=255).contains(code.value()) => {
                    codes.push(*code.value() as i32);
                }
                Value::Integer(code) => {
                    let message = format!(
                        "{} must list failing exit codes, 1 to 255, found `{}`",
                        field.label,
                        code.value()
                    );
                    let hint = (*code.value() == 0)
                        .then(|| "exit code 0 is a pass; it needs no allowing".to_owned());
                    self.report.error(element.span(), message, hint);
                }
                _ => {
                    let found = self.found_value(element);
                    let message = format!(
                        "{} must list exit codes as integers, found {found}",
                        field.label
                    );
                    self.report.error(element.span(), message, None);
                }
            }
        }
        (codes.len() == array.len()).then_some(codes)
    }
}
