//! `hm <verb>`: subcommands contributed by plugins (`docs/protocol.md`, subcommands), end to end
//! through `hm` with the fixture plugin `greeter` installed from its executable.

use std::io::Write;
use std::process::Stdio;

use hm_tests::{Output, Project, RUN_DEADLINE};

const GREETER: &str = env!("CARGO_BIN_EXE_hm-fixture-greet");

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        out.stdout,
        out.stderr
    )
}

/// A project with `greeter` installed (`hm plugin install --project`, which keeps the
/// `[[subcommand]]` table of its `--hm-manifest`).
fn project() -> Project {
    let project = Project::new("[steps.a]\nrun = \"true\"\n");
    let out = project.hm(&["plugin", "install", "--project", GREETER]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let manifest = project.read(".hm/plugins/greeter/plugin.toml");
    assert!(manifest.contains("[[subcommand]]"), "{manifest}");
    project
}

fn stdout(out: &Output) -> String {
    out.stdout.clone()
}

#[test]
fn help_lists_the_plugin_verb() {
    let project = project();
    let out = project.hm(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let help = stdout(&out);
    assert!(help.contains("greet"), "{help}");
    assert!(help.contains("Greets whatever --flag names"), "{help}");
}

#[test]
fn verb_help_comes_from_the_manifest_without_starting_the_plugin() {
    let project = project();
    // A plugin that cannot start proves that help does not start it.
    let bundle = project.path(".hm/plugins/greeter");
    std::fs::remove_file(bundle.join("hm-fixture-greet")).expect("remove the executable");
    let out = project.hm(&["greet", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let help = stdout(&out);
    assert!(help.contains("--flag <VALUE>"), "{help}");
    assert!(help.contains("what to greet"), "{help}");
    assert!(help.contains("--read-stdin"), "{help}");
}

#[test]
fn the_verb_gets_its_parsed_arguments_and_hm_exits_with_its_code() {
    let project = project();
    let out = project.hm(&["greet", "--flag", "x", "--code", "7"]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("args "))
        .unwrap_or_else(|| panic!("no args line: {}", show(&out)));
    let args: serde_json::Value = serde_json::from_str(line).expect("JSON arguments");
    assert_eq!(
        args,
        serde_json::json!({"flag": "x", "code": "7", "read-stdin": false, "crash": false})
    );
    let out = project.hm(&["greet"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(stdout(&out).contains("\"flag\":null"), "{}", show(&out));
}

#[test]
fn the_verb_reads_hms_stdin() {
    let project = project();
    let mut cmd = project.command(&["greet", "--read-stdin"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut hm = cmd.spawn().expect("start hm");
    let pid = hm.id();
    // Bounded: a hang is killed, and the assertions below then fail with what it printed.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(RUN_DEADLINE);
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    });
    drop(watchdog);
    hm.stdin
        .take()
        .expect("stdin is piped")
        .write_all(b"hello from the terminal\n")
        .expect("write stdin");
    let out = hm.wait_with_output().expect("wait for hm");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    assert!(
        text.contains("stdin hello from the terminal"),
        "{text}\n{err}"
    );
}

#[test]
fn an_unknown_verb_suggests_the_closest_and_how_to_install_plugins() {
    let project = project();
    let out = project.hm(&["gret"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = out.stderr.clone();
    assert!(err.contains("did you mean `hm greet`?"), "{err}");
    assert!(err.contains("hm plugin install"), "{err}");
}

#[test]
fn a_crashing_verb_is_reported_as_a_plugin_failure() {
    let project = project();
    let out = project.hm(&["greet", "--crash"]);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let err = out.stderr.clone();
    assert!(err.contains("plugin `greeter` (`hm greet`)"), "{err}");
}
