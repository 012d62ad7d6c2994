//! The method shared by every bench: run ours and the baseline in alternating order, round
//! after round, within a time budget; take the median of each side; report their ratio against
//! the target.
//!
//! Interleaving matters more than the number of rounds on a noisy two-core machine: a burst
//! of background load then hits both sides of a round instead of one whole series.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why a bench could not produce a figure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {limit:?} and was killed")]
    TimedOut { what: String, limit: Duration },
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    pub fn failed(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Failed {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// How long a bench may measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Rounds wanted; each round times ours once and the baseline once.
    pub rounds: usize,
    /// No new round starts after this much time (at least [`MIN_ROUNDS`] run).
    pub budget: Duration,
    /// One untimed run of each side first (page cache, lazy binding, allocator warm-up).
    pub warm_up: bool,
}

/// Rounds that run whatever the budget says, so a median means something.
pub const MIN_ROUNDS: usize = 3;

/// The timings of both sides, one per round, in round order.
#[derive(Debug, Default)]
pub struct Samples {
    pub ours: Vec<Duration>,
    pub baseline: Vec<Duration>,
}

/// Times `ours` and `baseline` alternately: even rounds run ours first, odd rounds the
/// baseline first, so neither side always runs on a machine the other just warmed or loaded.
pub fn interleave(
    plan: Plan,
    mut ours: impl FnMut() -> Result<Duration, BenchError>,
    mut baseline: impl FnMut() -> Result<Duration, BenchError>,
) -> Result<Samples, BenchError> {
    if plan.warm_up {
        ours()?;
        baseline()?;
    }
    let start = Instant::now();
    let mut samples = Samples::default();
    for round in 0..plan.rounds.max(1) {
        if round >= MIN_ROUNDS && start.elapsed() >= plan.budget {
            break;
        }
        if round % 2 == 0 {
            samples.ours.push(ours()?);
            samples.baseline.push(baseline()?);
        } else {
            samples.baseline.push(baseline()?);
            samples.ours.push(ours()?);
        }
    }
    Ok(samples)
}

impl Samples {
    /// Each sample divided by `ops`, for rounds that time a batch of operations.
    pub fn per_op(self, ops: u32) -> Self {
        let ops = ops.max(1);
        Self {
            ours: self.ours.into_iter().map(|d| d / ops).collect(),
            baseline: self.baseline.into_iter().map(|d| d / ops).collect(),
        }
    }
}

/// The median; the mean of the middle two for an even count.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// What a bench must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// ours / baseline (time) must be at most this.
    TimeAtMost(f64),
    /// baseline / ours (throughput) must be at least this.
    ThroughputAtLeast(f64),
}

/// One bench's result: the medians, the ratio and the verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: &'static str,
    pub ours: Duration,
    pub baseline: Duration,
    pub target: Target,
    pub rounds: usize,
    /// The smallest and largest ratio of a single round: how noisy the figure is.
    pub round_ratios: (f64, f64),
    /// What one timing is ("per round trip", "per run"), shown after the table.
    pub unit: String,
}

impl Outcome {
    pub fn new(
        name: &'static str,
        samples: &Samples,
        target: Target,
        unit: impl Into<String>,
    ) -> Self {
        let per_round = samples
            .ours
            .iter()
            .zip(&samples.baseline)
            .map(|(&o, &b)| ratio(target, o, b))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
                (lo.min(r), hi.max(r))
            });
        Self {
            name,
            ours: median(&samples.ours),
            baseline: median(&samples.baseline),
            target,
            rounds: samples.ours.len().min(samples.baseline.len()),
            round_ratios: per_round,
            unit: unit.into(),
        }
    }

    /// The ratio the target is about: time for [`Target::TimeAtMost`], throughput otherwise.
    pub fn ratio(&self) -> f64 {
        ratio(self.target, self.ours, self.baseline)
    }

    pub fn met(&self) -> bool {
        match self.target {
            Target::TimeAtMost(limit) => self.ratio() <= limit,
            Target::ThroughputAtLeast(limit) => self.ratio() >= limit,
        }
    }

    /// The column titles of [`Self::line`].
    pub fn header() -> String {
        format!(
            "{:<16} {:>10} {:>10} {:>7} {:>9}  {:<6} {:>6}  {}",
            "bench", "ours", "baseline", "ratio", "target", "result", "rounds", "round ratios"
        )
    }

    /// One line of the report.
    pub fn line(&self) -> String {
        let target = match self.target {
            Target::TimeAtMost(limit) => format!("≤ {limit}×"),
            Target::ThroughputAtLeast(limit) => format!("≥ {limit}×"),
        };
        let mut line = format!(
            "{:<16} {:>10} {:>10} {:>6.2}× {:>9}  {:<6} {:>6}  {:.2}–{:.2}",
            self.name,
            format_duration(self.ours),
            format_duration(self.baseline),
            self.ratio(),
            target,
            if self.met() { "PASS" } else { "MISS" },
            self.rounds,
            self.round_ratios.0,
            self.round_ratios.1,
        );
        if matches!(self.target, Target::ThroughputAtLeast(_)) {
            let _ = write!(line, " (throughput)");
        }
        line
    }
}

fn ratio(target: Target, ours: Duration, baseline: Duration) -> f64 {
    let (ours, baseline) = (ours.as_secs_f64(), baseline.as_secs_f64());
    let (num, den) = match target {
        Target::TimeAtMost(_) => (ours, baseline),
        Target::ThroughputAtLeast(_) => (baseline, ours),
    };
    if den > 0.0 { num / den } else { f64::INFINITY }
}

/// A duration with three significant digits and a unit that suits it.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    let (value, unit) = if secs >= 1.0 {
        (secs, "s")
    } else if secs >= 1e-3 {
        (secs * 1e3, "ms")
    } else if secs >= 1e-6 {
        (secs * 1e6, "µs")
    } else {
        (secs * 1e9, "ns")
    };
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(
            median(&[ms(4), ms(1), ms(3), ms(2)]),
            Duration::from_micros(2500)
        );
        assert_eq!(median(&[]), Duration::ZERO);
    }

    #[test]
    fn time_targets_compare_ours_over_baseline_and_throughput_the_inverse() {
        let samples = Samples {
            ours: vec![ms(13)],
            baseline: vec![ms(10)],
        };
        let time = Outcome::new("t", &samples, Target::TimeAtMost(1.3), "per op");
        assert!((time.ratio() - 1.3).abs() < 1e-9 && time.met());
        let throughput = Outcome::new("t", &samples, Target::ThroughputAtLeast(0.8), "per run");
        assert!((throughput.ratio() - 10.0 / 13.0).abs() < 1e-9 && !throughput.met());
    }

    #[test]
    fn interleaving_alternates_which_side_goes_first() {
        let order = std::cell::RefCell::new(String::new());
        let plan = Plan {
            rounds: 4,
            budget: Duration::from_secs(60),
            warm_up: true,
        };
        interleave(
            plan,
            || {
                order.borrow_mut().push('o');
                Ok(ms(1))
            },
            || {
                order.borrow_mut().push('b');
                Ok(ms(1))
            },
        )
        .unwrap();
        assert_eq!(order.into_inner(), "obobboobbo");
    }

    #[test]
    fn durations_keep_three_significant_digits() {
        assert_eq!(format_duration(Duration::from_nanos(1234)), "1.23 µs");
        assert_eq!(format_duration(ms(250)), "250 ms");
        assert_eq!(format_duration(Duration::from_millis(12_345)), "12.3 s");
    }
}
