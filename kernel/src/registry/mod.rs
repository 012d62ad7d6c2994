//! The plugin registry: which plugins exist and what each provides, read
//! from bundle manifests without spawning anything, and how bundles are installed and removed.
//!
//! - [`manifest`]: `plugin.toml`, validated with line:col for every problem.
//! - [`discover`]: the layers (project `.hm/plugins/`, user `$XDG_DATA_HOME/hm/plugins/`,
//!   built-in), shadowing, loose files, conflicts between plugins claiming one executor or verb.
//! - [`index`]: what `hm plugin install SOURCE` names: a path, a cargo build output, an index
//!   entry.
//! - [`probe`]: `--hm-manifest` and a real handshake with a plugin that is not installed yet.
//! - [`install`]: staged, locked, atomic install and removal, on top of [`bundle_fs`]
//!   (digests, the directory lock, staging, atomic moves).

pub mod bundle_fs;
pub mod discover;
pub mod index;
pub mod install;
pub mod manifest;
pub mod probe;

pub use discover::{
    BUILTIN_ENTRY, Builtin, Installed, Layer, PluginDirs, PluginSpec, Registry, RegistryError,
    project_plugins_dir, protocol_problem, user_plugins_dir,
};
pub use install::{InstallError, InstallRequest, Outcome, Removed};
pub use manifest::{ArgSpec, Claim, MANIFEST_FILE, Manifest, ManifestError, SubcommandSpec};
