//! The workspace archive (`OpenArchive`, `docs/protocol.md`): a tar of the project root that
//! plugins read in place from a sealed shared buffer.
//!
//! Built at most once per run, and only when a plugin first asks: the walk honours
//! `.gitignore` files (the project's and its parents'), `.git/info/exclude` and `.hmignore`
//! files (same syntax, and they apply whether or not the project is a git repository), and skips
//! every `.git` and hm's own `.hm/` at the root. The tar is written straight into a memfd (no
//! temporary file), which is then sealed; every request gets a duplicate of its descriptor, sent
//! next to the reply and closed here once sent. The kernel drops its own descriptor when the run's
//! steps are all done ([`WorkspaceArchive::close`]); the memory is freed when the last plugin
//! mapping of it goes too, at the latest when the plugins exit.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hm_ipc::shm::{BufferWriter, SealedBuffer, ShmError};
use thiserror::Error;

/// The memfd's name, as `/proc/<pid>/fd` shows it (`/memfd:hm-workspace-archive`).
pub const MEMFD_NAME: &str = "hm-workspace-archive";
/// hm's own directory at the project root, never archived.
pub const HM_DIR: &str = ".hm";
/// Ignore files with `.gitignore` syntax that only hm reads.
pub const HM_IGNORE: &str = ".hmignore";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("failed to walk the project: {0}")]
    Walk(#[from] ignore::Error),
    #[error("failed to add {path} to the workspace archive: {source}")]
    Add {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Buffer(#[from] ShmError),
}

/// What went into an archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Files, directories and symlinks.
    pub entries: u64,
    /// The tar's size in bytes.
    pub bytes: u64,
}

/// Builds the workspace archive of `root` into a sealed buffer. Blocking: it reads the whole
/// project.
pub fn build(root: &Path) -> Result<(SealedBuffer, ArchiveStats), ArchiveError> {
    let mut tar = tar::Builder::new(BufferWriter::new(MEMFD_NAME)?);
    // A symlink is archived as a symlink: following it could reach outside the project.
    tar.follow_symlinks(false);
    let mut entries = 0;
    for entry in walker(root).build() {
        let entry = entry?;
        if entry.depth() == 0 {
            continue;
        }
        let Some(kind) = entry.file_type() else {
            continue;
        };
        // Sockets, fifos and devices are not workspace content (and reading a fifo blocks).
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            tracing::debug!(path = %entry.path().display(), "not archived: special file");
            continue;
        }
        let path = entry.path();
        let name = path.strip_prefix(root).unwrap_or(path);
        tar.append_path_with_name(path, name)
            .map_err(|source| ArchiveError::Add {
                path: path.to_owned(),
                source,
            })?;
        entries += 1;
    }
    let writer = tar.into_inner().map_err(|source| ArchiveError::Add {
        path: root.to_owned(),
        source,
    })?;
    let bytes = writer.len();
    let buffer = writer.seal()?;
    Ok((buffer, ArchiveStats { entries, bytes }))
}

/// The walk over the project: what is archived and in which order (sorted, so the same tree
/// gives the same archive).
fn walker(root: &Path) -> ignore::WalkBuilder {
    let mut walk = ignore::WalkBuilder::new(root);
    walk.hidden(false)
        .follow_links(false)
        .parents(true)
        .git_ignore(true)
        .git_exclude(true)
        // The user's global excludes would make the archive differ between machines.
        .git_global(false)
        // `.gitignore` is honoured in a project that is not (yet) a git repository too.
        .require_git(false)
        // ripgrep's own `.ignore` files are not hm's business.
        .ignore(false)
        .add_custom_ignore_filename(HM_IGNORE)
        // `.hm/` at the root is hm's own (project-layer plugins and their executables), not
        // the project's content.
        .filter_entry(|entry| {
            entry.file_name() != ".git" && !(entry.depth() == 1 && entry.file_name() == HM_DIR)
        })
        .sort_by_file_name(|a, b| a.cmp(b));
    walk
}

/// The run's workspace archive: built on the first [`Self::open`], shared by every plugin,
/// dropped by [`Self::close`].
pub struct WorkspaceArchive {
    root: PathBuf,
    /// The outcome of the one build of this run (an error is kept too: not retried).
    built: tokio::sync::OnceCell<Result<(), String>>,
    buffer: Mutex<Option<SealedBuffer>>,
    closed: AtomicBool,
}

