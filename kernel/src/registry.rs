//! Which plugins exist and which executor each provides, read from manifests without spawning
//! anything. Layers, highest first: the project's `.hm/plugins/`, the user's
//! `$XDG_DATA_HOME/hm/plugins/`, then the plugins built into the `hm` binary.
//!
//! This is the read-only half of DESIGN §8.2; installing, removing and conflict reporting come
//! with the plugin registry work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How to start one plugin and what it claims to provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub name: String,
    pub version: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// `executor:NAME`, `hook:...`, `subcommand:...` as the manifest declares them.
    pub capabilities: Vec<String>,
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

/// The built-in plugins: the `hm` binary re-executed with an internal entry (DESIGN §8.1).
/// The kernel library does not know what they are; the binary tells it.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub name: &'static str,
    pub version: &'static str,
    pub capabilities: Vec<String>,
}

/// The internal entry a built-in plugin runs under: `hm __plugin NAME`.
pub const BUILTIN_ENTRY: &str = "__plugin";

/// All plugins visible from a project, by name (highest layer wins).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    plugins: BTreeMap<String, PluginSpec>,
    /// Problems found while reading manifests; shown as warnings.
    pub warnings: Vec<String>,
}

impl Registry {
    pub fn discover(project_root: &Path, builtins: &[Builtin]) -> Self {
        let mut registry = Registry::default();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        for builtin in builtins {
            registry.plugins.insert(
                builtin.name.to_owned(),
                PluginSpec {
                    name: builtin.name.to_owned(),
                    version: builtin.version.to_owned(),
                    program: exe.clone(),
                    args: vec![BUILTIN_ENTRY.to_owned(), builtin.name.to_owned()],
                    capabilities: builtin.capabilities.clone(),
                    protocol: (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
                    origin: "built-in".to_owned(),
                },
            );
        }
        // Lowest layer first so higher layers overwrite.
        let mut layers = Vec::new();
        if let Some(data) = user_data_dir() {
            layers.push(data.join("hm/plugins"));
        }
        layers.push(project_root.join(".hm/plugins"));
        for layer in layers {
            registry.read_layer(&layer);
        }
        registry
    }

    fn read_layer(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if !path.is_dir() {
                self.warnings.push(format!(
                    "{}: not a plugin bundle directory; skipped",
                    path.display()
                ));
                continue;
            }
            match read_manifest(&path) {
                Ok(spec) => {
                    if let Some(previous) = self.plugins.get(&spec.name) {
                        if previous.origin != "built-in" {
                            self.warnings.push(format!(
                                "plugin {} {} in {} shadows {} in {}",
                                spec.name,
                                spec.version,
                                spec.origin,
                                previous.version,
                                previous.origin
                            ));
                        }
                    }
                    self.plugins.insert(spec.name.clone(), spec);
                }
                Err(e) => self
                    .warnings
                    .push(format!("{}: {e}; skipped", path.display())),
            }
        }
    }

    /// The plugin providing executor `name`.
    pub fn executor(&self, name: &str) -> Option<&PluginSpec> {
        self.plugins
            .values()
            .find(|p| p.executors().any(|e| e == name))
    }

    pub fn executor_names(&self) -> Vec<&str> {
        self.plugins.values().flat_map(|p| p.executors()).collect()
    }
}

fn user_data_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")),
    }
}

/// Reads `<bundle>/plugin.toml`.
fn read_manifest(bundle: &Path) -> Result<PluginSpec, String> {
    let path = bundle.join("plugin.toml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read plugin.toml: {e}"))?;
    let doc = text
        .parse::<toml_edit::DocumentMut>()
        .map_err(|e| format!("plugin.toml: {e}"))?;
    let string = |key: &str| -> Result<String, String> {
        doc.get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("plugin.toml: `{key}` must be a string"))
    };
    let name = string("name")?;
    let executable = string("executable")?;
    let version = string("version")?;
    let protocol = doc.get("protocol").and_then(|p| p.as_table_like());
    let bound = |key: &str| -> Result<u32, String> {
        protocol
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_integer())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("plugin.toml: `protocol.{key}` must be a positive integer"))
    };
    let capabilities = doc
        .get("capabilities")
        .and_then(|v| v.as_array())
        .ok_or("plugin.toml: `capabilities` must be an array of strings")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or("plugin.toml: capabilities must be strings")
        })
        .collect::<Result<Vec<_>, _>>()?;
    if executable.contains('/') {
        return Err("plugin.toml: `executable` must be a file name inside the bundle".into());
    }
    Ok(PluginSpec {
        name,
        version,
        program: bundle.join(executable),
        args: Vec::new(),
        capabilities,
        protocol: (bound("min")?, bound("max")?),
        origin: bundle.display().to_string(),
    })
}
