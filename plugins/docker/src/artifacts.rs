//! A passed step's artifacts, out of its container: the files below `/workspace` that the
//! step's `artifacts` globs match, read from Docker's archive API and written straight into a
//! tar in a sealed buffer for hm (`PutArtifacts`), counted against the step's limits as they
//! come. Which files match is decided by `hm_sdk::artifacts`, the code hm uses for steps it
//! collects itself.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::Path;

use bollard::Docker;
use hm_sdk::artifacts::{ArtifactGlobs, Tally, contained};
use hm_sdk::{BufferWriter, SealedBuffer, StepContext, StepError, StepRequest};
use tar::EntryType;

use crate::container::WORKSPACE;
use crate::download::{header, read_archive};

/// The name of the artifacts' memfd (`/proc/<pid>/fd` shows `/memfd:hm-artifacts`).
const MEMFD_NAME: &str = "hm-artifacts";

/// Sends the files of the step's `artifacts` to hm: a tar of them, or the limit they passed.
/// Nothing for a step without artifacts.
pub async fn send(
    docker: &Docker,
    id: &str,
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<(), StepError> {
    if step.artifacts.is_empty() {
        return Ok(());
    }
    match collect(docker, id, step).await? {
        Collected::Tar(tar) => ctx.put_artifacts(tar).await,
        Collected::Problem(problem) => ctx.artifacts_problem(problem).await,
    }
}

enum Collected {
    Tar(SealedBuffer),
    /// Why there is no tar, for hm to fail the step with (cause `artifact`).
    Problem(String),
}

/// Reads each root of the globs out of the container (one download each: the roots never
/// contain each other) into one tar.
async fn collect(docker: &Docker, id: &str, step: &StepRequest) -> Result<Collected, StepError> {
    let mut collector = match Collector::new(step)? {
        Ok(collector) => collector,
        Err(problem) => return Ok(Collected::Problem(problem)),
    };
    for root in collector.roots().to_vec() {
        let path = container_path(&root);
        let (back, taken) =
            read_archive(docker, id, &path, collector, move |collector, archive| {
                collector.take(archive, |entry| workspace_path(&root, entry))
            })
            .await
            .map_err(|e| {
                StepError::Message(format!(
                    "cannot read the step's artifacts at {path} in the container: {e}"
                ))
            })?;
        collector = back;
        // `None`: nothing at `path`, so no artifacts there.
        match taken.unwrap_or(Ok(())) {
            Ok(()) => {}
            Err(Stop::Limit(problem)) => return Ok(Collected::Problem(problem)),
            Err(Stop::Io(e)) => {
                return Err(StepError::Message(format!(
                    "cannot collect the step's artifacts from {path} in the container: {e}"
                )));
            }
        }
    }
    collector.finish().map(Collected::Tar)
}

/// Where a glob root is in the container.
fn container_path(root: &str) -> String {
    if root.is_empty() {
        WORKSPACE.to_owned()
    } else {
        format!("{WORKSPACE}/{root}")
    }
}

/// The path relative to `/workspace` of an entry of Docker's archive of
/// [`container_path`]`(root)`: Docker names the entries after that path's basename (`dist`,
/// `dist/app.txt` for root `out/dist`; `workspace/...` for the whole workspace). `None` for an
/// entry that is not below it (or is the workspace itself), climbs out, or is not UTF-8.
fn workspace_path(root: &str, entry: &Path) -> Option<String> {
    let entry = contained(entry)?;
    let mut parts = entry.iter().map(|part| part.to_str());
    let first = parts.next()??;
    let base = match root.rsplit_once('/') {
        Some((_, base)) => base,
        None if root.is_empty() => WORKSPACE.rsplit('/').next().unwrap_or_default(),
        None => root,
    };
    if first != base {
        return None;
    }
    let mut path: Vec<&str> = Vec::new();
    if !root.is_empty() {
        path.push(root);
    }
    for part in parts {
        path.push(part?);
    }
    (!path.is_empty()).then(|| path.join("/"))
}

/// Why reading an archive stopped early.
pub enum Stop {
    /// The artifacts passed a limit: [`Tally::add`]'s message.
    Limit(String),
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

/// The tar for hm being written from the archives a step's files come in, and what it holds
/// so far. Public for the swarm plugin, whose tasks send theirs over HTTP.
pub struct Collector {
    tar: tar::Builder<BufferWriter>,
    tally: Tally,
    /// The directories already in the tar.
    dirs: BTreeSet<String>,
    globs: ArtifactGlobs,
}

impl Collector {
    /// A collector for `step`'s artifacts, or the problem with its globs (for hm to fail the
    /// step with, cause `artifact`).
    pub fn new(step: &StepRequest) -> Result<Result<Self, String>, StepError> {
        let globs = match ArtifactGlobs::new(&step.artifacts) {
            Ok(globs) => globs,
            Err(problem) => return Ok(Err(problem)),
        };
        let writer = BufferWriter::new(MEMFD_NAME)
            .map_err(|e| StepError::Message(format!("cannot collect the step's artifacts: {e}")))?;
        Ok(Ok(Self {
            tar: tar::Builder::new(writer),
            tally: step.artifact_limits.tally(),
            dirs: BTreeSet::new(),
            globs,
        }))
    }

    /// The roots of the step's globs, relative to the workspace (`""` for the workspace
    /// itself): the directories and files that hold every match, none inside another.
    pub fn roots(&self) -> &[String] {
        self.globs.roots()
    }

    /// Copies the matching regular files of `archive` into the tar, with their directories;
    /// `path_of` says where below the workspace an entry is (`None`: nowhere, skipped).
    /// Everything else is skipped: directories of their own (an artifact is a file),
    /// symlinks (which could point out of the workspace), devices, and hard links (Docker and
    /// tar send a file's second name as a link to its first, which hm's tar of regular files
    /// cannot carry).
    pub fn take(
        &mut self,
        archive: &mut dyn Read,
        path_of: impl Fn(&Path) -> Option<String>,
    ) -> Result<(), Stop> {
        let mut archive = tar::Archive::new(archive);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let Some(path) = path_of(&entry.path()?) else {
                continue;
            };
            if !self.globs.matches(&path) {
                continue;
            }
            let size = entry.size();
            self.tally.add(size).map_err(Stop::Limit)?;
            self.add_parents(&path)?;
            // The step's permissions (an executable stays one), not its owner: hm only reads.
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let mtime = entry.header().mtime().unwrap_or(0);
            let mut header = header(EntryType::Regular, size, mode, mtime);
            self.tar.append_data(&mut header, &path, &mut entry)?;
        }
        Ok(())
    }

    /// The sealed tar, for [`StepContext::put_artifacts`].
    pub fn finish(self) -> Result<SealedBuffer, StepError> {
        self.tar
            .into_inner()
            .map_err(|e| e.to_string())
            .and_then(|writer| writer.seal().map_err(|e| e.to_string()))
            .map_err(|e| StepError::Message(format!("cannot collect the step's artifacts: {e}")))
    }

    /// Adds the directories above `path` that the tar does not hold yet, outermost first.
    fn add_parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let dir = &path[..end];
            if self.dirs.insert(dir.to_owned()) {
                let mut header = header(EntryType::Directory, 0, 0o755, 0);
                self.tar
                    .append_data(&mut header, format!("{dir}/"), io::empty())?;
            }
            end += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_entry_names_map_back_below_the_workspace() {
        let cases = [
            // The whole workspace: Docker names it `workspace`.
            ("", "workspace/dist/app.txt", Some("dist/app.txt")),
            ("", "workspace/a.whl", Some("a.whl")),
            ("", "workspace", None),
            ("", "workspace/", None),
            ("", "other/a.whl", None),
            // A directory root: named after its basename, its parents put back.
            ("dist", "dist/app.txt", Some("dist/app.txt")),
            ("dist", "./dist/sub/x", Some("dist/sub/x")),
            ("dist", "dist", Some("dist")),
            ("out/dist", "dist/app.txt", Some("out/dist/app.txt")),
            ("out/dist", "out/app.txt", None),
            // A file root: the entry is the file.
            ("target/release/hm", "hm", Some("target/release/hm")),
            // Nothing that climbs out or is absolute.
            ("dist", "dist/../../etc/passwd", None),
            ("dist", "/dist/app.txt", None),
        ];
        for (root, entry, expected) in cases {
            assert_eq!(
                workspace_path(root, Path::new(entry)).as_deref(),
                expected,
                "{entry} of {root:?}"
            );
        }
    }

    #[test]
    fn roots_are_read_below_the_workspace() {
        assert_eq!(container_path(""), "/workspace");
        assert_eq!(container_path("out/dist"), "/workspace/out/dist");
    }

    /// A tar as Docker sends one for `/workspace/dist`.
    fn docker_archive(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for &(path, kind, data) in entries {
            let mut header = header(kind, data.len() as u64, 0o755, 0);
            header.set_uid(1234);
            if kind == EntryType::Symlink {
                header.set_link_name("app.txt").expect("link name");
            }
            tar.append_data(&mut header, path, data).expect("append");
        }
        tar.into_inner().expect("tar")
    }

    fn collect_from(
        archive: &[u8],
        globs: &[&str],
        limits: (u64, u64),
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let globs = ArtifactGlobs::new(globs).expect("globs");
        let mut collector = Collector {
            tar: tar::Builder::new(BufferWriter::new("hm-test-collect").expect("memfd")),
            tally: Tally::new(limits.0, limits.1),
            dirs: BTreeSet::new(),
            globs,
        };
        match collector.take(&mut &archive[..], |entry| workspace_path("dist", entry)) {
            Ok(()) => {}
            Err(Stop::Limit(problem)) => return Err(problem),
            Err(Stop::Io(e)) => panic!("{e}"),
        }
        let sealed = collector
            .tar
            .into_inner()
            .expect("finish")
            .seal()
            .expect("seal");
        let view = sealed.map().expect("map");
        let mut out = tar::Archive::new(view.as_slice());
        Ok(out
            .entries()
            .expect("entries")
            .map(|entry| {
                let mut entry = entry.expect("entry");
                let path = entry.path().expect("path").display().to_string();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("read");
                (path, data)
            })
            .collect())
    }

    #[test]
    fn matching_regular_files_go_into_the_tar_with_their_directories() {
        let archive = docker_archive(&[
            ("dist", EntryType::Directory, b""),
            ("dist/app.txt", EntryType::Regular, b"app"),
            ("dist/link", EntryType::Symlink, b""),
            ("dist/sub", EntryType::Directory, b""),
            ("dist/sub/deep.txt", EntryType::Regular, b"deep"),
            ("dist/notes.md", EntryType::Regular, b"no"),
        ]);
        let got = collect_from(&archive, &["dist/**/*.txt", "dist/link"], (10, 100));
        let expected = [
            ("dist/", ""),
            ("dist/app.txt", "app"),
            ("dist/sub/", ""),
            ("dist/sub/deep.txt", "deep"),
        ]
        .map(|(p, d)| (p.to_owned(), d.as_bytes().to_vec()));
        assert_eq!(got, Ok(expected.to_vec()));
    }

    #[test]
    fn passing_a_limit_stops_with_its_message() {
        let archive = docker_archive(&[
            ("dist/a", EntryType::Regular, b"1234"),
            ("dist/b", EntryType::Regular, b"5678"),
        ]);
        let files = collect_from(&archive, &["dist"], (1, 100)).expect_err("2 files");
        assert!(files.contains("more than 1 files"), "{files}");
        let bytes = collect_from(&archive, &["dist"], (10, 6)).expect_err("8 bytes");
        assert!(bytes.contains("more than 6 bytes"), "{bytes}");
    }
}
