//! `cargo xtask plugin new NAME [--kind executor|hook|subcommand] [--dry-run]`: scaffolds
//! `plugins/NAME/` (a crate with a working plugin of that kind, its `plugin.toml` and a test
//! through `hm_sdk::testing`) and adds it to the workspace's members.
//!
//! Everything is checked and rendered before anything is written, so a refusal writes nothing.
//! The crate is written into a hidden directory beside its final place and renamed into place;
//! only then is `Cargo.toml` edited (through a temporary file and a rename), and if that fails
//! the new directory is removed again. A plugin directory is therefore either complete and in
//! the workspace, or absent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cargo_toml::{self, Value};
use crate::{EXIT_USAGE, Failure};

pub const USAGE: &str = "\
usage: cargo xtask plugin new NAME [--kind executor|hook|subcommand] [--dry-run]

Creates plugins/NAME/ (package hm-plugin-NAME) with a working plugin of that kind, its
plugin.toml and a test through hm_sdk::testing, and adds it to the workspace members.

  --kind executor     runs steps with `executor = \"NAME\"` (the step's shell, sh -e -c RUN by default) [default]
  --kind hook         after each step, appends `<step> <status>` to a file
  --kind subcommand   `hm NAME [--name WHO]` prints `hello, WHO!`
  --dry-run           list the files and the Cargo.toml edit, write nothing
";

/// What a plugin name may be, in words (the test of [`check_name`]).
///
/// Stricter than what hm accepts for plugin names (letters of either case, digits, `-`, `_`
/// and `.`): the name also becomes a package name (`hm-plugin-NAME`), a crate name (with `_`
/// for `-`, so `a-b` and `a_b` would be the same crate), a directory and a verb, and lowercase
/// letters, digits and `-` are what is safe and unambiguous in all of them.
pub const NAME_RULE: &str =
    "use at most 64 lowercase ASCII letters, digits and `-`, starting with a letter";

/// The plugins built into `hm`: an installed plugin of the same name would shadow them.
const BUILT_IN: &[&str] = &["shell", "docker", "swarm"];

/// The commands of `hm` itself, which no plugin verb may take (kernel `cli/verb.rs`).
const HM_COMMANDS: &[&str] = &["run", "validate", "version", "doctor", "plugin", "help"];

/// How long hm waits for a hook's answer unless the subscription says otherwise
/// (`hm_sdk::DEFAULT_HOOK_TIMEOUT`), as `plugin.toml` writes it.
const DEFAULT_HOOK_TIMEOUT: &str = "5000ms";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Executor,
    Hook,
    Subcommand,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Executor, Kind::Hook, Kind::Subcommand];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Executor => "executor",
            Kind::Hook => "hook",
            Kind::Subcommand => "subcommand",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Whether `name` may name a new plugin; the message says why not.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid plugin name: {NAME_RULE}"))
    }
}

struct Options {
    name: String,
    kind: Kind,
    dry_run: bool,
}

pub fn run(args: &[OsString], root: &Path) -> Result<(), Failure> {
    let Some(options) = parse(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let plan = plan(&options, root)?;
    if options.dry_run {
        print_dry_run(&plan);
        return Ok(());
    }
    apply(&plan, write_atomically)?;
    print_next_steps(&plan);
    Ok(())
}

/// The options, or `None` for `--help`.
fn parse(args: &[OsString]) -> Result<Option<Options>, Failure> {
    let usage = |message: String| Failure {
        message: format!("{message}\n\n{USAGE}"),
        code: EXIT_USAGE,
    };
    let mut name = None;
    let mut kind = None;
    let mut dry_run = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else {
            return Err(usage(format!("{arg:?} is not UTF-8")));
        };
        let kind_text = match arg {
            "-h" | "--help" => return Ok(None),
            "--dry-run" => {
                dry_run = true;
                continue;
            }
            "--kind" => match args.next().and_then(|k| k.to_str()) {
                Some(text) => text,
                None => return Err(usage("--kind needs a value".into())),
            },
            _ => match arg.strip_prefix("--kind=") {
                Some(text) => text,
                None if arg.starts_with('-') && arg.len() > 1 => {
                    return Err(usage(format!("unknown option {arg:?}")));
                }
                None if name.is_some() => {
                    return Err(usage(format!("one NAME only, got a second: {arg:?}")));
                }
                None => {
                    name = Some(arg.to_owned());
                    continue;
                }
            },
        };
        let Some(parsed) = Kind::parse(kind_text) else {
            let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(Failure {
                message: format!(
                    "unknown plugin kind {kind_text:?}: use one of {}",
                    kinds.join(", ")
                ),
                code: EXIT_USAGE,
            });
        };
        kind = Some(parsed);
    }
    let Some(name) = name else {
        return Err(usage("the plugin's NAME is missing".into()));
    };
    Ok(Some(Options {
        name,
        kind: kind.unwrap_or(Kind::Executor),
        dry_run,
    }))
}

