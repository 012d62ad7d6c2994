//! The hm kernel: reads a pipeline, schedules its steps, supervises the plugin processes that
//! execute them, and renders what happens. It never names plugin code (ARCHITECTURE.md).

pub mod archive;
pub mod artifacts;
pub mod cache;
pub mod cgroup;
pub mod condition;
pub mod config;
pub mod dag;
pub mod delegate;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod exit;
pub mod guardian;
pub mod launch;
pub mod outputs;
pub mod plan;
pub mod reaper;
pub mod registry;
pub mod render;
pub mod scheduler;
pub mod secrets;
pub mod suggest;
pub mod supervisor;
pub mod toml_check;
pub mod verbs;
