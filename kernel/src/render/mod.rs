//! Renderers: turn the run's event stream (`docs/events.md`) into what the user reads.
//!
//! The run loop owns exactly one [`Renderer`], built by [`renderer`], and calls it synchronously:
//! [`Renderer::event`] for every event in order, [`Renderer::tick`] about every 100 ms while the
//! run is live, [`Renderer::flush`] after each batch and before exit.
//!
//! | format | when | stream | file |
//! |---|---|---|---|
//! | json | `--format json` | stdout, one object per line | `json.rs` |
//! | human, plain | not a terminal, or `--logs` | stderr, `[step] line` | `plain.rs` |
//! | human, live | a terminal | stderr, redrawn block of running steps | `live.rs` |
//! | github | `--format github` | stdout, `::group::` per step | `github.rs` |
//!
//! The three human-facing formats end with the same table (`summary.rs`) and share their wording
//! (`text.rs`), so a failure reads the same wherever it is seen.
//!
//! **Invariant**: renderers never consult the clock for anything they print, except the live
//! view's elapsed time; durations come from the events, so output is reproducible and testable.
//!
//! **Invariant**: a reader that goes away (EPIPE, e.g. `hm run | head`) is not an error: the
//! renderer quietly stops writing and the run goes on (`output.rs`).

mod github;
mod json;
mod live;
mod log_tail;
mod output;
mod plain;
mod style;
mod summary;
mod text;

#[cfg(test)]
mod test_support;

use std::io::{self, Write};

use crate::events::{Envelope, Stream};

pub use style::color_enabled;

/// Consumes the event stream of one run and shows it to the user.
pub trait Renderer {
    /// Called for every event, in order. Must be cheap for StepLog: a run may emit millions.
    fn event(&mut self, ev: &Envelope) -> io::Result<()>;
    /// One line of step output: the same as `event` with a `StepLog`, without building one.
    /// Steps can print millions of lines, so renderers override this to skip the allocations.
    fn step_log(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        line: &str,
    ) -> io::Result<()> {
        self.event(&Envelope::step_log(ts, run_id, step, stream, line, false))
    }
    /// Several lines of one step's output, joined by `\n` (a batch as it came from the
    /// executor): the same as `step_log` for each line, which is what this default does.
    /// Renderers that can handle a whole batch at once override it.
    fn step_logs(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        lines: &str,
    ) -> io::Result<()> {
        for line in lines.split('\n') {
            self.step_log(ts, run_id, step, stream, line)?;
        }
        Ok(())
    }
    /// Lines of a step's output replayed from the cache on a hit, joined by `\n`: the same as
    /// an `event` with a `StepLog` marked `replayed` for each line, which is what this default
    /// does. Renderers that can write a whole batch at once override it.
    fn replayed_logs(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        lines: &str,
    ) -> io::Result<()> {
        for line in lines.split('\n') {
            self.event(&Envelope::step_log(ts, run_id, step, stream, line, true))?;
        }
        Ok(())
    }
    /// Called every ~100 ms while the run is live (redraw the live view; may do nothing).
    fn tick(&mut self) -> io::Result<()>;
    /// Called after each batch of events and before exit: push buffered output out.
    fn flush(&mut self) -> io::Result<()>;
}

/// The `--format` of `hm run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Live view on a terminal, plain `[step] line` streaming otherwise; on stderr.
    #[default]
    Human,
    /// One JSON object per event and line, on stdout.
    Json,
    /// GitHub Actions workflow commands (`::group::`, `::error::`), on stdout.
    Github,
}

/// How `hm run` was asked to show its progress.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub format: Format,
    /// Colour status words; see [`color_enabled`].
    pub color: bool,
    /// stderr is a terminal: the human format draws the live view.
    pub tty: bool,
    /// `--logs`: stream every log line even on a terminal (plain renderer).
    pub logs: bool,
}

/// The renderer for `opts`. Each format writes to one of the two streams only; the other is
/// dropped unused, so nothing else in this module ever touches it.
pub fn renderer(
    opts: &RenderOptions,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
) -> Box<dyn Renderer + Send> {
    match opts.format {
        Format::Json => Box::new(json::JsonRenderer::new(stdout)),
        Format::Github => Box::new(github::GithubRenderer::new(stdout, opts.color)),
        Format::Human if opts.tty && !opts.logs => {
            Box::new(live::LiveRenderer::new(stderr, opts.color))
        }
        Format::Human => Box::new(plain::PlainRenderer::new(stderr, opts.color)),
    }
}

/// A byte count for people: `64 MiB`, `1.5 GiB`.
pub fn format_bytes(n: u64) -> String {
    text::bytes(n)
}
