//! A step as written, before anything else is known: the reader that checks every step key of
//! a `[steps.NAME]`, `[templates.NAME]` or `[defaults]` table, the expressions in its strings,
//! and how drafts stack (`[defaults]` under `extends` under the step's own keys).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, Value};

use super::condition::Need;
use super::expr::{self, Ref};
use super::matrix::MatrixDraft;
use super::model::{AllowFailure, Condition, Limits, Retry, Shell, When};
use crate::toml_check::{Checker, Field, Section, join_path};

pub(super) const NO_TIMEOUT_HINT: &str = "leave `timeout` out for no deadline";

/// A step, template or `[defaults]` as written: every key it sets, checked alone.
#[derive(Debug, Clone, Default)]
pub(super) struct StepDraft {
    pub(super) name: String,
    /// Where it is defined (global span).
    pub(super) header: Option<Range<usize>>,
    pub(super) run: Option<String>,
    pub(super) needs: Option<Vec<Need>>,
    pub(super) dir: Option<DirDraft>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) timeout: Option<Duration>,
    pub(super) allow_failure: Option<AllowFailure>,
    pub(super) shell: Option<Shell>,
    pub(super) artifacts: Option<Vec<String>>,
    pub(super) inputs: Option<Vec<String>>,
    pub(super) caches: Option<Vec<super::model::DependencyCache>>,
    pub(super) limits: Limits,
    pub(super) retry: Option<Retry>,
    pub(super) executor: Option<String>,
    pub(super) image: Option<String>,
    /// `with`, key by key.
    pub(super) with: Option<serde_json::Map<String, serde_json::Value>>,
    pub(super) matrix: Option<MatrixDraft>,
    pub(super) condition: Option<Condition>,
    pub(super) when: Option<When>,
    /// `services = [...]`: names with where they are (global spans).
    pub(super) services: Option<Vec<(String, Option<Range<usize>>)>>,
    /// `extends = [...]`: template names with where they are (global spans).
    pub(super) extends: Vec<(String, Option<Range<usize>>)>,
    /// It has a `matrix` key (which may not have been readable).
    pub(super) matrix_written: bool,
    /// It has a `run` key (which may not have been readable).
    pub(super) run_written: bool,
    /// `env` is absent or was readable: its names can be checked against.
    pub(super) env_ok: bool,
    /// Every expression in its strings, to check once all steps are known.
    pub(super) uses: Vec<Use>,
}

#[derive(Debug, Clone)]
pub(super) struct DirDraft {
    pub(super) text: String,
    /// Global span.
    pub(super) span: Option<Range<usize>>,
    pub(super) label: String,
}

