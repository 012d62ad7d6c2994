//! Attach mode (`docs/protocol.md`): `hm run --attach NAME=SOCKET` listens on a named local socket
//! (the `interprocess` crate) instead of starting plugin NAME, and waits for the plugin to be
//! started by hand (under a debugger, with extra logging) with `HM_IPC_SOCKET=SOCKET`.
//!
//! The socket lives in a private directory: one hm creates with mode 0700, or one that already
//! is private to this user. Before the handshake the kernel checks the peer's uid
//! (`SO_PEERCRED`); a connection from anyone else is refused and hm goes on waiting.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use thiserror::Error;
use tokio::net::UnixStream;

/// Why an attach socket could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttachError {
    #[error("--attach {0:?}: write NAME=SOCKET, e.g. `--attach shell=/tmp/hm-debug/shell.sock`")]
    Syntax(String),
    #[error(
        "--attach {plugin}: {dir} is {why}: the socket must be in a directory only you can \
         use (mode 0700), or in one hm creates"
    )]
    NotPrivate {
        plugin: String,
        dir: String,
        why: String,
    },
    #[error(
        "--attach {plugin}: {path} already exists (another `hm run --attach`, or one that was \
         killed): remove it or choose another path"
    )]
    Exists { plugin: String, path: String },
    #[error("--attach {plugin}: cannot listen on {path}: {source}")]
    Listen {
        plugin: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `NAME=SOCKET` of `--attach`.
pub fn parse_attach(text: &str) -> Result<(String, PathBuf), AttachError> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(AttachError::Syntax(text.to_owned())),
    }
}

/// The socket one plugin attaches to. Dropping it removes the socket, and the directory if hm
/// created it.
#[derive(Debug)]
pub struct AttachPoint {
    plugin: String,
    path: PathBuf,
    listener: Listener,
    created_dir: Option<PathBuf>,
}

impl AttachPoint {
    /// Listens on `path` for plugin `plugin`. Needs a tokio runtime (the listener registers
    /// with its reactor).
    pub fn bind(plugin: &str, path: &Path) -> Result<Self, AttachError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let shown = path.display().to_string();
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let created_dir = private_dir(plugin, &dir)?;
        let fail = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                AttachError::Exists {
                    plugin: plugin.to_owned(),
                    path: shown.clone(),
                }
            } else {
                AttachError::Listen {
                    plugin: plugin.to_owned(),
                    path: shown.clone(),
                    source,
                }
            }
        };
        if path.symlink_metadata().is_ok() {
            if let Some(dir) = &created_dir {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(AttachError::Exists {
                plugin: plugin.to_owned(),
                path: shown,
            });
        }
        let listener = path
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .and_then(|name| ListenerOptions::new().name(name).create_tokio())
            .map_err(|e| {
                if let Some(dir) = &created_dir {
                    let _ = std::fs::remove_dir(dir);
                }
                fail(e)
            })?;
        Ok(Self {
            plugin: plugin.to_owned(),
            path,
            listener,
            created_dir,
        })
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the plugin: the first connection from a process of this user. Others are
    /// refused with a warning. Returns the stream and the peer's pid.
    pub async fn accept(&self) -> std::io::Result<(UnixStream, u32)> {
        let uid = nix::unistd::getuid().as_raw();
        loop {
            let Stream::UdSocket(stream) = self.listener.accept().await?;
            let stream = UnixStream::from(stream);
            let cred = stream.peer_cred()?;
            let pid = cred.pid().unwrap_or(0).max(0) as u32;
            if cred.uid() == uid {
                return Ok((stream, pid));
            }
            tracing::warn!(
                "refused a connection to {} from uid {} (pid {pid}): only uid {uid} may attach \
                 plugin {}",
                self.path.display(),
                cred.uid(),
                self.plugin
            );
        }
    }
}

