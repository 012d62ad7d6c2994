//! The file-system side of plugin bundles: their digests, the lock on a plugins directory, the
//! staging directory an install is built in, and the atomic moves that put a bundle in place
//! or take it out. Nothing here knows what a plugin is.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::install::{InstallError, io};

pub(super) const STAGING_PREFIX: &str = ".staging-";
pub(super) const REMOVING_PREFIX: &str = ".removing-";
/// How long a writer waits for another one to finish before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Checks a `--pin` value and returns it in lowercase.
pub fn normalize_sha256(text: &str) -> Option<String> {
    let text = text.trim();
    (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// Lowercase hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The sha256 of a file's bytes, as `sha256sum` prints it.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A digest of a whole bundle directory: every entry's relative path, kind, executable bit and
/// contents, in byte order of the paths. Two bundles with the same digest install the same.
pub fn bundle_digest(dir: &Path) -> std::io::Result<String> {
    fn walk(root: &Path, rel: &Path, hasher: &mut Sha256) -> std::io::Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let path_bytes = rel.as_os_str().as_bytes();
            if meta.is_dir() {
                hasher.update(b"d\0");
                hasher.update(path_bytes);
                hasher.update(b"\0");
                walk(root, &rel, hasher)?;
            } else if meta.file_type().is_symlink() {
                hasher.update(b"l\0");
                hasher.update(path_bytes);
                hasher.update(b"\0");
                hasher.update(std::fs::read_link(&path)?.as_os_str().as_bytes());
                hasher.update(b"\0");
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                hasher.update(if exec { b"x\0" } else { b"f\0" });
                hasher.update(path_bytes);
                hasher.update(b"\0");
                hasher.update(file_sha256(&path)?.as_bytes());
                hasher.update(b"\0");
            }
        }
        Ok(())
    }
    let mut hasher = Sha256::new();
    walk(dir, Path::new(""), &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// The exclusive right to change one plugins directory; released on drop. It is an `flock` on
/// the directory itself, so taking it writes nothing: a failed install leaves the directory
/// exactly as it was.
pub struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist), waiting up to a minute for another writer;
    /// `waiting` is called once if it has to wait.
    pub fn acquire(
        dir: &Path,
        create: bool,
        waiting: &mut dyn FnMut(String),
    ) -> Result<Self, InstallError> {
        use std::os::unix::fs::MetadataExt;
        let started = Instant::now();
        let mut told = false;
        loop {
            if create {
                std::fs::create_dir_all(dir)
                    .map_err(io(format!("cannot create {}", dir.display())))?;
            }
            let file =
                File::open(dir).map_err(io(format!("cannot open {} to lock it", dir.display())))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    // The previous holder may have removed the directory (a failed first
                    // install does): then this lock guards nothing, and it starts over.
                    let same = match (lock.metadata(), std::fs::metadata(dir)) {
                        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
                        _ => false,
                    };
                    if same {
                        return Ok(Self { _lock: lock });
                    }
                    if !create {
                        return Err(InstallError::NotFound(format!(
                            "{} was removed while waiting for its lock",
                            dir.display()
                        )));
                    }
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(InstallError::Locked(format!(
                            "another hm has held the lock on {} for {} while installing or \
                             removing plugins; gave up waiting",
                            dir.display(),
                            humantime::format_duration(LOCK_WAIT),
                        )));
                    }
                    if !told {
                        told = true;
                        waiting(format!(
                            "waiting for another hm to release the lock on {}",
                            dir.display()
                        ));
                    }
                    // flock has no timeout; a short poll keeps the wait bounded.
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, errno)) => {
                    return Err(InstallError::Io {
                        what: format!("cannot lock {}", dir.display()),
                        source: errno.into(),
                    });
                }
            }
        }
    }
}

/// Removes what an hm killed in the middle of a change left behind. Only called with the
/// lock held: then no staging directory can belong to a live writer.
pub(super) fn sweep_debris(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if bytes.starts_with(STAGING_PREFIX.as_bytes())
            || bytes.starts_with(REMOVING_PREFIX.as_bytes())
        {
            let _ = remove_any(&entry.path());
        }
    }
}

pub(super) fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A unique hidden name in a plugins directory: `<prefix><pid>-<n>`.
pub(super) fn private_name(dir: &Path, prefix: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{prefix}{}-{n}", std::process::id()))
}

/// A staging directory, removed with everything in it when dropped.
pub(super) struct Staging {
    pub(super) path: PathBuf,
}

