//! `plugin.toml`, the manifest of a plugin bundle: read and validated without
//! running anything, with every problem reported at its line:col in the file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use thiserror::Error;
use toml_edit::{Document, Item, TableLike, Value};

pub use hm_ipc::messages::HookPhase;

use crate::config::Limits;
use crate::suggest::did_you_mean;

/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

const KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "executable",
    "protocol",
    "capabilities",
    "limits",
    "subcommand",
    "hook",
];
const HOOK_KEYS: &[&str] = &["event", "phase", "timeout"];
/// The event kinds a hook may subscribe to (`docs/events.md`), and `*` for all of them.
pub const HOOK_EVENTS: &[&str] = &[
    "build_start",
    "step_queued",
    "step_start",
    "step_log",
    "step_retry",
    "step_end",
    "plugin_start",
    "plugin_exit",
    "plugin_restart",
    "build_end",
    "*",
];
/// How long hm waits for a hook's answer when its `[[hook]]` table does not say.
pub const DEFAULT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest `timeout` a `[[hook]]` may ask for: a before-hook holds a step that long.
const MAX_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
const SUBCOMMAND_KEYS: &[&str] = &["verb", "about", "args"];
const ARG_KEYS: &[&str] = &["name", "long", "takes_value", "help"];
const PROTOCOL_KEYS: &[&str] = &["min", "max"];
const LIMITS_KEYS: &[&str] = &["memory", "pids", "cpu"];
/// The kinds of capability a manifest may declare.
const CAPABILITY_KINDS: &[&str] = &["executor", "hook", "subcommand"];

/// What a bundle says about its plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The executable's file name inside the bundle.
    pub executable: String,
    /// The protocol versions the plugin speaks, inclusive.
    pub protocol: (u32, u32),
    /// `executor:NAME`, `hook:EVENT`, `subcommand:VERB`, exactly as the plugin's `Hello` says.
    pub capabilities: Vec<String>,
    /// Limits for the plugin's own cgroup when `[plugins.<name>].limits` does not set them.
    pub limits: Limits,
    /// `[[subcommand]]`: what `hm --help` and `hm VERB --help` show, and how `hm` parses the
    /// verb's arguments, without starting the plugin.
    pub subcommands: Vec<SubcommandSpec>,
    /// One entry per `hook:EVENT` capability: its `[[hook]]` table, or the defaults (the
    /// `after` phase, [`DEFAULT_HOOK_TIMEOUT`]).
    pub hooks: Vec<HookSpec>,
}

/// One event a hook observes: `[[hook]]` with `event`, `phase` and `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSpec {
    /// An entry of [`HOOK_EVENTS`].
    pub event: &'static str,
    pub phase: HookPhase,
    pub timeout: std::time::Duration,
}

impl HookSpec {
    /// Whether this subscription covers events of `kind`.
    pub fn covers(&self, kind: &str) -> bool {
        self.event == "*" || self.event == kind
    }
}

/// One `[[subcommand]]` table: `verb`, `about`, and `args = [{ name, long, takes_value, help }]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubcommandSpec {
    pub verb: String,
    pub about: String,
    pub args: Vec<ArgSpec>,
}

/// One argument of a subcommand: `--LONG VALUE` (`takes_value = true`) or the switch `--LONG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSpec {
    /// The key of its value in the JSON object the plugin receives.
    pub name: String,
    pub long: String,
    pub takes_value: bool,
    pub help: String,
}

/// What one capability claims for its plugin alone: an executor name or a verb. Hooks claim
/// nothing; any number of plugins may observe one event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claim {
    Executor(String),
    Verb(String),
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Executor(name) => write!(f, "executor `{name}`"),
            Claim::Verb(verb) => write!(f, "subcommand `hm {verb}`"),
        }
    }
}

