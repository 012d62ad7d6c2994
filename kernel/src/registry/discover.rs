//! Discovery: every plugin bundle in every layer, read from manifests without spawning
//! anything; which one of each name is in effect; and what is wrong with the set (bad
//! manifests, two plugins claiming one executor or verb).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::manifest::{self, Claim, MANIFEST_FILE, Manifest, ManifestError, display_path};
use crate::config::Limits;

/// Where a bundle was found. The order is precedence: a project bundle wins over a user one of
/// the same name, which wins over a built-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// `<project>/.hm/plugins/`.
    Project,
    /// `$XDG_DATA_HOME/hm/plugins/` (default `~/.local/share/hm/plugins/`).
    User,
    /// Shipped inside the `hm` binary.
    Builtin,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Project => "project",
            Layer::User => "user",
            Layer::Builtin => "built-in",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to start one plugin and what it claims to provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub name: String,
    pub version: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// `executor:NAME`, `hook:...`, `subcommand:...` as the manifest declares them.
    pub capabilities: Vec<String>,
    /// The events its hook observes (from the manifest's `hook:EVENT` capabilities).
    pub hooks: Vec<super::manifest::HookSpec>,
    pub protocol: (u32, u32),
    /// Where it came from, for messages: "built-in" or the bundle directory.
    pub origin: String,
}

impl PluginSpec {
    pub fn executors(&self) -> impl Iterator<Item = &str> {
        self.capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("executor:"))
    }
}

/// The built-in plugins: the `hm` binary re-executed with an internal entry.
/// The kernel library does not know what they are; the binary tells it.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub name: &'static str,
    pub version: &'static str,
    pub capabilities: Vec<String>,
}

/// The internal entry a built-in plugin runs under: `hm __plugin NAME`.
pub const BUILTIN_ENTRY: &str = "__plugin";

/// The plugins directories of the two installable layers; `None` when there is none (no
/// project, or neither `XDG_DATA_HOME` nor `HOME` is set).
#[derive(Debug, Clone, Default)]
pub struct PluginDirs {
    pub project: Option<PathBuf>,
    pub user: Option<PathBuf>,
}

impl PluginDirs {
    /// The directories seen from the project whose `hm.toml` is in `project_root`.
    pub fn for_project(project_root: &Path) -> Self {
        Self {
            project: Some(project_plugins_dir(project_root)),
            user: user_plugins_dir(),
        }
    }

    pub fn dir(&self, layer: Layer) -> Option<&Path> {
        match layer {
            Layer::Project => self.project.as_deref(),
            Layer::User => self.user.as_deref(),
            Layer::Builtin => None,
        }
    }
}

/// `<project>/.hm/plugins`.
pub fn project_plugins_dir(project_root: &Path) -> PathBuf {
    project_root.join(".hm/plugins")
}

/// `$XDG_DATA_HOME/hm/plugins`, with the XDG default `~/.local/share` when the variable is
/// unset, empty or relative (the specification says to ignore relative values).
pub fn user_plugins_dir() -> Option<PathBuf> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".local/share"),
    };
    Some(data.join("hm/plugins"))
}

/// One plugin bundle in one layer.
#[derive(Debug, Clone)]
pub struct Installed {
    pub manifest: Manifest,
    pub layer: Layer,
    /// The bundle directory; `None` for a built-in plugin.
    pub dir: Option<PathBuf>,
    /// The layer of the plugin of the same name that is in effect instead of this one.
    pub shadowed_by: Option<Layer>,
}

impl Installed {
    fn builtin(builtin: &Builtin) -> Self {
        Self {
            manifest: Manifest {
                name: builtin.name.to_owned(),
                version: builtin.version.to_owned(),
                description: "built into hm".to_owned(),
                executable: "hm".to_owned(),
                protocol: (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
                capabilities: builtin.capabilities.clone(),
                limits: Limits::default(),
                subcommands: Vec::new(),
                hooks: Vec::new(),
            },
            layer: Layer::Builtin,
            dir: None,
            shadowed_by: None,
        }
    }

    /// The program to execute: the bundle's executable, or `hm` itself for a built-in.
    pub fn program(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.join(&self.manifest.executable),
            None => own_program().to_owned(),
        }
    }

    /// How the supervisor starts it.
    pub fn spec(&self) -> PluginSpec {
        let m = &self.manifest;
        PluginSpec {
            name: m.name.clone(),
            version: m.version.clone(),
            program: self.program(),
            args: match self.dir {
                Some(_) => Vec::new(),
                None => vec![BUILTIN_ENTRY.to_owned(), m.name.clone()],
            },
            capabilities: m.capabilities.clone(),
            hooks: m.hooks.clone(),
            protocol: m.protocol,
            origin: self.location(),
        }
    }

    /// The bundle directory, or "built into hm".
    pub fn location(&self) -> String {
        match &self.dir {
            Some(dir) => dir.display().to_string(),
            None => "built into hm".to_owned(),
        }
    }

