//! Checking `hm run --format json` output against `docs/events.schema.json`, the JSON Schema
//! (draft 2020-12) of one event line.
//!
//! The validation is done by Debian's `python3-jsonschema`, run through `/usr/bin/python3` (not
//! whatever `python3` is first on `PATH`, which may be an interpreter without the module):
//! `validate_events.py` checks every line and reports each problem with its line number. A
//! machine without it fails the tests that need it, with the command that installs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The interpreter that has Debian's `python3-jsonschema`.
pub const PYTHON: &str = "/usr/bin/python3";

/// What a machine without the validator needs.
const INSTALL: &str = "apt-get install python3-jsonschema";

/// The validator: reads the schema named by its argument and the events on stdin; exit 0 when
/// every line is valid, 1 with the problems on stdout, 2 for a broken schema, 3 without the
/// `jsonschema` module.
const VALIDATOR: &str = include_str!("validate_events.py");

/// `docs/events.schema.json` of this repository.
pub fn events_schema() -> PathBuf {
    crate::repo_root().join("docs/events.schema.json")
}

/// Validates every line of `stdout` (the whole output of `hm run --format json`) against the
/// event schema. `Ok` says how many events were checked; `Err` lists every invalid line with its
/// number and what is wrong with it. Text with no event at all is an `Err` too.
///
/// Panics, naming the package to install, when the validator cannot run at all: a test that
/// needs it must fail without it, never pass.
pub fn validate_events(stdout: &str) -> Result<usize, String> {
    let schema = events_schema();
    assert!(
        schema.is_file(),
        "the event schema {} does not exist",
        schema.display()
    );
    assert!(
        std::path::Path::new(PYTHON).is_file(),
        "{PYTHON} does not exist: the event schema is checked with Debian's python3 and its \
         jsonschema module; install them with `{INSTALL}`"
    );
    // -I: isolated from PYTHON* variables and the user's site-packages, so only the system's
    // modules are used.
    let mut child = Command::new(PYTHON)
        .arg("-I")
        .arg("-c")
        .arg(VALIDATOR)
        .arg(&schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} ({e}); install it with `{INSTALL}`"));
    // Written from another thread: a long stream must not wait for the reader of the report.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = stdout.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .expect("wait for the schema validator");
    // A validator that stopped early (no jsonschema module) closed its stdin: its exit status
    // says more than the broken pipe.
    let written = writer.join().expect("the writer thread");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let errors = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0 | 1) if written.is_err() => {
            panic!("cannot write the events to the schema validator: {written:?}\n{report}{errors}")
        }
        Some(0) => Ok(report
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the schema validator said {report:?}"))),
        Some(1) => Err(report),
        Some(3) => panic!(
            "{PYTHON} has no jsonschema module, which checks the event schema; install it with \
             `{INSTALL}`\n{errors}"
        ),
        _ => panic!(
            "the schema validator failed ({}):\n{report}{errors}",
            output.status
        ),
    }
}

/// Fails the test unless every line of `stdout` is an event the schema accepts (and there is
/// at least one); returns how many events there were.
pub fn assert_valid_events(stdout: &str) -> usize {
    match validate_events(stdout) {
        Ok(count) => count,
        Err(report) => panic!(
            "hm's --format json output does not match {}:\n{report}",
            events_schema().display()
        ),
    }
}
