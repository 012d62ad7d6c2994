//! `hm plugin install` and `hm plugin remove`.
//!
//! Everything that writes a plugins directory holds its lock (`flock` on the directory) for the
//! whole change. An install copies the bundle into a staging directory inside the plugins
//! directory (`.staging-<pid>-<n>`, so the final rename never crosses filesystems), checks the
//! copy (manifest, digests, a real handshake, conflicts), and only then renames it into place;
//! an upgrade swaps the old and the new bundle in one `renameat2(RENAME_EXCHANGE)`. A failure
//! at any point removes the staging directory and leaves the installed bundles as they were.
//! Staging directories of an hm that was killed half-way are swept by the next writer.

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
use thiserror::Error;

use super::discover::{Builtin, Installed, Layer, PluginDirs, Registry, RegistryError};
use super::index::{self, Resolved, Source, shown};
use super::manifest::{self, MANIFEST_FILE, Manifest, ManifestError, NAME_RULE, valid_name};
use super::probe;

const STAGING_PREFIX: &str = ".staging-";
const REMOVING_PREFIX: &str = ".removing-";
/// How long a writer waits for another one to finish before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why an install or a removal did not happen. Nothing was changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The command line itself is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// The plugin is not what it claims to be: digest, name or handshake.
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Probe(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Locked(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
    let what = what.into();
    move |source| InstallError::Io { what, source }
}

/// What to install, and where.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// A path or a bare name, as typed.
    pub source: String,
    /// The sha256 the executable must have (lowercase hex).
    pub pin: Option<String>,
    /// [`Layer::Project`] or [`Layer::User`].
    pub layer: Layer,
    pub dirs: PluginDirs,
    /// Where relative paths and the cargo workspace are looked up.
    pub cwd: PathBuf,
}

/// What an install did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Installed {
        plugin: Installed,
        sha256: String,
    },
    /// The same bundle, byte for byte, was already there.
    AlreadyInstalled {
        plugin: Installed,
        sha256: String,
    },
    /// A different bundle of the same name was replaced.
    Replaced {
        plugin: Installed,
        sha256: String,
        old_version: String,
        old_sha256: Option<String>,
    },
}

