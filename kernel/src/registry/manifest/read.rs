//! Reading a bundle's `plugin.toml`, and what can go wrong with it.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::check::manifest;
use super::model::{MANIFEST_FILE, Manifest};
use crate::toml_check::{Checker, Diagnostics};

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
    /// Every problem, each at its place, printed as `hm.toml`'s are.
    #[error("{diagnostics}")]
    Invalid {
        path: PathBuf,
        diagnostics: Diagnostics,
    },
}

impl ManifestError {
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Read { path, .. } | ManifestError::Invalid { path, .. } => path,
        }
    }
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

/// Validates manifest text; `path` is how messages name the file (shown relative to the
/// current directory when below it).
pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
    let shown = PathBuf::from(display_path(path));
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut checker = Checker::new(text, &shown, root);
    let manifest = checker
        .document()
        .and_then(|document| manifest(&mut checker, document.as_table()));
    match manifest {
        Some(manifest) if !checker.report.has_errors() => Ok(manifest),
        _ => Err(ManifestError::Invalid {
            path: path.to_path_buf(),
            diagnostics: checker.report.finish(),
        }),
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