    /// "`name` 1.0 (project layer, /path/to/bundle)", for messages.
    pub fn describe(&self) -> String {
        match &self.dir {
            Some(dir) => format!(
                "`{}` {} ({} layer, {})",
                self.manifest.name,
                self.manifest.version,
                self.layer,
                dir.display()
            ),
            None => format!(
                "`{}` {} (built into hm)",
                self.manifest.name, self.manifest.version
            ),
        }
    }

    /// Why this plugin and this `hm` cannot talk, from the manifest alone, with the fix.
    pub fn protocol_problem(&self) -> Option<String> {
        protocol_problem(
            &self.manifest.name,
            self.manifest.protocol,
            (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
        )
    }
}

/// Why a plugin speaking `plugin` and an hm speaking `hm` share no protocol version, with the
/// fix: the side that is too old must move.
pub fn protocol_problem(name: &str, plugin: (u32, u32), hm: (u32, u32)) -> Option<String> {
    let version = env!("CARGO_PKG_VERSION");
    let both = format!(
        "plugin `{name}` speaks protocol {}..={} but this hm ({version}) speaks {}..={}",
        plugin.0, plugin.1, hm.0, hm.1
    );
    if plugin.1 < hm.0 {
        Some(format!(
            "{both}: rebuild the plugin against hm-sdk {version} (or install a newer release of it)"
        ))
    } else if plugin.0 > hm.1 {
        Some(format!("{both}: upgrade hm"))
    } else {
        None
    }
}

/// Something wrong with the installed plugins as a whole. `hm run` and `hm validate` refuse to
/// run with any of these (exit 5): guessing which plugin was meant would be worse.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "{}: the bundle directory is named `{dir_name}` but its manifest says name = `{name}`\n  \
         hint: rename the directory to `{name}`, or install it with `hm plugin install`",
        display_path(.dir)
    )]
    DirectoryName {
        dir: PathBuf,
        dir_name: String,
        name: String,
    },
    #[error("{claim} is claimed by {}\n  hint: {}", join_and(.plugins), conflict_hint(.names))]
    Conflict {
        claim: Claim,
        /// Every claimant, described with its layer and path.
        plugins: Vec<String>,
        names: Vec<String>,
    },
}

impl RegistryError {
    /// The name of the bundle directory this error is about, if it is about one bundle.
    pub fn bundle_name(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            RegistryError::Manifest(e) => e
                .path()
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy()),
            RegistryError::DirectoryName { dir_name, .. } => Some(dir_name.as_str().into()),
            RegistryError::Conflict { .. } => None,
        }
    }
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn conflict_hint(names: &[String]) -> String {
    let removes: Vec<String> = names
        .iter()
        .map(|n| format!("`hm plugin remove {n}`"))
        .collect();
    format!(
        "only one plugin may provide it; remove all but one ({})",
        removes.join(" or ")
    )
}

/// Every plugin visible from one project, in every layer.
#[derive(Debug, Default)]
pub struct Registry {
    /// Sorted by name, then layer precedence: the first of each name is the one in effect.
    bundles: Vec<Installed>,
    /// Problems that do not stop anything: shadowing, loose files, unreadable directories.
    pub warnings: Vec<String>,
    /// Problems that stop `hm run` (exit 5).
    pub errors: Vec<RegistryError>,
}

impl Registry {
    /// The plugins visible from the project whose `hm.toml` is in `project_root`.
    pub fn discover(project_root: &Path, builtins: &[Builtin]) -> Self {
        Self::discover_in(&PluginDirs::for_project(project_root), builtins)
    }

    /// The plugins of `builtins` and of the bundles in `dirs`.
    pub fn discover_in(dirs: &PluginDirs, builtins: &[Builtin]) -> Self {
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let mut bundles: Vec<Installed> = builtins.iter().map(Installed::builtin).collect();
        for layer in [Layer::Project, Layer::User] {
            if let Some(dir) = dirs.dir(layer) {
                read_layer(dir, layer, &mut bundles, &mut warnings, &mut errors);
            }
        }
        let mut registry = Self::from_bundles(bundles);
        registry.warnings.splice(0..0, warnings);
        registry.errors.splice(0..0, errors);
        registry
    }

    /// Orders `bundles`, decides which of each name is in effect, and finds the conflicts
    /// between the plugins in effect.
    pub fn from_bundles(mut bundles: Vec<Installed>) -> Self {
        bundles.sort_by(|a, b| {
            (a.manifest.name.as_str(), a.layer).cmp(&(b.manifest.name.as_str(), b.layer))
        });
        let mut warnings = Vec::new();
        let mut winner: Option<usize> = None;
        for i in 0..bundles.len() {
            match winner {
                Some(w) if bundles[w].manifest.name == bundles[i].manifest.name => {
                    bundles[i].shadowed_by = Some(bundles[w].layer);
                    warnings.push(format!(
                        "plugin {} shadows {}",
                        bundles[w].describe(),
                        bundles[i].describe()
                    ));
                }
                _ => {
                    bundles[i].shadowed_by = None;
                    winner = Some(i);
                }
            }
        }
        let mut claims: BTreeMap<Claim, Vec<&Installed>> = BTreeMap::new();
        for bundle in bundles.iter().filter(|b| b.shadowed_by.is_none()) {
            for claim in bundle.manifest.claims() {
                claims.entry(claim).or_default().push(bundle);
            }
        }
        let errors = claims
            .into_iter()
            .filter(|(_, claimants)| claimants.len() > 1)
            .map(|(claim, claimants)| RegistryError::Conflict {
                claim,
                plugins: claimants.iter().map(|b| b.describe()).collect(),
                names: claimants.iter().map(|b| b.manifest.name.clone()).collect(),
            })
            .collect();
        Self {
            bundles,
            warnings,
            errors,
        }
    }

