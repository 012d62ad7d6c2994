//! Colour: whether to use it (`NO_COLOR`, `--no-color`, terminal) and the few tones the
//! renderers paint status words with.

use std::ffi::OsString;

use crate::events::StepStatus;

/// Whether human output should be coloured: not with `--no-color`, not when the stream is not a
/// terminal, and not when `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
pub fn color_enabled(no_color_flag: bool, is_tty: bool) -> bool {
    decide(no_color_flag, is_tty, std::env::var_os("NO_COLOR"))
}

/// [`color_enabled`] without the environment, so tests need not mutate process-global state.
fn decide(no_color_flag: bool, is_tty: bool, no_color_env: Option<OsString>) -> bool {
    let env_forbids = no_color_env.is_some_and(|v| !v.is_empty());
    is_tty && !no_color_flag && !env_forbids
}

/// What a word means, which decides its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    Good,
    Bad,
    /// Did not run, or failed in a way that does not fail the run.
    Neutral,
    Plain,
}

impl Tone {
    pub(crate) fn of(status: StepStatus, allowed_failure: bool) -> Tone {
        match status {
            StepStatus::Passed => Tone::Good,
            StepStatus::Failed | StepStatus::TimedOut if allowed_failure => Tone::Neutral,
            StepStatus::Failed | StepStatus::TimedOut => Tone::Bad,
            StepStatus::Skipped | StepStatus::Cancelled => Tone::Neutral,
        }
    }

    fn sgr(self) -> Option<&'static str> {
        match self {
            Tone::Good => Some("\x1b[32m"),
            Tone::Bad => Some("\x1b[31m"),
            Tone::Neutral => Some("\x1b[33m"),
            Tone::Plain => None,
        }
    }
}

const RESET: &str = "\x1b[0m";

/// Appends `text` to `out`, coloured by `tone` when `color` is on.
pub(crate) fn paint(out: &mut String, color: bool, tone: Tone, text: &str) {
    match tone.sgr().filter(|_| color) {
        Some(sgr) => {
            out.push_str(sgr);
            out.push_str(text);
            out.push_str(RESET);
        }
        None => out.push_str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_needs_a_terminal_and_no_opt_out() {
        assert!(decide(false, true, None));
        assert!(!decide(false, false, None));
        assert!(!decide(true, true, None));
        assert!(!decide(false, true, Some("1".into())));
        // no-color.org: an empty NO_COLOR does not disable colour.
        assert!(decide(false, true, Some("".into())));
    }

    #[test]
    fn paint_is_plain_text_without_colour() {
        let mut s = String::new();
        paint(&mut s, false, Tone::Bad, "failed");
        assert_eq!(s, "failed");
        s.clear();
        paint(&mut s, true, Tone::Bad, "failed");
        assert_eq!(s, "\x1b[31mfailed\x1b[0m");
    }
}
