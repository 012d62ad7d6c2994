//! Turning what an executor reported into a status and a cause (`docs/events.md`), and deciding
//! whether a retry class matches.

use hm_ipc::messages::StepResult;

use crate::config::RetryClass;
use crate::events::{Cause, StepStatus};

/// Why the kernel itself stopped a step, if it did. It decides the verdict over whatever exit
/// status the stopped process reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The step's own timeout.
    StepTimeout,
    /// The pipeline's timeout.
    PipelineTimeout,
    /// Ctrl-C or SIGTERM to hm.
    UserCancel,
    /// Another step failed and the run is failing fast.
    FailFast,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: StepStatus,
    pub cause: Option<Cause>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
}

impl Verdict {
    pub fn failed(cause: Cause, message: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Failed,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            message: Some(message.into()),
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self.status, StepStatus::Failed | StepStatus::TimedOut)
    }
}

/// The verdict for a step stopped by the kernel, whatever the process reported.
pub fn stopped(reason: StopReason) -> (StepStatus, Cause) {
    match reason {
        StopReason::StepTimeout | StopReason::PipelineTimeout => {
            (StepStatus::TimedOut, Cause::Timeout)
        }
        StopReason::UserCancel | StopReason::FailFast => (StepStatus::Cancelled, Cause::Cancelled),
    }
}

/// Classifies a finished attempt.
pub fn classify(result: &StepResult, stop: Option<StopReason>) -> Verdict {
    let mut verdict = Verdict {
        status: StepStatus::Passed,
        cause: None,
        exit_code: result.exit_code,
        signal: result.signal,
        message: None,
    };
    if let Some(reason) = stop {
        // A step that finished cleanly before the stop took effect still passed.
        if result.exit_code != Some(0) || result.cancelled {
            let (status, cause) = stopped(reason);
            verdict.status = status;
            verdict.cause = Some(cause);
        }
        return verdict;
    }
    match (result.exit_code, result.signal) {
        (Some(0), _) => {}
        (Some(code), _) => {
            verdict.status = StepStatus::Failed;
            verdict.cause = Some(Cause::Exit);
            verdict.message = Some(format!("exited with code {code}"));
        }
        (None, Some(signal)) => {
            verdict.status = StepStatus::Failed;
            verdict.cause = Some(Cause::Signal);
            let core = if result.core_dumped {
                " (core dumped)"
            } else {
                ""
            };
            verdict.message = Some(format!("killed by signal {}{core}", signal_name(signal)));
        }
        (None, None) => {
            verdict.status = StepStatus::Failed;
            verdict.cause = Some(Cause::Exit);
            verdict.message = Some("ended without an exit status".into());
        }
    }
    verdict
}

/// Whether `class` asks for a retry of an attempt that ended with `verdict`.
pub fn retry_matches(class: RetryClass, verdict: &Verdict) -> bool {
    if !verdict.is_failure() {
        return false;
    }
    match class {
        RetryClass::Failed => true,
        RetryClass::Exit(code) => {
            verdict.cause == Some(Cause::Exit) && verdict.exit_code == Some(code)
        }
        RetryClass::Signal => verdict.cause == Some(Cause::Signal),
        RetryClass::Oom => verdict.cause == Some(Cause::Oom),
        RetryClass::Pids => verdict.cause == Some(Cause::PidsLimit),
        RetryClass::Timeout => verdict.cause == Some(Cause::Timeout),
        RetryClass::Crash => verdict.cause == Some(Cause::ExecutorCrash),
    }
}

pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => format!("{} ({signal})", s.as_str()),
        Err(_) => signal.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(exit_code: Option<i32>, signal: Option<i32>) -> StepResult {
        StepResult {
            exit_code,
            signal,
            ..StepResult::default()
        }
    }

    #[test]
    fn exit_codes_and_signals_get_their_causes() {
        assert_eq!(
            classify(&result(Some(0), None), None).status,
            StepStatus::Passed
        );
        let v = classify(&result(Some(3), None), None);
        assert_eq!(
            (v.status, v.cause, v.exit_code),
            (StepStatus::Failed, Some(Cause::Exit), Some(3))
        );
        let v = classify(&result(None, Some(9)), None);
        assert_eq!((v.cause, v.signal), (Some(Cause::Signal), Some(9)));
        assert!(v.message.unwrap_or_default().contains("SIGKILL"));
    }

    #[test]
    fn a_kernel_stop_decides_the_verdict() {
        let killed = StepResult {
            signal: Some(15),
            cancelled: true,
            ..StepResult::default()
        };
        let v = classify(&killed, Some(StopReason::StepTimeout));
        assert_eq!(
            (v.status, v.cause),
            (StepStatus::TimedOut, Some(Cause::Timeout))
        );
        let v = classify(&killed, Some(StopReason::UserCancel));
        assert_eq!(
            (v.status, v.cause),
            (StepStatus::Cancelled, Some(Cause::Cancelled))
        );
        // Finished cleanly just before the stop landed: still a pass.
        let v = classify(&result(Some(0), None), Some(StopReason::FailFast));
        assert_eq!(v.status, StepStatus::Passed);
    }

    #[test]
    fn retry_classes_match_only_their_failures() {
        let exit3 = classify(&result(Some(3), None), None);
        let sig = classify(&result(None, Some(9)), None);
        let timeout = Verdict {
            status: StepStatus::TimedOut,
            cause: Some(Cause::Timeout),
            exit_code: None,
            signal: None,
            message: None,
        };
        let crash = Verdict::failed(Cause::ExecutorCrash, "x");
        let pass = classify(&result(Some(0), None), None);
        let cases = [
            (RetryClass::Failed, &exit3, true),
            (RetryClass::Failed, &pass, false),
            (RetryClass::Exit(3), &exit3, true),
            (RetryClass::Exit(4), &exit3, false),
            (RetryClass::Signal, &sig, true),
            (RetryClass::Signal, &exit3, false),
            (RetryClass::Timeout, &timeout, true),
            (RetryClass::Timeout, &exit3, false),
            (RetryClass::Crash, &crash, true),
            (RetryClass::Oom, &crash, false),
        ];
        for (class, verdict, expected) in cases {
            assert_eq!(
                retry_matches(class, verdict),
                expected,
                "{class:?} vs {verdict:?}"
            );
        }
    }
}