    /// Every bundle of every layer, shadowed ones included, by name then precedence.
    pub fn bundles(&self) -> &[Installed] {
        &self.bundles
    }

    /// The plugins in effect, by name.
    pub fn active(&self) -> impl Iterator<Item = &Installed> {
        self.bundles.iter().filter(|b| b.shadowed_by.is_none())
    }

    /// The plugin called `name` that is in effect.
    pub fn get(&self, name: &str) -> Option<&Installed> {
        self.active().find(|b| b.manifest.name == name)
    }

    /// Every bundle called `name`, highest layer first.
    pub fn all_named(&self, name: &str) -> impl Iterator<Item = &Installed> {
        self.bundles.iter().filter(move |b| b.manifest.name == name)
    }

    /// The plugin in effect that provides executor `name`.
    pub fn executor(&self, name: &str) -> Option<&Installed> {
        self.active()
            .find(|b| b.manifest.executors().any(|e| e == name))
    }

    /// The plugins in effect whose protocol range this hm does not speak, each with why and
    /// the fix. They are reported wherever plugins are listed, and refused by a run that
    /// uses them; a run that does not use them goes on.
    pub fn incompatible(&self) -> impl Iterator<Item = (&Installed, String)> {
        self.active()
            .filter_map(|b| b.protocol_problem().map(|problem| (b, problem)))
    }

    /// The problems of the bundles called `name` that could not be read as plugins (a bad
    /// manifest, a directory named after another plugin).
    pub fn errors_of(&self, name: &str) -> impl Iterator<Item = &RegistryError> {
        self.errors
            .iter()
            .filter(move |e| e.bundle_name().is_some_and(|n| n == name))
    }

    /// Every executor name the plugins in effect provide, sorted.
    pub fn executor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.active().flat_map(|b| b.manifest.executors()).collect();
        names.sort_unstable();
        names
    }
}

/// Reads one layer's directory: one bundle per subdirectory, in byte order of the names.
/// hm's own entries (`.lock`, staging directories) and hidden files start with `.` and are
/// not bundles.
fn read_layer(
    dir: &Path,
    layer: Layer,
    bundles: &mut Vec<Installed>,
    warnings: &mut Vec<String>,
    errors: &mut Vec<RegistryError>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warnings.push(format!(
                "cannot read the {layer} plugins directory {}: {e}; its plugins are ignored",
                display_path(dir)
            ));
            return;
        }
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = dir.join(&name);
        // A symlink to a bundle directory is a bundle (handy while developing a plugin).
        if !path.is_dir() {
            warnings.push(format!(
                "{}: a loose file at the top of the {layer} plugins directory; skipped \
                 (a plugin is a directory holding {MANIFEST_FILE} and its executable)",
                display_path(&path)
            ));
            continue;
        }
        match manifest::read(&path) {
            Ok(manifest) => {
                let dir_name = name.to_string_lossy();
                if dir_name != manifest.name {
                    errors.push(RegistryError::DirectoryName {
                        dir: path.clone(),
                        dir_name: dir_name.into_owned(),
                        name: manifest.name,
                    });
                    continue;
                }
                bundles.push(Installed {
                    manifest,
                    layer,
                    dir: Some(path),
                    shadowed_by: None,
                });
            }
            Err(e) => errors.push(e.into()),
        }
    }
}

/// hm's own executable, which built-in plugins run as: read once (every step's plan asks).
fn own_program() -> &'static Path {
    static OWN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    OWN.get_or_init(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_problems_say_which_side_must_move() {
        let old = protocol_problem("p", (1, 1), (2, 3)).expect("incompatible");
        assert!(old.contains("speaks protocol 1..=1"), "{old}");
        assert!(old.contains("speaks 2..=3"), "{old}");
        assert!(old.contains("rebuild the plugin against hm-sdk"), "{old}");
        let new = protocol_problem("p", (4, 5), (1, 3)).expect("incompatible");
        assert!(new.contains("4..=5") && new.contains("1..=3"), "{new}");
        assert!(new.ends_with("upgrade hm"), "{new}");
        assert_eq!(protocol_problem("p", (1, 9), (2, 3)), None);
        assert_eq!(protocol_problem("p", (3, 3), (1, 3)), None);
    }
}
