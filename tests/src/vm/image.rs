//! The images the guests boot, built from Debian packages by `tests/vm/image.sh` and cached
//! outside the clone: `$HM_VM_CACHE`, else `/var/cache/hm-vm`.
//!
//! Three entries: `kernel-<key>/vmlinuz` (shared by both guests), `minimal-<key>/base.cpio` and
//! `systemd-<key>/base.cpio`. A key is a hash of what went into the entry: the text of
//! `image.sh`, the package versions its `inputs` command prints, and (for packed images) the
//! source of the cpio writer; so a new package version or an edited script builds a new entry,
//! and an unchanged one is reused. hm and the scenarios are never in an image (each boot adds
//! them), so a rebuilt hm rebuilds nothing here.
//!
//! Concurrency: each entry has a lock file beside it. A user holds it shared for as long as it
//! boots from the entry; a builder holds it exclusive, builds into `.<entry>.tmp-<pid>` and
//! renames that into place, so an entry that exists is complete. Entries of the same kind not
//! used for a week are removed when nobody holds them.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::Guest;
use super::cpio::Cpio;

/// The packer's source is part of the key of every packed image.
const CPIO_SOURCE: &str = include_str!("cpio.rs");
const PRUNE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A guest's kernel and base initramfs, held (shared) until dropped.
pub struct Image {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The entries built for this boot rather than found in the cache, with their build times.
    pub built: Vec<(&'static str, Duration)>,
    _locks: Vec<Flock<File>>,
}

/// The cache directory: `$HM_VM_CACHE`, else `/var/cache/hm-vm`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HM_VM_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/hm-vm"), PathBuf::from)
}

/// Whether the cache directory exists or can be made, and can be written.
pub(crate) fn cache_usable() -> Result<(), String> {
    let dir = cache_dir();
    let usable = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).map_err(|e| e.to_string())
        });
    usable.map_err(|e| {
        format!(
            "cannot write the VM image cache {} ({e}); set HM_VM_CACHE to a writable directory",
            dir.display()
        )
    })
}

/// Whether apt knows every package that goes into the guest's images (else: what to do).
pub(crate) fn inputs_known(guest: Guest) -> Result<(), String> {
    inputs("kernel")?;
    inputs(guest.name()).map(drop)
}

/// The guest's kernel and base image, built first if the cache does not have them.
pub fn prepare(guest: Guest) -> Result<Image, String> {
    let kernel = entry("kernel")?;
    let base = entry(guest.name())?;
    let built = [&kernel, &base]
        .iter()
        .filter_map(|e| e.built.map(|took| (e.kind, took)))
        .collect();
    Ok(Image {
        kernel: kernel.dir.join("vmlinuz"),
        initramfs: base.dir.join("base.cpio"),
        built,
        _locks: vec![kernel.lock, base.lock],
    })
}

struct Entry {
    kind: &'static str,
    dir: PathBuf,
    lock: Flock<File>,
    built: Option<Duration>,
}

fn script() -> PathBuf {
    super::vm_dir().join("image.sh")
}

