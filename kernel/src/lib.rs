//! The hm kernel: reads a pipeline, schedules its steps, supervises the plugin processes that
//! execute them, and renders what happens. It never names plugin code (ARCHITECTURE.md).

pub mod config;
pub mod dag;
pub mod events;
pub mod render;
pub mod suggest;
pub mod exit;
pub mod registry;
pub mod supervisor;
pub mod classify;
pub mod scheduler;
pub mod cli;
pub mod run;
