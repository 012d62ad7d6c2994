//! The workspace as its root `Cargo.toml` describes it: the member paths, and the packages
//! they hold (name and directory), with `dir/*` members expanded.

use std::path::{Path, PathBuf};

use crate::cargo_toml::{self, Value};

/// One package of the workspace.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub dir: PathBuf,
}

/// The entries of `members` and `default-members` of `[workspace]`, as written.
pub fn members(root_cargo_toml: &str) -> Result<Vec<String>, String> {
    let mut all = Vec::new();
    for key in ["members", "default-members"] {
        match cargo_toml::find(root_cargo_toml, "workspace", key)? {
            None => {}
            Some(Value::Array(array)) => all.extend(array.strings()),
            Some(_) => return Err(format!("`{key}` in [workspace] is not an array")),
        }
    }
    Ok(all)
}

/// The packages of the members (a member whose `Cargo.toml` cannot be read or names no
/// package is left out), in the order of the members.
pub fn packages(root: &Path, root_cargo_toml: &str) -> Vec<Package> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for member in members(root_cargo_toml).unwrap_or_default() {
        match member.strip_suffix("/*") {
            Some(parent) => {
                let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(parent))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|dir| dir.join("Cargo.toml").is_file())
                    .collect();
                found.sort();
                dirs.extend(found);
            }
            None => dirs.push(root.join(member)),
        }
    }
    let mut packages: Vec<Package> = Vec::new();
    for dir in dirs {
        if packages.iter().any(|p| p.dir == dir) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        if let Ok(Some(Value::Str(name))) = cargo_toml::find(&text, "package", "name") {
            packages.push(Package { name, dir });
        }
    }
    packages
}
