//! The cache on disk, under `$XDG_CACHE_HOME/hm/v1` (else `~/.cache/hm/v1`):
//!
//! ```text
//! entries/<key>.json   what a step left: its log, outputs and artifacts, by blob digest
//! blobs/<sha256>       contents, named by their sha256 (a log, an artifact's bytes)
//! tmp/                 files being written, renamed into place when whole
//! ```
//!
//! Every file appears by a rename of a complete temporary file, so a crash mid-write leaves
//! no entry or blob that reads back wrong, and two runs writing the same key or blob at once
//! each rename a whole file over the other's. A blob is checked against its name whenever it
//! is read: an entry with a missing or corrupt blob is a miss, and is removed.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key::hex;
use crate::artifacts::Artifact;
use crate::events::Stream;

/// What a cached step left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// The step that wrote it (for `hm cache list`).
    pub step: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// How long the step took when it ran: the time a hit saves.
    pub duration_ms: u64,
    /// The log, one `o`/`e` byte and a line per line, as a blob; `None` for no output.
    pub log: Option<BlobRef>,
    pub outputs: Vec<(String, String)>,
    pub artifacts: Vec<CachedArtifact>,
    /// How many runs replayed it.
    #[serde(default)]
    pub hits: u64,
}

/// A blob an entry names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub bytes: u64,
}

/// An artifact as an entry keeps it: its listing and its file mode; its bytes are the blob of
/// its sha256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedArtifact {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    pub mode: u32,
}

impl Entry {
    /// The bytes the entry's blobs hold.
    pub fn size(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.bytes)
            + self.artifacts.iter().map(|a| a.bytes).sum::<u64>()
    }

    pub fn listing(&self) -> Vec<Artifact> {
        self.artifacts
            .iter()
            .map(|a| Artifact {
                path: a.path.clone(),
                bytes: a.bytes,
                sha256: a.sha256.clone(),
            })
            .collect()
    }
}

/// What a passed step left, for [`Store::save`].
#[derive(Debug, Clone, Copy)]
pub struct Left<'a> {
    pub step: &'a str,
    pub duration_ms: u64,
    /// As [`Entry::log`] holds it.
    pub log: &'a [u8],
    pub outputs: &'a [(String, String)],
    pub artifacts: &'a [Artifact],
}