impl Staging {
    pub(super) fn create(plugins_dir: &Path) -> Result<Self, InstallError> {
        let path = private_name(plugins_dir, STAGING_PREFIX);
        std::fs::create_dir(&path).map_err(io(format!("cannot create {}", path.display())))?;
        Ok(Self { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_any(&self.path);
    }
}

/// Copies a bundle directory: directories and regular files (permissions kept); a symlink is
/// copied as what it points to, except a symlink to a directory, which could loop.
pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<(), InstallError> {
    std::fs::create_dir(to).map_err(io(format!("cannot create {}", to.display())))?;
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .map_err(io(format!("cannot read {}", from.display())))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for name in entries {
        let src = from.join(&name);
        let dst = to.join(&name);
        let link = std::fs::symlink_metadata(&src)
            .map_err(io(format!("cannot read {}", src.display())))?;
        let meta = std::fs::metadata(&src).map_err(io(format!("cannot read {}", src.display())))?;
        if meta.is_dir() {
            if link.file_type().is_symlink() {
                return Err(InstallError::Usage(format!(
                    "{} is a symbolic link to a directory; a bundle may not contain one",
                    src.display()
                )));
            }
            copy_tree(&src, &dst)?;
        } else if meta.is_file() {
            copy_file(&src, &dst)?;
        } else {
            return Err(InstallError::Usage(format!(
                "{} is neither a file nor a directory; a bundle may not contain it",
                src.display()
            )));
        }
    }
    File::open(to)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot sync {}", to.display())))
}

pub(super) fn copy_file(src: &Path, dst: &Path) -> Result<(), InstallError> {
    std::fs::copy(src, dst).map_err(io(format!(
        "cannot copy {} to {}",
        src.display(),
        dst.display()
    )))?;
    File::open(dst)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("cannot sync {}", dst.display())))
}

/// Swaps two paths atomically (both must exist).
pub(super) fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    const RENAME_EXCHANGE: libc::c_uint = 1 << 1;
    // SAFETY: two valid NUL-terminated paths that outlive the call; renameat2 reads them only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts `staged` at `target` in place of what is there, leaving the old bundle at `staged`:
/// one atomic exchange where the filesystem has it, else the old one renamed aside first (a
/// moment in which the plugin is missing, never half there).
pub(super) fn replace(
    staged: &Path,
    target: &Path,
    plugins_dir: &Path,
) -> Result<(), InstallError> {
    let failed = |e| InstallError::Io {
        what: format!(
            "cannot swap {} into place at {}",
            staged.display(),
            target.display()
        ),
        source: e,
    };
    match exchange(staged, target) {
        Ok(()) => return Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) => {}
        Err(e) => return Err(failed(e)),
    }
    let aside = private_name(plugins_dir, REMOVING_PREFIX);
    std::fs::rename(target, &aside).map_err(failed)?;
    if let Err(e) = std::fs::rename(staged, target) {
        let _ = std::fs::rename(&aside, target);
        return Err(failed(e));
    }
    std::fs::rename(&aside, staged).map_err(failed)
}

pub(super) fn sync_dir(dir: &Path) {
    // Durability of the rename; a failure here changes nothing about correctness.
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits_in_any_case() {
        let upper = "AB".repeat(32);
        assert_eq!(normalize_sha256(&upper), Some("ab".repeat(32)));
        assert_eq!(normalize_sha256("abc"), None);
        assert_eq!(normalize_sha256(&"g".repeat(64)), None);
    }

    #[test]
    fn file_digests_match_sha256sum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "abc").expect("write");
        assert_eq!(
            file_sha256(&path).expect("digest"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bundle_digests_see_contents_names_and_the_executable_bit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("sub")).expect("mkdir");
        std::fs::write(a.join("plugin.toml"), "x").expect("write");
        std::fs::write(a.join("sub/data"), "y").expect("write");
        let first = bundle_digest(&a).expect("digest");
        assert_eq!(first, bundle_digest(&a).expect("digest"), "stable");
        std::fs::write(a.join("sub/data"), "z").expect("write");
        let second = bundle_digest(&a).expect("digest");
        assert_ne!(first, second, "contents");
        std::fs::set_permissions(a.join("sub/data"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert_ne!(second, bundle_digest(&a).expect("digest"), "executable bit");
    }

    #[test]
    fn exchange_swaps_two_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        std::fs::write(a.join("mark"), "a").expect("write");
        exchange(&a, &b).expect("exchange");
        assert!(b.join("mark").exists() && !a.join("mark").exists());
    }
}
