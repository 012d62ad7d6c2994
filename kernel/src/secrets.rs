//! Secrets: `env = { TOKEN = { secret = "NAME" } }` takes `NAME`'s value from hm's own
//! environment or from `--secret-file`, and every occurrence of a value is masked in whatever
//! hm shows or hands on (`***`): step logs, outputs, events, hook calls, messages.
//!
//! What is masked for a value: each of its lines (a multi-line value is printed line by
//! line) and its base64 form (standard alphabet, with and without padding). The masker finds
//! all of them in one pass over a text (Aho-Corasick, leftmost-longest), so a log line costs
//! the same whatever the number of secrets.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

use crate::config::{Pipeline, referenced_secret};

/// What a masked occurrence becomes.
pub const MASK: &str = "***";

/// The values of the secrets a pipeline refers to, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The masker for these values.
    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().map(String::as_str))
    }
}

/// Why the secrets could not be had (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {problem}")]
    File {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{}", missing_message(.0))]
    Missing(Vec<(String, String)>),
}

fn missing_message(missing: &[(String, String)]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|(secret, user)| format!("`{secret}` (for {user})"))
        .collect();
    format!(
        "the pipeline needs the secret{} {}, which {} neither in hm's environment nor in a \
         --secret-file; set {} or pass `--secret-file FILE` (one NAME=value a line)",
        if missing.len() == 1 { "" } else { "s" },
        list.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
        if missing.len() == 1 { "it" } else { "them" },
    )
}

/// `NAME=value` lines of a secret file; blank lines and `#` comments are skipped. A value is
/// taken as written, to the end of its line.
pub fn read_file(path: &Path) -> Result<BTreeMap<String, String>, SecretError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        file: file.clone(),
        source,
    })?;
    let mut values = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                values.insert(name.trim().to_owned(), value.to_owned());
            }
            // Never echo the line: it may hold a value.
            _ => {
                return Err(SecretError::File {
                    file,
                    line: n + 1,
                    problem: "is not `NAME=value`".to_owned(),
                });
            }
        }
    }
    Ok(values)
}

/// The values of every secret the steps in `selected` refer to (and `[pipeline].env`), from
/// `file` first, then hm's environment (`lookup`). Every missing one is named at once.
pub fn resolve(
    pipeline: &Pipeline,
    selected: &[usize],
    file: &BTreeMap<String, String>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Secrets, SecretError> {
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for &i in selected {
        let step = &pipeline.steps[i];
        for (var, value) in &step.env {
            if let Some(secret) = referenced_secret(value) {
                wanted
                    .entry(secret.to_owned())
                    .or_insert_with(|| format!("`{var}` of step {}", step.name));
            }
        }
        for name in &step.services {
            let Some(service) = pipeline.services.get(name) else {
                continue;
            };
            for (var, value) in &service.env {
                if let Some(secret) = referenced_secret(value) {
                    wanted
                        .entry(secret.to_owned())
                        .or_insert_with(|| format!("`{var}` of service {name}"));
                }
            }
        }
    }
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for (secret, user) in wanted {
        match file.get(&secret).cloned().or_else(|| lookup(&secret)) {
            Some(value) => {
                values.insert(secret, value);
            }
            None => missing.push((secret, user)),
        }
    }
    if !missing.is_empty() {
        return Err(SecretError::Missing(missing));
    }
    Ok(Secrets { values })
}

/// Replaces every occurrence of the secrets' values with [`MASK`].
#[derive(Debug, Clone, Default)]
pub struct Masker {
    finder: Option<AhoCorasick>,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        for value in values {
            for line in value.lines() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if !line.trim().is_empty() {
                    patterns.push(line.to_owned());
                }
            }
            if !value.is_empty() {
                let padded = base64::engine::general_purpose::STANDARD.encode(value);
                let bare = padded.trim_end_matches('=').to_owned();
                patterns.push(padded);
                patterns.push(bare);
            }
        }
        patterns.sort();
        patterns.dedup();
        let finder = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("plain string patterns always build")
        });
        Self { finder }
    }

    /// Whether there is anything to mask.
    pub fn is_active(&self) -> bool {
        self.finder.is_some()
    }

    /// `text` with every occurrence masked; borrowed when there is none.
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(finder) = &self.finder else {
            return Cow::Borrowed(text);
        };
        if !finder.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        finder.replace_all_with(text, &mut out, |_, _, dst| {
            dst.push_str(MASK);
            true
        });
        Cow::Owned(out)
    }

    /// Masks `text` in place.
    pub fn mask_in_place(&self, text: &mut String) {
        if let Cow::Owned(masked) = self.mask(text) {
            *text = masked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_and_the_base64_form_are_masked() {
        let masker = Masker::new(["s3cr3t-value", "line-one\nline-two\n"]);
        assert_eq!(masker.mask("token s3cr3t-value!"), "token ***!");
        assert_eq!(masker.mask("line-two"), "***");
        assert_eq!(masker.mask("a line-one b"), "a *** b");
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t-value");
        assert_eq!(masker.mask(&format!("encoded: {b64}")), "encoded: ***");
        assert!(matches!(masker.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn no_secrets_mask_nothing() {
        let masker = Masker::new([""; 0]);
        assert!(!masker.is_active());
        assert_eq!(masker.mask("anything"), "anything");
    }

    #[test]
    fn a_secret_file_is_name_value_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets");
        std::fs::write(&path, "# comment\n\nTOKEN=a=b c\nOTHER = x\n").expect("write");
        let values = read_file(&path).expect("reads");
        assert_eq!(values["TOKEN"], "a=b c");
        assert_eq!(values["OTHER"], " x");
        std::fs::write(&path, "TOKEN=x\nno-equals-here\n").expect("write");
        let err = read_file(&path).expect_err("bad line").to_string();
        assert!(err.ends_with(":2: is not `NAME=value`"), "{err}");
        assert!(!err.contains("no-equals-here"), "{err}");
    }
}
