//! Whether a step's `if` holds: which files changed since a base commit (asked of git), which
//! exist, and what the step's environment says.
//!
//! Git is asked through its command line, as a user would: hm links no git library, and the
//! `git` on the machine is the one that understands the repository (its config, its
//! worktrees, its safe directories).

use std::path::{Path, PathBuf};
use std::process::Command;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::Condition;

/// A glob of `hm.toml` as hm matches it: `*` stays within one path component, `**` crosses
/// them, and a pattern also matches everything below a directory it names (`docs` is
/// `docs/**` too).
pub fn glob(text: &str) -> Result<Glob, String> {
    GlobBuilder::new(text.trim_end_matches('/'))
        .literal_separator(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

fn glob_set(globs: &[String]) -> GlobSet {
    let mut set = GlobSetBuilder::new();
    for text in globs {
        // Checked when the file was read.
        if let Ok(g) = glob(text) {
            set.add(g);
        }
        if let Ok(g) = glob(&format!("{}/**", text.trim_end_matches('/'))) {
            set.add(g);
        }
    }
    set.build().unwrap_or_else(|_| GlobSet::empty())
}

/// The files that changed in the project, for `if.changed`.
#[derive(Debug, Clone)]
pub struct Changes {
    /// What they were compared with, for messages: "origin/HEAD (merge base 1a2b3c4d)".
    pub base: String,
    /// Paths relative to the project; `None`: every file counts as changed (no git, no base).
    pub files: Option<Vec<PathBuf>>,
}

impl Changes {
    /// The files of the project at `root` that differ from the base: committed since it,
    /// staged, unstaged and untracked (not ignored). The base is `since` (from `--since` or
    /// `HM_SINCE`, named by `source` in errors), else the merge base of HEAD with
    /// `origin/HEAD`, `main` or `master`; without one, or outside git, every file counts.
    pub fn find(root: &Path, since: Option<(&str, &str)>) -> Result<Changes, String> {
        let everything = |why: String| Changes {
            base: why,
            files: None,
        };
        if git(root, &["rev-parse", "--show-toplevel"]).is_err() {
            return match since {
                Some((source, _)) => Err(format!(
                    "{source} needs a git repository, and {} is not in one",
                    root.display()
                )),
                None => Ok(everything("not a git repository".to_owned())),
            };
        }
        let (base, described) = match since {
            Some((source, reference)) => match commit(root, reference) {
                Some(id) => (id, format!("{reference} ({source})")),
                None => {
                    return Err(format!(
                        "{source} `{reference}` is not a commit of the repository at {}",
                        root.display()
                    ));
                }
            },
            None => {
                let found = ["origin/HEAD", "main", "master"]
                    .iter()
                    .find_map(|candidate| {
                        commit(root, candidate)?;
                        let base = git(root, &["merge-base", "HEAD", candidate]).ok()?;
                        let base = base.trim().to_owned();
                        let short = base.chars().take(12).collect::<String>();
                        Some((base, format!("{candidate} (merge base {short})")))
                    });
                match found {
                    Some(found) => found,
                    None => {
                        return Ok(everything(
                            "no base to compare with (no --since, HM_SINCE, origin/HEAD, main or master)"
                                .to_owned(),
                        ));
                    }
                }
            }
        };
        let tracked = git(
            root,
            &[
                "diff",
                "--name-only",
                "--no-renames",
                "--relative",
                "-z",
                &base,
                "--",
            ],
        )?;
        let untracked = git(root, &["ls-files", "--others", "--exclude-standard", "-z"])?;
        let mut files: Vec<PathBuf> = tracked
            .split('\0')
            .chain(untracked.split('\0'))
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect();
        files.sort();
        files.dedup();
        Ok(Changes {
            base: described,
            files: Some(files),
        })
    }
}

/// Where a reference points, if it names a commit.
fn commit(root: &Path, reference: &str) -> Option<String> {
    let spec = format!("{reference}^{{commit}}");
    git(root, &["rev-parse", "--verify", "--quiet", &spec])
        .ok()
        .map(|id| id.trim().to_owned())
}

/// `git -C root ARGS`'s stdout, or what went wrong.
fn git(root: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| "git printed a path that is not UTF-8".to_owned())
}

/// `Ok` when every part of `condition` holds; otherwise the first part that does not, in
/// words. `env` looks a variable up in the step's environment; `changes` is there when a step
/// of the run uses `changed`.
pub fn holds(
    condition: &Condition,
    root: &Path,
    changes: Option<&Changes>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    for (name, wanted) in &condition.env {
        let listed = wanted
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        match env(name) {
            None => {
                return Err(format!(
                    "`{name}` is not set (the condition wants {listed})"
                ));
            }
            Some(value) if !wanted.contains(&value) => {
                return Err(format!("`{name}` is `{value}`, not {listed}"));
            }
            Some(_) => {}
        }
    }
    if let Some(globs) = &condition.exists
        && !exists(root, globs)
    {
        return Err(format!("nothing matches {}", listed(globs)));
    }
    if let Some(globs) = &condition.changed {
        let Some(changes) = changes else {
            return Ok(());
        };
        let Some(files) = &changes.files else {
            return Ok(());
        };
        let set = glob_set(globs);
        if !files.iter().any(|f| set.is_match(f)) {
            return Err(format!(
                "no file matching {} changed since {}",
                listed(globs),
                changes.base
            ));
        }
    }
    Ok(())
}

fn listed(globs: &[String]) -> String {
    globs
        .iter()
        .map(|g| format!("`{g}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a path below `root` matches one of `globs`: a plain path is looked up, a pattern is
/// matched against the project's files and directories (`.git` aside, ignored files included:
/// a build output counts).
fn exists(root: &Path, globs: &[String]) -> bool {
    let is_pattern = |g: &str| g.contains(['*', '?', '[', '{']);
    if globs
        .iter()
        .any(|g| !is_pattern(g) && root.join(g).symlink_metadata().is_ok())
    {
        return true;
    }
    let patterns: Vec<String> = globs.iter().filter(|g| is_pattern(g)).cloned().collect();
    if patterns.is_empty() {
        return false;
    }
    let set = glob_set(&patterns);
    ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.path().strip_prefix(root).ok().map(Path::to_path_buf))
        .any(|relative| !relative.as_os_str().is_empty() && set.is_match(&relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(globs: &[&str], path: &str) -> bool {
        let globs: Vec<String> = globs.iter().map(|g| (*g).to_owned()).collect();
        glob_set(&globs).is_match(path)
    }

    #[test]
    fn globs_match_like_paths_and_a_directory_matches_what_is_below_it() {
        let cases = [
            (&["src/**"][..], "src/main.rs", true),
            (&["src/**"], "src/a/b/c.rs", true),
            (&["*.rs"], "main.rs", true),
            (&["*.rs"], "src/main.rs", false),
            (&["**/*.rs"], "src/main.rs", true),
            (&["docs"], "docs/index.md", true),
            (&["docs/"], "docs/a/b.md", true),
            (&["docs"], "docsite/index.md", false),
            (&["Cargo.lock"], "Cargo.lock", true),
            (&["Cargo.lock"], "sub/Cargo.lock", false),
            (&["src/*.{rs,toml}"], "src/x.toml", true),
        ];
        for (globs, path, want) in cases {
            assert_eq!(matches(globs, path), want, "{globs:?} ~ {path}");
        }
    }

    #[test]
    fn env_parts_say_what_they_found() {
        let condition = Condition {
            env: vec![("BRANCH".into(), vec!["main".into(), "release".into()])],
            ..Condition::default()
        };
        let with = |value: Option<&str>| {
            let value = value.map(str::to_owned);
            holds(&condition, Path::new("/"), None, move |_| value.clone())
        };
        assert_eq!(with(Some("release")), Ok(()));
        assert_eq!(
            with(Some("dev")),
            Err("`BRANCH` is `dev`, not `main` or `release`".to_owned())
        );
        assert_eq!(
            with(None),
            Err("`BRANCH` is not set (the condition wants `main` or `release`)".to_owned())
        );
    }

    #[test]
    fn every_file_counts_as_changed_without_a_list() {
        let condition = Condition {
            changed: Some(vec!["src/**".into()]),
            ..Condition::default()
        };
        let everything = Changes {
            base: "not a git repository".into(),
            files: None,
        };
        let none = Changes {
            base: "main".into(),
            files: Some(vec![PathBuf::from("README.md")]),
        };
        let none_env = |_: &str| None;
        assert_eq!(
            holds(&condition, Path::new("/"), Some(&everything), none_env),
            Ok(())
        );
        assert_eq!(
            holds(&condition, Path::new("/"), Some(&none), none_env),
            Err("no file matching `src/**` changed since main".to_owned())
        );
    }
}
