//! The exit codes of `hm` (`docs/exit-codes.md`). When several apply, precedence is 130 > 124 > 1.

pub const OK: i32 = 0;
pub const STEP_FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const ENVIRONMENT: i32 = 4;
pub const PLUGIN: i32 = 5;
pub const NO_EXECUTOR: i32 = 7;
pub const TIMEOUT: i32 = 124;
pub const CANCELLED: i32 = 130;
