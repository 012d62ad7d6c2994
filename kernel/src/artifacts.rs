//! A step's artifacts on the kernel's side: collected from the project directory (a step that
//! ran there), or written into it from the tar an executor sent (a step that ran in a
//! container), listed with their sizes and sha256, and packed into one sealed tar for the steps
//! after it that run elsewhere.
//!
//! Everything here reads or writes files: the run loop calls it off its thread.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use hm_ipc::artifacts::{ArtifactGlobs, Tally, contained};
use hm_ipc::{BufferWriter, SealedBuffer};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::ArtifactLimits;

/// One file a step produced, as `step_end.artifacts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Relative to the project root, `/`-separated.
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What collecting a step's artifacts found.
#[derive(Debug, Default)]
pub struct Collected {
    /// In path order.
    pub artifacts: Vec<Artifact>,
    /// The globs that took no file: a warning in the step's log, not a failure.
    pub unmatched: Vec<String>,
}

/// Why a step's artifacts could not be taken: the step fails with cause `artifact`.
pub type Problem = String;

/// Collects the files matching `globs` below `root`, where a step that ran in the project
/// directory left them. Symbolic links are not followed (a link is not an artifact) and `.git`
/// is never entered; `.gitignore` is not consulted, as build outputs are usually ignored.
pub fn collect(
    root: &Path,
    globs: &[String],
    limits: ArtifactLimits,
) -> Result<Collected, Problem> {
    let set = ArtifactGlobs::new(globs)?;
    let found = matching(root, globs)?;
    let mut tally = Tally::new(limits.files, limits.bytes);
    let mut taken = vec![false; globs.len()];
    let mut sized = Vec::with_capacity(found.len());
    for (relative, path) in found {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        tally.add(meta.len())?;
        for glob in set.which(&relative) {
            taken[glob] = true;
        }
        sized.push((relative, path));
    }
    let mut collected = Collected {
        unmatched: unmatched(globs, &taken),
        ..Collected::default()
    };
    for (relative, path) in sized {
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (bytes, sha256) =
            digest(file, io::sink()).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        collected.artifacts.push(Artifact {
            path: relative,
            bytes,
            sha256,
        });
    }
    Ok(collected)
}

/// The regular files below `root` that `globs` take (no symlink followed, never in `.git`), as
/// project-relative text and full path, in path order: what `artifacts` and `inputs` name.
pub fn matching(root: &Path, globs: &[String]) -> Result<Vec<(String, PathBuf)>, Problem> {
    let set = ArtifactGlobs::new(globs)?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for start in set.roots() {
        let start_path = if start.is_empty() {
            root.to_owned()
        } else {
            root.join(start)
        };
        walk(&start_path, root, &set, &mut found)
            .map_err(|e| format!("cannot read {}: {e}", start_path.display()))?;
    }
    found.sort();
    found.dedup();
    Ok(found)
}

fn walk(
    path: &Path,
    root: &Path,
    set: &ArtifactGlobs,
    found: &mut Vec<(String, PathBuf)>,
) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        if path.file_name().is_some_and(|n| n == ".git") {
            return Ok(());
        }
        for entry in std::fs::read_dir(path)? {
            walk(&entry?.path(), root, set, found)?;
        }
    } else if meta.is_file()
        && let Some(relative) = relative_text(path, root)
        && set.matches(&relative)
    {
        found.push((relative, path.to_owned()));
    }
    Ok(())
}

/// `path` below `root` as `/`-separated UTF-8 text; `None` for paths that are not (a file
/// whose name is not UTF-8 cannot be named in `step_end`).
fn relative_text(path: &Path, root: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
    parts.map(|parts| parts.join("/"))
}

fn unmatched(globs: &[String], taken: &[bool]) -> Vec<String> {
    globs
        .iter()
        .zip(taken)
        .filter(|(_, taken)| !**taken)
        .map(|(glob, _)| glob.clone())
        .collect()
}