/// One expression in a draft's strings: what it refers to, where, and in which key.
#[derive(Debug, Clone)]
pub(super) struct Use {
    pub(super) reference: Ref,
    /// Global span.
    pub(super) span: Option<Range<usize>>,
    pub(super) label: String,
    /// The value it is in, so that a layer above that sets the same value drops it.
    pub(super) key: UseKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UseKey {
    Run,
    Image,
    Dir,
    /// A top-level key of `with`.
    With(String),
    /// A variable of `env` (whose values cannot refer to `env`).
    Env(String),
    Artifacts,
    Inputs,
}

impl StepDraft {
    /// `self` over `lower`: every key `self` sets wins; `env`, `limits` and `with` merge key by
    /// key. Name and position stay `self`'s.
    pub(super) fn over(mut self, lower: &StepDraft) -> StepDraft {
        let overridden = |key: &UseKey, upper: &StepDraft| match key {
            UseKey::Run => upper.run.is_some(),
            UseKey::Image => upper.image.is_some(),
            UseKey::Dir => upper.dir.is_some(),
            UseKey::With(k) => upper.with.as_ref().is_some_and(|w| w.contains_key(k)),
            UseKey::Env(name) => upper.env.contains_key(name),
            UseKey::Artifacts => upper.artifacts.is_some(),
            UseKey::Inputs => upper.inputs.is_some(),
        };
        let kept: Vec<Use> = lower
            .uses
            .iter()
            .filter(|u| !overridden(&u.key, &self))
            .cloned()
            .collect();
        self.uses.extend(kept);
        for (name, value) in &lower.env {
            self.env
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
        self.with = match (self.with.take(), &lower.with) {
            (Some(mut upper), Some(under)) => {
                for (key, value) in under {
                    upper.entry(key.clone()).or_insert_with(|| value.clone());
                }
                Some(upper)
            }
            (upper, under) => upper.or_else(|| under.clone()),
        };
        StepDraft {
            run: self.run.or_else(|| lower.run.clone()),
            needs: self.needs.or_else(|| lower.needs.clone()),
            dir: self.dir.or_else(|| lower.dir.clone()),
            timeout: self.timeout.or(lower.timeout),
            allow_failure: self.allow_failure.or_else(|| lower.allow_failure.clone()),
            shell: self.shell.or_else(|| lower.shell.clone()),
            artifacts: self.artifacts.or_else(|| lower.artifacts.clone()),
            inputs: self.inputs.or_else(|| lower.inputs.clone()),
            caches: self.caches.or_else(|| lower.caches.clone()),
            limits: self.limits.or(lower.limits),
            retry: self.retry.or_else(|| lower.retry.clone()),
            executor: self.executor.or_else(|| lower.executor.clone()),
            image: self.image.or_else(|| lower.image.clone()),
            matrix: self.matrix.or_else(|| lower.matrix.clone()),
            condition: self.condition.or_else(|| lower.condition.clone()),
            when: self.when.or(lower.when),
            services: self.services.or_else(|| lower.services.clone()),
            matrix_written: self.matrix_written || lower.matrix_written,
            run_written: self.run_written || lower.run_written,
            env_ok: self.env_ok && lower.env_ok,
            ..self
        }
    }

    /// `with` as the JSON text executors get.
    pub(super) fn with_json(&self) -> String {
        self.with.as_ref().map_or_else(
            || "{}".to_owned(),
            |map| serde_json::Value::Object(map.clone()).to_string(),
        )
    }
}

impl Checker<'_> {
    /// Reads every key of a step-like table (`section`, already checked for unknown keys).
    pub(super) fn draft(
        &mut self,
        name: &str,
        entry: &Field<'_>,
        section: &Section<'_>,
    ) -> StepDraft {
        let path = &section.path;
        let mut draft = StepDraft {
            name: name.to_owned(),
            header: self.report.global(entry.span()),
            env_ok: true,
            ..StepDraft::default()
        };
        // Expressions in the keys that take them, checked once every step is known.
        for (key, use_key) in [
            ("run", UseKey::Run),
            ("image", UseKey::Image),
            ("dir", UseKey::Dir),
            ("artifacts", UseKey::Artifacts),
            ("inputs", UseKey::Inputs),
        ] {
            if let Some(f) = section.get(key) {
                let label = f.label.clone();
                self.uses(f.item, &label, &use_key, &mut draft.uses);
            }
        }
        for (key, env) in [("with", false), ("env", true)] {
            if let Some(f) = section.get(key)
                && let Some(table) = f.item.as_table_like()
            {
                for (name, item) in table.iter() {
                    let (label, use_key) = if env {
                        let label = format!("`{name}` in [{}]", join_path(path, "env"));
                        (label, UseKey::Env(name.to_owned()))
                    } else {
                        (f.label.clone(), UseKey::With(name.to_owned()))
                    };
                    self.uses(item, &label, &use_key, &mut draft.uses);
                }
            }
        }
        if let Some(f) = section.get("matrix") {
            draft.matrix_written = true;
            draft.matrix = self.matrix(&f, path);
        }
        if let Some(f) = section.get("run") {
            draft.run_written = true;
            draft.run = self.non_empty_string(&f).map(str::to_owned);
        }
        if let Some(f) = section.get("needs") {
            draft.needs = Some(self.needs(&f, path));
        }
        if let Some(f) = section.get("extends") {
            draft.extends = self.extends(&f);
        }
        if let Some(f) = section.get("if") {
            draft.condition = self.condition(&f, path);
        }
        if let Some(f) = section.get("when") {
            draft.when = self.when(&f);
        }
        if let Some(f) = section.get("dir") {
            draft.dir = self.dir(&f);
        }
        if let Some(f) = section.get("services") {
            draft.services = self.service_names(&f);
        }
        if let Some(f) = section.get("env") {
            let env = self.env(&f, path);
            draft.env_ok = env.is_some();
            draft.env = env.unwrap_or_default();
        }
        if let Some(f) = section.get("timeout") {
            draft.timeout = self.duration(&f, NO_TIMEOUT_HINT);
        }
        if let Some(f) = section.get("allow_failure") {
            draft.allow_failure = self.allow_failure(&f, path);
        }
        if let Some(f) = section.get("shell") {
            draft.shell = self.shell(&f);
        }
        if let Some(f) = section.get("artifacts") {
            draft.artifacts = self.artifacts(&f);
        }
        if let Some(f) = section.get("inputs") {
            draft.inputs = self.artifacts(&f);
        }
        if let Some(f) = section.get("cache") {
            draft.caches = self.dependency_caches(&f);
        }
        if let Some(f) = section.get("limits") {
            draft.limits = self.limits(&f, path).unwrap_or_default();
        }
        if let Some(f) = section.get("retry") {
            draft.retry = self.retry(&f, path);
        }
        if let Some(f) = section.get("executor") {
            draft.executor = self.non_empty_string(&f).map(str::to_owned);
        }
        if let Some(f) = section.get("image") {
            draft.image = self.non_empty_string(&f).map(str::to_owned);
        }
        if let Some(f) = section.get("with")
            && let Some(json) = self.json(&f)
        {
            draft.with =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json).ok();
        }
        draft
    }

