//! systemd delegation: when hm's own cgroup cannot hold its tree (every terminal, ssh session
//! and CI job on a systemd machine shares its cgroup with other processes, or cannot be
//! written by its user), hm asks systemd over D-Bus for a transient `hm-<run id>.scope` with
//! `Delegate=yes` holding hm's own pid: the user manager for an ordinary user, the system
//! manager for root. hm is then alone in a cgroup it may write, and everything below (the
//! guardian, plugins, steps) lives in it. systemd removes the scope, nested cgroups included,
//! when its last process exits.
//!
//! Only on machines booted with systemd (`/run/systemd/system`) and a unified (v2) hierarchy;
//! `HM_CGROUP_SCOPE=off` turns it off.

use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

/// How long systemd may take to create the scope.
const DEADLINE: Duration = Duration::from_secs(10);

/// Which systemd instance made the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// The per-user manager (`systemctl --user`), for an ordinary user.
    User,
    /// The system manager, for root.
    System,
}

impl Manager {
    /// The manager that serves this process's user.
    pub fn for_this_user() -> Self {
        if nix::unistd::geteuid().is_root() {
            Manager::System
        } else {
            Manager::User
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Manager::User => "the user's systemd manager",
            Manager::System => "the system's systemd manager",
        }
    }
}

/// A scope systemd made for hm.
#[derive(Debug, Clone)]
pub struct Scope {
    pub unit: String,
    pub manager: Manager,
}

/// Whether delegation is worth asking for here: systemd runs the machine, and the user did not
/// turn it off. `Err` says why not, for `hm doctor`.
pub fn available() -> Result<(), String> {
    if std::env::var("HM_CGROUP_SCOPE").is_ok_and(|v| v == "off") {
        return Err("HM_CGROUP_SCOPE=off".to_owned());
    }
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Err("the machine does not run systemd".to_owned());
    }
    Ok(())
}

/// Moves this process into a new transient scope `hm-<name>.scope` with `Delegate=yes`, made
/// by `manager`, and waits until systemd says the job is done. The error says what failed, in
/// words for an isolation reason.
pub async fn move_into_scope(name: &str, manager: Manager) -> Result<Scope, String> {
    tokio::time::timeout(DEADLINE, start_scope(name, manager))
        .await
        .map_err(|_| {
            format!(
                "{} did not create a scope within {}s",
                manager.describe(),
                DEADLINE.as_secs()
            )
        })?
}

async fn start_scope(name: &str, manager: Manager) -> Result<Scope, String> {
    let unit = format!("hm-{name}.scope");
    let failed = |what: &str, e: zbus::Error| format!("{what}: {e}");
    let connection = match manager {
        Manager::User => zbus::Connection::session().await,
        Manager::System => zbus::Connection::system().await,
    }
    .map_err(|e| {
        failed(
            &format!("cannot reach {} over D-Bus", manager.describe()),
            e,
        )
    })?;
    let systemd = zbus::Proxy::new(
        &connection,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .await
    .map_err(|e| failed("cannot talk to systemd", e))?;
    // Signals first, so that the job's end cannot pass unseen.
    let mut removed = systemd
        .receive_signal("JobRemoved")
        .await
        .map_err(|e| failed("cannot watch systemd's jobs", e))?;
    let () = systemd
        .call("Subscribe", &())
        .await
        .map_err(|e| failed("cannot subscribe to systemd's jobs", e))?;
    let pid = std::process::id();
    let properties: Vec<(&str, Value<'_>)> = vec![
        (
            "Description",
            Value::from("hm run (processes, plugins and steps)"),
        ),
        ("Delegate", Value::from(true)),
        ("PIDs", Value::from(vec![pid])),
        // Gone with its last process, also when that process was killed.
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    let auxiliary: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
    let job: OwnedObjectPath = systemd
        .call(
            "StartTransientUnit",
            &(unit.as_str(), "fail", properties, auxiliary),
        )
        .await
        .map_err(|e| failed(&format!("systemd refused the scope {unit}"), e))?;
    while let Some(signal) = removed.next().await {
        let Ok((_, path, _, result)) = signal
            .body()
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
        else {
            continue;
        };
        if path != job {
            continue;
        }
        if result != "done" {
            return Err(format!(
                "systemd's job for the scope {unit} ended `{result}`"
            ));
        }
        return Ok(Scope { unit, manager });
    }
    Err(format!(
        "the connection to {} closed before the scope {unit} was made",
        manager.describe()
    ))
}
