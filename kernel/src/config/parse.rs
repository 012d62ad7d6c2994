//! Reading `hm.toml`: finding the file, parsing it with positions, and walking every section
//! by hand so that all problems are reported together (`docs/pipeline.md`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item};

use super::draft::{NO_TIMEOUT_HINT, StepDraft, UseKey};
use super::model::{ArtifactLimits, CacheSettings, Pipeline, PluginSettings, RestartBudget};
use super::resolve::step_executor;
use super::sources::Sources;
use crate::suggest::did_you_mean;
use crate::toml_check::Diagnostics;
use crate::toml_check::{Checker, Field, join_path};

/// The pipeline file's name, looked for in the start directory and its parents.
pub const FILE_NAME: &str = "hm.toml";

const TOP_KEYS: &[&str] = &[
    "pipeline",
    "cache",
    "defaults",
    "steps",
    "services",
    "plugins",
    "templates",
    "include",
];
/// What an included file may hold.
const INCLUDED_KEYS: &[&str] = &["templates", "steps", "include"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "timeout",
    "parallelism",
    "keep_going",
    "env",
    "artifacts_max",
];
const STEP_KEYS: &[&str] = &[
    "run",
    "needs",
    "dir",
    "env",
    "timeout",
    "allow_failure",
    "shell",
    "artifacts",
    "inputs",
    "cache",
    "limits",
    "retry",
    "executor",
    "image",
    "with",
    "matrix",
    "if",
    "when",
    "extends",
    "services",
];
/// `[defaults]` takes every step key but these, which belong to one step.
const NOT_DEFAULTS: &[&str] = &["run", "needs", "matrix", "extends"];
const PLUGIN_KEYS: &[&str] = &[
    "limits",
    "restart",
    "config",
    "required",
    "handshake_timeout",
];
const RESTART_KEYS: &[&str] = &["max", "within"];

const NAME_RULE: &str =
    "names use ASCII letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`";

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem in the file, already positioned and printable.
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

/// `hm.toml` in `start_dir`, else in the nearest parent that has one (like cargo). The result
/// is absolute when `start_dir` can be made absolute.
pub fn find_pipeline_file(start_dir: &Path) -> Option<PathBuf> {
    // Relative paths have too few ancestors (`.` has none), so walk the absolute form.
    let start = std::path::absolute(start_dir).unwrap_or_else(|_| start_dir.to_path_buf());
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|file| file.is_file())
}

/// Reads and validates a pipeline file. Messages name the file relative to the current
/// directory when it lies below it, as the user would type it.
pub fn load(path: &Path) -> Result<Pipeline, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let display = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf());
    let mut pipeline = parse_str(&text, &display)?;
    // `display` may be relative to the cwd; keep the caller's path if it was absolute, so
    // `file` and `root` are the same whichever way the file was named.
    if path.is_absolute() {
        pipeline.file = path.to_path_buf();
        pipeline.root = path
            .parent()
            .map_or_else(|| pipeline.root.clone(), Path::to_path_buf);
    }
    Ok(pipeline)
}

/// Validates pipeline text. `file` is how messages name the file; its directory is the root
/// that `dir` values are relative to (the current directory joins relative paths).
pub fn parse_str(text: &str, file: &Path) -> Result<Pipeline, Diagnostics> {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let root = absolute
        .parent()
        .map_or_else(PathBuf::new, Path::to_path_buf);
    let sources = Sources::collect(text, file, &absolute);
    let mut checker = Checker::new(text, file, root);
    for included in &sources.included {
        checker.add_file(&included.text, &included.display);
    }
    for problem in &sources.problems {
        checker.enter(problem.file);
        let hint = problem.hint.clone();
        checker
            .report
            .error(problem.span.clone(), problem.message.clone(), hint);
    }
    let documents: Vec<Option<Document<&str>>> = (0..=sources.included.len())
        .map(|n| {
            checker.enter(n);
            checker.document()
        })
        .collect();
    checker.enter(0);
    let pipeline = match &documents[0] {
        Some(main) => checker.pipeline(main, &documents, &sources, absolute),
        None => None,
    };
    match pipeline {
        Some(pipeline) if !checker.report.has_errors() => Ok(pipeline),
        _ => Err(checker.report.finish()),
    }
}

