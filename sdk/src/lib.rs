//! `hm-sdk`: everything a plugin links. A plugin is a library plus a one-line `main`:
//!
//! ```no_run
//! # use hm_sdk::{Plugin, Executor, StepRequest, StepContext, StepResult, StepError};
//! # struct MyExecutor;
//! # impl Executor for MyExecutor {
//! #     async fn execute(&self, _: StepRequest, _: StepContext) -> Result<StepResult, StepError> {
//! #         Ok(StepResult::default())
//! #     }
//! # }
//! fn main() {
//!     hm_sdk::serve(Plugin::new("mine", env!("CARGO_PKG_VERSION")).executor("mine", MyExecutor));
//! }
//! ```
//!
//! [`serve`] speaks the protocol of `hm-ipc` with the kernel over the inherited socket;
//! [`testing`] drives a plugin through the same protocol in-process, without an `hm` binary.

mod archive;
mod command;
mod context;
mod link;
mod plugin;
pub mod process;
pub mod procfs;
mod serve;
mod spawn;
pub mod testing;

pub use archive::Archive;
pub use context::{OutputStream, StepContext};
/// What a step's `artifacts` globs take, and the tally against its limits: the same code hm
/// uses, so a file is an artifact or not whatever executor ran the step.
pub use hm_ipc::artifacts;
pub use hm_ipc::messages::PublishedPort;
pub use hm_ipc::messages::{HookPhase, KvScope, LogLevel, OUTPUT_ENV, PROJECT_DIR_ENV, StepResult};
/// A tar for [`StepContext::put_artifacts`] is written into a [`BufferWriter`] and sealed.
pub use hm_ipc::{BufferWriter, SealedBuffer};
pub use plugin::{
    ArtifactLimits, DEFAULT_HOOK_TIMEOUT, Executor, HealthCheck, Hook, HookContext, HookEvent,
    HookVerdict, InitInfo, Plugin, ServiceError, ServiceRequest, Services, StepError, StepRequest,
    Subcommand, SubcommandArg, Subscription,
};
pub use serve::{ServeError, serve, serve_on};