/// The plugin to write: its name, kind and what its manifest declares.
#[derive(Debug, Clone)]
pub struct Scaffold {
    pub name: String,
    pub kind: Kind,
    /// The workspace's version (`[workspace.package]`), which the crate inherits and its
    /// `Plugin::new(NAME, env!("CARGO_PKG_VERSION"))` reports.
    pub version: String,
    /// The protocol range the SDK offers for a plugin of this kind
    /// (`hm_sdk::Plugin::protocol_range`): `hm_ipc::PROTOCOL_MIN..=PROTOCOL_MAX`, from
    /// `SUBCOMMANDS_SINCE` for a subcommand and `HOOKS_SINCE` for a hook.
    pub protocol: (u32, u32),
}

/// `hm --help` shows this for the subcommand kind's verb.
const SUBCOMMAND_ABOUT: &str = "Say hello";
const SUBCOMMAND_ARG_HELP: &str = "Who to greet (default: world)";

impl Scaffold {
    pub fn package(&self) -> String {
        format!("hm-plugin-{}", self.name)
    }

    fn crate_name(&self) -> String {
        self.package().replace('-', "_")
    }

    /// `my-plugin` → `MyPlugin`, for the type that implements the capability.
    fn type_name(&self) -> String {
        let mut out = String::new();
        for part in self.name.split('-').filter(|p| !p.is_empty()) {
            let mut chars = part.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars);
            }
        }
        out
    }

    fn description(&self) -> String {
        match self.kind {
            Kind::Executor => "runs a step's command with its shell".into(),
            Kind::Hook => "appends `<step> <status>` to a file after each step".into(),
            Kind::Subcommand => format!("hm {}: says hello", self.name),
        }
    }

    fn capabilities(&self) -> Vec<String> {
        match self.kind {
            Kind::Executor => vec![format!("executor:{}", self.name)],
            Kind::Hook => vec!["hook:step_end".into()],
            Kind::Subcommand => vec![format!("subcommand:{}", self.name)],
        }
    }

    /// `plugin.toml`: byte for byte what `hm_sdk::Plugin::manifest` renders for the plugin
    /// the templates build (the generated crate's test holds the two together).
    pub fn manifest(&self) -> String {
        let capabilities: Vec<String> = self
            .capabilities()
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        let mut text = format!(
            "name = {:?}\nversion = {:?}\ndescription = {:?}\nexecutable = {:?}\n\
             protocol = {{ min = {}, max = {} }}\ncapabilities = [{}]\n",
            self.name,
            self.version,
            self.description(),
            self.package(),
            self.protocol.0,
            self.protocol.1,
            capabilities.join(", ")
        );
        match self.kind {
            Kind::Executor => {}
            Kind::Hook => text.push_str(&format!(
                "\n[[hook]]\nevent = \"step_end\"\nphase = \"after\"\ntimeout = \
                 {DEFAULT_HOOK_TIMEOUT:?}\n"
            )),
            Kind::Subcommand => text.push_str(&format!(
                "\n[[subcommand]]\nverb = {:?}\nabout = {SUBCOMMAND_ABOUT:?}\nargs = [\n  \
                 {{ name = \"name\", long = \"name\", takes_value = true, help = \
                 {SUBCOMMAND_ARG_HELP:?} }},\n]\n",
                self.name
            )),
        }
        text
    }

    /// Every file of the crate: its path inside `plugins/NAME/` and its text.
    pub fn files(&self) -> Result<Vec<(String, String)>, Failure> {
        let (lib, test) = match self.kind {
            Kind::Executor => (
                include_str!("templates/executor/lib.rs.tmpl"),
                include_str!("templates/executor/test.rs.tmpl"),
            ),
            Kind::Hook => (
                include_str!("templates/hook/lib.rs.tmpl"),
                include_str!("templates/hook/test.rs.tmpl"),
            ),
            Kind::Subcommand => (
                include_str!("templates/subcommand/lib.rs.tmpl"),
                include_str!("templates/subcommand/test.rs.tmpl"),
            ),
        };
        let workspace = |deps: &[&str]| -> String {
            deps.iter()
                .map(|dep| format!("{dep}.workspace = true\n"))
                .collect()
        };
        let (dependencies, dev_dependencies) = match self.kind {
            Kind::Executor => (workspace(&["hm-sdk"]), workspace(&["tokio"])),
            Kind::Hook => (
                workspace(&["hm-sdk", "serde_json"]),
                workspace(&["tempfile", "tokio"]),
            ),
            Kind::Subcommand => (workspace(&["hm-sdk", "serde_json"]), workspace(&["tokio"])),
        };
        let values = [
            ("name", self.name.clone()),
            ("package", self.package()),
            ("crate", self.crate_name()),
            ("type", self.type_name()),
            ("description", format!("{:?}", self.description())),
            ("about", format!("{SUBCOMMAND_ABOUT:?}")),
            ("arg_help", format!("{SUBCOMMAND_ARG_HELP:?}")),
            ("dependencies", dependencies),
            ("dev_dependencies", dev_dependencies),
        ];
        let render = |template: &str, path: &str| -> Result<(String, String), Failure> {
            let mut text = template.to_owned();
            for (key, value) in &values {
                text = text.replace(&format!("{{{{{key}}}}}"), value);
            }
            match text.find("{{") {
                Some(at) => Err(Failure::new(format!(
                    "the template for {path} has an unknown placeholder at byte {at} (a bug in \
                     xtask)"
                ))),
                None => Ok((path.to_owned(), text)),
            }
        };
        Ok(vec![
            render(include_str!("templates/Cargo.toml.tmpl"), "Cargo.toml")?,
            ("plugin.toml".to_owned(), self.manifest()),
            render(lib, "src/lib.rs")?,
            render(include_str!("templates/main.rs.tmpl"), "src/main.rs")?,
            render(test, &format!("tests/{}.rs", self.name))?,
        ])
    }
}

