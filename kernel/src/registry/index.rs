//! What `hm plugin install SOURCE` installs: a path (a bundle directory or a plugin
//! executable), or a bare name looked up in the current cargo workspace's build outputs and
//! then in the plugin index.
//!
//! The index is a local TOML or JSON file named by `HM_PLUGIN_INDEX`, else by `index = "..."`
//! in `$XDG_CONFIG_HOME/hm/config.toml` (default `~/.config/hm/config.toml`). Its entries are
//! `{ name, version, source, sha256 }`; `source` is a path, relative to the index file. Index
//! text is untrusted: everything from it is cut to [`MAX_SHOWN`] characters and stripped of
//! control characters before it reaches a message.

use std::path::{Path, PathBuf};

use super::install::InstallError;
use super::manifest::{NAME_RULE, valid_name};
use super::probe;

/// The longest string from an index that a message shows.
pub const MAX_SHOWN: usize = 256;
/// How many candidates an ambiguity error lists.
const MAX_CANDIDATES: usize = 5;
/// The environment variable naming the index file.
pub const INDEX_ENV: &str = "HM_PLUGIN_INDEX";

/// Something to install, found.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub source: Source,
    /// The index entry it came from, whose name and digest the installed plugin must match.
    pub entry: Option<IndexEntry>,
    /// How it was found, for messages: "./bundle", "the cargo workspace at ...", "the index ...".
    pub found: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory holding `plugin.toml` and the executable it names.
    Bundle(PathBuf),
    /// A plugin executable; its manifest is what it prints for `--hm-manifest`.
    Executable(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Bundle(p) | Source::Executable(p) => p,
        }
    }
}

/// One entry of the plugin index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub source: String,
    pub sha256: String,
    /// The index file it is in.
    pub index: PathBuf,
}

impl IndexEntry {
    fn describe(&self) -> String {
        format!(
            "{} {} (source {})",
            shown(&self.name),
            shown(&self.version),
            shown(&self.source)
        )
    }
}

/// Untrusted text made safe to print: control characters escaped, at most [`MAX_SHOWN`]
/// characters, an ellipsis when cut.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == MAX_SHOWN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `arg` is a path rather than a name: it has a `/`, or is `.` or `..`.
fn is_path(arg: &str) -> bool {
    arg.contains('/') || arg == "." || arg == ".."
}

/// Finds what `arg` names, reporting warnings (an unreadable index) through `warn`.
pub async fn resolve(
    arg: &str,
    cwd: &Path,
    warn: &mut dyn FnMut(String),
) -> Result<Resolved, InstallError> {
    if is_path(arg) {
        let path = cwd.join(arg);
        let source = classify(&path).map_err(InstallError::NotFound)?;
        return Ok(Resolved {
            source,
            entry: None,
            found: arg.to_owned(),
        });
    }
    if !valid_name(arg) {
        return Err(InstallError::Usage(format!(
            "`{}` is neither a path nor a plugin name ({NAME_RULE}); write `./{}` for a \
             path in this directory",
            arg.escape_default(),
            arg.escape_default()
        )));
    }
    let mut looked = Vec::new();
    // 1. The current cargo workspace's build outputs.
    match cargo_target_dir(cwd) {
        Some(target) => {
            for profile in ["release", "debug"] {
                for file in [format!("hm-plugin-{arg}"), arg.to_owned()] {
                    let candidate = target.join(profile).join(&file);
                    looked.push(candidate.display().to_string());
                    if !is_executable_file(&candidate) {
                        continue;
                    }
                    // It must be a plugin of that name: it answers --hm-manifest with it.
                    match probe::manifest_text(&candidate).await {
                        Ok(text) if manifest_name(&text).as_deref() == Some(arg) => {
                            return Ok(Resolved {
                                found: format!(
                                    "{} in the cargo workspace's build outputs",
                                    candidate.display()
                                ),
                                source: Source::Executable(candidate),
                                entry: None,
                            });
                        }
                        _ => continue,
                    }
                }
            }
        }
        None => looked.push(format!(
            "no cargo workspace around {} (so no build outputs)",
            cwd.display()
        )),
    }
    // 2. The plugin index.
    match index_location() {
        IndexLocation::None(why) => looked.push(format!("no plugin index ({why})")),
        IndexLocation::Unreadable(why) => {
            warn(why.clone());
            looked.push(why);
        }
        IndexLocation::File(path) => match read_index(&path) {
            Err(why) => {
                warn(format!(
                    "cannot use the plugin index {}: {why}; treating `{arg}` as not found",
                    path.display()
                ));
                looked.push(format!("the plugin index {} (unreadable)", path.display()));
            }
            Ok(entries) => {
                let matches: Vec<&IndexEntry> = entries
                    .iter()
                    .filter(|e| e.name.to_lowercase() == arg.to_lowercase())
                    .collect();
                match matches.as_slice() {
                    [] => looked.push(format!("the plugin index {}", path.display())),
                    [entry] => {
                        let entry = (*entry).clone();
                        let base = path.parent().unwrap_or(Path::new("/"));
                        let source_path = base.join(&entry.source);
                        let source = classify(&source_path).map_err(|why| {
                            InstallError::NotFound(format!(
                                "the plugin index {} lists {}, but {}",
                                path.display(),
                                entry.describe(),
                                shown(&why)
                            ))
                        })?;
                        return Ok(Resolved {
                            source,
                            found: format!(
                                "{} in the plugin index {}",
                                shown(&entry.source),
                                path.display()
                            ),
                            entry: Some(entry),
                        });
                    }
                    many => {
                        let mut lines: Vec<String> = many
                            .iter()
                            .take(MAX_CANDIDATES)
                            .map(|e| format!("  - {}", e.describe()))
                            .collect();
                        if many.len() > MAX_CANDIDATES {
                            lines.push(format!("  ... and {} more", many.len() - MAX_CANDIDATES));
                        }
                        return Err(InstallError::Ambiguous(format!(
                            "`{arg}` matches {} entries of the plugin index {}:\n{}\n  hint: \
                             fix the index so that one entry has this name, or install from a \
                             path",
                            many.len(),
                            path.display(),
                            lines.join("\n")
                        )));
                    }
                }
            }
        },
    }
    let mut message = format!("no plugin called `{arg}` was found; looked in:");
    for place in &looked {
        message.push_str("\n  - ");
        message.push_str(place);
    }
    message.push_str(&format!(
        "\n  hint: install from a path: `hm plugin install ./path/to/bundle` (a directory with \
         plugin.toml) or `hm plugin install ./path/to/hm-plugin-{arg}` (an executable built on \
         hm-sdk); or name an index with {INDEX_ENV}"
    ));
    if cwd.join(arg).exists() {
        message.push_str(&format!(
            "\n  hint: to install `{arg}` in this directory, write `./{arg}`"
        ));
    }
    Err(InstallError::NotFound(message))
}

