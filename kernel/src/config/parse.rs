//! Reading `hm.toml`: finding the file, parsing it with positions, and walking every section
//! by hand so that all problems are reported together (`docs/pipeline.md`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item};

use super::model::{Limits, Pipeline, PluginSettings, RestartBudget};
use super::resolve::{Defaults, StepDraft};
use crate::suggest::did_you_mean;
use crate::toml_check::Diagnostics;
use crate::toml_check::{Checker, Field, Section, join_path};

/// The pipeline file's name, looked for in the start directory and its parents.
pub const FILE_NAME: &str = "hm.toml";

const TOP_KEYS: &[&str] = &["pipeline", "defaults", "steps", "plugins"];
const PIPELINE_KEYS: &[&str] = &["name", "timeout", "parallelism", "keep_going", "env"];
const DEFAULTS_KEYS: &[&str] = &[
    "executor",
    "timeout",
    "limits",
    "retry",
    "shell",
    "allow_failure",
];
const STEP_KEYS: &[&str] = &[
    "run",
    "needs",
    "dir",
    "env",
    "timeout",
    "allow_failure",
    "shell",
    "limits",
    "retry",
    "executor",
    "image",
    "with",
    "matrix",
    "if",
    "when",
];
const PLUGIN_KEYS: &[&str] = &[
    "limits",
    "restart",
    "config",
    "required",
    "handshake_timeout",
];
const RESTART_KEYS: &[&str] = &["max", "within"];

const NO_TIMEOUT_HINT: &str = "leave `timeout` out for no deadline";
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
    let mut checker = Checker::new(text, file, root);
    let Some(document) = checker.document() else {
        return Err(checker.report.finish());
    };
    let pipeline = checker.pipeline(&document, absolute);
    match pipeline {
        Some(pipeline) if !checker.report.has_errors() => Ok(pipeline),
        _ => Err(checker.report.finish()),
    }
}