/// Everything `plugin new` will do, computed before anything is written.
struct Plan {
    scaffold: Scaffold,
    /// `plugins/NAME`, absolute.
    dir: PathBuf,
    /// The member path: `plugins/NAME`.
    member: String,
    files: Vec<(String, String)>,
    cargo_toml: PathBuf,
    /// The root `Cargo.toml` before and after the edit.
    cargo_toml_before: String,
    cargo_toml_after: String,
    /// The arrays that get the member (`members`, and `default-members` if there is one).
    edited_keys: Vec<&'static str>,
    /// The workspace's edition, for rustfmt; `None` leaves the sources as rendered.
    edition: Option<String>,
}

fn plan(options: &Options, root: &Path) -> Result<Plan, Failure> {
    let usage = |message: String| Failure {
        message,
        code: EXIT_USAGE,
    };
    let name = &options.name;
    check_name(name).map_err(usage)?;
    let member = format!("plugins/{name}");
    let dir = root.join(&member);
    let cargo_toml = root.join("Cargo.toml");
    let before = std::fs::read_to_string(&cargo_toml)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", cargo_toml.display())))?;
    let in_cargo_toml = |e: String| Failure::new(format!("{}: {e}", cargo_toml.display()));

    if BUILT_IN.contains(&name.as_str()) {
        return Err(usage(format!(
            "{name:?} is taken: hm has a built-in plugin of that name; choose another name"
        )));
    }
    if options.kind == Kind::Subcommand && HM_COMMANDS.contains(&name.as_str()) {
        return Err(usage(format!(
            "{name:?} is taken: `hm {name}` is a command of hm itself, so no plugin verb can \
             have that name; choose another name"
        )));
    }
    if dir.symlink_metadata().is_ok() {
        return Err(usage(format!(
            "{name:?} is taken: {} already exists; choose another name (or remove that \
             directory first)",
            dir.display()
        )));
    }
    let members = crate::workspace::members(&before).map_err(in_cargo_toml)?;
    if let Some(taken) = members
        .iter()
        .find(|m| m.trim_start_matches("./").trim_end_matches('/') == member)
    {
        return Err(usage(format!(
            "{name:?} is taken: the workspace already has the member {taken:?} in {} (without \
             its directory); choose another name or remove that member",
            cargo_toml.display()
        )));
    }
    let scaffold = Scaffold {
        name: name.clone(),
        kind: options.kind,
        version: workspace_version(&before).map_err(in_cargo_toml)?,
        protocol: protocol_range(root, options.kind)?,
    };
    if let Some(found) = crate::workspace::packages(root, &before)
        .into_iter()
        .find(|p| p.name == scaffold.package())
    {
        return Err(usage(format!(
            "{name:?} is taken: the workspace already has a package {} in {}; choose another \
             name",
            found.name,
            found.dir.display()
        )));
    }

    let covered = members.iter().any(|m| {
        m.strip_suffix("/*")
            .is_some_and(|dir| dir.trim_start_matches("./") == "plugins")
    });
    let mut after = before.clone();
    let mut edited_keys = Vec::new();
    for key in ["members", "default-members"] {
        if key == "members" && covered {
            continue;
        }
        if let Some(edited) =
            cargo_toml::add_to_array(&after, key, &member).map_err(in_cargo_toml)?
        {
            after = edited;
            edited_keys.push(key);
        }
    }
    if !covered && !edited_keys.contains(&"members") {
        return Err(Failure::new(format!(
            "{} has no `members` array in [workspace] to add {member:?} to",
            cargo_toml.display()
        )));
    }
    let edition = match cargo_toml::find(&before, "workspace.package", "edition") {
        Ok(Some(Value::Str(edition))) => Some(edition),
        _ => None,
    };
    Ok(Plan {
        files: scaffold.files()?,
        edition,
        scaffold,
        dir,
        member,
        cargo_toml,
        cargo_toml_before: before,
        cargo_toml_after: after,
        edited_keys,
    })
}