impl Manifest {
    /// The executor names this plugin provides.
    pub fn executors(&self) -> impl Iterator<Item = &str> {
        self.capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("executor:"))
    }

    /// Everything this plugin claims exclusively.
    pub fn claims(&self) -> Vec<Claim> {
        self.capabilities
            .iter()
            .filter_map(|c| {
                let (kind, value) = c.split_once(':')?;
                match kind {
                    "executor" => Some(Claim::Executor(value.to_owned())),
                    "subcommand" => Some(Claim::Verb(value.to_owned())),
                    _ => None,
                }
            })
            .collect()
    }
}

/// A manifest that could not be read or is not valid.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("cannot read {}: {source}", display_path(.path))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(.path, .problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ManifestError {
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Read { path, .. } | ManifestError::Invalid { path, .. } => path,
        }
    }
}

/// One problem in a manifest, at a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let path = display_path(path);
    let mut lines = Vec::new();
    for p in problems {
        lines.push(format!("{path}:{}:{}: {}", p.line, p.col, p.message));
        if let Some(hint) = &p.hint {
            lines.push(format!("  hint: {hint}"));
        }
    }
    lines.join("\n")
}

/// A path as the user would type it: relative to the current directory when below it.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// Reads `<bundle>/plugin.toml`.
pub fn read(bundle: &Path) -> Result<Manifest, ManifestError> {
    let path = bundle.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text, &path)
}

/// Validates manifest text; `path` is how messages name the file.
pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let mut checker = Checker {
        text,
        problems: Vec::new(),
    };
    let manifest = match Document::parse(text) {
        Ok(document) => checker.manifest(document.as_table()),
        Err(e) => {
            checker.problem(
                e.span(),
                format!("invalid TOML: {}", e.message().trim_end()),
                None,
            );
            None
        }
    };
    match manifest {
        Some(manifest) if checker.problems.is_empty() => Ok(manifest),
        _ => {
            let mut problems = checker.problems;
            problems.sort_by_key(|p| (p.line, p.col));
            Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }
}

/// Whether `name` may name a plugin, an executor or a verb: it ends up in directory names,
/// cgroup names and on the command line (the same rule as step names in `hm.toml`).
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The rule [`valid_name`] checks, in words.
pub const NAME_RULE: &str = "use at most 64 ASCII letters, digits, `-`, `_` and `.`, starting \
                             with a letter, a digit or `_`";

struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let col = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count());
        (line, col + 1)
    }

    fn problem(&mut self, span: Option<Range<usize>>, message: String, hint: Option<String>) {
        let (line, col) = self.position(span.map_or(0, |s| s.start));
        self.problems.push(Problem {
            line,
            col,
            message,
            hint,
        });
    }

    /// Reports keys of `table` not in `allowed`; `label` names the table in messages.
    fn unknown_keys(&mut self, table: &dyn TableLike, allowed: &[&str], label: &str) {
        for (name, _) in table.iter() {
            if allowed.contains(&name) {
                continue;
            }
            let span = table.get_key_value(name).and_then(|(k, _)| k.span());
            let hint = did_you_mean(name, allowed.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| format!("expected one of `{}`", allowed.join("`, `")));
            self.problem(span, format!("unknown key `{name}` in {label}"), Some(hint));
        }
    }

    fn manifest(&mut self, doc: &toml_edit::Table) -> Option<Manifest> {
        self.unknown_keys(doc, KEYS, "the manifest");
        let name = self.required_string(doc, "name");
        if let Some((name, span)) = &name
            && !valid_name(name)
        {
            self.problem(
                span.clone(),
                format!("invalid plugin name `{}`", name.escape_default()),
                Some(NAME_RULE.to_owned()),
            );
        }
        let version = self.required_string(doc, "version");
        if let Some((version, span)) = &version
            && version.trim().is_empty()
        {
            self.problem(span.clone(), "`version` is empty".to_owned(), None);
        }
        let description = match doc.get("description") {
            None => Some(String::new()),
            Some(item) => self.string(item, "description"),
        };
        let executable = self.required_string(doc, "executable");
        if let Some((executable, span)) = &executable {
            let bad = executable.is_empty()
                || executable.contains('/')
                || executable.contains('\0')
                || matches!(executable.as_str(), "." | ".." | MANIFEST_FILE)
                || executable.starts_with('.');
            if bad {
                self.problem(
                    span.clone(),
                    format!(
                        "`executable` must be a file name inside the bundle, not `{}`",
                        executable.escape_default()
                    ),
                    Some("write the executable's file name, e.g. `hm-plugin-mine`".to_owned()),
                );
            }
        }
        let protocol = self.protocol(doc);
        let capabilities = self.capabilities(doc);
        let limits = match doc.get("limits") {
            None => Some(Limits::default()),
            Some(item) => self.limits(item),
        };
        let subcommands = match doc.get("subcommand") {
            None => Some(Vec::new()),
            Some(item) => self.subcommands(item, capabilities.as_deref().unwrap_or(&[])),
        };
        let hooks = self.hooks(doc.get("hook"), capabilities.as_deref().unwrap_or(&[]));
        Some(Manifest {
            hooks: hooks?,
            name: name?.0,
            version: version?.0,
            description: description?,
            executable: executable?.0,
            protocol: protocol?,
            capabilities: capabilities?,
            limits: limits?,
            subcommands: subcommands?,
        })
    }

    /// The hook subscriptions: every `hook:EVENT` capability, with its `[[hook]]` table if it
    /// has one.
    fn hooks(&mut self, item: Option<&Item>, capabilities: &[String]) -> Option<Vec<HookSpec>> {
        let mut specs: Vec<HookSpec> = capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("hook:"))
            .filter_map(|event| HOOK_EVENTS.iter().copied().find(|e| *e == event))
            .map(|event| HookSpec {
                event,
                phase: HookPhase::After,
                timeout: DEFAULT_HOOK_TIMEOUT,
            })
            .collect();
        let Some(item) = item else {
            return Some(specs);
        };
        let Some(tables) = item.as_array_of_tables() else {
            self.problem(
                item.span(),
                format!("`hook` must be an array of tables, found {}", found(item)),
                Some("write `[[hook]]` tables with `event`, `phase` and `timeout`".to_owned()),
            );
            return None;
        };
        let mut ok = true;
        let mut described: Vec<&str> = Vec::new();
        for table in tables.iter() {
            self.unknown_keys(table, HOOK_KEYS, "`[[hook]]`");
            let Some((event, span)) = self.required_string(table, "event") else {
                ok = false;
                continue;
            };
            let Some(spec) = specs.iter_mut().find(|s| s.event == event) else {
                self.problem(
                    span,
                    format!(
                        "`[[hook]]` describes `{event}`, which `capabilities` does not declare"
                    ),
                    Some(format!("add \"hook:{event}\" to `capabilities`")),
                );
                ok = false;
                continue;
            };
            if described.contains(&spec.event) {
                self.problem(
                    span,
                    format!("`[[hook]]` for `{event}` appears twice"),
                    Some("one event has one phase and one timeout: merge the tables".to_owned()),
                );
                ok = false;
                continue;
            }
            described.push(spec.event);
            if let Some(item) = table.get("phase") {
                match self.string(item, "phase").as_deref() {
                    Some("after") => spec.phase = HookPhase::After,
                    Some("before") if spec.event == "step_start" => {
                        spec.phase = HookPhase::Before;
                    }
                    Some("before") => {
                        self.problem(
                            item.span(),
                            format!("`phase = \"before\"` is only available for `step_start`, not `{event}`"),
                            Some("other events are observed after they happen: write `phase = \"after\"` or leave it out".to_owned()),
                        );
                        ok = false;
                    }
                    Some(other) => {
                        self.problem(
                            item.span(),
                            format!("unknown phase `{}`", other.escape_default()),
                            Some("write `phase = \"before\"` or `phase = \"after\"`".to_owned()),
                        );
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            if let Some(item) = table.get("timeout") {
                let Some(text) = self.string(item, "timeout") else {
                    ok = false;
                    continue;
                };
                match humantime::parse_duration(&text) {
                    Ok(timeout) if !timeout.is_zero() && timeout <= MAX_HOOK_TIMEOUT => {
                        spec.timeout = timeout;
                    }
                    Ok(_) => {
                        self.problem(
                            item.span(),
                            format!("hook timeout `{}` is out of range", text.escape_default()),
                            Some(
                                "write a duration above 0 and at most 10m, e.g. `\"5s\"`"
                                    .to_owned(),
                            ),
                        );
                        ok = false;
                    }
                    Err(e) => {
                        self.problem(
                            item.span(),
                            format!("invalid hook timeout `{}`: {e}", text.escape_default()),
                            Some(
                                "write a duration such as `\"500ms\"`, `\"5s\"` or `\"1m\"`"
                                    .to_owned(),
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        specs.sort_by_key(|s| HOOK_EVENTS.iter().position(|e| *e == s.event));
        ok.then_some(specs)
    }

    fn subcommands(&mut self, item: &Item, capabilities: &[String]) -> Option<Vec<SubcommandSpec>> {
        let hint = "write `[[subcommand]]` tables with `verb`, `about` and `args`".to_owned();
        let Some(tables) = item.as_array_of_tables() else {
            self.problem(
                item.span(),
                format!(
                    "`subcommand` must be an array of tables, found {}",
                    found(item)
                ),
                Some(hint),
            );
            return None;
        };
        let mut ok = true;
        let mut specs = Vec::new();
        for table in tables.iter() {
            self.unknown_keys(table, SUBCOMMAND_KEYS, "`[[subcommand]]`");
            let Some((verb, span)) = self.required_string(table, "verb") else {
                ok = false;
                continue;
            };
            if !capabilities.contains(&format!("subcommand:{verb}")) {
                self.problem(
                    span,
                    format!(
                        "`[[subcommand]]` describes `{verb}`, which `capabilities` does not declare"
                    ),
                    Some(format!("add \"subcommand:{verb}\" to `capabilities`")),
                );
                ok = false;
            }
            let about = match table.get("about") {
                None => String::new(),
                Some(item) => self.string(item, "about").unwrap_or_default(),
            };
            let mut args = Vec::new();
            if let Some(item) = table.get("args") {
                let Some(array) = item.as_array() else {
                    self.problem(
                        item.span(),
                        format!(
                            "`args` must be an array of inline tables, found {}",
                            found(item)
                        ),
                        None,
                    );
                    ok = false;
                    continue;
                };
                for value in array.iter() {
                    let Some(arg) = value.as_inline_table() else {
                        self.problem(
                            value.span(),
                            format!("an argument must be an inline table, found {}", value.type_name()),
                            Some("write `{ name = \"flag\", long = \"flag\", takes_value = true, help = \"...\" }`".to_owned()),
                        );
                        ok = false;
                        continue;
                    };
                    let arg: &dyn TableLike = arg;
                    self.unknown_keys(arg, ARG_KEYS, "an argument");
                    let Some((name, name_span)) = self.required_string(arg, "name") else {
                        ok = false;
                        continue;
                    };
                    let long = match arg.get("long") {
                        None => name.clone(),
                        Some(item) => self.string(item, "long").unwrap_or_default(),
                    };
                    if !valid_name(&long) || !valid_name(&name) {
                        self.problem(
                            name_span,
                            format!("invalid argument name `{}`", name.escape_default()),
                            Some(NAME_RULE.to_owned()),
                        );
                        ok = false;
                    }
                    let takes_value = match arg.get("takes_value") {
                        None => false,
                        Some(item) => match item.as_bool() {
                            Some(b) => b,
                            None => {
                                self.problem(
                                    item.span(),
                                    format!(
                                        "`takes_value` must be true or false, found {}",
                                        found(item)
                                    ),
                                    None,
                                );
                                ok = false;
                                false
                            }
                        },
                    };
                    let help = match arg.get("help") {
                        None => String::new(),
                        Some(item) => self.string(item, "help").unwrap_or_default(),
                    };
                    args.push(ArgSpec {
                        name,
                        long,
                        takes_value,
                        help,
                    });
                }
            }
            specs.push(SubcommandSpec { verb, about, args });
        }
        ok.then_some(specs)
    }

    fn required_string(
        &mut self,
        table: &dyn TableLike,
        key: &str,
    ) -> Option<(String, Option<Range<usize>>)> {
        match table.get(key) {
            None => {
                self.problem(
                    None,
                    format!("`{key}` is missing"),
                    Some(format!("add `{key} = \"...\"`")),
                );
                None
            }
            Some(item) => self.string(item, key).map(|s| (s, item.span())),
        }
    }

    fn string(&mut self, item: &Item, key: &str) -> Option<String> {
        match item.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.problem(
                    item.span(),
                    format!("`{key}` must be a string, found {}", found(item)),
                    None,
                );
                None
            }
        }
    }

    fn protocol(&mut self, doc: &toml_edit::Table) -> Option<(u32, u32)> {
        let hint = "write `protocol = { min = 1, max = 3 }`".to_owned();
        let Some(protocol) = doc.get("protocol") else {
            self.problem(None, "`protocol` is missing".to_owned(), Some(hint));
            return None;
        };
        let Some(table) = protocol.as_table_like() else {
            self.problem(
                protocol.span(),
                format!("`protocol` must be a table, found {}", found(protocol)),
                Some(hint),
            );
            return None;
        };
        self.unknown_keys(table, PROTOCOL_KEYS, "`protocol`");
        let mut bound = |key: &str| -> Option<u32> {
            let Some(item) = table.get(key) else {
                self.problem(
                    protocol.span(),
                    format!("`protocol.{key}` is missing"),
                    Some(hint.clone()),
                );
                return None;
            };
            match item.as_integer().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    self.problem(
                        item.span(),
                        format!(
                            "`protocol.{key}` must be a protocol version (an integer from 1), \
                             found {}",
                            found(item)
                        ),
                        None,
                    );
                    None
                }
            }
        };
        let (min, max) = (bound("min")?, bound("max")?);
        if min > max {
            self.problem(
                protocol.span(),
                format!("`protocol` is empty: min {min} is above max {max}"),
                None,
            );
            return None;
        }
        Some((min, max))
    }

    fn capabilities(&mut self, doc: &toml_edit::Table) -> Option<Vec<String>> {
        let hint = "write e.g. `capabilities = [\"executor:mine\"]`".to_owned();
        let Some(item) = doc.get("capabilities") else {
            self.problem(None, "`capabilities` is missing".to_owned(), Some(hint));
            return None;
        };
        let Some(array) = item.as_array() else {
            self.problem(
                item.span(),
                format!(
                    "`capabilities` must be an array of strings, found {}",
                    found(item)
                ),
                Some(hint),
            );
            return None;
        };
        let mut ok = true;
        let mut capabilities = Vec::new();
        for value in array.iter() {
            let span = value.span();
            let Some(text) = value.as_str() else {
                self.problem(
                    span,
                    format!("a capability must be a string, found {}", value.type_name()),
                    None,
                );
                ok = false;
                continue;
            };
            if let Err((message, hint)) = check_capability(text) {
                self.problem(span, message, hint);
                ok = false;
                continue;
            }
            if capabilities.iter().any(|c| c == text) {
                self.problem(span, format!("capability `{text}` is listed twice"), None);
                ok = false;
                continue;
            }
            capabilities.push(text.to_owned());
        }
        ok.then_some(capabilities)
    }

    fn limits(&mut self, item: &Item) -> Option<Limits> {
        let Some(table) = item.as_table_like() else {
            self.problem(
                item.span(),
                format!("`limits` must be a table, found {}", found(item)),
                Some("write `limits = { memory = \"256MiB\", pids = 64, cpu = 1.0 }`".to_owned()),
            );
            return None;
        };
        self.unknown_keys(table, LIMITS_KEYS, "`limits`");
        let mut ok = true;
        let mut limits = Limits::default();
        if let Some(item) = table.get("memory") {
            let parsed = match item {
                Item::Value(Value::Integer(n)) => u64::try_from(*n.value())
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| "must be above zero".to_owned()),
                Item::Value(Value::String(s)) => {
                    crate::config::parse_size(s.value()).and_then(|n| {
                        if n > 0 {
                            Ok(n)
                        } else {
                            Err("must be above zero".to_owned())
                        }
                    })
                }
                other => Err(format!(
                    "must be a size such as \"256MiB\", found {}",
                    found(other)
                )),
            };
            match parsed {
                Ok(n) => limits.memory_bytes = Some(n),
                Err(e) => {
                    self.problem(item.span(), format!("`limits.memory` {e}"), None);
                    ok = false;
                }
            }
        }
        if let Some(item) = table.get("pids") {
            match item.as_integer().and_then(|n| u64::try_from(n).ok()) {
                Some(n) if n > 0 => limits.pids = Some(n),
                _ => {
                    self.problem(
                        item.span(),
                        format!(
                            "`limits.pids` must be a positive integer, found {}",
                            found(item)
                        ),
                        None,
                    );
                    ok = false;
                }
            }
        }
        if let Some(item) = table.get("cpu") {
            let cores = item
                .as_float()
                .or_else(|| item.as_integer().map(|n| n as f64));
            match cores {
                Some(c) if c > 0.0 && c.is_finite() => limits.cpu = Some(c),
                _ => {
                    self.problem(
                        item.span(),
                        format!(
                            "`limits.cpu` must be a number of cores above zero, found {}",
                            found(item)
                        ),
                        None,
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(limits)
    }
}

/// Checks one capability string: `KIND:VALUE` with a known kind; executor names and verbs
/// follow [`valid_name`].
pub fn check_capability(text: &str) -> Result<(), (String, Option<String>)> {
    let Some((kind, value)) = text.split_once(':') else {
        return Err((
            format!("capability `{}` is not `KIND:NAME`", text.escape_default()),
            Some("write e.g. `executor:mine`, `hook:step_start` or `subcommand:graph`".to_owned()),
        ));
    };
    if !CAPABILITY_KINDS.contains(&kind) {
        let hint = did_you_mean(kind, CAPABILITY_KINDS.iter().copied())
            .map(|s| format!("did you mean `{s}`?"))
            .unwrap_or_else(|| "kinds: `executor`, `hook`, `subcommand`".to_owned());
        return Err((
            format!("unknown capability kind `{}`", kind.escape_default()),
            Some(hint),
        ));
    }
    if kind == "hook" && !HOOK_EVENTS.contains(&value) {
        let hint = did_you_mean(value, HOOK_EVENTS.iter().copied())
            .map(|s| format!("did you mean `hook:{s}`?"))
            .unwrap_or_else(|| format!("events: {}", HOOK_EVENTS.join(", ")));
        return Err((
            format!(
                "unknown event `{}` in capability `{}`",
                value.escape_default(),
                text.escape_default()
            ),
            Some(hint),
        ));
    }
    let named = matches!(kind, "executor" | "subcommand");
    if value.is_empty() || (named && !valid_name(value)) {
        return Err((
            format!(
                "invalid {kind} name `{}` in capability `{}`",
                value.escape_default(),
                text.escape_default()
            ),
            Some(NAME_RULE.to_owned()),
        ));
    }
    Ok(())
}

fn found(item: &Item) -> String {
    match item {
        Item::None => "nothing".to_owned(),
        Item::Value(v) => format!("{} `{}`", v.type_name(), v.to_string().trim()),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "mine"
version = "0.1.0"
description = "runs steps my way"
executable = "hm-plugin-mine"
protocol = { min = 1, max = 3 }
capabilities = ["executor:mine", "subcommand:graph", "hook:step_start"]
limits = { memory = "256MiB", pids = 64, cpu = 0.5 }
"#;

    fn errors(text: &str) -> String {
        match parse(text, Path::new("/b/plugin.toml")) {
            Ok(m) => panic!("expected errors, got {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_complete_manifest_reads_into_its_fields() {
        let m = parse(GOOD, Path::new("plugin.toml")).expect("valid");
        assert_eq!(m.name, "mine");
        assert_eq!(m.executable, "hm-plugin-mine");
        assert_eq!(m.protocol, (1, 3));
        assert_eq!(m.limits.memory_bytes, Some(256 << 20));
        assert_eq!(m.limits.pids, Some(64));
        assert_eq!(m.limits.cpu, Some(0.5));
        assert_eq!(m.executors().collect::<Vec<_>>(), ["mine"]);
        assert_eq!(
            m.claims(),
            [Claim::Executor("mine".into()), Claim::Verb("graph".into())]
        );
    }

    #[test]
    fn subcommand_tables_describe_declared_verbs() {
        let text = format!(
            "{GOOD}\n[[subcommand]]\nverb = \"graph\"\nabout = \"Draws the DAG\"\n\
             args = [{{ name = \"out\", takes_value = true, help = \"where\" }}, \
             {{ name = \"dot\", long = \"as-dot\" }}]\n"
        );
        let m = parse(&text, Path::new("plugin.toml")).expect("valid");
        assert_eq!(m.subcommands.len(), 1);
        let graph = &m.subcommands[0];
        assert_eq!(
            (graph.verb.as_str(), graph.about.as_str()),
            ("graph", "Draws the DAG")
        );
        assert_eq!(
            graph.args,
            [
                ArgSpec {
                    name: "out".into(),
                    long: "out".into(),
                    takes_value: true,
                    help: "where".into(),
                },
                ArgSpec {
                    name: "dot".into(),
                    long: "as-dot".into(),
                    takes_value: false,
                    help: String::new(),
                },
            ]
        );
        let e = errors(&format!(
            "{GOOD}\n[[subcommand]]\nverb = \"other\"\nargs = [{{ nme = \"x\" }}]\n"
        ));
        assert!(e.contains("which `capabilities` does not declare"), "{e}");
        assert!(e.contains("unknown key `nme` in an argument"), "{e}");
        assert!(e.contains("`name` is missing"), "{e}");
    }

    #[test]
    fn hook_tables_set_phase_and_timeout_and_default_to_after() {
        let text = GOOD.replace(
            "\"hook:step_start\"",
            "\"hook:step_start\", \"hook:build_end\", \"hook:*\"",
        ) + "\n[[hook]]\nevent = \"step_start\"\nphase = \"before\"\ntimeout = \"1500ms\"\n";
        let m = parse(&text, Path::new("plugin.toml")).expect("valid");
        let spec = |event, phase, ms| HookSpec {
            event,
            phase,
            timeout: std::time::Duration::from_millis(ms),
        };
        assert_eq!(
            m.hooks,
            [
                spec("step_start", HookPhase::Before, 1500),
                spec("build_end", HookPhase::After, 5000),
                spec("*", HookPhase::After, 5000),
            ]
        );
        // Hooks claim nothing: any number of plugins may observe one event.
        assert_eq!(m.claims().len(), 2);
    }

    #[test]
    fn bad_hooks_are_reported_where_they_are() {
        let e = errors(&GOOD.replace("hook:step_start", "hook:step_stat"));
        assert!(e.contains("unknown event `step_stat`"), "{e}");
        assert!(e.contains("did you mean `hook:step_start`?"), "{e}");
        let text = GOOD.replace(
            "\"hook:step_start\"",
            "\"hook:step_start\", \"hook:step_end\"",
        ) + "\n[[hook]]\nevent = \"step_end\"\nphase = \"before\"\n\
               \n[[hook]]\nevent = \"step_start\"\nphase = \"during\"\ntimeout = \"0s\"\n\
               \n[[hook]]\nevent = \"build_end\"\n\
               \n[[hook]]\nevent = \"step_start\"\nwhen = 1\n";
        let e = errors(&text);
        assert!(
            e.contains("/b/plugin.toml:12:9: `phase = \"before\"` is only available for `step_start`, not `step_end`"),
            "{e}"
        );
        assert!(e.contains("unknown phase `during`"), "{e}");
        assert!(e.contains("hook timeout `0s` is out of range"), "{e}");
        assert!(
            e.contains("`[[hook]]` describes `build_end`, which `capabilities` does not declare"),
            "{e}"
        );
        assert!(
            e.contains("`[[hook]]` for `step_start` appears twice"),
            "{e}"
        );
        assert!(e.contains("unknown key `when`"), "{e}");
    }

    #[test]
    fn description_and_limits_are_optional() {
        let text = "name = \"a\"\nversion = \"1\"\nexecutable = \"a\"\n\
                    protocol = { min = 1, max = 1 }\ncapabilities = []\n";
        let m = parse(text, Path::new("plugin.toml")).expect("valid");
        assert_eq!(m.description, "");
        assert_eq!(m.limits, Limits::default());
    }

    #[test]
    fn toml_syntax_errors_carry_line_and_column() {
        let e = errors("name = \"a\"\nversion = 1.0.0\n");
        assert!(e.starts_with("/b/plugin.toml:2:"), "{e}");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let text = r#"name = "bad name"
version = 3
executable = "../escape"
protocol = { min = 4, max = 2 }
capabilities = ["executor:ok", "exector:x", "executor:"]
limit = {}
"#;
        let e = errors(text);
        for expected in [
            "/b/plugin.toml:1:8: invalid plugin name `bad name`",
            "/b/plugin.toml:2:11: `version` must be a string",
            "/b/plugin.toml:3:14: `executable` must be a file name",
            "/b/plugin.toml:4:12: `protocol` is empty: min 4 is above max 2",
            "/b/plugin.toml:5:32: unknown capability kind `exector`",
            "hint: did you mean `executor`?",
            "/b/plugin.toml:5:45: invalid executor name ``",
            "/b/plugin.toml:6:1: unknown key `limit` in the manifest",
            "hint: did you mean `limits`?",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
    }

    #[test]
    fn missing_keys_are_named() {
        let e = errors("name = \"a\"\n");
        for key in ["version", "executable", "protocol", "capabilities"] {
            assert!(e.contains(&format!("`{key}` is missing")), "{e}");
        }
    }

    #[test]
    fn bad_limits_are_reported() {
        let text = "name = \"a\"\nversion = \"1\"\nexecutable = \"a\"\n\
                    protocol = { min = 1, max = 1 }\ncapabilities = []\n\
                    limits = { memory = \"lots\", pids = 0, cpu = -1, disk = 1 }\n";
        let e = errors(text);
        assert!(e.contains("`limits.memory`"), "{e}");
        assert!(
            e.contains("`limits.pids` must be a positive integer"),
            "{e}"
        );
        assert!(e.contains("`limits.cpu` must be a number of cores"), "{e}");
        assert!(e.contains("unknown key `disk` in `limits`"), "{e}");
    }

    #[test]
    fn names_follow_the_safe_alphabet() {
        for good in ["a", "shell", "my-plugin_2.0", "_x"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
