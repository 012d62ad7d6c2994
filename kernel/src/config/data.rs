//! The readers of what moves between steps: `artifacts`, `[pipeline] artifacts_max`, and secret
//! references in `env` (`{ secret = "NAME" }`).

use hm_ipc::artifacts::{ArtifactGlobs, DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES};
use toml_edit::Value;

use super::model::{ArtifactLimits, CacheSettings, DependencyCache};
use crate::toml_check::{Checker, Field, join_path};

const ARTIFACTS_MAX_KEYS: &[&str] = &["files", "bytes"];

/// A secret's name as an `env` value holds it: after a NUL byte, which no value written in
/// `hm.toml` can contain, so a secret reference can never be mistaken for text and merges
/// (`[defaults]`, templates, `[pipeline].env`) like any value.
pub fn secret_reference(name: &str) -> String {
    format!("\0{name}")
}

/// The secret an `env` value refers to, if it is a reference.
pub fn referenced_secret(value: &str) -> Option<&str> {
    value.strip_prefix('\0')
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        Self {
            files: DEFAULT_MAX_FILES,
            bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl Checker<'_> {
    /// `[cache]`: `dir` (relative to the project, or absolute) and `max_size`.
    pub(super) fn cache_section(
        &mut self,
        field: &Field<'_>,
        root: &std::path::Path,
    ) -> CacheSettings {
        let mut settings = CacheSettings::default();
        let Some(section) = self.open(
            field,
            "cache".to_owned(),
            &["dir", "max_size"],
            "write `[cache]` on its own line, then `dir = \"...\"` or `max_size = \"5GiB\"`",
        ) else {
            return settings;
        };
        if let Some(f) = section.get("dir")
            && let Some(dir) = self.non_empty_string(&f)
        {
            settings.dir = Some(root.join(dir));
        }
        if let Some(f) = section.get("max_size")
            && let Some(bytes) = self.size(&f)
        {
            settings.max_bytes = bytes;
        }
        settings
    }

    /// `artifacts = ["dist/**", "target/release/hm"]`, and `inputs`, whose globs mean the same.
    pub(super) fn artifacts(&mut self, field: &Field<'_>) -> Option<Vec<String>> {
        let Some(array) = field.item.as_array() else {
            let hint = match field.item.as_str() {
                Some(glob) => format!("write `{} = [\"{glob}\"]`", field.key.get()),
                None => format!("write `{} = [\"dist/**\"]`", field.key.get()),
            };
            self.wrong_type(field, "an array of globs", Some(hint));
            return None;
        };
        let mut globs = Vec::with_capacity(array.len());
        for element in array.iter() {
            if let Some(glob) = self.artifact_glob(element, &field.label) {
                globs.push(glob);
            }
        }
        (globs.len() == array.len()).then_some(globs)
    }

    fn artifact_glob(&mut self, element: &Value, label: &str) -> Option<String> {
        let Some(text) = element.as_str() else {
            let found = self.found_value(element);
            self.report.error(
                element.span(),
                format!("{label} must list globs as strings, found {found}"),
                None,
            );
            return None;
        };
        match ArtifactGlobs::new(&[text]) {
            Ok(_) => Some(text.to_owned()),
            Err(problem) => {
                self.report.error(
                    element.span(),
                    format!("{problem}, in {label}"),
                    Some(
                        "artifact globs are relative to the directory that holds hm.toml: \
                         `dist/**`"
                            .to_owned(),
                    ),
                );
                None
            }
        }
    }

    /// `cache = [{ key = ["Cargo.lock"], paths = ["/usr/local/cargo/registry", "target"] }]`.
    pub(super) fn dependency_caches(&mut self, field: &Field<'_>) -> Option<Vec<DependencyCache>> {
        const HINT: &str =
            "write `cache = [{ key = [\"Cargo.lock\"], paths = [\"/usr/local/cargo/registry\"] }]`";
        let Some(array) = field.item.as_array() else {
            self.wrong_type(
                field,
                "an array of `{ key, paths }` tables",
                Some(HINT.to_owned()),
            );
            return None;
        };
        let mut caches = Vec::new();
        let mut ok = true;
        for element in array.iter() {
            let Some(table) = element.as_inline_table() else {
                let found = self.found_value(element);
                self.report.error(
                    element.span(),
                    format!(
                        "{} must list `{{ key, paths }}` tables, found {found}",
                        field.label
                    ),
                    Some(HINT.to_owned()),
                );
                ok = false;
                continue;
            };
            let mut strings = |name: &str, check: &dyn Fn(&str) -> Option<String>| {
                let Some(value) = table.get(name) else {
                    self.report.error(
                        element.span(),
                        format!("a table of {} has no `{name}`", field.label),
                        Some(HINT.to_owned()),
                    );
                    return None;
                };
                let items: Option<Vec<String>> = value.as_array().and_then(|a| {
                    (!a.is_empty())
                        .then(|| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
                        .flatten()
                });
                let Some(items) = items else {
                    self.report.error(
                        value.span(),
                        format!(
                            "`{name}` in {} must be a non-empty array of strings",
                            field.label
                        ),
                        Some(HINT.to_owned()),
                    );
                    return None;
                };
                for item in &items {
                    if let Some(problem) = check(item) {
                        self.report.error(
                            value.span(),
                            format!("`{item}` in `{name}` of {} {problem}", field.label),
                            None,
                        );
                        return None;
                    }
                }
                Some(items)
            };
            let key = strings("key", &|glob| {
                ArtifactGlobs::new(&[glob])
                    .err()
                    .map(|e| format!("is not usable: {e}"))
            });
            let paths = strings("paths", &|path| {
                (path.split('/').any(|p| p == "..")).then(|| "climbs out with `..`".to_owned())
            });
            for (name, _) in table.iter().filter(|(k, _)| !["key", "paths"].contains(k)) {
                self.report.error(
                    element.span(),
                    format!("unknown key `{name}` in a table of {}", field.label),
                    Some("a cache has `key` and `paths`".to_owned()),
                );
                ok = false;
            }
            match (key, paths) {
                (Some(key), Some(paths)) => caches.push(DependencyCache { key, paths }),
                _ => ok = false,
            }
        }
        ok.then_some(caches)
    }

    /// `artifacts_max = { files = 10000, bytes = "4GiB" }`; what it leaves out keeps its
    /// default.
    pub(super) fn artifacts_max(&mut self, field: &Field<'_>) -> Option<ArtifactLimits> {
        let section = self.open(
            field,
            join_path("pipeline", "artifacts_max"),
            ARTIFACTS_MAX_KEYS,
            "write `artifacts_max = { files = 10000, bytes = \"4GiB\" }`",
        )?;
        let mut limits = ArtifactLimits::default();
        let mut ok = true;
        if let Some(f) = section.get("files") {
            let files = self
                .integer(&f, 1, i64::MAX, None)
                .and_then(|n| u64::try_from(n).ok());
            ok &= files.is_some();
            limits.files = files.unwrap_or(limits.files);
        }
        if let Some(f) = section.get("bytes") {
            let bytes = self.size(&f);
            ok &= bytes.is_some();
            limits.bytes = bytes.unwrap_or(limits.bytes);
        }
        ok.then_some(limits)
    }

    /// `NAME = { secret = "SECRET" }` in an `env` table: the reference, or `None` after
    /// reporting what is wrong.
    pub(super) fn secret(&mut self, entry: &Field<'_>) -> Option<String> {
        let hint = "write `NAME = { secret = \"SECRET_NAME\" }` for a secret's value".to_owned();
        let table = entry.item.as_table_like()?;
        let Some((key, item)) = table.get_key_value("secret") else {
            self.wrong_type(
                entry,
                "a string or a secret (`{ secret = \"NAME\" }`)",
                Some(hint),
            );
            return None;
        };
        let mut ok = true;
        for (other, _) in table.iter().filter(|(k, _)| *k != "secret") {
            let span = table.get_key_value(other).and_then(|(k, _)| k.span());
            self.report.error(
                span,
                format!(
                    "`{other}` has no place in {}, a secret reference",
                    entry.label
                ),
                Some(hint.clone()),
            );
            ok = false;
        }
        let f = Field {
            key,
            item,
            label: format!("`secret` of {}", entry.label),
        };
        let name = self.non_empty_string(&f)?;
        if !ok {
            return None;
        }
        if name.contains(['=', '\0']) {
            self.report.error(
                f.span(),
                format!(
                    "`{}` in {} is not a secret's name",
                    name.escape_default(),
                    f.label
                ),
                Some("a secret is named like an environment variable: `GITLAB_TOKEN`".to_owned()),
            );
            return None;
        }
        Some(secret_reference(name))
    }
}
