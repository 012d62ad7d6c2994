//! `hm plugin install` and `hm plugin remove`.
//!
//! Everything that writes a plugins directory holds its lock (`flock` on the directory) for the
//! whole change. An install copies the bundle into a staging directory inside the plugins
//! directory (`.staging-<pid>-<n>`, so the final rename never crosses filesystems), checks the
//! copy (manifest, digests, a real handshake, conflicts), and only then renames it into place;
//! an upgrade swaps the old and the new bundle in one `renameat2(RENAME_EXCHANGE)`. A failure
//! at any point removes the staging directory and leaves the installed bundles as they were.
//! Staging directories of an hm that was killed half-way are swept by the next writer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use super::bundle_fs::{DirLock, bundle_digest, file_sha256, normalize_sha256};
use super::bundle_fs::{
    REMOVING_PREFIX, Staging, copy_file, copy_tree, private_name, replace, sweep_debris, sync_dir,
};
use super::discover::{Builtin, Installed, Layer, PluginDirs, Registry, RegistryError};
use super::index::{self, Resolved, Source, shown};
use super::manifest::{self, MANIFEST_FILE, Manifest, ManifestError, NAME_RULE, valid_name};
use super::probe;

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

pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InstallError {
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
