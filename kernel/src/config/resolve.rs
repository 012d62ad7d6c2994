//! From the steps as written (their `[defaults]` and templates merged in) to the steps that
//! run: `needs` resolved (and checked for cycles), each `matrix` expanded into instances whose
//! `needs` pair up on shared keys, and every expression checked against what it may refer to.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::condition::Need;
use super::draft::{StepDraft, UseKey};
use super::expr::{self, Ref};
use super::matrix::{self, MatrixDraft, MatrixValues, instance_name};
use super::model::{CI_ENV, HM_VARIABLES, Step};
use super::prepare::normalize_dir;
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, backticked};

impl Checker<'_> {
    /// Resolves `needs` to indices, rejects cycles, expands matrices and checks every
    /// expression. `defaults_executor`: `[defaults].executor`, for steps that name no executor
    /// and no image.
    pub(super) fn resolve(
        &mut self,
        entries: Vec<(String, Option<StepDraft>)>,
        defaults_executor: Option<&str>,
        pipeline_env: &BTreeMap<String, String>,
    ) -> Option<Vec<Step>> {
        let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        let needs = self.step_needs(&entries, &names);
        for cycle in crate::dag::cycles(&needs) {
            let path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
            let header = entries[cycle[0]]
                .1
                .as_ref()
                .and_then(|draft| draft.header.clone());
            self.report.error_at(
                header,
                format!("dependency cycle: {}", path.join(" -> ")),
                Some(
                    "`a -> b` means `a` needs `b`; remove one of these `needs` entries".to_owned(),
                ),
            );
        }
        // Everything below is checked even when something above was wrong, so that one
        // `hm validate` reports every problem; steps are only built from a clean file.
        let drafts: Vec<Option<StepDraft>> = entries.into_iter().map(|(_, d)| d).collect();
        let instances: Vec<Vec<Option<MatrixValues>>> = drafts
            .iter()
            .map(|draft| match draft {
                None => Vec::new(),
                Some(draft) => match &draft.matrix {
                    None if draft.matrix_written => Vec::new(),
                    None => vec![None],
                    Some(m) => self
                        .expand_matrix(m, &draft.name)
                        .map(|all| all.into_iter().map(Some).collect())
                        .unwrap_or_default(),
                },
            })
            .collect();
        for (d, draft) in drafts.iter().enumerate() {
            if let Some(draft) = draft {
                self.check_uses(d, draft, &drafts, &needs, pipeline_env);
                self.check_matrix_env(draft);
            }
        }
        let first: Vec<usize> = instances
            .iter()
            .scan(0, |next, list| {
                let at = *next;
                *next += list.len();
                Some(at)
            })
            .collect();
        let mut steps = Vec::new();
        for (d, draft) in drafts.iter().enumerate() {
            let Some(draft) = draft else { continue };
            for (k, values) in instances[d].iter().enumerate() {
                let (step_needs, optional_needs) =
                    self.instance_needs(d, values.as_ref(), &drafts, &needs, &instances, &first);
                if let Some((dir, dir_template)) = self.instance_dir(draft, values.as_ref()) {
                    let parts = Instance {
                        index: k,
                        values: values.clone(),
                        needs: step_needs,
                        optional_needs,
                        dir,
                        dir_template,
                    };
                    steps.push(self.instance(draft, parts, defaults_executor, pipeline_env));
                }
            }
        }
        (!self.report.has_errors()).then_some(steps)
    }

    /// Each draft's `needs` as draft indices, reporting unknown and self references.
    fn step_needs(
        &mut self,
        entries: &[(String, Option<StepDraft>)],
        names: &[&str],
    ) -> Vec<Vec<usize>> {
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut needs: Vec<Vec<usize>> = Vec::with_capacity(entries.len());
        for (this, (_, draft)) in entries.iter().enumerate() {
            let mut resolved = Vec::new();
            let Some(draft) = draft else {
                needs.push(resolved);
                continue;
            };
            for Need {
                step: need, span, ..
            } in draft.needs.iter().flatten()
            {
                match index.get(need.as_str()) {
                    Some(&i) if i == this => self.report.error_at(
                        span.clone(),
                        format!("step `{}` needs itself", draft.name),
                        Some("remove it from its own `needs`".to_owned()),
                    ),
                    // Listing a step twice adds no edge.
                    Some(&i) if !resolved.contains(&i) => resolved.push(i),
                    Some(_) => {}
                    None => {
                        let hint = match did_you_mean(need, names.iter().copied()) {
                            Some(name) => format!("did you mean `{name}`?"),
                            None => format!("steps in this file: {}", backticked(names)),
                        };
                        let message = format!("step `{}` needs unknown step `{need}`", draft.name);
                        self.report.error_at(span.clone(), message, Some(hint));
                    }
                }
            }
            needs.push(resolved);
        }
        needs
    }

    /// Every expression of draft `d` refers to something it has: a key of its matrix, a
    /// variable of its environment, an output of a step it needs.
    fn check_uses(
        &mut self,
        d: usize,
        draft: &StepDraft,
        drafts: &[Option<StepDraft>],
        needs: &[Vec<usize>],
        pipeline_env: &BTreeMap<String, String>,
    ) {
        let keys: Vec<&str> = draft
            .matrix
            .as_ref()
            .map(MatrixDraft::keys)
            .unwrap_or_default();
        let mut variables: Vec<String> = pipeline_env
            .keys()
            .chain(draft.env.keys())
            .cloned()
            .collect();
        variables.extend(keys.iter().map(|k| matrix::variable(k)));
        variables.extend(
            [CI_ENV]
                .iter()
                .chain(HM_VARIABLES.iter())
                .map(|v| (*v).to_owned()),
        );
        let upstream = upstream(d, needs);
        let names: Vec<&str> = drafts.iter().flatten().map(|o| o.name.as_str()).collect();
        for used in &draft.uses {
            let problem = match &used.reference {
                Ref::Matrix(_) if draft.matrix_written && draft.matrix.is_none() => None,
                Ref::Env(_) if !draft.env_ok => None,
                Ref::Matrix(_) if draft.matrix.is_none() => Some((
                    format!(
                        "{} uses `{}`, but step `{}` has no matrix",
                        used.label, used.reference, draft.name
                    ),
                    Some("add a `matrix` to the step, or write the value itself".to_owned()),
                )),
                Ref::Matrix(key) if !keys.contains(&key.as_str()) => Some((
                    format!(
                        "{} uses `{}`, which is not a key of the step's matrix",
                        used.label, used.reference
                    ),
                    Some(match did_you_mean(key, keys.iter().copied()) {
                        Some(k) => format!("did you mean `matrix.{k}`?"),
                        None => format!("the matrix has {}", backticked(&keys)),
                    }),
                )),
                Ref::Env(_) if matches!(used.key, UseKey::Env(_)) => Some((
                    format!(
                        "{} uses `{}`: an `env` value cannot refer to `env`",
                        used.label, used.reference
                    ),
                    Some("refer to the variable where it is used, as `$NAME` in `run`".to_owned()),
                )),
                Ref::Env(name) if !variables.iter().any(|v| v == name) => Some((
                    format!(
                        "{} uses `{}`, which neither the pipeline's nor the step's `env` sets",
                        used.label, used.reference
                    ),
                    Some(
                        match did_you_mean(name, variables.iter().map(String::as_str)) {
                            Some(v) => format!("did you mean `env.{v}`?"),
                            None => format!(
                                "set a default in [pipeline].env or the step's env (`hm run -e {name}=...` overrides it)"
                            ),
                        },
                    ),
                )),
                Ref::Output { step, .. } => match names.iter().position(|name| *name == step) {
                    None => Some((
                        format!(
                            "{} uses `{}`, but there is no step `{step}`",
                            used.label, used.reference
                        ),
                        did_you_mean(step, names.iter().copied())
                            .map(|s| format!("did you mean `steps.{s}`?")),
                    )),
                    Some(p) if !upstream.contains(&p) => Some((
                        format!(
                            "{} uses `{}`, but step `{}` does not need `{step}`",
                            used.label, used.reference, draft.name
                        ),
                        Some(format!(
                            "add `{step}` to its `needs`: outputs exist once their step has passed"
                        )),
                    )),
                    Some(_) => None,
                },
                _ => None,
            };
            if let Some((message, hint)) = problem {
                self.report.error_at(used.span.clone(), message, hint);
            }
        }
    }

    /// A matrix key's variable must not also be set by the step's own `env`: one would
    /// silently lose.
    fn check_matrix_env(&mut self, draft: &StepDraft) {
        let Some(m) = &draft.matrix else { return };
        for key in m.keys() {
            let var = matrix::variable(key);
            if draft.env.contains_key(&var) {
                self.report.error_at(
                    draft.header.clone(),
                    format!(
                        "step `{}` sets `{var}` in its env, and its matrix key `{key}` sets it too",
                        draft.name
                    ),
                    Some(format!("each matrix key is a variable of the same name, upper-cased; rename the key or drop `{var}` from env")),
                );
            }
        }
    }

    /// The steps instance `values` of draft `d` needs: every instance of each step it needs,
    /// except that between two matrix steps that share keys only the instances with the same
    /// values are paired. Second, those of them listed as optional.
    fn instance_needs(
        &mut self,
        d: usize,
        values: Option<&MatrixValues>,
        drafts: &[Option<StepDraft>],
        needs: &[Vec<usize>],
        instances: &[Vec<Option<MatrixValues>>],
        first: &[usize],
    ) -> (Vec<usize>, Vec<usize>) {
        let mut out = Vec::new();
        let mut optional = Vec::new();
        let Some(this) = &drafts[d] else {
            return (out, optional);
        };
        for &p in &needs[d] {
            // A step that could not be read, or whose matrix could not, was reported already.
            let Some(other) = drafts[p].as_ref().filter(|_| !instances[p].is_empty()) else {
                continue;
            };
            let shared: Vec<&str> = match (&this.matrix, &other.matrix, values) {
                (Some(mine), Some(theirs), Some(_)) => {
                    let theirs: Vec<&str> = theirs.axis_names().collect();
                    mine.axis_names().filter(|a| theirs.contains(a)).collect()
                }
                _ => Vec::new(),
            };
            let paired: Vec<usize> = instances[p]
                .iter()
                .enumerate()
                .filter(|(_, other)| {
                    shared.iter().all(|axis| {
                        let mine = values.and_then(|v| matrix::lookup(v, axis));
                        let theirs = other.as_ref().and_then(|v| matrix::lookup(v, axis));
                        mine.is_none() || theirs.is_none() || mine == theirs
                    })
                })
                .map(|(k, _)| first[p] + k)
                .collect();
            if paired.is_empty() {
                let name = values.map_or_else(|| this.name.clone(), |v| named(this, v));
                let span = this
                    .needs
                    .iter()
                    .flatten()
                    .find(|n| n.step == other.name)
                    .and_then(|n| n.span.clone());
                let wanted: Vec<String> = shared
                    .iter()
                    .filter_map(|a| {
                        values
                            .and_then(|v| matrix::lookup(v, a))
                            .map(|x| format!("{a}={x}"))
                    })
                    .collect();
                self.report.error_at(
                    span,
                    format!(
                        "`{name}` needs `{}`, which has no instance with {}",
                        other.name,
                        wanted.join(",")
                    ),
                    Some("matrix steps that share keys are paired on them; give both the same values".to_owned()),
                );
            }
            if this
                .needs
                .iter()
                .flatten()
                .any(|n| n.step == other.name && n.optional)
            {
                optional.extend(paired.iter().copied());
            }
            out.extend(paired);
        }
        (out, optional)
    }

    /// The instance's working directory, when it can be known now: `dir` without expressions
    /// or with matrix values only. `(dir, None)` then; `(root, Some(template))` otherwise.
    fn instance_dir(
        &mut self,
        draft: &StepDraft,
        values: Option<&MatrixValues>,
    ) -> Option<(PathBuf, Option<String>)> {
        let Some(dir) = &draft.dir else {
            return Some((self.root.clone(), None));
        };
        let later = draft
            .uses
            .iter()
            .any(|u| u.label == dir.label && !matches!(u.reference, Ref::Matrix(_)));
        if later {
            return Some((self.root.clone(), Some(dir.text.clone())));
        }
        let text = expr::render(&dir.text, |r| match r {
            Ref::Matrix(key) => values
                .and_then(|v| matrix::lookup(v, key))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        });
        match normalize_dir(&text) {
            Ok(relative) => Some((self.root.join(relative), None)),
            Err(problem) => {
                let shown = match values {
                    Some(values) if text != dir.text => {
                        format!("`{text}` (for `{}`)", named(draft, values))
                    }
                    _ => format!("`{text}`"),
                };
                self.report.error_at(
                    dir.span.clone(),
                    format!("{} {}: {shown}", dir.label, problem.describe()),
                    Some("paths in hm.toml are relative to the directory that holds it".to_owned()),
                );
                None
            }
        }
    }

    /// The step that one instance of `draft` is.
    fn instance(
        &self,
        draft: &StepDraft,
        instance: Instance,
        defaults_executor: Option<&str>,
        pipeline_env: &BTreeMap<String, String>,
    ) -> Step {
        let Instance {
            index,
            values,
            needs,
            optional_needs,
            dir,
            dir_template,
        } = instance;
        let mut env = pipeline_env.clone();
        if let Some(values) = &values {
            env.extend(values.iter().map(|(k, v)| (matrix::variable(k), v.clone())));
        }
        env.extend(draft.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        // `image` means docker unless the step says otherwise, or `[defaults]` names another
        // executor than `shell` (which runs no images): `[defaults] executor = "swarm"` takes
        // the steps with images too.
        let executor = step_executor(
            draft.executor.as_deref(),
            draft.image.is_some(),
            defaults_executor,
        );
        Step {
            location: self.report.location(draft.header.clone()),
            name: values
                .as_ref()
                .map_or_else(|| draft.name.clone(), |v| named(draft, v)),
            base: draft.name.clone(),
            matrix: values,
            instance: index,
            run: draft.run.clone().unwrap_or_default(),
            needs,
            optional_needs,
            condition: draft.condition.clone(),
            when: draft.when.unwrap_or_default(),
            dir,
            dir_template,
            env,
            timeout: draft.timeout,
            allow_failure: draft.allow_failure.clone().unwrap_or_default(),
            shell: draft.shell.clone().unwrap_or_default(),
            artifacts: draft.artifacts.clone().unwrap_or_default(),
            inputs: draft.inputs.clone().unwrap_or_default(),
            caches: draft.caches.clone().unwrap_or_default(),
            limits: draft.limits,
            retry: draft.retry.clone().unwrap_or_default(),
            executor,
            image: draft.image.clone(),
            with_json: draft.with_json(),
            services: draft
                .services
                .iter()
                .flatten()
                .map(|(name, _)| name.clone())
                .collect(),
        }
    }
}