/// What [`Store::prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub entries: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    Miss,
    /// There was an entry, but it cannot be used (it is removed): why, for a warning.
    Corrupt(String),
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The cache in `dir`, else `$XDG_CACHE_HOME/hm`, else `~/.cache/hm`; its directories are
    /// made when missing.
    pub fn open(dir: Option<&Path>) -> io::Result<Self> {
        let base = match dir {
            Some(dir) => dir.to_owned(),
            None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
                Some(dir) => PathBuf::from(dir).join("hm"),
                None => std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(".cache/hm"))
                    .ok_or_else(|| io::Error::other("neither XDG_CACHE_HOME nor HOME is set"))?,
            },
        };
        let root = base.join(format!("v{}", super::FORMAT));
        for sub in ["entries", "blobs", "tmp"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(format!("{key}.json"))
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    /// The entry of `key`, if there is one whose blobs are all there at their size. A hit
    /// marks the entry used now (its modification time), for eviction.
    pub fn lookup(&self, key: &str) -> Lookup {
        let path = self.entry_path(key);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("cannot read {}: {e}", path.display())),
        };
        let entry: Entry = match serde_json::from_slice(&text) {
            Ok(entry) => entry,
            Err(e) => return self.discard(key, format!("its entry does not read back ({e})")),
        };
        if entry.key != key {
            return self.discard(key, "its entry names another key".to_owned());
        }
        let blobs = entry
            .log
            .iter()
            .map(|l| (l.sha256.as_str(), l.bytes))
            .chain(entry.artifacts.iter().map(|a| (a.sha256.as_str(), a.bytes)));
        for (sha256, bytes) in blobs {
            match std::fs::metadata(self.blob_path(sha256)) {
                Ok(meta) if meta.len() == bytes => {}
                Ok(meta) => {
                    return self.discard(
                        key,
                        format!("blob {sha256} holds {} bytes, not {bytes}", meta.len()),
                    );
                }
                Err(_) => return self.discard(key, format!("blob {sha256} is missing")),
            }
        }
        // One more hit, and used now (the file's time, for eviction): written like any entry.
        let counted = Entry {
            hits: entry.hits + 1,
            ..entry
        };
        if let Ok(json) = serde_json::to_vec_pretty(&counted) {
            let _ = self.write_new(&path, |out| out.write_all(&json));
        }
        Lookup::Hit(counted)
    }

    /// Removes the entry of `key` (its blobs may serve others) and says why.
    pub fn discard(&self, key: &str, why: String) -> Lookup {
        let _ = std::fs::remove_file(self.entry_path(key));
        Lookup::Corrupt(why)
    }

    /// The recorded log of `entry`, checked against its digest.
    pub fn read_log(&self, entry: &Entry) -> Result<Vec<(Stream, String)>, String> {
        let Some(log) = &entry.log else {
            return Ok(Vec::new());
        };
        let bytes = self.read_blob(&log.sha256)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(text
            .split_terminator('\n')
            .map(|line| match line.strip_prefix('e') {
                Some(rest) => (Stream::Stderr, rest.to_owned()),
                None => (Stream::Stdout, line.get(1..).unwrap_or_default().to_owned()),
            })
            .collect())
    }

    fn read_blob(&self, sha256: &str) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(self.blob_path(sha256))
            .map_err(|e| format!("cannot read blob {sha256}: {e}"))?;
        if hex(&Sha256::digest(&bytes)) != sha256 {
            return Err(format!("blob {sha256} does not hold what its name says"));
        }
        Ok(bytes)
    }

    /// Writes `entry`'s artifacts into the project at `root`, each file checked against its
    /// digest and renamed into place whole.
    pub fn restore_artifacts(&self, entry: &Entry, root: &Path) -> Result<(), String> {
        for artifact in &entry.artifacts {
            let relative = hm_ipc::artifacts::contained(Path::new(&artifact.path))
                .ok_or_else(|| format!("the artifact path {} leaves the project", artifact.path))?;
            let from = std::fs::File::open(self.blob_path(&artifact.sha256))
                .map_err(|e| format!("cannot read blob {}: {e}", artifact.sha256))?;
            let (_, sha256) = crate::artifacts::write_atomically(
                &root.join(relative),
                artifact.mode,
                from,
                Some(&artifact.sha256),
            )
            .map_err(|e| format!("cannot restore {}: {e}", artifact.path))?;
            debug_assert_eq!(sha256, artifact.sha256);
        }
        Ok(())
    }

    /// Stores what a passed step left under `key`: `log` as written (see [`Entry::log`]), its
    /// outputs, and its artifacts read from the project at `root` (each checked against the
    /// digest it was listed with: a file changed since is not stored, and neither is the
    /// entry).
    pub fn save(&self, key: &str, left: Left<'_>, root: &Path) -> Result<(), String> {
        let Left {
            step,
            duration_ms,
            log,
            outputs,
            artifacts,
        } = left;
        let log = match log.is_empty() {
            true => None,
            false => Some(self.put_blob(log)?),
        };
        let mut cached = Vec::with_capacity(artifacts.len());
        for artifact in artifacts {
            let path = root.join(&artifact.path);
            let mode = std::fs::metadata(&path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
                .map_err(|e| format!("cannot read {}: {e}", artifact.path))?;
            self.put_file(&path, &artifact.sha256, artifact.bytes)?;
            cached.push(CachedArtifact {
                path: artifact.path.clone(),
                bytes: artifact.bytes,
                sha256: artifact.sha256.clone(),
                mode,
            });
        }
        let entry = Entry {
            key: key.to_owned(),
            step: step.to_owned(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_ms,
            log,
            outputs: outputs.to_vec(),
            artifacts: cached,
            hits: 0,
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| e.to_string())?;
        self.write_new(&self.entry_path(key), |out| out.write_all(&json))
            .map_err(|e| format!("cannot write the entry: {e}"))
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<BlobRef, String> {
        let sha256 = hex(&Sha256::digest(bytes));
        let path = self.blob_path(&sha256);
        if !holds(&path, bytes.len() as u64) {
            self.write_new(&path, |out| out.write_all(bytes))
                .map_err(|e| format!("cannot write a blob: {e}"))?;
        }
        Ok(BlobRef {
            sha256,
            bytes: bytes.len() as u64,
        })
    }

    /// Copies the file at `from` into the blob `sha256`, checking it on the way.
    fn put_file(&self, from: &Path, sha256: &str, bytes: u64) -> Result<(), String> {
        let path = self.blob_path(sha256);
        if holds(&path, bytes) {
            return Ok(());
        }
        let mut file = std::fs::File::open(from)
            .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let mut hasher = Sha256::new();
        self.write_new(&path, |out| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            if hex(&hasher.clone().finalize()) != sha256 {
                return Err(io::Error::other(format!(
                    "{} changed after the step ended",
                    from.display()
                )));
            }
            Ok(())
        })
        .map_err(|e| format!("cannot store an artifact: {e}"))
    }

    /// Writes a new file at `path` through a temporary file renamed over it.
    fn write_new(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<()>,
    ) -> io::Result<()> {
        let temp = tempfile_in(&self.root.join("tmp"))?;
        let result = (|| {
            let file = std::fs::File::create(&temp)?;
            let mut out = io::BufWriter::new(file);
            fill(&mut out)?;
            out.flush()?;
            out.get_ref().sync_data()?;
            std::fs::rename(&temp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Every entry, for `hm cache list`, with the time it was last used.
    pub fn entries(&self) -> Vec<(Entry, SystemTime)> {
        let Ok(dir) = std::fs::read_dir(self.root.join("entries")) else {
            return Vec::new();
        };
        let mut entries: Vec<(Entry, SystemTime)> = dir
            .flatten()
            .filter_map(|e| {
                let used = e.metadata().ok()?.modified().ok()?;
                let entry = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some((entry, used))
            })
            .collect();
        entries.sort_by_key(|(_, used)| std::cmp::Reverse(*used));
        entries
    }

    /// Removes the entries not used for `unused_for` (all of them for zero), then the least
    /// recently used until the blobs the rest name fit in `max_bytes`, then the blobs no entry
    /// names (but those younger than an hour, which a run may be about to name).
    pub fn prune(&self, unused_for: Option<std::time::Duration>, max_bytes: Option<u64>) -> Pruned {
        let now = SystemTime::now();
        let mut kept = Vec::new();
        let mut pruned = Pruned::default();
        for (entry, used) in self.entries() {
            let idle = now.duration_since(used).unwrap_or_default();
            if unused_for.is_some_and(|limit| idle >= limit) {
                let _ = std::fs::remove_file(self.entry_path(&entry.key));
                pruned.entries += 1;
            } else {
                kept.push(entry);
            }
        }
        // `entries()` is newest first: evict from the end.
        if let Some(max) = max_bytes {
            let mut total: u64 = kept.iter().map(Entry::size).sum();
            while total > max {
                let Some(oldest) = kept.pop() else { break };
                total -= oldest.size();
                let _ = std::fs::remove_file(self.entry_path(&oldest.key));
                pruned.entries += 1;
            }
        }
        let named: std::collections::HashSet<String> = kept
            .iter()
            .flat_map(|e| {
                e.log
                    .iter()
                    .map(|l| l.sha256.clone())
                    .chain(e.artifacts.iter().map(|a| a.sha256.clone()))
            })
            .collect();
        if let Ok(dir) = std::fs::read_dir(self.root.join("blobs")) {
            for blob in dir.flatten() {
                let name = blob.file_name().to_string_lossy().into_owned();
                let Ok(meta) = blob.metadata() else { continue };
                let young = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_none_or(|age| age < std::time::Duration::from_secs(3600));
                if named.contains(&name) || young {
                    continue;
                }
                if std::fs::remove_file(blob.path()).is_ok() {
                    pruned.blobs += 1;
                    pruned.bytes += meta.len();
                }
            }
        }
        pruned
    }

    /// Removes every entry and blob.
    pub fn clear(&self) -> io::Result<()> {
        for sub in ["entries", "blobs", "tmp"] {
            let dir = self.root.join(sub);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
        }
        Ok(())
    }
}

/// Whether the blob at `path` is there at its size: one that is not (damaged by hand, or
/// removed) is written anew. Its bytes are checked whenever it is read.
fn holds(path: &Path, bytes: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == bytes)
}

/// A fresh name in `dir` for a temporary file: this process's pid and a counter.
fn tempfile_in(dir: &Path) -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{}-{n}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left<'a>(step: &'a str, log: &'a [u8], artifacts: &'a [Artifact]) -> Left<'a> {
        Left {
            step,
            duration_ms: 1,
            log,
            outputs: &[],
            artifacts,
        }
    }

    fn artifact(root: &Path, path: &str, content: &[u8]) -> Artifact {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
        Artifact {
            path: path.to_owned(),
            bytes: content.len() as u64,
            sha256: hex(&Sha256::digest(content)),
        }
    }

    #[test]
    fn a_saved_entry_reads_back_and_restores_its_artifacts() {
        let cache = tempfile::tempdir().expect("tempdir");
        let project = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(cache.path())).expect("store");
        let app = artifact(project.path(), "dist/app.txt", b"app\n");
        let log = b"oline one\neline two\n";
        let outputs = vec![("version".to_owned(), "1.0".to_owned())];
        let left = Left {
            step: "build",
            duration_ms: 1200,
            log,
            outputs: &outputs,
            artifacts: std::slice::from_ref(&app),
        };
        store.save("k1", left, project.path()).expect("saved");
        let Lookup::Hit(entry) = store.lookup("k1") else {
            panic!("a hit")
        };
        assert_eq!(entry.outputs, outputs);
        assert_eq!(entry.duration_ms, 1200);
        assert_eq!(
            store.read_log(&entry).expect("log"),
            [
                (Stream::Stdout, "line one".to_owned()),
                (Stream::Stderr, "line two".to_owned())
            ]
        );
        std::fs::remove_dir_all(project.path().join("dist")).expect("rm");
        store
            .restore_artifacts(&entry, project.path())
            .expect("restored");
        assert_eq!(
            std::fs::read(project.path().join("dist/app.txt")).expect("read"),
            b"app\n"
        );
        assert!(matches!(store.lookup("other"), Lookup::Miss));
        assert_eq!(store.entries().len(), 1);
        // Nothing is left being written.
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }

    #[test]
    fn a_truncated_blob_is_a_miss_and_the_entry_goes() {
        let cache = tempfile::tempdir().expect("tempdir");
        let project = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(cache.path())).expect("store");
        let app = artifact(project.path(), "a.bin", b"0123456789");
        store
            .save(
                "k",
                left("s", b"", std::slice::from_ref(&app)),
                project.path(),
            )
            .expect("saved");
        let blob = store.blob_path(&app.sha256);
        std::fs::write(&blob, b"01234").expect("truncate");
        let Lookup::Corrupt(why) = store.lookup("k") else {
            panic!("corrupt")
        };
        assert!(why.contains("holds 5 bytes, not 10"), "{why}");
        assert!(matches!(store.lookup("k"), Lookup::Miss));
    }

    #[test]
    fn a_blob_of_the_right_size_but_wrong_bytes_is_caught_when_read() {
        let cache = tempfile::tempdir().expect("tempdir");
        let project = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(cache.path())).expect("store");
        store
            .save("k", left("s", b"oabc\n", &[]), project.path())
            .expect("saved");
        let Lookup::Hit(entry) = store.lookup("k") else {
            panic!("a hit")
        };
        let log = entry.log.clone().expect("a log");
        std::fs::write(store.blob_path(&log.sha256), b"oxyz\n").expect("overwrite");
        let err = store.read_log(&entry).expect_err("corrupt");
        assert!(err.contains("does not hold what its name says"), "{err}");
    }

    #[test]
    fn past_its_size_the_cache_drops_the_least_recently_used_first() {
        let cache = tempfile::tempdir().expect("tempdir");
        let project = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(cache.path())).expect("store");
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        let entries = [
            ("old", b"o1111111\n"),
            ("mid", b"o2222222\n"),
            ("new", b"o3333333\n"),
        ];
        for (n, (key, log)) in entries.into_iter().enumerate() {
            store
                .save(key, left(key, log, &[]), project.path())
                .expect("saved");
            // Used in this order, a minute apart.
            let used = hour_ago + std::time::Duration::from_secs(60 * n as u64);
            std::fs::File::options()
                .append(true)
                .open(store.entry_path(key))
                .and_then(|f| f.set_modified(used))
                .expect("set the entry's time");
        }
        // `old` is used again: now `mid` is the least recently used.
        assert!(matches!(store.lookup("old"), Lookup::Hit(_)));
        let pruned = store.prune(None, Some(20));
        assert_eq!(pruned.entries, 1);
        assert!(matches!(store.lookup("mid"), Lookup::Miss));
        assert!(matches!(store.lookup("old"), Lookup::Hit(_)));
        assert!(matches!(store.lookup("new"), Lookup::Hit(_)));
    }

    #[test]
    fn an_artifact_changed_after_the_step_is_not_stored() {
        let cache = tempfile::tempdir().expect("tempdir");
        let project = tempfile::tempdir().expect("tempdir");
        let store = Store::open(Some(cache.path())).expect("store");
        let app = artifact(project.path(), "a.txt", b"before");
        std::fs::write(project.path().join("a.txt"), b"after!").expect("change");
        let err = store
            .save("k", left("s", b"", &[app]), project.path())
            .expect_err("changed");
        assert!(err.contains("changed after the step ended"), "{err}");
        assert!(matches!(store.lookup("k"), Lookup::Miss));
    }
}