/// A bundle directory or an executable at `path`, or why it is neither.
fn classify(path: &Path) -> Result<Source, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "there is no bundle directory or plugin executable at {} ({e})",
            path.display()
        )
    })?;
    // Messages and the staging copy use the real path, without `..` or symlinks on the way.
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if meta.is_dir() {
        Ok(Source::Bundle(path))
    } else if meta.is_file() {
        Ok(Source::Executable(path))
    } else {
        Err(format!(
            "{} is neither a bundle directory nor a plugin executable",
            path.display()
        ))
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `name` a manifest text declares, if it parses that far.
fn manifest_name(text: &str) -> Option<String> {
    let doc = text.parse::<toml_edit::DocumentMut>().ok()?;
    doc.get("name")?.as_str().map(str::to_owned)
}

/// The target directory of the cargo workspace around `cwd`: `CARGO_TARGET_DIR`, else
/// `target/` beside the outermost `Cargo.toml` that has a `[workspace]` table, else beside the
/// nearest `Cargo.toml`.
fn cargo_target_dir(cwd: &Path) -> Option<PathBuf> {
    let mut nearest = None;
    let mut workspace = None;
    for dir in cwd.ancestors() {
        let manifest = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        nearest.get_or_insert_with(|| dir.to_path_buf());
        let is_workspace = text
            .parse::<toml_edit::DocumentMut>()
            .is_ok_and(|doc| doc.contains_key("workspace"));
        if is_workspace {
            workspace = Some(dir.to_path_buf());
        }
    }
    let root = workspace.or(nearest)?;
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => Some(root.join(dir)),
        _ => Some(root.join("target")),
    }
}

enum IndexLocation {
    File(PathBuf),
    /// No index is configured; why, for the not-found message.
    None(String),
    /// The configuration that would name it cannot be read.
    Unreadable(String),
}

/// Where the index is: `HM_PLUGIN_INDEX`, else `index` in hm's `config.toml`.
fn index_location() -> IndexLocation {
    if let Some(path) = std::env::var_os(INDEX_ENV).filter(|v| !v.is_empty()) {
        return IndexLocation::File(PathBuf::from(path));
    }
    let config_home = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".config"),
            None => return IndexLocation::None(format!("{INDEX_ENV} and HOME are unset")),
        },
    };
    let config = config_home.join("hm/config.toml");
    let text = match std::fs::read_to_string(&config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return IndexLocation::None(format!(
                "{INDEX_ENV} is unset and {} does not exist",
                config.display()
            ));
        }
        Err(e) => {
            return IndexLocation::Unreadable(format!(
                "cannot read {}: {e}; no plugin index is used",
                config.display()
            ));
        }
    };
    let doc = match text.parse::<toml_edit::DocumentMut>() {
        Ok(doc) => doc,
        Err(e) => {
            return IndexLocation::Unreadable(format!(
                "{} is not valid TOML ({}); no plugin index is used",
                config.display(),
                e.message().trim_end()
            ));
        }
    };
    match doc.get("index") {
        None => IndexLocation::None(format!(
            "{INDEX_ENV} is unset and {} has no `index`",
            config.display()
        )),
        Some(item) => match item.as_str() {
            Some(path) => {
                let path = Path::new(path);
                let base = config.parent().unwrap_or(Path::new("/"));
                IndexLocation::File(base.join(path))
            }
            None => IndexLocation::Unreadable(format!(
                "{}: `index` must be a string (the path of the index file); no plugin index \
                 is used",
                config.display()
            )),
        },
    }
}

