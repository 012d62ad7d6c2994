//! The scenarios as tests: each guest boots at most once per test process, for all of its
//! scenarios (or those `HM_VM_SCENARIOS` names), and each test asserts one scenario's checks.
//! Without the tools the tests say they were skipped; `HM_REQUIRE_VM=1` makes that a failure.

use std::sync::{Mutex, OnceLock};

use super::{Guest, Report, boot};

/// One VM at a time: two TCG guests on a two-core machine would each run at half speed.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

struct GuestState {
    unavailable: OnceLock<Option<String>>,
    boot: OnceLock<Result<Report, String>>,
}

static STATES: [GuestState; 2] = [
    GuestState {
        unavailable: OnceLock::new(),
        boot: OnceLock::new(),
    },
    GuestState {
        unavailable: OnceLock::new(),
        boot: OnceLock::new(),
    },
];

fn state(guest: Guest) -> &'static GuestState {
    match guest {
        Guest::Minimal => &STATES[0],
        Guest::Systemd => &STATES[1],
    }
}

fn required() -> bool {
    std::env::var_os("HM_REQUIRE_VM").is_some_and(|v| v == "1")
}

/// The scenarios of `guest` this process runs: those `HM_VM_SCENARIOS` (comma-separated names)
/// names, else all.
pub fn selected(guest: Guest) -> Vec<String> {
    let all = guest.scenarios().into_iter().map(|(name, _)| name);
    match std::env::var("HM_VM_SCENARIOS") {
        Ok(list) if !list.trim().is_empty() => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
            all.filter(|name| wanted.contains(&name.as_str())).collect()
        }
        _ => all.collect(),
    }
}

/// The report of `guest`'s one boot in this process, booting it first if no test has.
fn report(guest: Guest) -> &'static Result<Report, String> {
    state(guest).boot.get_or_init(|| {
        let _one = ONE_VM_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let scenarios = selected(guest);
        let all = scenarios.len() == guest.scenarios().len();
        let report = boot(guest, if all { &[] } else { &scenarios });
        if let Ok(report) = &report {
            eprintln!("{}", report.timing());
        }
        report
    })
}

/// Asserts that scenario `scenario` of `guest` ran to its end and every one of its checks
/// passed; the failure lists each failed check with the guest's detail and context. Skips (and
/// says why) where the guest cannot be booted, unless `HM_REQUIRE_VM=1`.
pub fn assert_scenario(guest: Guest, scenario: &str) {
    let test = format!("{} VM, scenario `{scenario}`", guest.name());
    assert!(
        guest.scenarios().iter().any(|(name, _)| name == scenario),
        "{test}: there is no script for it in {}",
        guest.scenario_dir().display()
    );
    let unavailable = state(guest)
        .unavailable
        .get_or_init(|| guest.unavailable_reason());
    if let Some(reason) = unavailable {
        assert!(!required(), "{test}: {reason}, and HM_REQUIRE_VM=1");
        eprintln!("{test}: skipped: {reason}");
        return;
    }
    if !selected(guest).iter().any(|name| name == scenario) {
        assert!(
            !required(),
            "{test}: HM_VM_SCENARIOS leaves it out, and HM_REQUIRE_VM=1"
        );
        eprintln!("{test}: skipped: HM_VM_SCENARIOS leaves it out");
        return;
    }
    let report = match report(guest) {
        Ok(report) => report,
        Err(why) => panic!("{test}: the VM could not be booted: {why}"),
    };
    let Some(result) = report.scenario(scenario) else {
        panic!(
            "{test}: the guest never started it: {}\n{}",
            report
                .incomplete
                .as_deref()
                .unwrap_or("it was not among the scenarios the guest ran"),
            report.timing()
        );
    };
    match result.verdict(guest) {
        Ok(summary) => eprintln!("{summary}"),
        Err(failure) => panic!(
            "{failure}\n{}{}",
            report
                .incomplete
                .as_deref()
                .map_or_else(String::new, |i| format!("{i}\n")),
            report.timing()
        ),
    }
}
