//! Plugin processes: how they are started ([`spawn`]), the handshake every session with a
//! plugin begins with ([`handshake`]), the kernel's end of each connection during a run
//! ([`connection`]: frame judgement, liveness, exit classification), the process at its other
//! end ([`process`]: confinement, output, waiting, killing), what the two halves tell each
//! other ([`events`]), and the host API plugins call back into ([`host_api`]). The run loop in
//! `scheduler` owns all supervision state; connection tasks only report to it through
//! [`PluginEvent`]s.

pub mod attach;
pub mod connection;
pub mod events;
pub mod handshake;
pub mod host_api;
pub mod process;
pub mod spawn;

pub use connection::start_plugin;
pub use events::{FailedProcess, PluginEvent, PluginEventKind, PluginExit, PluginKey, PluginLink};
pub use process::Confinement;