impl Checker<'_> {
    fn pipeline(&mut self, document: &Document<&str>, file: PathBuf) -> Option<Pipeline> {
        let top = document.as_table();
        for (name, item) in top.iter() {
            if TOP_KEYS.contains(&name) {
                continue;
            }
            let Some(key) = top.key(name) else { continue };
            let (message, hint) = unknown_top_level(name, item);
            self.report.error(key.span(), message, Some(hint));
        }
        let root_field = |name: &str| {
            top.get_key_value(name).map(|(key, item)| Field {
                key,
                item,
                label: format!("[{name}]"),
            })
        };

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
            steps: Vec::new(),
            plugins: BTreeMap::new(),
        };
        if let Some(field) = root_field("pipeline") {
            self.pipeline_section(&field, &mut pipeline);
        }
        let defaults = match root_field("defaults") {
            Some(field) => self.defaults(&field),
            None => Defaults::default(),
        };
        if let Some(field) = root_field("plugins") {
            pipeline.plugins = self.plugins(&field);
        }
        let drafts = match root_field("steps") {
            Some(field) => self.steps(&field),
            None => {
                self.report.error(
                    None,
                    "the pipeline has no steps",
                    Some("add one: `[steps.build]` with `run = \"...\"`".to_owned()),
                );
                return None;
            }
        };
        pipeline.steps = self.resolve(drafts, &defaults, &pipeline.env)?;
        Some(pipeline)
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
        if let Some(f) = section.get("env") {
            pipeline.env = self.env(&f, "pipeline").unwrap_or_default();
            // Nothing in `[pipeline]` belongs to one step, so nothing there is rendered.
            let mut uses = Vec::new();
            self.uses(f.item, "[pipeline].env", true, &mut uses);
            for used in uses {
                self.report.error(
                    used.span,
                    format!("[pipeline].env cannot use `{}`: expressions belong to steps", used.reference),
                    Some("move the variable to the step's `env`, or write `$${{` for a literal `${{`".to_owned()),
                );
            }
        }
    }

    fn defaults(&mut self, field: &Field<'_>) -> Defaults {
        let mut defaults = Defaults::default();
        let Some(table) = field.item.as_table_like() else {
            let found = self.found(field.item);
            self.report.error(
                field.span(),
                format!("[defaults] must be a table, found {found}"),
                None,
            );
            return defaults;
        };
        let section = self.section(
            table,
            field.span(),
            "defaults".to_owned(),
            DEFAULTS_KEYS,
            defaults_hint,
        );
        if let Some(f) = section.get("executor") {
            defaults.executor = self.non_empty_string(&f).map(str::to_owned);
        }
        if let Some(f) = section.get("timeout") {
            defaults.timeout = self.duration(&f, NO_TIMEOUT_HINT);
        }
        if let Some(f) = section.get("limits") {
            defaults.limits = self.limits(&f, "defaults").unwrap_or_default();
        }
        if let Some(f) = section.get("retry") {
            defaults.retry = self.retry(&f, "defaults");
        }
        if let Some(f) = section.get("shell") {
            defaults.shell = self.shell(&f);
        }
        if let Some(f) = section.get("allow_failure") {
            defaults.allow_failure = self.allow_failure(&f, "defaults");
        }
        defaults
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

    /// Every entry of `[steps]` by name, with its draft when the entry is a table.
    fn steps(&mut self, field: &Field<'_>) -> Vec<(String, Option<StepDraft>)> {
        let Some(table) = field.item.as_table_like() else {
            let found = self.found(field.item);
            let message = format!("[steps] must be a table of steps, found {found}");
            let hint = "write each step as `[steps.<name>]` followed by `run = \"...\"`".to_owned();
            self.report.error(field.span(), message, Some(hint));
            return Vec::new();
        };
        if table.is_empty() {
            let hint = "add one: `[steps.build]` with `run = \"...\"`".to_owned();
            self.report
                .error(field.span(), "the pipeline has no steps", Some(hint));
        }
        let mut drafts = Vec::new();
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            self.check_name(name, key.span(), "step");
            let path = join_path("steps", name);
            let entry = Field {
                key,
                item,
                label: format!("[{path}]"),
            };
            let shape = format!("write `[{path}]` on its own line, followed by `run = \"...\"`");
            // Entries that are not tables still count as steps, so that `needs` naming them
            // does not add a second, misleading "unknown step" error.
            let draft = self
                .open(&entry, path, STEP_KEYS, &shape)
                .map(|section| self.step(name, &entry, &section));
            drafts.push((name.to_owned(), draft));
        }
        drafts
    }

    fn step(&mut self, name: &str, entry: &Field<'_>, section: &Section<'_>) -> StepDraft {
        let path = &section.path;
        let mut draft = StepDraft {
            name: name.to_owned(),
            header: entry.span(),
            run: None,
            needs: Vec::new(),
            dir: None,
            env: BTreeMap::new(),
            timeout: None,
            allow_failure: None,
            shell: None,
            limits: Limits::default(),
            retry: None,
            executor: None,
            image: None,
            with_json: None,
            matrix: None,
            condition: None,
            condition_written: false,
            when: None,
            matrix_written: false,
            env_ok: true,
            uses: Vec::new(),
        };
        // Expressions in the keys that take them, checked once every step is known.
        for key in ["run", "image", "dir", "with"] {
            if let Some(f) = section.get(key) {
                let label = f.label.clone();
                self.uses(f.item, &label, false, &mut draft.uses);
            }
        }
        if let Some(f) = section.get("env")
            && let Some(table) = f.item.as_table_like()
        {
            for (name, item) in table.iter() {
                let label = format!("`{name}` in [{}]", join_path(path, "env"));
                self.uses(item, &label, true, &mut draft.uses);
            }
        }
        if let Some(f) = section.get("matrix") {
            draft.matrix_written = true;
            draft.matrix = self.matrix(&f, path);
        }
        match section.get("run") {
            Some(f) => draft.run = self.non_empty_string(&f).map(str::to_owned),
            None => self.report.error(
                entry.span(),
                format!("step `{name}` has no `run`"),
                Some("add the command to run: `run = \"...\"`".to_owned()),
            ),
        }
        if let Some(f) = section.get("needs") {
            draft.needs = self.needs(&f, path);
        }
        if let Some(f) = section.get("if") {
            draft.condition_written = true;
            draft.condition = self.condition(&f, path);
        }
        if let Some(f) = section.get("when") {
            draft.when = self.when(&f);
        }
        if let Some(f) = section.get("dir") {
            draft.dir = self.dir(&f);
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
        if let Some(f) = section.get("with") {
            draft.with_json = self.json(&f);
        }
        draft
    }

    /// Step and plugin names end up in cgroup directory names and on the command line.
    fn check_name(&mut self, name: &str, span: Option<Range<usize>>, what: &str) {
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

/// The message and hint for a top-level key other than the four sections.
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
        "the file has the tables `[pipeline]`, `[defaults]`, `[steps.<name>]` and `[plugins.<name>]`"
            .to_owned()
    };
    (message, hint)
}

/// Step keys that `[defaults]` does not take get a hint saying where they go.
fn defaults_hint(key: &str) -> Option<String> {
    match key {
        "env" => Some("set `env` for every step in `[pipeline]`, or per step".to_owned()),
        _ if STEP_KEYS.contains(&key) => {
            Some(format!("`{key}` is set per step, in `[steps.<name>]`"))
        }
        _ => None,
    }
}