impl Checker<'_> {
    fn pipeline(
        &mut self,
        document: &Document<&str>,
        documents: &[Option<Document<&str>>],
        sources: &Sources,
        file: PathBuf,
    ) -> Option<Pipeline> {
        let top = document.as_table();
        for (name, item) in top.iter() {
            if TOP_KEYS.contains(&name) {
                continue;
            }
            let Some(key) = top.key(name) else { continue };
            let (message, hint) = unknown_top_level(name, item);
            self.report.error(key.span(), message, Some(hint));
        }
        let root = file.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let mut pipeline = Pipeline {
            name: root.file_name().map_or_else(
                || "pipeline".to_owned(),
                |n| n.to_string_lossy().into_owned(),
            ),
            file,
            root,
            timeout: None,
            parallelism: None,
            keep_going: false,
            env: BTreeMap::new(),
            artifacts_max: ArtifactLimits::default(),
            cache: CacheSettings::default(),
            steps: Vec::new(),
            plugins: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        if let Some(field) = top_field(top, "cache") {
            pipeline.cache = self.cache_section(&field, &pipeline.root);
        }
        if let Some(field) = top_field(top, "pipeline") {
            self.pipeline_section(&field, &mut pipeline);
        }
        let mut defaults = top_field(top, "defaults").and_then(|field| self.defaults(&field));
        let defaults_executor = defaults.as_mut().and_then(|d| d.executor.take());
        if let Some(field) = top_field(top, "plugins") {
            pipeline.plugins = self.plugins(&field);
        }
        if let Some(field) = top_field(top, "services") {
            pipeline.services = self.services(&field, defaults_executor.as_deref());
        }
        // The templates and steps of every file, a file's includes before the file itself.
        let mut templates = Vec::new();
        let mut steps = Vec::new();
        for n in sources.order() {
            let Some(document) = &documents[n] else {
                continue;
            };
            self.enter(n);
            let top = document.as_table();
            if n > 0 {
                self.included_keys(top);
            }
            if let Some(field) = top_field(top, "templates") {
                self.entries(&field, "template", &mut templates);
            }
            if let Some(field) = top_field(top, "steps") {
                self.entries(&field, "step", &mut steps);
            }
        }
        self.enter(0);
        let unreadable = documents.iter().flatten().any(|d| {
            d.as_table()
                .get("steps")
                .is_some_and(|s| !s.is_table_like())
        });
        if steps.is_empty() && !unreadable {
            // At the main file's `[steps]`, when it has an empty one.
            let span = top_field(top, "steps").and_then(|f| f.span());
            self.report.error(
                span,
                "the pipeline has no steps",
                Some("add one: `[steps.build]` with `run = \"...\"`".to_owned()),
            );
            return None;
        }
        let steps = self.extend_all(steps, &templates, defaults.as_ref());
        // A service with problems of its own is still defined: only its problems are shown.
        let defined: Vec<&str> = top_field(top, "services")
            .and_then(|f| f.item.as_table_like())
            .map(|t| t.iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
        for (name, draft) in &steps {
            let Some(draft) = draft else {
                continue;
            };
            if let Some(names) = &draft.services {
                let executor = step_executor(
                    draft.executor.as_deref(),
                    draft.image.is_some(),
                    defaults_executor.as_deref(),
                );
                self.check_service_names(name, &executor, names, &defined, &pipeline.services);
            }
        }
        pipeline.steps = self.resolve(steps, defaults_executor.as_deref(), &pipeline.env)?;
        Some(pipeline)
    }

    /// An included file holds templates and steps (and includes) only.
    fn included_keys(&mut self, top: &toml_edit::Table) {
        for (name, _) in top.iter() {
            if INCLUDED_KEYS.contains(&name) {
                continue;
            }
            let Some(key) = top.key(name) else { continue };
            let hint = if TOP_KEYS.contains(&name) {
                format!("`[{name}]` belongs in the main pipeline file, which includes this one")
            } else {
                format!(
                    "an included file holds {}",
                    backticked_tables(INCLUDED_KEYS)
                )
            };
            self.report.error(
                key.span(),
                format!("`{name}` cannot be in an included file"),
                Some(hint),
            );
        }
    }

    fn pipeline_section(&mut self, field: &Field<'_>, pipeline: &mut Pipeline) {
        let Some(section) = self.open(
            field,
            "pipeline".to_owned(),
            PIPELINE_KEYS,
            "write `[pipeline]` on its own line, then its keys",
        ) else {
            return;
        };
        if let Some(f) = section.get("name")
            && let Some(name) = self.non_empty_string(&f)
        {
            pipeline.name = name.to_owned();
        }
        if let Some(f) = section.get("timeout") {
            pipeline.timeout = self.duration(&f, NO_TIMEOUT_HINT);
        }
        if let Some(f) = section.get("parallelism") {
            let hint = "leave `parallelism` out to use the number of CPUs";
            pipeline.parallelism = self
                .integer(&f, 1, i64::MAX, Some(hint))
                .and_then(|n| usize::try_from(n).ok());
        }
        if let Some(f) = section.get("keep_going") {
            pipeline.keep_going = self.boolean(&f).unwrap_or_default();
        }
        if let Some(f) = section.get("artifacts_max") {
            pipeline.artifacts_max = self.artifacts_max(&f).unwrap_or_default();
        }
        if let Some(f) = section.get("env") {
            pipeline.env = self.env(&f, "pipeline").unwrap_or_default();
            // Nothing in `[pipeline]` belongs to one step, so nothing there is rendered.
            let mut uses = Vec::new();
            self.uses(
                f.item,
                "[pipeline].env",
                &UseKey::Env(String::new()),
                &mut uses,
            );
            for used in uses {
                self.report.error_at(
                    used.span,
                    format!("[pipeline].env cannot use `{}`: expressions belong to steps", used.reference),
                    Some("move the variable to the step's `env`, or write `$${{` for a literal `${{`".to_owned()),
                );
            }
        }
    }

    /// `[defaults]`: step keys under every step (`executor` is taken apart by the caller: an
    /// `image` wins over it).
    fn defaults(&mut self, field: &Field<'_>) -> Option<StepDraft> {
        let Some(table) = field.item.as_table_like() else {
            let found = self.found(field.item);
            self.report.error(
                field.span(),
                format!("[defaults] must be a table, found {found}"),
                None,
            );
            return None;
        };
        let keys: Vec<&str> = STEP_KEYS
            .iter()
            .copied()
            .filter(|k| !NOT_DEFAULTS.contains(k))
            .collect();
        let section = self.section(
            table,
            field.span(),
            "defaults".to_owned(),
            &keys,
            defaults_hint,
        );
        Some(self.draft("defaults", field, &section))
    }

    fn plugins(&mut self, field: &Field<'_>) -> BTreeMap<String, PluginSettings> {
        let mut plugins = BTreeMap::new();
        let Some(table) = field.item.as_table_like() else {
            let found = self.found(field.item);
            let hint = "write `[plugins.<name>]` with the plugin's settings".to_owned();
            self.report.error(
                field.span(),
                format!("[plugins] must be a table, found {found}"),
                Some(hint),
            );
            return plugins;
        };
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            self.check_name(name, key.span(), "plugin");
            let path = join_path("plugins", name);
            let entry = Field {
                key,
                item,
                label: format!("[{path}]"),
            };
            let Some(section) = self.open(
                &entry,
                path.clone(),
                PLUGIN_KEYS,
                &format!("write `[{path}]` followed by its settings"),
            ) else {
                continue;
            };
            let mut settings = PluginSettings::default();
            if let Some(f) = section.get("limits") {
                settings.limits = self.limits(&f, &path).unwrap_or_default();
            }
            if let Some(f) = section.get("restart") {
                settings.restart = self.restart(&f, &path).unwrap_or_default();
            }
            if let Some(f) = section.get("config")
                && let Some(json) = self.json(&f)
            {
                settings.config_json = json;
            }
            if let Some(f) = section.get("required") {
                settings.required = self.boolean(&f).unwrap_or_default();
            }
            if let Some(f) = section.get("handshake_timeout")
                && let Some(timeout) = self.duration(&f, "leave it out for the default of 10s")
            {
                settings.handshake_timeout = timeout;
            }
            plugins.insert(name.to_owned(), settings);
        }
        plugins
    }

    /// `restart = { max, within }`; each field defaults independently (3 within 60 s).
    fn restart(&mut self, field: &Field<'_>, parent: &str) -> Option<RestartBudget> {
        let section = self.open(
            field,
            join_path(parent, "restart"),
            RESTART_KEYS,
            "write `restart = { max = 3, within = \"60s\" }`",
        )?;
        let default = RestartBudget::default();
        // Both fields are read before either can fail, so both are reported.
        let max = match section.get("max") {
            Some(f) => self
                .integer(&f, 0, i64::from(u32::MAX), None)
                .and_then(|n| u32::try_from(n).ok()),
            None => Some(default.max),
        };
        let within = match section.get("within") {
            Some(f) => self.duration(&f, "use a window such as \"60s\""),
            None => Some(default.within),
        };
        Some(RestartBudget {
            max: max?,
            within: within?,
        })
    }

    /// Every entry of `[steps]` (or `[templates]`) of the current file, by name, with its
    /// draft when the entry is a table. A name defined before, in this file or another, is an
    /// error naming both places.
    fn entries(
        &mut self,
        field: &Field<'_>,
        what: &str,
        into: &mut Vec<(String, Option<StepDraft>)>,
    ) {
        let section = if what == "step" { "steps" } else { "templates" };
        let Some(table) = field.item.as_table_like() else {
            let found = self.found(field.item);
            let message = format!("[{section}] must be a table of {what}s, found {found}");
            let hint = if what == "step" {
                "write each step as `[steps.<name>]` followed by `run = \"...\"`".to_owned()
            } else {
                "write each template as `[templates.<name>]` followed by the keys it shares"
                    .to_owned()
            };
            self.report.error(field.span(), message, Some(hint));
            return;
        };
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            self.check_name(name, key.span(), what);
            let path = join_path(section, name);
            let entry = Field {
                key,
                item,
                label: format!("[{path}]"),
            };
            if let Some((_, Some(first))) = into.iter().find(|(n, _)| n == name) {
                let first = self.report.location(first.header.clone());
                self.report.error(
                    key.span(),
                    format!("{what} `{name}` is defined twice: here and at {first}"),
                    Some(format!(
                        "{what} names are shared by every included file; rename one"
                    )),
                );
                continue;
            }
            let shape = if what == "step" {
                format!("write `[{path}]` on its own line, followed by `run = \"...\"`")
            } else {
                format!("write `[{path}]` on its own line, followed by the keys it shares")
            };
            // Entries that are not tables still count, so that `needs` naming them does not
            // add a second, misleading "unknown step" error.
            let draft = self
                .open(&entry, path, STEP_KEYS, &shape)
                .map(|section| self.draft(name, &entry, &section));
            into.push((name.to_owned(), draft));
        }
    }

    /// Step and plugin names end up in cgroup directory names and on the command line.
    pub(super) fn check_name(&mut self, name: &str, span: Option<Range<usize>>, what: &str) {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        // A leading `-` reads as an option to `hm run`; a leading `.` allows `.` and `..`.
        let valid_start = name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if !(valid_chars && valid_start) {
            let message = format!("invalid {what} name `{}`", name.escape_default());
            self.report.error(span, message, Some(NAME_RULE.to_owned()));
        }
    }
}

