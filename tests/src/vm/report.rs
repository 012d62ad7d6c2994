//! What a guest reported on its results port (`/dev/ttyS1`, a file on the host), read into
//! scenarios and checks, and the verdict on one scenario. The lines (see `tests/vm/guest/`):
//!
//! ```text
//! BOOTED <guest uptime>
//! SCENARIO <name> begin
//! CHECK <name>/<check> ok
//! CHECK <name>/<check> FAIL <detail>
//! CONTEXT <name> <label>: <text>
//! SCENARIO <name> end <exit status of its script> <seconds>
//! DONE <guest uptime>
//! ```

use std::time::Duration;

use super::Guest;

/// One boot's results.
#[derive(Debug, Clone)]
pub struct Report {
    pub guest: Guest,
    /// In the order they ran.
    pub scenarios: Vec<ScenarioReport>,
    /// Why the VM did not run to its end (`DONE`), with the end of its console; `None` when it
    /// did.
    pub incomplete: Option<String>,
    /// Guest uptime when the scenarios started and when they had all ended.
    pub booted_at: Option<f64>,
    pub done_at: Option<f64>,
    /// Host wall time: preparing the images (including building them), and qemu's run.
    pub image_time: Duration,
    pub qemu_time: Duration,
    /// The images built for this boot rather than found in the cache, with their build times.
    pub built: Vec<(&'static str, Duration)>,
}

/// One scenario's results.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    pub name: String,
    pub checks: Vec<Check>,
    /// What the scenario wrote for a reader of its failures (hm's output, `hm doctor`, diffs).
    pub context: Vec<String>,
    /// Its script's exit status, and how long it took in the guest; `None` when it never
    /// ended (the VM stopped during it).
    pub ended: Option<(i32, f64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    /// `None` when it passed, else what the guest saw.
    pub failure: Option<String>,
}

impl Report {
    /// The results port's text, read. Lines it does not know are ignored (a guest's serial
    /// port may carry a stray carriage return or a partial last line).
    pub fn parse(guest: Guest, text: &str) -> Self {
        let mut report = Report {
            guest,
            scenarios: Vec::new(),
            incomplete: None,
            booted_at: None,
            done_at: None,
            image_time: Duration::ZERO,
            qemu_time: Duration::ZERO,
            built: Vec::new(),
        };
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            match word {
                "BOOTED" => report.booted_at = rest.trim().parse().ok(),
                "DONE" => report.done_at = rest.trim().parse().ok(),
                "SCENARIO" => {
                    let mut parts = rest.split(' ');
                    let (Some(name), Some(what)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    match what {
                        "begin" => report.scenarios.push(ScenarioReport {
                            name: name.to_owned(),
                            ..ScenarioReport::default()
                        }),
                        "end" => {
                            let status = parts.next().and_then(|s| s.parse().ok());
                            let seconds = parts.next().and_then(|s| s.parse().ok());
                            if let Some(scenario) = report.scenario_mut(name) {
                                scenario.ended =
                                    Some((status.unwrap_or(-1), seconds.unwrap_or(0.0)));
                            }
                        }
                        _ => {}
                    }
                }
                "CHECK" => {
                    let (path, outcome) = rest.split_once(' ').unwrap_or((rest, ""));
                    let Some((name, check)) = path.split_once('/') else {
                        continue;
                    };
                    let failure = match outcome.split_once(' ') {
                        _ if outcome == "ok" => None,
                        Some(("FAIL", detail)) => Some(detail.to_owned()),
                        _ => Some(format!("unreadable result `{outcome}`")),
                    };
                    if let Some(scenario) = report.scenario_mut(name) {
                        scenario.checks.push(Check {
                            name: check.to_owned(),
                            failure,
                        });
                    }
                }
                "CONTEXT" => {
                    let Some((name, text)) = rest.split_once(' ') else {
                        continue;
                    };
                    if let Some(scenario) = report.scenario_mut(name) {
                        scenario.context.push(text.to_owned());
                    }
                }
                _ => {}
            }
        }
        report
    }

    pub fn scenario(&self, name: &str) -> Option<&ScenarioReport> {
        self.scenarios.iter().rev().find(|s| s.name == name)
    }

    fn scenario_mut(&mut self, name: &str) -> Option<&mut ScenarioReport> {
        self.scenarios.iter_mut().rev().find(|s| s.name == name)
    }