    /// `extends = ["template", ...]`: names with where they are (global spans).
    fn extends(&mut self, field: &Field<'_>) -> Vec<(String, Option<Range<usize>>)> {
        let Some(array) = field.item.as_array() else {
            let hint = match field.item.as_str() {
                Some(name) => format!("write `extends = [\"{name}\"]`"),
                None => "write `extends = [\"template\", ...]`".to_owned(),
            };
            self.wrong_type(field, "an array of template names", Some(hint));
            return Vec::new();
        };
        let mut names = Vec::new();
        for element in array.iter() {
            match element.as_str() {
                Some(name) => names.push((name.to_owned(), self.report.global(element.span()))),
                None => {
                    let found = self.found_value(element);
                    let message = format!(
                        "{} must list template names as strings, found {found}",
                        field.label
                    );
                    self.report.error(element.span(), message, None);
                }
            }
        }
        names
    }

    /// Records every expression in the strings of `item` (recursively, for `with`), reporting
    /// the strings that do not parse.
    pub(super) fn uses(&mut self, item: &Item, label: &str, key: &UseKey, out: &mut Vec<Use>) {
        match item {
            Item::Value(value) => self.value_uses(value, label, key, out),
            Item::Table(table) => {
                for (_, item) in table.iter() {
                    self.uses(item, label, key, out);
                }
            }
            Item::ArrayOfTables(tables) => {
                for table in tables.iter() {
                    for (_, item) in table.iter() {
                        self.uses(item, label, key, out);
                    }
                }
            }
            Item::None => {}
        }
    }

    fn value_uses(&mut self, value: &Value, label: &str, key: &UseKey, out: &mut Vec<Use>) {
        match value {
            Value::String(text) => {
                let text = text.value();
                match expr::expressions(text) {
                    Ok(found) => out.extend(found.into_iter().map(|e| {
                        Use {
                            span: self
                                .report
                                .global(self.inside(value.span(), &text[e.range.clone()])),
                            reference: e.reference,
                            label: label.to_owned(),
                            key: key.clone(),
                        }
                    })),
                    Err(e) => {
                        let span = self.inside(value.span(), &text[e.range.clone()]);
                        let message = format!("{} in {label}", e.message);
                        self.report.error(span, message, e.hint);
                    }
                }
            }
            Value::Array(array) => {
                for element in array.iter() {
                    self.value_uses(element, label, key, out);
                }
            }
            Value::InlineTable(table) => {
                for (_, element) in table.iter() {
                    self.value_uses(element, label, key, out);
                }
            }
            _ => {}
        }
    }

    /// Where `needle` is in the source of the string at `span`; the string itself when it is
    /// not there verbatim (escapes in the TOML string).
    fn inside(&self, span: Option<Range<usize>>, needle: &str) -> Option<Range<usize>> {
        let span = span?;
        let raw = self.text.get(span.clone())?;
        Some(match raw.find(needle) {
            Some(at) => span.start + at..span.start + at + needle.len(),
            None => span,
        })
    }
}