/// `image.sh inputs KIND`: one line per package that goes into KIND, with its version.
fn inputs(kind: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg(script())
        .args(["inputs", kind])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "cannot tell what goes into the {kind} image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn key(kind: &str) -> Result<String, String> {
    let script_text =
        std::fs::read(script()).map_err(|e| format!("cannot read {}: {e}", script().display()))?;
    let mut hash = Sha256::new();
    for part in [kind.as_bytes(), &script_text, inputs(kind)?.as_bytes()] {
        hash.update(part);
        hash.update(b"\0");
    }
    if kind != "kernel" {
        hash.update(CPIO_SOURCE.as_bytes());
    }
    let digest = hash.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

fn lock(file: File, how: FlockArg, path: &Path) -> Result<Flock<File>, String> {
    Flock::lock(file, how).map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
}

/// The cache entry of `kind`, held shared; built (under the exclusive lock) if missing.
fn entry(kind: &'static str) -> Result<Entry, String> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let name = format!("{kind}-{}", key(kind)?);
    let dir = cache.join(&name);
    let lock_path = cache.join(format!("{name}.lock"));
    let open = || {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))
    };
    let mut held = lock(open()?, FlockArg::LockShared, &lock_path)?;
    let mut built = None;
    if !dir.exists() {
        drop(held);
        let exclusive = lock(open()?, FlockArg::LockExclusive, &lock_path)?;
        if !dir.exists() {
            let started = Instant::now();
            build(kind, &name, &dir)?;
            built = Some(started.elapsed());
        }
        drop(exclusive);
        held = lock(open()?, FlockArg::LockShared, &lock_path)?;
        if !dir.exists() {
            return Err(format!(
                "{} vanished right after it was built",
                dir.display()
            ));
        }
    }
    // Its time of last use, for pruning.
    if let Ok(handle) = File::open(&dir) {
        let _ = handle.set_modified(SystemTime::now());
    }
    prune(&cache, kind, &name);
    Ok(Entry {
        kind,
        dir,
        lock: held,
        built,
    })
}

/// Removes a directory when dropped, unless [`Staging::commit`] moved it into place.
struct Staging(Option<PathBuf>);

impl Staging {
    fn commit(mut self, to: &Path) -> Result<(), String> {
        let from = self.0.take().unwrap_or_default();
        std::fs::rename(&from, to).map_err(|e| {
            let _ = std::fs::remove_dir_all(&from);
            format!("cannot rename {} to {}: {e}", from.display(), to.display())
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Builds entry `name` of `kind` into a staging directory, packs its root file system, and
/// renames it to `dir`. The caller holds the entry's exclusive lock.
fn build(kind: &str, name: &str, dir: &Path) -> Result<(), String> {
    let cache = dir.parent().unwrap_or(Path::new("/"));
    // Left by a builder that died: nobody else can be building this entry now.
    let stale_prefix = format!(".{name}.tmp-");
    for stale in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        if stale
            .file_name()
            .to_string_lossy()
            .starts_with(&stale_prefix)
        {
            let _ = std::fs::remove_dir_all(stale.path());
        }
    }
    let tmp = cache.join(format!("{stale_prefix}{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let staging = Staging(Some(tmp.clone()));
    let log_path = tmp.join("build.log");
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate {}: {e}", log_path.display()))?;
    let status = Command::new("sh")
        .arg(script())
        .args(["build", kind])
        .arg(&tmp)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!(
            "building the {kind} image failed ({status}); the end of its log:\n{}",
            tail(&log, 30)
        ));
    }
    let root = tmp.join("root");
    if root.is_dir() {
        let packed = tmp.join("base.cpio");
        let out = File::create(&packed)
            .map_err(|e| format!("cannot create {}: {e}", packed.display()))?;
        let mut cpio = Cpio::new(BufWriter::new(out));
        cpio.tree(&root)
            .and_then(|()| cpio.finish())
            .map_err(|e| format!("cannot pack {}: {e}", root.display()))?;
        std::fs::remove_dir_all(&root)
            .map_err(|e| format!("cannot remove {}: {e}", root.display()))?;
    }
    std::fs::write(tmp.join("inputs.txt"), inputs(kind)?)
        .map_err(|e| format!("cannot write {}: {e}", tmp.join("inputs.txt").display()))?;
    staging.commit(dir)
}

/// Removes entries of `kind` other than `keep` that nobody used for [`PRUNE_AFTER`] and nobody
/// holds now. Best effort: a failure only leaves a directory behind.
fn prune(cache: &Path, kind: &str, keep: &str) {
    let prefix = format!("{kind}-");
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with(&prefix) || name == keep || !path.is_dir() {
            continue;
        }
        let unused = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > PRUNE_AFTER);
        if !unused {
            continue;
        }
        let lock_path = cache.join(format!("{name}.lock"));
        let Ok(file) = File::options().write(true).open(&lock_path) else {
            continue;
        };
        if let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