    /// One line on where the time went, for the test's output.
    pub fn timing(&self) -> String {
        let built = if self.built.is_empty() {
            "from the cache".to_owned()
        } else {
            let each: Vec<String> = self
                .built
                .iter()
                .map(|(kind, took)| format!("{kind} {:.0} s", took.as_secs_f64()))
                .collect();
            format!("built: {}", each.join(", "))
        };
        let guest = |at: Option<f64>| at.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
        format!(
            "{} VM: images in {:.1} s ({built}); qemu ran {:.1} s; guest uptime at the first \
             scenario {}, at the end {}",
            self.guest.name(),
            self.image_time.as_secs_f64(),
            self.qemu_time.as_secs_f64(),
            guest(self.booted_at),
            guest(self.done_at),
        )
    }
}

impl ScenarioReport {
    /// `Ok` with a summary when the scenario ran to its end and every check passed, else `Err`
    /// with every failed check, the guest's detail and the scenario's context.
    pub fn verdict(&self, guest: Guest) -> Result<String, String> {
        let mut problems: Vec<String> = self
            .checks
            .iter()
            .filter_map(|c| c.failure.as_ref().map(|f| format!("FAIL {}: {f}", c.name)))
            .collect();
        match self.ended {
            None => problems.push("the scenario did not end (the VM stopped during it)".to_owned()),
            Some((0, _)) => {}
            Some((124 | 143, _)) => problems
                .push("the scenario's script timed out in the guest (and was killed)".to_owned()),
            Some((status, _)) => {
                problems.push(format!("the scenario's script exited with status {status}"));
            }
        }
        if self.checks.is_empty() {
            problems.push("the scenario reported no checks".to_owned());
        }
        let passed = self.checks.iter().filter(|c| c.failure.is_none()).count();
        let took = self
            .ended
            .map_or_else(String::new, |(_, s)| format!(", {s:.1} s in the guest"));
        let head = format!(
            "{} VM, scenario `{}`: {passed} of {} checks passed{took}",
            guest.name(),
            self.name,
            self.checks.len(),
        );
        if problems.is_empty() {
            return Ok(head);
        }
        let mut message = head;
        for problem in problems {
            message.push_str("\n  ");
            message.push_str(&problem);
        }
        if !self.context.is_empty() {
            message.push_str("\ncontext from the guest:");
            for line in &self.context {
                message.push_str("\n  | ");
                message.push_str(line);
            }
        }
        Err(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "BOOTED 2.51\r
SCENARIO oom begin\r
CHECK oom/isolation ok\r
CHECK oom/oom-cause FAIL step_end:hog cause is 'exit', expected 'oom'\r
CONTEXT oom hm stderr: something\r
SCENARIO oom end 0 4.2\r
SCENARIO pids begin\r
CHECK pids/isolation ok\r
SCENARIO pids end 0 1.0\r
SCENARIO cpu begin\r
CHECK cpu/isolation ok\r
";

    #[test]
    fn checks_and_context_land_in_their_scenario() {
        let report = Report::parse(Guest::Minimal, SAMPLE);
        assert_eq!(report.booted_at, Some(2.51));
        assert_eq!(report.done_at, None);
        let oom = report.scenario("oom").expect("oom ran");
        assert_eq!(oom.checks.len(), 2);
        assert_eq!(oom.checks[0].failure, None);
        assert_eq!(
            oom.checks[1].failure.as_deref(),
            Some("step_end:hog cause is 'exit', expected 'oom'")
        );
        assert_eq!(oom.context, ["hm stderr: something"]);
        assert_eq!(oom.ended, Some((0, 4.2)));
    }

    #[test]
    fn verdicts_name_every_failure_and_an_unfinished_scenario() {
        let report = Report::parse(Guest::Minimal, SAMPLE);
        let oom = report.scenario("oom").unwrap().verdict(Guest::Minimal);
        let message = oom.expect_err("a check failed");
        assert!(message.contains("1 of 2 checks passed"), "{message}");
        assert!(
            message.contains("FAIL oom-cause: step_end:hog cause is 'exit'"),
            "{message}"
        );
        assert!(message.contains("| hm stderr: something"), "{message}");

        let pids = report.scenario("pids").unwrap().verdict(Guest::Minimal);
        assert!(pids.is_ok(), "{pids:?}");

        let cpu = report.scenario("cpu").unwrap().verdict(Guest::Minimal);
        assert!(cpu.unwrap_err().contains("did not end"));
    }
}