/// `[pipeline]`, `[defaults]`... of the top-level table, with how messages name it.
fn top_field<'t>(top: &'t toml_edit::Table, name: &str) -> Option<Field<'t>> {
    top.get_key_value(name).map(|(key, item)| Field {
        key,
        item,
        label: format!("[{name}]"),
    })
}

/// "`[templates]`, `[steps]` and `include`".
fn backticked_tables(keys: &[&str]) -> String {
    let shown: Vec<String> = keys
        .iter()
        .map(|k| {
            if *k == "include" {
                format!("`{k}`")
            } else {
                format!("`[{k}]`")
            }
        })
        .collect();
    match shown.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => shown.join(""),
    }
}

/// The message and hint for a top-level key other than the known ones.
fn unknown_top_level(name: &str, item: &Item) -> (String, String) {
    let message = if item.is_table() || item.is_array_of_tables() {
        format!("unknown table `[{name}]`")
    } else {
        format!("unknown key `{name}` at the top level")
    };
    let hint = if let Some(section) = did_you_mean(name, TOP_KEYS.iter().copied()) {
        format!("did you mean `[{section}]`?")
    } else if PIPELINE_KEYS.contains(&name) {
        format!("`{name}` belongs in `[pipeline]`")
    } else if STEP_KEYS.contains(&name) {
        format!("`{name}` belongs to a step: `[steps.<name>]`")
    } else {
        "the file has the tables `[pipeline]`, `[cache]`, `[defaults]`, `[templates.<name>]`, `[steps.<name>]`, `[services.<name>]` and `[plugins.<name>]`, and `include`"
            .to_owned()
    };
    (message, hint)
}

/// Step keys that `[defaults]` does not take get a hint saying where they go.
fn defaults_hint(key: &str) -> Option<String> {
    STEP_KEYS
        .contains(&key)
        .then(|| format!("`{key}` is set per step, in `[steps.<name>]`"))
}