/// Reads an index file: JSON when its name ends in `.json` or its text starts with `{` or
/// `[`... of a JSON array (`[{`), TOML otherwise.
fn read_index(path: &Path) -> Result<Vec<IndexEntry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let json = path.extension().is_some_and(|e| e == "json") || {
        let t = text.trim_start();
        t.starts_with('{') || (t.starts_with('[') && t[1..].trim_start().starts_with(['{', ']']))
    };
    let raw = if json {
        index_from_json(&text)?
    } else {
        index_from_toml(&text)?
    };
    let mut entries = Vec::new();
    for (i, fields) in raw.into_iter().enumerate() {
        let get = |key: &str| -> Result<String, String> {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.clone())
                .ok_or_else(|| format!("entry {} has no string `{key}`", i + 1))
        };
        entries.push(IndexEntry {
            name: get("name")?,
            version: get("version")?,
            source: get("source")?,
            sha256: get("sha256")?,
            index: path.to_path_buf(),
        });
    }
    Ok(entries)
}

/// An entry's fields: key, and the value when it is a string.
type RawEntry = Vec<(String, Option<String>)>;

/// `{ "plugins": [ {...}, ... ] }` or a bare array of entries.
fn index_from_json(text: &str) -> Result<Vec<RawEntry>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let list = match &value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(map) => match map.get("plugins") {
            Some(serde_json::Value::Array(list)) => list,
            _ => return Err("expected `plugins`, an array of entries".to_owned()),
        },
        _ => return Err("expected an object with `plugins`, or an array".to_owned()),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| match entry {
            serde_json::Value::Object(map) => Ok(map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
                .collect()),
            _ => Err(format!("entry {} is not an object", i + 1)),
        })
        .collect()
}

/// `[[plugins]]` tables.
fn index_from_toml(text: &str) -> Result<Vec<RawEntry>, String> {
    let doc = text
        .parse::<toml_edit::DocumentMut>()
        .map_err(|e| format!("invalid TOML: {}", e.message().trim_end()))?;
    let Some(item) = doc.get("plugins") else {
        return Err("expected `[[plugins]]` entries".to_owned());
    };
    let tables: Vec<&dyn toml_edit::TableLike> = if let Some(array) = item.as_array_of_tables() {
        array
            .iter()
            .map(|t| t as &dyn toml_edit::TableLike)
            .collect()
    } else if let Some(array) = item.as_array() {
        let mut tables = Vec::new();
        for (i, value) in array.iter().enumerate() {
            match value.as_inline_table() {
                Some(t) => tables.push(t as &dyn toml_edit::TableLike),
                None => return Err(format!("entry {} is not a table", i + 1)),
            }
        }
        tables
    } else {
        return Err("`plugins` must be an array of tables (`[[plugins]]`)".to_owned());
    };
    Ok(tables
        .into_iter()
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_owned(), v.as_str().map(str::to_owned)))
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_text_is_cut_and_has_no_control_characters() {
        assert_eq!(shown("plain"), "plain");
        assert_eq!(shown("a\x1b[31mb\n"), "a\\u{1b}[31mb\\n");
        let long = "x".repeat(1000);
        let cut = shown(&long);
        assert_eq!(cut.chars().count(), MAX_SHOWN + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(shown(&"y".repeat(MAX_SHOWN)), "y".repeat(MAX_SHOWN));
    }

    #[test]
    fn paths_and_names_are_told_apart_by_slashes() {
        for path in ["./x", "/abs", "a/b", ".", ".."] {
            assert!(is_path(path), "{path}");
        }
        for name in ["x", "hm-plugin-x", "x.y"] {
            assert!(!is_path(name), "{name}");
        }
    }

    #[test]
    fn index_files_read_as_toml_or_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = dir.path().join("index.toml");
        std::fs::write(
            &toml,
            "[[plugins]]\nname = \"a\"\nversion = \"1\"\nsource = \"a\"\nsha256 = \"00\"\n",
        )
        .expect("write");
        let entries = read_index(&toml).expect("toml index");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "a");
        let json = dir.path().join("index");
        std::fs::write(
            &json,
            r#"[{"name": "b", "version": "2", "source": "b", "sha256": "11"}]"#,
        )
        .expect("write");
        assert_eq!(read_index(&json).expect("json index")[0].version, "2");
        std::fs::write(&json, r#"{"plugins": [{"name": "b"}]}"#).expect("write");
        let e = read_index(&json).expect_err("missing fields");
        assert!(e.contains("entry 1 has no string `version`"), "{e}");
    }
}
