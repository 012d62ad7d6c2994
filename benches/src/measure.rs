//! The method shared by every bench: run ours and the baseline in alternating order, round
//! after round, within a time budget; take the median of each side; report their ratio against
//! the target. A target with no baseline (an absolute limit) repeats one measurement instead and
//! reports its median against the limit, in the same table.
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
    /// The bench cannot run on this machine (no swarm, no Docker): reported, not an error.
    #[error("skipped: {reason}")]
    Skipped { reason: String },
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

    pub fn skipped(reason: impl Into<String>) -> Self {
        Self::Skipped {
            reason: reason.into(),
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

/// Runs `measure` round after round within `plan`, for an absolute figure (no baseline to
/// interleave with); returns one value per round.
pub fn repeat<T>(
    plan: Plan,
    mut measure: impl FnMut() -> Result<T, BenchError>,
) -> Result<Vec<T>, BenchError> {
    if plan.warm_up {
        measure()?;
    }
    let start = Instant::now();
    let mut values = Vec::new();
    for round in 0..plan.rounds.max(1) {
        if round >= MIN_ROUNDS && start.elapsed() >= plan.budget {
            break;
        }
        values.push(measure()?);
    }
    Ok(values)
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
    /// Not a target: the least any implementation can reach on this machine for another
    /// bench's [`Target::TimeAtMost`] of this limit (ours / baseline, time). Shown as `floor`
    /// and never counted as missed.
    TimeFloor(f64),
    /// Not a target: the most any implementation can reach on this machine for another bench's
    /// [`Target::ThroughputAtLeast`] of this limit (baseline / ours, throughput). Shown as
    /// `floor` and never counted as missed.
    ThroughputFloor(f64),
    /// An absolute figure with no baseline (a "—" in the targets table): the median must be at most
    /// `limit`, counted in `unit`s.
    AtMost { limit: f64, unit: Unit },
}

/// What an absolute figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
}

impl Unit {
    /// A measured value with three significant digits.
    pub fn format(self, value: f64) -> String {
        match self {
            Self::Seconds => format_duration(Duration::from_secs_f64(value.max(0.0))),
            Self::Bytes => format_bytes(value),
        }
    }

    /// A limit as the design states it: `30 MiB`, `100 ms`.
    fn format_limit(self, limit: f64) -> String {
        match self {
            Self::Seconds => format_duration(Duration::from_secs_f64(limit.max(0.0))),
            Self::Bytes => format!("{} MiB", limit / MIB),
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// One bench's result: the medians, the ratio and the verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: &'static str,
    /// The median of ours: seconds, or for [`Target::AtMost`] whatever its unit counts.
    pub ours: f64,
    /// The median of the baseline in seconds; `None` for [`Target::AtMost`].
    pub baseline: Option<f64>,
    pub target: Target,
    pub rounds: usize,
    /// The smallest and largest ratio of a single round: how noisy the figure is.
    pub round_ratios: (f64, f64),
    /// What one timing is ("per round trip", "per run"), shown after the table.
    pub unit: String,
}

impl Outcome {
    /// A comparison against a baseline ([`Target::TimeAtMost`], [`Target::ThroughputAtLeast`]).
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
            .map(|(o, b)| ratio(target, o.as_secs_f64(), Some(b.as_secs_f64())));
        Self {
            name,
            ours: median(&samples.ours).as_secs_f64(),
            baseline: Some(median(&samples.baseline).as_secs_f64()),
            target,
            rounds: samples.ours.len().min(samples.baseline.len()),
            round_ratios: spread(per_round),
            unit: unit.into(),
        }
    }

    /// An absolute figure against its limit ([`Target::AtMost`]): one value per round, in the
    /// target's unit.
    pub fn absolute(
        name: &'static str,
        values: &[f64],
        target: Target,
        unit: impl Into<String>,
    ) -> Self {
        Self {
            name,
            ours: median_f64(values),
            baseline: None,
            target,
            rounds: values.len(),
            round_ratios: spread(values.iter().map(|&v| ratio(target, v, None))),
            unit: unit.into(),
        }
    }

    /// The ratio the target is about: time for [`Target::TimeAtMost`], throughput for
    /// [`Target::ThroughputAtLeast`], the figure over its limit for [`Target::AtMost`].
    pub fn ratio(&self) -> f64 {
        ratio(self.target, self.ours, self.baseline)
    }

    pub fn met(&self) -> bool {
        match self.target {
            Target::TimeAtMost(limit) => self.ratio() <= limit,
            Target::ThroughputAtLeast(limit) => self.ratio() >= limit,
            Target::AtMost { .. } => self.ratio() <= 1.0,
            Target::TimeFloor(_) | Target::ThroughputFloor(_) => true,
        }
    }

    /// Whether this is a target at all (a floor is a reference figure).
    pub fn is_target(&self) -> bool {
        !matches!(
            self.target,
            Target::TimeFloor(_) | Target::ThroughputFloor(_)
        )
    }

    /// The column titles of [`Self::line`].
    pub fn header() -> String {
        format!(
            "{:<16} {:>10} {:>10} {:>7} {:>9}  {:<6} {:>6}  {}",
            "bench", "ours", "baseline", "ratio", "target", "result", "rounds", "round ratios"
        )
    }

    /// One line of the report. An absolute figure shows its value under `ours`, `-` under
    /// `baseline`, and the value over the limit as its ratio.
    pub fn line(&self) -> String {
        let (ours, target) = match self.target {
            Target::TimeAtMost(limit) | Target::TimeFloor(limit) => {
                (format_secs(self.ours), format!("≤ {limit}×"))
            }
            Target::ThroughputAtLeast(limit) | Target::ThroughputFloor(limit) => {
                (format_secs(self.ours), format!("≥ {limit}×"))
            }
            Target::AtMost { limit, unit } => (
                unit.format(self.ours),
                format!("≤ {}", unit.format_limit(limit)),
            ),
        };
        let baseline = self.baseline.map_or_else(|| "-".to_owned(), format_secs);
        let mut line = format!(
            "{:<16} {:>10} {:>10} {:>6.2}× {:>9}  {:<6} {:>6}  {:.2}–{:.2}",
            self.name,
            ours,
            baseline,
            self.ratio(),
            target,
            match (self.is_target(), self.met()) {
                (false, _) => "floor",
                (true, true) => "PASS",
                (true, false) => "MISS",
            },
            self.rounds,
            self.round_ratios.0,
            self.round_ratios.1,
        );
        match self.target {
            Target::ThroughputAtLeast(_) => {
                let _ = write!(line, " (throughput)");
            }
            Target::AtMost { .. } => {
                let _ = write!(line, " (of the limit)");
            }
            Target::TimeFloor(_) => {
                let _ = write!(line, " (a floor, not a target)");
            }
            Target::ThroughputFloor(_) => {
                let _ = write!(line, " (throughput, a floor, not a target)");
            }
            Target::TimeAtMost(_) => {}
        }
        line
    }
}

/// `ours` and `baseline` in seconds (`baseline` is `None` for [`Target::AtMost`], whose
/// `ours` is in the target's unit).
fn ratio(target: Target, ours: f64, baseline: Option<f64>) -> f64 {
    let (num, den) = match (target, baseline) {
        (Target::TimeAtMost(_) | Target::TimeFloor(_), Some(baseline)) => (ours, baseline),
        (Target::ThroughputAtLeast(_) | Target::ThroughputFloor(_), Some(baseline)) => {
            (baseline, ours)
        }
        (Target::AtMost { limit, .. }, _) => (ours, limit),
        (_, None) => return f64::NAN,
    };
    if den > 0.0 { num / den } else { f64::INFINITY }
}

/// The smallest and largest of `ratios`.
fn spread(ratios: impl Iterator<Item = f64>) -> (f64, f64) {
    ratios.fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(r), hi.max(r))
    })
}

