//! The `hm` command line through the real binary: `version`, `validate`, usage errors.
//!
//! Being an integration test of `hm-kernel`, this file also makes `cargo test --workspace`
//! build `target/<profile>/hm` before any test runs, which the end-to-end tests in `hm-tests`
//! rely on.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `hm ARGS...` in `dir`, for at most 30 s (then kills it and fails).
fn hm(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hm"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("XDG_DATA_HOME", dir.join(".xdg-data"))
        .env_remove("HM_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hm");
    // Read both pipes on their own threads so a full pipe cannot stall hm.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hm") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hm {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn project(hm_toml: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hm-cli-")
        .tempdir()
        .expect("temp dir");
    std::fs::write(dir.path().join("hm.toml"), hm_toml).expect("write hm.toml");
    dir
}

#[test]
fn version_prints_the_kernel_version_and_protocol_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = hm(dir.path(), &["version"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(concat!("hm ", env!("CARGO_PKG_VERSION"))),
        "{}",
        out.stdout
    );
    let protocol = format!(
        "protocol {}..={}",
        hm_ipc::PROTOCOL_MIN,
        hm_ipc::PROTOCOL_MAX
    );
    assert!(
        lines.contains(&protocol.as_str()),
        "no {protocol:?} in:\n{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| [
            "isolation cgroup_v2",
            "isolation cgroup_v1",
            "isolation rlimit"
        ]
        .iter()
        .any(|level| l.starts_with(level))),
        "no isolation level in:\n{}",
        out.stdout
    );
}

#[test]
fn validate_accepts_a_good_pipeline() {
    let dir = project("[steps.a]\nrun = \"true\"\n\n[steps.b]\nrun = \"true\"\nneeds = [\"a\"]\n");
    let out = hm(dir.path(), &["validate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("ok (2 steps)"), "{}", out.stdout);

    // Found from a subdirectory too, and named with -f from anywhere.
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let out = hm(&dir.path().join("sub"), &["validate"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let file = dir.path().join("hm.toml");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let out = hm(
        elsewhere.path(),
        &["validate", "-f", file.to_str().expect("utf-8 path")],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn validate_reports_every_problem_with_its_position_and_exits_2() {
    let dir = project(
        "[steps.a]\nrun = \"true\"\nneeds = [\"nope\"]\ntimeout = \"soon\"\n\n[steps.b]\nrn = \"true\"\n",
    );
    let out = hm(dir.path(), &["validate"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    // Unknown need, bad duration, missing `run`, unknown key (with a did-you-mean hint).
    for position in [
        "hm.toml:3:10:",
        "hm.toml:4:11:",
        "hm.toml:6:1:",
        "hm.toml:7:1:",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(position) && l.contains("error")),
            "no problem at {position} in:\n{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("did you mean `run`?"), "{}", out.stderr);
    // The count closes the report on a line of its own.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.ends_with("has 4 problems")),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_without_a_pipeline_file_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = hm(dir.path(), &["validate"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("hm.toml"), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [
        &["frobnicate"][..],
        &[],
        &["run", "-j", "0"],
        &["run", "--format", "xml"],
        &["run", "--timeout", "soon"],
    ] {
        let out = hm(dir.path(), args);
        assert_eq!(out.code, Some(2), "hm {args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty(), "hm {args:?} says what is wrong");
    }
    let out = hm(dir.path(), &["frobnicate"]);
    assert!(out.stderr.contains("frobnicate"), "{}", out.stderr);
}

#[test]
fn help_lists_the_commands_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = hm(dir.path(), &["--help"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for command in ["run", "validate", "version"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(command)),
            "no {command} in:\n{}",
            out.stdout
        );
    }
}
