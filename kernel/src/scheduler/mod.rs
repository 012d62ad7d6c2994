//! The run loop: a dataflow DAG scheduler and the supervisor state in one task.
//!
//! One task owns every step's state and every plugin's state and runs the one `select!` loop
//! (`run_loop.rs`, the dispatcher); plugin connection tasks and signals only send it messages,
//! which the loop turns into events and hands to the handler of their concern:
//!
//! | file | concern |
//! |---|---|
//! | `run_loop.rs` | the `Scheduler`, its loop and its events; emitting events |
//! | `steps.rs` | each step's state machine; which step may start (pure) |
//! | `attempts.rs` | starting an attempt, what its executor reports, ending it |
//! | `verdict.rs` | the verdict, retries, steps that never started (pure) |
//! | `plugins.rs` | plugin instances: start, restart budget, failed starts, exits |
//! | `stopping.rs` | the kill ladder (pure), timeouts, Ctrl-C |
//! | `hooks.rs`, `hook_queue.rs` | `before` gates and `after` delivery of hook events |
//! | `services.rs` | services: started before the first step that lists them, stopped after the last |
//! | `end.rs` | the end of the run and its exit code (pure) |
//!
//! The decisions a run turns on (readiness, verdict, retry, the kill ladder, the restart
//! budget, the exit code) are plain functions of their inputs, tested in their files without
//! processes; the handlers apply them and do the I/O.

mod attempts;
mod cache;
mod data;
mod end;
mod hook_queue;
mod hooks;
mod plugins;
mod run_loop;
mod services;
mod steps;
mod stopping;
mod verdict;

pub use run_loop::{RunOptions, Scheduler};