/// The name of the instance `values` of `draft`.
fn named(draft: &StepDraft, values: &MatrixValues) -> String {
    match &draft.matrix {
        Some(m) => m.instance_name(&draft.name, values),
        None => instance_name(&draft.name, values),
    }
}

/// What is particular to one instance of a step.
struct Instance {
    index: usize,
    values: Option<MatrixValues>,
    needs: Vec<usize>,
    optional_needs: Vec<usize>,
    dir: PathBuf,
    dir_template: Option<String>,
}

/// Every draft `d` needs, directly or through others.
fn upstream(d: usize, needs: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = Vec::new();
    let mut pending = needs[d].clone();
    while let Some(p) = pending.pop() {
        if !seen.contains(&p) {
            seen.push(p);
            pending.extend(needs[p].iter().copied());
        }
    }
    seen
}

/// A step's executor: its own `executor`, else a `[defaults]` executor other than `shell`
/// (which runs no images: `[defaults] executor = "swarm"` takes the steps with images too),
/// else `docker` for a step with an `image`, else `[defaults]`'s or `shell`.
pub(super) fn step_executor(
    own: Option<&str>,
    has_image: bool,
    defaults_executor: Option<&str>,
) -> String {
    match (own, has_image, defaults_executor) {
        (Some(own), _, _) => own.to_owned(),
        (None, _, Some(default)) if default != "shell" => default.to_owned(),
        (None, true, _) => "docker".to_owned(),
        (None, false, default) => default.unwrap_or("shell").to_owned(),
    }
}