impl Drop for AttachPoint {
    fn drop(&mut self) {
        // The listener's own drop unlinks the socket (name reclamation); do it here too so the
        // directory can go, whatever the order of drops.
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Makes sure `dir` is private to this user: creates it with mode 0700 (returning it, to be
/// removed at the end), or checks the one that is there.
fn private_dir(plugin: &str, dir: &Path) -> Result<Option<PathBuf>, AttachError> {
    let not_private = |why: String| AttachError::NotPrivate {
        plugin: plugin.to_owned(),
        dir: dir.display().to_string(),
        why,
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| not_private(format!("missing and cannot be created ({e})")))?;
            Ok(Some(dir.to_path_buf()))
        }
        Err(e) => Err(not_private(format!("unreadable ({e})"))),
        Ok(meta) if !meta.is_dir() => Err(not_private("not a directory".into())),
        Ok(meta) if meta.uid() != nix::unistd::getuid().as_raw() => {
            Err(not_private(format!("owned by uid {}", meta.uid())))
        }
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Err(not_private(format!(
            "open to others (mode {:o}; `chmod 700` it)",
            meta.permissions().mode() & 0o777
        ))),
        Ok(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_arguments_are_name_equals_path() {
        assert_eq!(
            parse_attach("shell=/tmp/x/s.sock").unwrap(),
            ("shell".to_owned(), PathBuf::from("/tmp/x/s.sock"))
        );
        for bad in ["shell", "=x", "shell=", ""] {
            assert!(parse_attach(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_socket_goes_in_a_private_directory_and_goes_away_after() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("debug");
        let socket = dir.join("shell.sock");
        let point = AttachPoint::bind("shell", &socket).expect("bind");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let connect = tokio::net::UnixStream::connect(&socket);
        let (accepted, connected) = tokio::join!(point.accept(), connect);
        let (_stream, pid) = accepted.expect("accept");
        assert_eq!(pid, std::process::id());
        drop(connected);
        let again = AttachPoint::bind("shell", &socket).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        drop(point);
        assert!(!socket.exists() && !dir.exists());
    }

    /// Connects to `socket` as uid/gid 65534 from a child process, between fork and exec
    /// (where only async-signal-safe calls are made), and returns the child.
    fn connect_as_nobody(socket: &Path) -> std::process::Child {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(socket.as_os_str().as_bytes()) {
            *dst = *src as libc::c_char;
        }
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let rc = libc::connect(fd, (&raw const addr).cast(), len);
                // Hold the connection until hm has looked at it.
                libc::sleep(1);
                libc::_exit(if rc == 0 { 0 } else { 3 });
            });
        }
        cmd.spawn().expect("fork a client")
    }

    #[tokio::test]
    async fn a_peer_of_another_user_is_refused_and_the_wait_goes_on() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("skipped: needs root to connect as another user");
            return;
        }
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("debug");
        let socket = dir.join("shell.sock");
        let point = AttachPoint::bind("shell", &socket).expect("bind");
        // Open the way on purpose, as a careless chmod would: the uid check still holds.
        for path in [temp.path(), dir.as_path(), socket.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut stranger = connect_as_nobody(&socket);
        let accept = tokio::spawn(async move { point.accept().await.map(|(_, pid)| pid) });
        // The stranger connected (exit 0 after its second), and was not the one accepted.
        let status = tokio::task::spawn_blocking(move || stranger.wait())
            .await
            .unwrap();
        assert_eq!(
            status.unwrap().code(),
            Some(0),
            "the stranger could connect"
        );
        assert!(!accept.is_finished(), "a peer of another uid was accepted");
        let _mine = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let pid = accept.await.unwrap().expect("accept");
        assert_eq!(pid, std::process::id());
    }

    #[tokio::test]
    async fn a_directory_others_can_enter_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let open = temp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = AttachPoint::bind("shell", &open.join("s.sock")).unwrap_err();
        assert!(e.to_string().contains("open to others (mode 755"), "{e}");
        assert!(!open.join("s.sock").exists());
    }
}