/// `version` of `[workspace.package]`, which every crate inherits.
fn workspace_version(cargo_toml: &str) -> Result<String, String> {
    match cargo_toml::find(cargo_toml, "workspace.package", "version")? {
        Some(Value::Str(version)) => Ok(version),
        _ => Err(
            "no `version = \"...\"` in [workspace.package], which the new crate \
                  inherits"
                .into(),
        ),
    }
}

/// The protocol range `hm_sdk::Plugin::protocol_range` gives a plugin of `kind`:
/// `PROTOCOL_MIN..=PROTOCOL_MAX` of `hm-ipc`, starting no lower than `SUBCOMMANDS_SINCE` for a
/// subcommand or `HOOKS_SINCE` for a hook. Read from the source, as xtask links nothing of the
/// workspace.
fn protocol_range(root: &Path, kind: Kind) -> Result<(u32, u32), Failure> {
    let dir = root.join("ipc/src");
    let constant = |name: &str| -> Result<u32, Failure> {
        let needle = format!("pub const {name}: u32 = ");
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries.flatten().find_map(|entry| {
                let text = std::fs::read_to_string(entry.path()).ok()?;
                let rest = &text[text.find(&needle)? + needle.len()..];
                rest[..rest.find(';')?].trim().parse().ok()
            })
        });
        found.ok_or_else(|| {
            Failure::new(format!(
                "cannot find `pub const {name}: u32 = N;` in {} (the protocol range \
                 plugin.toml declares)",
                dir.display()
            ))
        })
    };
    let min = constant("PROTOCOL_MIN")?;
    let max = constant("PROTOCOL_MAX")?;
    let min = match kind {
        Kind::Executor => min,
        Kind::Subcommand => min.max(constant("SUBCOMMANDS_SINCE")?),
        Kind::Hook => min.max(constant("HOOKS_SINCE")?),
    };
    Ok((min, max))
}

/// Replaces `path` with `text` through a temporary file beside it and a rename, so a reader
/// (or a crash) never sees half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.xtask-{}", std::process::id()));
    let written = std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Writes the crate beside its place, renames it into place, then edits `Cargo.toml` with
