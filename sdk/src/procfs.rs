//! What a plugin reads from `/proc` about processes: `hm-ipc`'s parser of `/proc/<pid>/stat`,
//! the same one the kernel uses, for plugins that need to know whether a process is still the
//! one they mean (its start time) or which processes a group still has.

pub use hm_ipc::procfs::{Stat, comm, group_members, pids, stat};