/// The median of plain numbers; the mean of the middle two for an even count.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn format_secs(secs: f64) -> String {
    format_duration(Duration::from_secs_f64(secs.max(0.0)))
}

/// A size in bytes with three significant digits, in KiB, MiB or GiB.
pub fn format_bytes(bytes: f64) -> String {
    let (value, unit) = if bytes >= 1024.0 * MIB {
        (bytes / (1024.0 * MIB), "GiB")
    } else if bytes >= MIB {
        (bytes / MIB, "MiB")
    } else {
        (bytes / 1024.0, "KiB")
    };
    format!("{} {unit}", three_digits(value))
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
    format!("{} {unit}", three_digits(value))
}

fn three_digits(value: f64) -> String {
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$}")
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
    fn a_floor_is_shown_as_one_and_never_missed() {
        let samples = Samples {
            ours: vec![ms(18), ms(15), ms(17)],
            baseline: vec![ms(10), ms(10), ms(10)],
        };
        let floor = Outcome::new("floor", &samples, Target::TimeFloor(1.2), "per run");
        assert!((floor.ratio() - 1.7).abs() < 1e-9);
        assert!(floor.met() && !floor.is_target());
        assert!(
            floor
                .line()
                .contains("17.0 ms    10.0 ms   1.70×    ≤ 1.2×  floor"),
            "{}",
            floor.line()
        );
        assert!(floor.line().ends_with("(a floor, not a target)"));
        let target = Outcome::new("t", &samples, Target::TimeAtMost(1.2), "per run");
        assert!(!target.met() && target.is_target());
        let floor = Outcome::new("floor", &samples, Target::ThroughputFloor(0.8), "per run");
        assert!((floor.ratio() - 10.0 / 17.0).abs() < 1e-9);
        assert!(floor.met() && !floor.is_target());
        assert!(
            floor.line().contains("0.59×    ≥ 0.8×  floor"),
            "{}",
            floor.line()
        );
        assert!(
            floor
                .line()
                .ends_with("(throughput, a floor, not a target)")
        );
    }

    #[test]
    fn absolute_figures_compare_against_their_limit_with_no_baseline() {
        let rss = Target::AtMost {
            limit: 30.0 * MIB,
            unit: Unit::Bytes,
        };
        let outcome = Outcome::absolute("rss", &[9.0 * MIB, 6.0 * MIB, 7.5 * MIB], rss, "peak");
        assert!((outcome.ratio() - 0.25).abs() < 1e-9 && outcome.met());
        assert_eq!(
            outcome.line(),
            "rss                7.50 MiB          -   0.25×  ≤ 30 MiB  PASS        3  0.20–0.30 \
             (of the limit)"
        );
        let late = Target::AtMost {
            limit: 0.1,
            unit: Unit::Seconds,
        };
        let outcome = Outcome::absolute("late", &[0.15, 0.09], late, "over the grace");
        assert!(!outcome.met(), "median 120 ms against 100 ms");
        assert!(
            outcome
                .line()
                .contains("  120 ms          -   1.20×  ≤ 100 ms  MISS")
        );
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
        assert_eq!(format_bytes(8.4 * MIB), "8.40 MiB");
        assert_eq!(format_bytes(512.0 * 1024.0), "512 KiB");
    }
}