/// `edit_cargo_toml`; undoes the directory if that fails.
fn apply(
    plan: &Plan,
    edit_cargo_toml: impl FnOnce(&Path, &str) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let parent = plan.dir.parent().unwrap_or(&plan.dir);
    std::fs::create_dir_all(parent)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", parent.display())))?;
    let name = &plan.scaffold.name;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let written = write_tree(&staging, &plan.files).and_then(|()| {
        if let Some(edition) = &plan.edition {
            format_sources(&staging, &plan.files, edition);
        }
        // A directory of that name made since the checks would be replaced by the rename if it
        // were empty; refuse rather than take it over.
        if plan.dir.symlink_metadata().is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} appeared while the plugin was written",
                    plan.dir.display()
                ),
            ));
        }
        std::fs::rename(&staging, &plan.dir)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(Failure::new(format!(
            "cannot write {}: {e}; nothing was changed",
            plan.dir.display()
        )));
    }
    if plan.cargo_toml_after != plan.cargo_toml_before
        && let Err(e) = edit_cargo_toml(&plan.cargo_toml, &plan.cargo_toml_after)
    {
        let undone = match std::fs::remove_dir_all(&plan.dir) {
            Ok(()) => "nothing was changed".to_owned(),
            Err(undo) => format!(
                "and {} could not be removed again: {undo}",
                plan.dir.display()
            ),
        };
        return Err(Failure::new(format!(
            "cannot add {:?} to {}: {e}; {undone}",
            plan.member,
            plan.cargo_toml.display()
        )));
    }
    Ok(())
}