/// Copies `from` into `to`, returning the byte count and the sha256 of what went through.
fn digest(mut from: impl Read, mut to: impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((total, hex))
}

/// Writes the artifacts in `tar` (from an executor that ran the step elsewhere) into the
/// project at `root`. Only regular files that `globs` take are written; the whole tar is
/// checked against the limits before the first file is, and each file is written beside its
/// place and renamed over it, so a failure leaves nothing half-written.
pub fn unpack(
    tar: &[u8],
    root: &Path,
    globs: &[String],
    limits: ArtifactLimits,
) -> Result<Collected, Problem> {
    let set = ArtifactGlobs::new(globs)?;
    let files = listed_files(tar, &set, limits)?;
    let mut taken = vec![false; globs.len()];
    for relative in &files {
        for glob in set.which(relative) {
            taken[glob] = true;
        }
    }
    let mut collected = Collected {
        unmatched: unmatched(globs, &taken),
        ..Collected::default()
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive.entries().map_err(bad_tar)?;
    for entry in entries {
        let mut entry = entry.map_err(bad_tar)?;
        let Some(relative) = regular_file(&entry, &set) else {
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let target = root.join(&relative);
        let (bytes, sha256) = write_atomically(&target, mode, &mut entry, None)
            .map_err(|e| format!("cannot write the artifact {relative}: {e}"))?;
        collected.artifacts.push(Artifact {
            path: relative,
            bytes,
            sha256,
        });
    }
    collected.artifacts.sort_by(|a, b| a.path.cmp(&b.path));
    collected.artifacts.dedup_by(|a, b| a.path == b.path);
    Ok(collected)
}

fn bad_tar(e: io::Error) -> Problem {
    format!("its executor sent artifacts that are not a valid tar: {e}")
}

/// The artifact files of `tar`, checked against the limits.
fn listed_files(
    tar: &[u8],
    set: &ArtifactGlobs,
    limits: ArtifactLimits,
) -> Result<Vec<String>, Problem> {
    let mut tally = Tally::new(limits.files, limits.bytes);
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(bad_tar)? {
        let entry = entry.map_err(bad_tar)?;
        if let Some(relative) = regular_file(&entry, set) {
            tally.add(entry.size())?;
            files.push(relative);
        }
    }
    Ok(files)
}

/// The project-relative path of a tar entry that is a regular file an artifact glob takes.
fn regular_file<R: Read>(entry: &tar::Entry<'_, R>, set: &ArtifactGlobs) -> Option<String> {
    if !entry.header().entry_type().is_file() {
        return None;
    }
    let path = entry.path().ok()?;
    let relative = contained(&path)?;
    let text = relative_text(&relative, Path::new(""))?;
    set.matches(&text).then_some(text)
}

/// Writes `from` to a temporary file beside `target` and renames it over `target`; with
/// `expected`, only if what came has that sha256 (else nothing is written).
pub(crate) fn write_atomically(
    target: &Path,
    mode: u32,
    from: impl Read,
    expected: Option<&str>,
) -> io::Result<(u64, String)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let temp = dir.join(format!(
        ".{}.hm-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode.max(0o600))
            .open(&temp)?;
        let mut out = io::BufWriter::new(file);
        let digest = digest(from, &mut out)?;
        out.flush()?;
        if expected.is_some_and(|sha256| sha256 != digest.1) {
            return Err(io::Error::other("its bytes do not match their digest"));
        }
        std::fs::rename(&temp, target)?;
        Ok(digest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// One sealed tar of `files` (project-relative paths) read from `root`, for a step that runs
/// elsewhere; `None` when there are none. A later entry of the same path wins when unpacked.
pub fn pack(root: &Path, files: &[String]) -> Result<Option<SealedBuffer>, String> {
    if files.is_empty() {
        return Ok(None);
    }
    let writer = BufferWriter::new("hm-artifacts").map_err(|e| e.to_string())?;
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    for relative in files {
        tar.append_path_with_name(root.join(relative), relative)
            .map_err(|e| format!("cannot read the artifact {relative}: {e}"))?;
    }
    let writer = tar.into_inner().map_err(|e| e.to_string())?;
    writer.seal().map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ArtifactLimits = ArtifactLimits {
        files: 100,
        bytes: 1 << 20,
    };

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("dist/sub")).expect("mkdir");
        std::fs::write(dir.path().join("dist/app.txt"), "app\n").expect("write");
        std::fs::write(dir.path().join("dist/sub/b.bin"), [0u8; 10]).expect("write");
        std::fs::write(dir.path().join("README"), "r").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("dist/link")).expect("link");
        dir
    }

    #[test]
    fn collecting_lists_matching_files_with_their_digest() {
        let dir = project();
        let globs = vec!["dist/**".to_owned(), "nothing/*".to_owned()];
        let got = collect(dir.path(), &globs, LIMITS).expect("collected");
        let paths: Vec<&str> = got.artifacts.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["dist/app.txt", "dist/sub/b.bin"]);
        assert_eq!(got.artifacts[0].bytes, 4);
        assert_eq!(got.artifacts[0].sha256, hex_sha256(b"app\n"));
        assert_eq!(got.unmatched, ["nothing/*"]);
    }

    fn hex_sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn collecting_past_a_limit_says_which() {
        let dir = project();
        let globs = vec!["dist/**".to_owned()];
        let few = ArtifactLimits {
            files: 1,
            bytes: 1 << 20,
        };
        let err = collect(dir.path(), &globs, few).expect_err("over");
        assert!(err.contains("more than 1 files"), "{err}");
        let small = ArtifactLimits {
            files: 10,
            bytes: 5,
        };
        let err = collect(dir.path(), &globs, small).expect_err("over");
        assert!(err.contains("more than 5 bytes"), "{err}");
    }

    #[test]
    fn a_packed_tar_unpacks_into_another_project() {
        let from = project();
        let files = vec!["dist/app.txt".to_owned(), "dist/sub/b.bin".to_owned()];
        let sealed = pack(from.path(), &files).expect("packed").expect("some");
        let map = sealed.map().expect("map");
        let to = tempfile::tempdir().expect("tempdir");
        let globs = vec!["dist/**".to_owned()];
        let got = unpack(map.as_slice(), to.path(), &globs, LIMITS).expect("unpacked");
        assert_eq!(got.artifacts.len(), 2);
        assert_eq!(
            std::fs::read_to_string(to.path().join("dist/app.txt")).expect("read"),
            "app\n"
        );
        assert_eq!(got.artifacts[0].sha256, hex_sha256(b"app\n"));
        // Nothing but the two files (no temporary files) is left.
        let names: Vec<_> = std::fs::read_dir(to.path().join("dist"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn unpacking_over_a_limit_writes_nothing() {
        let from = project();
        let files = vec!["dist/app.txt".to_owned(), "dist/sub/b.bin".to_owned()];
        let sealed = pack(from.path(), &files).expect("packed").expect("some");
        let map = sealed.map().expect("map");
        let to = tempfile::tempdir().expect("tempdir");
        let one = ArtifactLimits {
            files: 1,
            bytes: 1 << 20,
        };
        let err = unpack(map.as_slice(), to.path(), &["dist/**".to_owned()], one)
            .expect_err("over the limit");
        assert!(err.contains("more than 1 files"), "{err}");
        assert_eq!(std::fs::read_dir(to.path()).expect("dir").count(), 0);
    }

    #[test]
    fn unpacking_takes_only_what_the_globs_name() {
        let from = project();
        let files = vec!["dist/app.txt".to_owned(), "README".to_owned()];
        let sealed = pack(from.path(), &files).expect("packed").expect("some");
        let map = sealed.map().expect("map");
        let to = tempfile::tempdir().expect("tempdir");
        let got =
            unpack(map.as_slice(), to.path(), &["dist/**".to_owned()], LIMITS).expect("unpacked");
        assert_eq!(got.artifacts.len(), 1);
        assert!(!to.path().join("README").exists());
    }
}
