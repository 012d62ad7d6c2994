//! `[plugins.junit] config = { ... }`: what the plugin accepts, checked when hm starts it
//! (`Init`) and read again when it writes the report.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

/// Where the report goes when the configuration does not say, relative to the project.
pub const DEFAULT_PATH: &str = "hm-junit.xml";

/// Every key `config` may have.
pub const KEYS: &[&str] = &["path"];

/// The plugin's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to write the report: relative to the project's directory, or absolute.
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_PATH),
        }
    }
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("[plugins.junit] config: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Why the report has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathError {
    #[error(
        "hm did not say where the project is (no HM_PROJECT_DIR), so the relative path {path:?} \
         means nothing; give `path` as an absolute path"
    )]
    NoProjectDir { path: PathBuf },
}

impl Config {
    /// Reads `config` as hm hands it over (`{}` when the table has no `config`). Unknown keys
    /// and values of the wrong type are refused, each named, rather than ignored: a misspelt
    /// `pth` would otherwise write the report where nobody looks for it.
    pub fn from_json(config: &Value) -> Result<Self, ConfigError> {
        let table = match config {
            Value::Null => return Ok(Self::default()),
            Value::Object(table) => table,
            other => {
                return Err(ConfigError {
                    problems: vec![format!(
                        "must be a table such as `config = {{ path = \"reports/junit.xml\" }}`, \
                         not {}",
                        type_name(other)
                    )],
                });
            }
        };
        let mut problems = Vec::new();
        let mut parsed = Self::default();
        // Sorted, so that the message does not depend on how serde_json keeps a map.
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(key, _)| *key);
        for (key, value) in entries {
            match key.as_str() {
                "path" => match value {
                    Value::String(path) if path.is_empty() => {
                        problems.push("`path` must not be empty".to_owned());
                    }
                    Value::String(path) if !names_a_file(path) => problems.push(format!(
                        "`path` must name a file, and {path:?} names a directory"
                    )),
                    Value::String(path) => parsed.path = PathBuf::from(path),
                    other => {
                        problems.push(format!("`path` must be a string, not {}", type_name(other)))
                    }
                },
                unknown => problems.push(format!(
                    "unknown key `{}` (the junit plugin knows: {})",
                    unknown.escape_debug(),
                    KEYS.join(", ")
                )),
            }
        }
        if problems.is_empty() {
            Ok(parsed)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The file to write: [`Self::path`] as it is when absolute, else inside `project_dir`.
    pub fn output_path(&self, project_dir: Option<&Path>) -> Result<PathBuf, PathError> {
        if self.path.is_absolute() {
            return Ok(self.path.clone());
        }
        match project_dir {
            Some(dir) => Ok(dir.join(&self.path)),
            None => Err(PathError::NoProjectDir {
                path: self.path.clone(),
            }),
        }
    }
}

/// A path the report can be renamed onto: it ends in a name, not in `/`, `.` or `..`.
fn names_a_file(path: &str) -> bool {
    !path.ends_with('/') && Path::new(path).file_name().is_some()
}

/// How a TOML user would call the type of `value`.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(config: Value, expected: Result<&str, &str>) {
        let actual = Config::from_json(&config)
            .map(|c| c.path.display().to_string())
            .map_err(|e| e.to_string());
        let expected = expected.map(str::to_owned).map_err(str::to_owned);
        assert_eq!(actual, expected, "config {config}");
    }

    #[test]
    fn accepts_a_path_and_defaults_without_one() {
        check(json!({}), Ok("hm-junit.xml"));
        check(Value::Null, Ok("hm-junit.xml"));
        check(
            json!({ "path": "reports/junit.xml" }),
            Ok("reports/junit.xml"),
        );
        check(json!({ "path": "/tmp/out.xml" }), Ok("/tmp/out.xml"));
    }

    #[test]
    fn refuses_unknown_keys_and_wrong_types_all_at_once() {
        check(
            json!({ "pth": "x.xml", "path": 3 }),
            Err(
                "[plugins.junit] config: `path` must be a string, not a number; \
                 unknown key `pth` (the junit plugin knows: path)",
            ),
        );
        check(
            json!("junit.xml"),
            Err("[plugins.junit] config: must be a table such as \
                 `config = { path = \"reports/junit.xml\" }`, not a string"),
        );
        check(
            json!({ "path": "" }),
            Err("[plugins.junit] config: `path` must not be empty"),
        );
        check(
            json!({ "path": "reports/" }),
            Err(
                "[plugins.junit] config: `path` must name a file, and \"reports/\" names a directory",
            ),
        );
        check(
            json!({ "path": "reports/.." }),
            Err(
                "[plugins.junit] config: `path` must name a file, and \"reports/..\" names a directory",
            ),
        );
    }

    #[test]
    fn relative_paths_are_inside_the_project() {
        let config = Config::from_json(&json!({ "path": "reports/junit.xml" })).unwrap();
        assert_eq!(
            config.output_path(Some(Path::new("/work/project"))),
            Ok(PathBuf::from("/work/project/reports/junit.xml"))
        );
        let message = config.output_path(None).unwrap_err().to_string();
        assert!(
            message.contains("give `path` as an absolute path"),
            "{message}"
        );
        let absolute = Config::from_json(&json!({ "path": "/srv/junit.xml" })).unwrap();
        assert_eq!(
            absolute.output_path(None),
            Ok(PathBuf::from("/srv/junit.xml"))
        );
    }
}