/// Checks a `--pin` value and returns it in lowercase.
pub fn normalize_sha256(text: &str) -> Option<String> {
    let text = text.trim();
    (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
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
fn sweep_debris(dir: &Path) {
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

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A unique hidden name in a plugins directory: `<prefix><pid>-<n>`.
fn private_name(dir: &Path, prefix: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{prefix}{}-{n}", std::process::id()))
}

/// A staging directory, removed with everything in it when dropped.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(plugins_dir: &Path) -> Result<Self, InstallError> {
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
fn copy_tree(from: &Path, to: &Path) -> Result<(), InstallError> {
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

fn copy_file(src: &Path, dst: &Path) -> Result<(), InstallError> {
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
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
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
fn replace(staged: &Path, target: &Path, plugins_dir: &Path) -> Result<(), InstallError> {
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

fn sync_dir(dir: &Path) {
    // Durability of the rename; a failure here changes nothing about correctness.
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

/// Installs what `req.source` names (see the module docs for the steps). `notify` receives
/// warnings and progress notes as they happen.
pub async fn install(
    req: &InstallRequest,
    builtins: &[Builtin],
    notify: &mut dyn FnMut(String),
) -> Result<Outcome, InstallError> {
    let plugins_dir = req
        .dirs
        .dir(req.layer)
        .ok_or_else(|| {
            InstallError::Usage(format!(
                "there is no {} plugins directory (set XDG_DATA_HOME or HOME)",
                req.layer
            ))
        })?
        .to_path_buf();
    let resolved = index::resolve(&req.source, &req.cwd, notify).await?;
    let source_manifest = source_manifest(&resolved).await?;
    let name = source_manifest.name.clone();

    // Digests are checked on the source first, so a mismatch touches nothing at all, and again
    // on the staged copy, which is what gets installed.
    let source_exe = match &resolved.source {
        Source::Bundle(dir) => dir.join(&source_manifest.executable),
        Source::Executable(path) => path.clone(),
    };
    if !source_exe.is_file() {
        return Err(InstallError::NotFound(format!(
            "the bundle {} has no executable {} (its manifest names `{}`)",
            resolved.source.path().display(),
            source_exe.display(),
            source_manifest.executable
        )));
    }
    let source_sha =
        file_sha256(&source_exe).map_err(io(format!("cannot read {}", source_exe.display())))?;
    check_digests(req, &resolved, &source_manifest, &source_exe, &source_sha)?;
    if let Some(problem) = super::discover::protocol_problem(
        &name,
        source_manifest.protocol,
        (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
    ) {
        return Err(InstallError::Probe(format!("cannot install: {problem}")));
    }

    if let Source::Bundle(dir) = &resolved.source
        && std::path::absolute(&plugins_dir).is_ok_and(|p| p.starts_with(dir))
    {
        return Err(InstallError::Usage(format!(
            "{} contains the plugins directory {}; a bundle cannot be installed into itself",
            dir.display(),
            plugins_dir.display()
        )));
    }
    // Directories this install creates are removed again if it fails, so that a failed first
    // install leaves no trace either.
    let created: Vec<PathBuf> = plugins_dir
        .ancestors()
        .take_while(|dir| !dir.exists())
        .map(Path::to_path_buf)
        .collect();
    let lock = DirLock::acquire(&plugins_dir, true, notify)?;
    let checked = Checked {
        resolved: &resolved,
        manifest: source_manifest,
        exe: &source_exe,
    };
    let result = install_locked(req, builtins, notify, &plugins_dir, checked).await;
    if result.is_err() {
        // Innermost first; `remove_dir` leaves anything that is not empty.
        for dir in &created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    drop(lock);
    result
}

/// What an install checked before it took the lock.
struct Checked<'a> {
    resolved: &'a Resolved,
    manifest: Manifest,
    exe: &'a Path,
}

/// The part of an install that writes: staging, the checks of the staged copy, the rename.
async fn install_locked(
    req: &InstallRequest,
    builtins: &[Builtin],
    notify: &mut dyn FnMut(String),
    plugins_dir: &Path,
    checked: Checked<'_>,
) -> Result<Outcome, InstallError> {
    let Checked {
        resolved,
        manifest: source_manifest,
        exe: source_exe,
    } = checked;
    let name = source_manifest.name.clone();
    sweep_debris(plugins_dir);
    let staging = Staging::create(plugins_dir)?;
    let staged = staging.path.join(&name);
    match &resolved.source {
        Source::Bundle(dir) => copy_tree(dir, &staged)?,
        Source::Executable(path) => {
            std::fs::create_dir(&staged)
                .map_err(io(format!("cannot create {}", staged.display())))?;
            let text = manifest_text_of(&source_manifest);
            std::fs::write(staged.join(MANIFEST_FILE), text)
                .map_err(io(format!("cannot write {}", staged.display())))?;
            copy_file(path, &staged.join(&source_manifest.executable))?;
        }
    }
    let manifest = manifest::read(&staged)?;
    if manifest != source_manifest {
        return Err(InstallError::Mismatch(format!(
            "{} changed while it was being installed; try again",
            resolved.source.path().display()
        )));
    }
    let exe = staged.join(&manifest.executable);
    let sha = file_sha256(&exe).map_err(io(format!("cannot read {}", exe.display())))?;
    check_digests(req, resolved, &manifest, source_exe, &sha)?;
    let mode = std::fs::metadata(&exe)
        .map_err(io(format!("cannot read {}", exe.display())))?
        .permissions()
        .mode();
    if mode & 0o111 == 0 {
        return Err(InstallError::Probe(format!(
            "{} is not executable (chmod +x it)",
            source_exe.display()
        )));
    }
    let digest = bundle_digest(&staged).map_err(io(format!("cannot read {}", staged.display())))?;

    let target = plugins_dir.join(&name);
    let existing = match std::fs::symlink_metadata(&target) {
        Ok(_) => Some(existing_bundle(&target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(format!("cannot read {}", target.display()))(e)),
    };
    let staged_plugin = Installed {
        manifest: manifest.clone(),
        layer: req.layer,
        dir: Some(target.clone()),
        shadowed_by: None,
    };
    if let Some(existing) = &existing
        && existing.digest.as_deref() == Some(digest.as_str())
    {
        return Ok(Outcome::AlreadyInstalled {
            plugin: staged_plugin,
            sha256: sha,
        });
    }

    let spec = Installed {
        dir: Some(staged.clone()),
        ..staged_plugin.clone()
    }
    .spec();
    probe::handshake(&spec, &manifest).await.map_err(|reason| {
        InstallError::Probe(format!(
            "cannot install {}: the plugin {reason}",
            resolved.source.path().display()
        ))
    })?;

    check_conflicts(&req.dirs, builtins, &staged_plugin)?;
    for warning in shadow_warnings(&req.dirs, builtins, &staged_plugin) {
        notify(warning);
    }

    match &existing {
        None => std::fs::rename(&staged, &target).map_err(io(format!(
            "cannot move {} to {}",
            staged.display(),
            target.display()
        )))?,
        Some(_) => replace(&staged, &target, plugins_dir)?,
    }
    sync_dir(plugins_dir);
    // Dropping `staging` removes it, with the old bundle when this was an upgrade.
    drop(staging);
    Ok(match existing {
        None => Outcome::Installed {
            plugin: staged_plugin,
            sha256: sha,
        },
        Some(old) => Outcome::Replaced {
            plugin: staged_plugin,
            sha256: sha,
            old_version: old.version,
            old_sha256: old.sha256,
        },
    })
}

/// What is at a bundle's place before an install: as far as it can be read.
struct Existing {
    version: String,
    sha256: Option<String>,
    digest: Option<String>,
}

fn existing_bundle(dir: &Path) -> Existing {
    match manifest::read(dir) {
        Ok(m) => Existing {
            version: m.version.clone(),
            sha256: file_sha256(&dir.join(&m.executable)).ok(),
            digest: bundle_digest(dir).ok(),
        },
        Err(_) => Existing {
            version: "(unreadable manifest)".to_owned(),
            sha256: None,
            digest: bundle_digest(dir).ok(),
        },
    }
}

/// The manifest of what `resolved` names, read without installing anything.
async fn source_manifest(resolved: &Resolved) -> Result<Manifest, InstallError> {
    let manifest = match &resolved.source {
        Source::Bundle(dir) => manifest::read(dir)?,
        Source::Executable(path) => {
            let text = probe::manifest_text(path)
                .await
                .map_err(InstallError::Probe)?;
            let label = PathBuf::from(format!("{} --hm-manifest", path.display()));
            manifest::parse(&text, &label)?
        }
    };
    if let Some(entry) = &resolved.entry
        && entry.name != manifest.name
    {
        return Err(InstallError::Mismatch(format!(
            "the plugin index {} lists `{}`, but the plugin at {} says its name is `{}`; \
             refusing to install it under another name",
            entry.index.display(),
            shown(&entry.name),
            resolved.source.path().display(),
            manifest.name
        )));
    }
    Ok(manifest)
}

/// The manifest of a bundle made from an executable: what it printed, normalised.
fn manifest_text_of(m: &Manifest) -> String {
    let q = |s: &str| toml_edit::Value::from(s).to_string();
    let caps: Vec<String> = m.capabilities.iter().map(|c| q(c)).collect();
    let mut text = format!(
        "name = {}\nversion = {}\ndescription = {}\nexecutable = {}\n\
         protocol = {{ min = {}, max = {} }}\ncapabilities = [{}]\n",
        q(&m.name),
        q(&m.version),
        q(&m.description),
        q(&m.executable),
        m.protocol.0,
        m.protocol.1,
        caps.join(", ")
    );
    let mut limits = Vec::new();
    if let Some(bytes) = m.limits.memory_bytes {
        limits.push(format!("memory = {bytes}"));
    }
    if let Some(pids) = m.limits.pids {
        limits.push(format!("pids = {pids}"));
    }
    if let Some(cpu) = m.limits.cpu {
        limits.push(format!("cpu = {}", toml_edit::Value::from(cpu)));
    }
    if !limits.is_empty() {
        text.push_str(&format!("limits = {{ {} }}\n", limits.join(", ")));
    }
    for hook in &m.hooks {
        let phase = match hook.phase {
            super::manifest::HookPhase::Before => "before",
            super::manifest::HookPhase::After => "after",
        };
        text.push_str(&format!(
            "\n[[hook]]\nevent = {}\nphase = {}\ntimeout = {}\n",
            q(hook.event),
            q(phase),
            q(&format!("{}ms", hook.timeout.as_millis()))
        ));
    }
    for sub in &m.subcommands {
        text.push_str(&format!(
            "\n[[subcommand]]\nverb = {}\nabout = {}\nargs = [\n",
            q(&sub.verb),
            q(&sub.about)
        ));
        for arg in &sub.args {
            text.push_str(&format!(
                "  {{ name = {}, long = {}, takes_value = {}, help = {} }},\n",
                q(&arg.name),
                q(&arg.long),
                arg.takes_value,
                q(&arg.help)
            ));
        }
        text.push_str("]\n");
    }
    text
}

/// `--pin` and the index's sha256 against the executable's digest.
fn check_digests(
    req: &InstallRequest,
    resolved: &Resolved,
    manifest: &Manifest,
    exe: &Path,
    sha: &str,
) -> Result<(), InstallError> {
    if let Some(pin) = &req.pin
        && pin != sha
    {
        return Err(InstallError::Mismatch(format!(
            "the executable {} of `{}` has sha256 {sha}, not the pinned {pin}; nothing was \
             installed\n  hint: check where it came from; if it is the build you want, pin \
             its digest",
            exe.display(),
            manifest.name
        )));
    }
    if let Some(entry) = &resolved.entry
        && entry.sha256.to_ascii_lowercase() != sha
    {
        return Err(InstallError::Mismatch(format!(
            "the executable {} of `{}` has sha256 {sha}, but the plugin index {} says {}; \
             nothing was installed",
            exe.display(),
            manifest.name,
            entry.index.display(),
            shown(&entry.sha256)
        )));
    }
    Ok(())
}

/// The registry as it would be with `new` installed.
fn registry_with(dirs: &PluginDirs, builtins: &[Builtin], new: &Installed) -> Registry {
    let current = Registry::discover_in(dirs, builtins);
    let mut bundles: Vec<Installed> = current
        .bundles()
        .iter()
        .filter(|b| !(b.layer == new.layer && b.manifest.name == new.manifest.name))
        .cloned()
        .collect();
    bundles.push(new.clone());
    Registry::from_bundles(bundles)
}

/// Refuses an install that would make two plugins in effect claim one executor or verb.
/// Conflicts among other plugins are not this install's business.
fn check_conflicts(
    dirs: &PluginDirs,
    builtins: &[Builtin],
    new: &Installed,
) -> Result<(), InstallError> {
    let after = registry_with(dirs, builtins, new);
    let name = &new.manifest.name;
    let mut problems = Vec::new();
    for error in &after.errors {
        if let RegistryError::Conflict { names, .. } = error
            && names.contains(name)
        {
            problems.push(error.to_string());
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(InstallError::Conflict(format!(
        "cannot install `{name}` {}: {}",
        new.manifest.version,
        problems.join("\n")
    )))
}

/// Which bundles of the same name the new one shadows or is shadowed by.
fn shadow_warnings(dirs: &PluginDirs, builtins: &[Builtin], new: &Installed) -> Vec<String> {
    let after = registry_with(dirs, builtins, new);
    let named: Vec<&Installed> = after.all_named(&new.manifest.name).collect();
    let Some(winner) = named.first() else {
        return Vec::new();
    };
    named
        .iter()
        .skip(1)
        .filter(|b| winner.layer == new.layer || b.layer == new.layer)
        .map(|b| format!("plugin {} shadows {}", winner.describe(), b.describe()))
        .collect()
}

/// What a removal did.
#[derive(Debug, Clone)]
pub struct Removed {
    pub name: String,
    pub version: Option<String>,
    pub dir: PathBuf,
    /// The plugin of the same name in a lower layer that is in effect now.
    pub now_in_effect: Option<Installed>,
}

/// Removes the bundle `name` from the plugins directory of `layer`.
pub fn remove(
    name: &str,
    layer: Layer,
    dirs: &PluginDirs,
    builtins: &[Builtin],
    notify: &mut dyn FnMut(String),
) -> Result<Removed, InstallError> {
    if !valid_name(name) {
        return Err(InstallError::Usage(format!(
            "`{}` is not a plugin name ({NAME_RULE})",
            name.escape_default()
        )));
    }
    let not_here = || {
        let registry = Registry::discover_in(dirs, builtins);
        let elsewhere: Vec<String> = registry
            .all_named(name)
            .map(|b| match b.layer {
                Layer::Builtin => format!(
                    "`{name}` is built into hm and cannot be removed"
                ),
                Layer::Project => format!(
                    "it is installed in the project layer ({}): use `hm plugin remove --project {name}`",
                    b.location()
                ),
                Layer::User => format!(
                    "it is installed in the user layer ({}): use `hm plugin remove {name}`",
                    b.location()
                ),
            })
            .collect();
        let mut message = format!(
            "no plugin `{name}` is installed in the {layer} layer{}",
            dirs.dir(layer)
                .map(|d| format!(" ({})", d.display()))
                .unwrap_or_default()
        );
        for line in elsewhere {
            message.push_str("\n  hint: ");
            message.push_str(&line);
        }
        InstallError::NotFound(message)
    };
    let Some(plugins_dir) = dirs.dir(layer) else {
        return Err(not_here());
    };
    let target = plugins_dir.join(name);
    if std::fs::symlink_metadata(&target).is_err() {
        return Err(not_here());
    }
    let _lock = DirLock::acquire(plugins_dir, false, notify)?;
    sweep_debris(plugins_dir);
    let meta = match std::fs::symlink_metadata(&target) {
        Ok(meta) => meta,
        // Another hm removed it while this one waited for the lock.
        Err(_) => return Err(not_here()),
    };
    let version = manifest::read(&target).ok().map(|m| m.version);
    if meta.file_type().is_symlink() {
        // A symlinked bundle: remove the link, never what it points to.
        std::fs::remove_file(&target).map_err(io(format!("cannot remove {}", target.display())))?;
    } else {
        // Out of sight in one rename, then deleted: nobody ever sees half a bundle.
        let aside = private_name(plugins_dir, REMOVING_PREFIX);
        std::fs::rename(&target, &aside)
            .map_err(io(format!("cannot remove {}", target.display())))?;
        sync_dir(plugins_dir);
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            notify(format!(
                "{} could not be deleted completely ({e}); the next install or removal \
                 deletes it",
                aside.display()
            ));
        }
    }
    let now_in_effect = Registry::discover_in(dirs, builtins).get(name).cloned();
    Ok(Removed {
        name: name.to_owned(),
        version,
        dir: target,
        now_in_effect,
    })
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
