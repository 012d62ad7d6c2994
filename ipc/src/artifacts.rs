//! What a step's `artifacts` globs take, decided the same way wherever the files are: by hm in
//! the project directory, and by an executor inside a container. Both ends share this module so
//! that a file is an artifact or not whatever executor ran the step.
//!
//! A glob is relative to the project root. `*` and `?` stay within one path component, `**`
//! crosses any number, and a glob that names a directory (`dist`, `dist/`) takes every file
//! below it. Paths are `/`-separated and relative (`dist/app.txt`).

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The `artifacts_max` defaults: 10,000 files and 4 GiB of contents per step.
pub const DEFAULT_MAX_FILES: u64 = 10_000;
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// A step's artifact globs, compiled.
#[derive(Debug, Clone)]
pub struct ArtifactGlobs {
    set: GlobSet,
    roots: Vec<String>,
}

impl ArtifactGlobs {
    /// Compiles `globs`; the error names the glob and what is wrong with it.
    pub fn new<S: AsRef<str>>(globs: &[S]) -> Result<Self, String> {
        let mut set = GlobSetBuilder::new();
        let mut roots = Vec::new();
        for glob in globs {
            let glob = glob.as_ref();
            let trimmed = glob.trim_end_matches('/');
            if let Some(problem) = problem(trimmed) {
                return Err(format!("glob `{glob}` {problem}"));
            }
            for pattern in [trimmed.to_owned(), format!("{trimmed}/**")] {
                let compiled = GlobBuilder::new(&pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("glob `{glob}` is not a glob: {}", e.kind()))?;
                set.add(compiled);
            }
            roots.push(literal_root(trimmed));
        }
        roots.sort();
        roots.dedup();
        // `a` covers `a/b`: keep only the outermost roots.
        let mut outer: Vec<String> = Vec::new();
        for root in roots {
            if !outer.iter().any(|o| covers(o, &root)) {
                outer.push(root);
            }
        }
        let set = set
            .build()
            .map_err(|e| format!("the globs cannot be compiled: {e}"))?;
        Ok(Self { set, roots: outer })
    }

    /// Whether the file at `path` (relative, `/`-separated) is an artifact.
    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// The positions (in the list given to [`ArtifactGlobs::new`]) of the globs that take
    /// `path`, each once, in order.
    pub fn which(&self, path: &str) -> Vec<usize> {
        let mut globs: Vec<usize> = self
            .set
            .matches(path)
            .into_iter()
            .map(|pattern| pattern / 2)
            .collect();
        globs.dedup();
        globs
    }

    /// The directories (or files) below which every match lies: the part of each glob before
    /// its first wildcard, `""` for the whole project. Roots never contain each other.
    pub fn roots(&self) -> &[String] {
        &self.roots
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Why a glob can never name a file inside the project, if it cannot.
fn problem(glob: &str) -> Option<&'static str> {
    if glob.is_empty() {
        return Some("is empty");
    }
    if glob.starts_with('/') {
        return Some("is absolute: artifact globs are relative to the project directory");
    }
    if glob.split('/').any(|part| part == "..") {
        return Some("climbs out of the project with `..`");
    }
    None
}

/// The leading components of `glob` that hold no wildcard, joined.
fn literal_root(glob: &str) -> String {
    let wild = |part: &str| part.contains(['*', '?', '[', '{', '\\']);
    glob.split('/')
        .take_while(|part| !wild(part))
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether root `outer` holds `inner`.
fn covers(outer: &str, inner: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `path` as a relative path that stays inside the directory it is joined to: no root, no
/// `..`, `.` components dropped; `None` for anything else or for an empty path.
pub fn contained(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Counts files and bytes against a step's limits.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
    max_files: u64,
    max_bytes: u64,
}

impl Tally {
    pub fn new(max_files: u64, max_bytes: u64) -> Self {
        Self {
            files: 0,
            bytes: 0,
            max_files,
            max_bytes,
        }
    }

    /// Counts one more file of `bytes`; the error says which limit it passes, in words a
    /// step's message can carry.
    pub fn add(&mut self, bytes: u64) -> Result<(), String> {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.files > self.max_files {
            return Err(format!(
                "its artifacts are more than {} files, the limit (`[pipeline] artifacts_max = \
                 {{ files = ... }}`)",
                self.max_files
            ));
        }
        if self.bytes > self.max_bytes {
            return Err(format!(
                "its artifacts are more than {} bytes, the limit (`[pipeline] artifacts_max = \
                 {{ bytes = ... }}`)",
                self.max_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_take_files_and_whole_directories() {
        let globs =
            ArtifactGlobs::new(&["dist/**", "target/release/hm", "docs/", "*.whl"]).expect("valid");
        for yes in [
            "dist/app.txt",
            "dist/a/b/c",
            "target/release/hm",
            "docs/index.html",
            "docs/a/b.css",
            "pkg.whl",
        ] {
            assert!(globs.matches(yes), "{yes}");
        }
        assert_eq!(globs.which("docs/a/b.css"), [2]);
        assert_eq!(globs.which("dist/x"), [0]);
        for no in [
            "distx/a",
            "target/release/hmx",
            "target/debug/hm",
            "sub/pkg.whl",
        ] {
            assert!(!globs.matches(no), "{no}");
        }
        // `*.whl` may be anywhere at the top: the whole project is its root.
        assert_eq!(globs.roots(), [""]);
    }

    #[test]
    fn roots_are_the_outermost_literal_prefixes() {
        let globs =
            ArtifactGlobs::new(&["dist/**", "dist/a/*.txt", "out/*/x", "target/release/hm"])
                .expect("valid");
        assert_eq!(globs.roots(), ["dist", "out", "target/release/hm"]);
    }

    #[test]
    fn globs_outside_the_project_are_refused() {
        for (glob, says) in [
            ("/etc/passwd", "is absolute"),
            ("../x", "climbs out"),
            ("a/../../x", "climbs out"),
            ("", "is empty"),
            ("a/[", "is not a glob"),
        ] {
            let err = ArtifactGlobs::new(&[glob]).expect_err(glob);
            assert!(err.contains(says), "{glob}: {err}");
        }
    }

    #[test]
    fn contained_paths_stay_inside() {
        assert_eq!(contained(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(contained(Path::new("a/../b")), None);
        assert_eq!(contained(Path::new("/a")), None);
        assert_eq!(contained(Path::new(".")), None);
    }

    #[test]
    fn the_tally_says_which_limit() {
        let mut tally = Tally::new(2, 10);
        assert!(tally.add(4).is_ok());
        assert!(tally.add(4).is_ok());
        assert!(
            tally
                .add(0)
                .expect_err("3 files")
                .contains("more than 2 files")
        );
        let mut tally = Tally::new(5, 10);
        assert!(
            tally
                .add(11)
                .expect_err("bytes")
                .contains("more than 10 bytes")
        );
    }
}
