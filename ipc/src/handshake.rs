//! Protocol versions and their negotiation (`docs/protocol.md`).
//!
//! Version 1 is the base protocol. Version 2 adds `KernelCall::Init`: a plugin that speaks it
//! is sent `Init` before its first real call; a version-1 plugin never is. Version 3 adds
//! shared-memory buffers: the header flags `FLAG_FD` and `FLAG_SHARED_PAYLOAD` (a descriptor
//! passed with `SCM_RIGHTS` next to the frame), `HostCall::OpenArchive` and
//! `HostReply::Archive`; and the plugin's verdicts `PluginReply::Unavailable` and
//! `PluginReply::StepOutOfMemory`. Neither side sets a flag or sends those variants on v1 or
//! v2, whose decoders refuse them. Version 4 adds subcommands: `KernelCall::RunSubcommand` and
//! `PluginReply::SubcommandDone`, sent only on v4. Version 5 adds hooks: `KernelCall::OnEvent`
//! and `PluginReply::HookDone`, sent only on v5. Version 6 adds `KernelCall::Execute`: a step
//! with the command line to run it (`shell`), sent instead of `ExecuteStep` on v6. Version 7 adds artifacts: `KernelCall::Step` (sent instead
//! of `Execute`), `HostCall::OpenArtifacts` and `HostCall::PutArtifacts` (a tar next to the call). Version 8
//! adds services and the `image` verdict: `KernelCall::Attempt` (sent instead of `Step`),
//! `KernelCall::StartService` and `KernelCall::StopService`, and `PluginReply::ImageUnavailable`,
//! `ServiceUp`, `ServiceFailed`, `ServiceStopped` and `NodeLost`; `HostCall::Placed`.

/// The oldest protocol version this build speaks.
pub const PROTOCOL_MIN: u32 = 1;
/// The newest protocol version this build speaks.
pub const PROTOCOL_MAX: u32 = 8;
/// The first version in which the kernel sends `Init`.
pub const INIT_SINCE: u32 = 2;
/// The first version with shared buffers: descriptors next to frames, large payloads out of
/// the socket, and the workspace archive.
pub const SHM_SINCE: u32 = 3;
/// The first version in which a plugin may answer `PluginReply::Unavailable` (to `Init`) and
/// `PluginReply::StepOutOfMemory` (to `ExecuteStep`); on older ones it says `Failed` and
/// `StepDone` instead.
pub const VERDICTS_SINCE: u32 = 3;

/// The first version with `hm <verb>` subcommands (`RunSubcommand`, `SubcommandDone`).
pub const SUBCOMMANDS_SINCE: u32 = 4;

/// The first version with hooks (`OnEvent`, `HookDone`).
pub const HOOKS_SINCE: u32 = 5;

/// The first version in which steps come as `Execute`, with their command line.
pub const EXECUTE_SINCE: u32 = 6;

/// The first version with data between steps: `KernelCall::Step` (a step with its
/// `artifacts`), `HostCall::OpenArtifacts` and `HostCall::PutArtifacts`.
pub const ARTIFACTS_SINCE: u32 = 7;

/// The first version with services (`Attempt`, `StartService`, `StopService` and their
/// replies) and the `ImageUnavailable` verdict.
pub const SERVICES_SINCE: u32 = 8;

/// Picks the highest version both ranges contain, or says why there is none and what to do.
pub fn negotiate(ours: (u32, u32), theirs_min: u32, theirs_max: u32) -> Result<u32, String> {
    let (min, max) = ours;
    if theirs_min > theirs_max {
        return Err(format!(
            "the plugin declares an empty protocol range {theirs_min}..={theirs_max}"
        ));
    }
    if theirs_max < min {
        return Err(format!(
            "the plugin speaks protocol {theirs_min}..={theirs_max} but hm needs {min}..={max}: \
             rebuild the plugin against a newer hm-sdk"
        ));
    }
    if theirs_min > max {
        return Err(format!(
            "the plugin speaks protocol {theirs_min}..={theirs_max} but hm speaks {min}..={max}: \
             upgrade hm"
        ));
    }
    Ok(max.min(theirs_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_common_version() {
        assert_eq!(negotiate((1, 2), 1, 1), Ok(1));
        assert_eq!(negotiate((1, 2), 1, 5), Ok(2));
        assert_eq!(negotiate((1, 2), 2, 2), Ok(2));
    }

    #[test]
    fn disjoint_ranges_say_which_side_to_upgrade() {
        let old = negotiate((2, 3), 1, 1).unwrap_err();
        assert!(old.contains("rebuild the plugin"), "{old}");
        let new = negotiate((1, 2), 3, 4).unwrap_err();
        assert!(new.contains("upgrade hm"), "{new}");
        assert!(negotiate((1, 2), 2, 1).unwrap_err().contains("empty"));
    }
}