fn write_tree(dir: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// Runs rustfmt over the crate's Rust files. The templates are formatted for names of usual
/// length; a long name can push a line past rustfmt's widths, and the new crate should pass
/// `cargo fmt --check` all the same. Best effort: without rustfmt the sources stay as
/// rendered, which compiles just as well.
fn format_sources(dir: &Path, files: &[(String, String)], edition: &str) {
    let sources: Vec<PathBuf> = files
        .iter()
        .filter(|(path, _)| path.ends_with(".rs"))
        .map(|(path, _)| dir.join(path))
        .collect();
    let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
    let formatted = std::process::Command::new(&rustfmt)
        .args(["--edition", edition])
        .args(&sources)
        .stdout(std::process::Stdio::null())
        .status();
    match formatted {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("xtask: note: rustfmt {status}; the sources are left as rendered"),
        Err(e) => eprintln!(
            "xtask: note: cannot run {}: {e}; the sources are left as rendered",
            Path::new(&rustfmt).display()
        ),
    }
}

fn print_dry_run(plan: &Plan) {
    let scaffold = &plan.scaffold;
    println!(
        "would create {}/ ({} plugin, package {}):",
        plan.member,
        scaffold.kind.as_str(),
        scaffold.package()
    );
    for (path, _) in &plan.files {
        println!("  {}/{path}", plan.member);
    }
    if plan.edited_keys.is_empty() {
        println!("would leave Cargo.toml as it is (`plugins/*` already covers the directory)");
    } else {
        println!(
            "would add {:?} to {} in Cargo.toml:",
            plan.member,
            plan.edited_keys.join(" and ")
        );
        for line in changed_lines(&plan.cargo_toml_before, &plan.cargo_toml_after) {
            println!("  {line}");
        }
    }
    println!("nothing written (--dry-run)");
}

/// The lines that differ between `before` and `after`, as `-` and `+` lines.
fn changed_lines(before: &str, after: &str) -> Vec<String> {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let removed = old[prefix..old.len() - suffix]
        .iter()
        .map(|l| format!("- {l}"));
    let added = new[prefix..new.len() - suffix]
        .iter()
        .map(|l| format!("+ {l}"));
    removed.chain(added).collect()
}

fn print_next_steps(plan: &Plan) {
    let scaffold = &plan.scaffold;
    let name = &scaffold.name;
    println!(
        "created {}/ ({} plugin, package {}) and added it to the workspace",
        plan.member,
        scaffold.kind.as_str(),
        scaffold.package()
    );
    println!();
    println!("next:");
    let package = scaffold.package();
    let steps = [
        (
            format!("cargo test -p {package}"),
            "its tests, through hm_sdk::testing",
        ),
        (
            format!("cargo xtask plugin install {name}"),
            "build it in release and install it for your user",
        ),
        (
            format!("cargo xtask plugin install {name} --project"),
            "... or into the project around the current directory",
        ),
    ];
    let width = steps
        .iter()
        .map(|(command, _)| command.len())
        .max()
        .unwrap_or(0);
    for (command, what) in &steps {
        println!("  {command:width$}   # {what}");
    }
    println!();
    match scaffold.kind {
        Kind::Executor => {
            println!("then run a step with it, in a project's hm.toml:");
            println!();
            println!("  [steps.hello]");
            println!("  executor = {name:?}");
            println!("  run = \"echo hello from {name}\"");
        }
        Kind::Hook => {
            println!("then turn it on in a project's hm.toml (hm runs its hook after each step):");
            println!();
            println!("  [plugins.{name}]");
            println!(
                "  config = {{ path = \"{name}.log\" }}   # one line `<step> <status>` per step"
            );
        }
        Kind::Subcommand => {
            println!("then:");
            println!();
            println!("  hm {name} --name you   # prints: hello, you!");
        }
    }
    println!();
    println!(
        "(plugin.toml must stay what `{} --hm-manifest` prints; the crate's test checks that)",
        scaffold.package()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for good in ["a", "my-plugin", "k8s", "a-1-b", &"x".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "My",
            "1st",
            "-a",
            "a_b",
            "a.b",
            "a b",
            "über",
            "a/b",
            &"x".repeat(65),
        ] {
            let refusal = check_name(bad).expect_err(bad);
            assert!(refusal.contains(NAME_RULE), "{refusal}");
        }
    }

    #[test]
    fn type_names_are_camel_case() {
        let scaffold = |name: &str| Scaffold {
            name: name.into(),
            kind: Kind::Executor,
            version: "0.1.0".into(),
            protocol: (1, 5),
        };
        assert_eq!(scaffold("my-plugin").type_name(), "MyPlugin");
        assert_eq!(scaffold("k8s").type_name(), "K8s");
        assert_eq!(scaffold("a--b-1").type_name(), "AB1");
    }

    #[test]
    fn changed_lines_show_only_the_edit() {
        assert_eq!(
            changed_lines("a\nb\nc\n", "a\nb2\nc\n"),
            ["- b".to_owned(), "+ b2".to_owned()]
        );
        assert_eq!(changed_lines("a\nc\n", "a\nb\nc\n"), ["+ b".to_owned()]);
    }

    fn scratch_plan(root: &Path) -> Plan {
        std::fs::create_dir_all(root.join("ipc/src")).unwrap();
        std::fs::write(
            root.join("ipc/src/handshake.rs"),
            "pub const PROTOCOL_MIN: u32 = 1;\npub const PROTOCOL_MAX: u32 = 5;\n\
             pub const SUBCOMMANDS_SINCE: u32 = 4;\npub const HOOKS_SINCE: u32 = 5;\n",
        )
        .unwrap();
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"kernel\"]\n\n[workspace.package]\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let options = Options {
            name: "fresh".into(),
            kind: Kind::Hook,
            dry_run: false,
        };
        plan(&options, root).unwrap_or_else(|f| panic!("{}", f.message))
    }

    #[test]
    fn a_failed_cargo_toml_edit_removes_the_new_directory() {
        let root = tempfile::tempdir().unwrap();
        let plan = scratch_plan(root.path());
        let failure = apply(&plan, |_, _| Err(std::io::Error::other("disk full")))
            .expect_err("the edit failed");
        assert!(failure.message.contains("disk full"), "{}", failure.message);
        assert!(
            failure.message.contains("nothing was changed"),
            "{}",
            failure.message
        );
        let left: Vec<_> = std::fs::read_dir(root.path().join("plugins"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            std::fs::read_to_string(root.path().join("Cargo.toml")).unwrap(),
            plan.cargo_toml_before
        );
    }

    #[test]
    fn the_plan_is_written_whole_and_the_members_get_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let plan = scratch_plan(root.path());
        apply(&plan, write_atomically).unwrap_or_else(|f| panic!("{}", f.message));
        for (path, text) in &plan.files {
            let written = std::fs::read_to_string(plan.dir.join(path)).unwrap();
            assert_eq!(&written, text, "{path}");
        }
        assert_eq!(
            std::fs::read_to_string(root.path().join("Cargo.toml")).unwrap(),
            "[workspace]\nmembers = [\"kernel\", \"plugins/fresh\"]\n\n[workspace.package]\n\
             version = \"0.1.0\"\n"
        );
        let entries: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!entries.iter().any(|e| e.contains("xtask-")), "{entries:?}");
    }
}