impl WorkspaceArchive {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            built: tokio::sync::OnceCell::new(),
            buffer: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// A duplicate of the archive's descriptor for one plugin, and the archive's length;
    /// builds the archive first if no plugin asked before. Concurrent first requests wait for
    /// the same build.
    pub async fn open(&self) -> Result<(OwnedFd, u64), String> {
        let over = || "the run's steps are all done".to_owned();
        if self.closed.load(Ordering::Acquire) {
            return Err(over());
        }
        self.built
            .get_or_init(|| async {
                let root = self.root.clone();
                let started = Instant::now();
                match tokio::task::spawn_blocking(move || build(&root)).await {
                    Ok(Ok((buffer, stats))) => {
                        tracing::info!(
                            entries = stats.entries,
                            bytes = stats.bytes,
                            ms = started.elapsed().as_millis() as u64,
                            "built the workspace archive of {}",
                            self.root.display()
                        );
                        let mut slot = lock(&self.buffer);
                        if !self.closed.load(Ordering::Acquire) {
                            *slot = Some(buffer);
                        }
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("the archive builder failed: {e}")),
                }
            })
            .await
            .clone()?;
        let slot = lock(&self.buffer);
        let buffer = slot.as_ref().ok_or_else(over)?;
        let fd = buffer.share().map_err(|e| e.to_string())?;
        Ok((fd, buffer.len() as u64))
    }

    /// Drops the kernel's descriptor of the archive; later requests are refused. Called when
    /// every step of the run is done, and again (harmlessly) at its very end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.buffer).take();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere; an Option stays consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry names of the archive of `root`, in order.
    fn names(root: &Path) -> Vec<String> {
        let (buffer, stats) = build(root).expect("archive builds");
        let map = buffer.map().expect("map");
        assert_eq!(stats.bytes as usize, map.len());
        let mut archive = tar::Archive::new(map.as_slice());
        let names: Vec<String> = archive
            .entries()
            .expect("a tar")
            .map(|e| {
                let e = e.expect("an entry");
                e.path().expect("a path").to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(names.len() as u64, stats.entries);
        names
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn honours_gitignore_git_exclude_and_hmignore_and_skips_git() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "hm.toml", "[steps.a]\nrun = \"true\"\n");
        write(root, "src/main.rs", "fn main() {}\n");
        write(root, ".gitignore", "target/\n*.log\n");
        write(root, "target/debug/big", "ignored by .gitignore\n");
        write(root, "build.log", "ignored by .gitignore\n");
        write(root, ".git/HEAD", "ref: refs/heads/main\n");
        write(root, ".git/info/exclude", "local-only.txt\n");
        write(root, "local-only.txt", "ignored by .git/info/exclude\n");
        write(root, ".hmignore", "secrets/\n");
        write(root, "secrets/token", "ignored by .hmignore\n");
        write(root, "sub/.hmignore", "scratch.txt\n");
        write(root, "sub/scratch.txt", "ignored by sub/.hmignore\n");
        write(root, "sub/kept.txt", "kept\n");
        write(root, ".env.example", "hidden files are workspace content\n");
        std::os::unix::fs::symlink("src/main.rs", root.join("link")).expect("symlink");
        assert_eq!(
            names(root),
            [
                ".env.example",
                ".gitignore",
                ".hmignore",
                "hm.toml",
                "link",
                "src",
                "src/main.rs",
                "sub",
                "sub/.hmignore",
                "sub/kept.txt",
            ]
        );
    }

    #[test]
    fn file_contents_and_symlinks_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "a/b.txt", "hello\n");
        std::os::unix::fs::symlink("/etc/passwd", root.join("outside")).expect("symlink");
        let (buffer, _) = build(root).expect("archive builds");
        let map = buffer.map().expect("map");
        let mut archive = tar::Archive::new(map.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().expect("a tar") {
            let mut entry = entry.expect("an entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            match path.as_str() {
                "a/b.txt" => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
                    assert_eq!(text, "hello\n");
                }
                "outside" => {
                    assert!(entry.header().entry_type().is_symlink());
                    let target = entry.link_name().expect("link").expect("a target");
                    assert_eq!(target.to_string_lossy(), "/etc/passwd");
                }
                _ => {}
            }
            seen.push(path);
        }
        assert_eq!(seen, ["a", "a/b.txt", "outside"]);
    }

    #[tokio::test]
    async fn built_once_shared_by_duplicates_and_gone_when_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "f", "x");
        let archive = WorkspaceArchive::new(dir.path().to_owned());
        let (a, len_a) = archive.open().await.expect("open");
        // Removing the project's files after the first build changes nothing: no second build.
        std::fs::remove_file(dir.path().join("f")).expect("rm");
        let (b, len_b) = archive.open().await.expect("open");
        assert_eq!(len_a, len_b);
        let same_file = |fd: &OwnedFd| {
            let stat = nix::sys::stat::fstat(fd).expect("fstat");
            (stat.st_dev, stat.st_ino)
        };
        assert_eq!(same_file(&a), same_file(&b));
        archive.close();
        assert!(archive.open().await.is_err());
    }
}
