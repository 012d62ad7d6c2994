//! Reuse: `[templates.NAME]` hold step keys, and `extends = ["NAME", ...]` stacks them under a
//! step (or another template) in order, over `[defaults]`. What each layer sets wins over the
//! layers below it; `env`, `limits` and `with` merge key by key (`StepDraft::over`).

use std::collections::HashMap;
use std::ops::Range;

use super::draft::StepDraft;
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, backticked};

/// Templates by name, as read (a template that was not a readable table has no draft).
pub(super) type Templates = Vec<(String, Option<StepDraft>)>;

/// Templates with their `extends` applied, found once each.
struct Stack<'t> {
    templates: &'t Templates,
    index: HashMap<&'t str, usize>,
    done: HashMap<usize, Option<StepDraft>>,
    /// The templates being resolved, for cycles.
    path: Vec<usize>,
}

impl Checker<'_> {
    /// Each step with its templates and `[defaults]` under it. A step whose templates could
    /// not be resolved keeps its own keys only (the problem is reported).
    pub(super) fn extend_all(
        &mut self,
        steps: Vec<(String, Option<StepDraft>)>,
        templates: &Templates,
        defaults: Option<&StepDraft>,
    ) -> Vec<(String, Option<StepDraft>)> {
        let mut stack = Stack {
            templates,
            index: templates
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.as_str(), i))
                .collect(),
            done: HashMap::new(),
            path: Vec::new(),
        };
        steps
            .into_iter()
            .map(|(name, draft)| {
                let draft = draft.map(|draft| {
                    let below = self.extended(&draft.extends, &draft.name, "step", &mut stack);
                    let below = match (below, defaults) {
                        (Some(below), Some(defaults)) => Some(below.over(defaults)),
                        (below, defaults) => below.or_else(|| defaults.cloned()),
                    };
                    let merged = match below {
                        Some(below) => draft.over(&below),
                        None => draft,
                    };
                    if !merged.run_written {
                        self.report.error_at(
                            merged.header.clone(),
                            format!("step `{}` has no `run`", merged.name),
                            Some(
                                "add the command to run: `run = \"...\"`, or extend a template that has one"
                                    .to_owned(),
                            ),
                        );
                    }
                    merged
                });
                (name, draft)
            })
            .collect()
    }

    /// The templates `extends` names, stacked in order (each over the ones before it), or
    /// `None` when it names none.
    fn extended(
        &mut self,
        extends: &[(String, Option<Range<usize>>)],
        who: &str,
        what: &str,
        stack: &mut Stack<'_>,
    ) -> Option<StepDraft> {
        let mut acc: Option<StepDraft> = None;
        for (name, span) in extends {
            let Some(&t) = stack.index.get(name.as_str()) else {
                let known: Vec<&str> = stack.templates.iter().map(|(n, _)| n.as_str()).collect();
                let hint = match did_you_mean(name, known.iter().copied()) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None if known.is_empty() => {
                        format!("define it: `[templates.{name}]` with the keys to share")
                    }
                    None => format!("templates: {}", backticked(&known)),
                };
                self.report.error_at(
                    span.clone(),
                    format!("{what} `{who}` extends unknown template `{name}`"),
                    Some(hint),
                );
                continue;
            };
            if let Some(at) = stack.path.iter().position(|&p| p == t) {
                let cycle: Vec<&str> = stack.path[at..]
                    .iter()
                    .chain([&t])
                    .map(|&i| stack.templates[i].0.as_str())
                    .collect();
                self.report.error_at(
                    span.clone(),
                    format!(
                        "templates extend each other in a cycle: {}",
                        cycle.join(" -> ")
                    ),
                    Some(
                        "`a -> b` means `a` extends `b`; remove one of these `extends` entries"
                            .to_owned(),
                    ),
                );
                continue;
            }
            let Some(template) = self.template(t, stack) else {
                continue;
            };
            acc = Some(match acc {
                Some(below) => template.over(&below),
                None => template,
            });
        }
        acc
    }

    /// Template `t` with what it extends under it.
    fn template(&mut self, t: usize, stack: &mut Stack<'_>) -> Option<StepDraft> {
        if let Some(done) = stack.done.get(&t) {
            return done.clone();
        }
        let draft = stack.templates[t].1.clone()?;
        stack.path.push(t);
        let below = self.extended(&draft.extends, &draft.name, "template", stack);
        stack.path.pop();
        let resolved = match below {
            Some(below) => draft.over(&below),
            None => draft,
        };
        stack.done.insert(t, Some(resolved.clone()));
        Some(resolved)
    }
}
