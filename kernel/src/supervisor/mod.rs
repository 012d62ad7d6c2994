//! Plugin processes: how they are started ([`spawn`]), the kernel's end of each connection
//! ([`connection`]: handshake, frame validation, liveness, exit classification), and the host
//! API plugins call back into ([`host_api`]). The run loop in `scheduler` owns all supervision
//! state; connection tasks only report to it through [`PluginEvent`]s.

pub mod attach;
pub mod connection;
pub mod handshake;
pub mod host_api;
pub mod spawn;

pub use connection::{
    Confinement, FailedProcess, PluginEvent, PluginEventKind, PluginExit, PluginKey, PluginLink,
    start_plugin,
};
