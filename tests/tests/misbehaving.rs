//! Misbehaving plugins, as real processes under the real supervisor: a plugin that
//! segfaults, aborts, panics, fails its handshake, hangs, breaks the protocol, ignores a cancel,
//! leaks a process or lies about its process group. For each: hm's verdict on the step and on
//! the plugin, that a shell step running beside it finished, that every line the step wrote
//! before the plugin misbehaved was reported, and that no process is left.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::time::Duration;

use hm_tests::fixture::{LINES_VAR, expected_lines};
use hm_tests::{
    Bundle, Hm, MARKER_VAR, Project, RUN_DEADLINE, Run, Value, assert_no_process_left,
    assert_process_gone, marker, sh_wait_for_file,
};

const MISBEHAVE: &str = env!("CARGO_BIN_EXE_hm-fixture-misbehave");
const WIRE: &str = env!("CARGO_BIN_EXE_hm-fixture-wire");
const HANDSHAKE: &str = env!("CARGO_BIN_EXE_hm-fixture-handshake");
const CRASH: &str = env!("CARGO_BIN_EXE_hm-fixture-crash");

/// Lines the misbehaving step writes before it misbehaves.
const LINES: usize = 3_000;
/// Bounds waiting for one event; a correct hm needs a fraction of it.
const WAIT: Duration = Duration::from_secs(20);

/// A project where step `bad` runs on a fixture plugin and step `calm`, on the shell executor,
/// runs beside it until the test releases it once `bad` has ended.
struct Scenario {
    project: Project,
    marker: String,
    /// The fixture plugin's name.
    plugin: String,
}

/// What `bad` looks like; `build` writes the project.
struct ScenarioBuilder {
    label: String,
    bundle: Bundle,
    run: String,
    /// TOML `KEY = "value"` pairs of `bad`'s env, besides `FIXTURE_LINES`.
    env: Vec<String>,
    /// More lines for `bad`'s table.
    step: String,
    /// More tables for the file.
    file: String,
}

impl ScenarioBuilder {
    fn new(label: &str, bundle: Bundle) -> Self {
        Self {
            label: label.to_owned(),
            bundle,
            run: "unused".to_owned(),
            env: Vec::new(),
            step: String::new(),
            file: String::new(),
        }
    }

    fn run(mut self, run: &str) -> Self {
        self.run = run.to_owned();
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key} = \"{value}\""));
        self
    }

    fn step(mut self, toml: &str) -> Self {
        self.step = toml.to_owned();
        self
    }

    fn file(mut self, toml: &str) -> Self {
        self.file = toml.to_owned();
        self
    }

    fn build(self) -> Scenario {
        let executor = self.bundle.capabilities[0]
            .strip_prefix("executor:")
            .expect("an executor bundle")
            .to_owned();
        let mut env = vec![format!("{LINES_VAR} = \"{LINES}\"")];
        env.extend(self.env);
        let project = Project::new(&format!(
            r#"
[steps.bad]
executor = "{executor}"
run = "{run}"
env = {{ {env} }}
{step}

[steps.calm]
run = '''echo calm started; {wait}; echo calm done'''

{file}
"#,
            run = self.run,
            env = env.join(", "),
            step = self.step,
            file = self.file,
            wait = sh_wait_for_file("release"),
        ));
        project.install(&self.bundle);
        Scenario {
            project,
            marker: marker(&self.label),
            plugin: self.bundle.name,
        }
    }
}

impl Scenario {
    /// `hm run --format json -k -j2 ARGS...` with the marker (and `env`) in hm's environment,
    /// which plugins and steps inherit. Releases `calm` once `bad` has ended.
    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut hm = Hm::spawn(self.command(env, args));
        hm.wait_for_event("the step_end of bad", WAIT, |e: &Value| {
            e["kind"] == "step_end" && e["step"] == "bad"
        });
        self.project.write("release", "");
        hm.finish(RUN_DEADLINE).into_run()
    }

    fn command(&self, env: &[(&str, &str)], args: &[&str]) -> std::process::Command {
        let mut all = vec!["run", "--format", "json", "-k", "-j2"];
        all.extend_from_slice(args);
        let mut cmd = self.project.command(&all);
        cmd.env(MARKER_VAR, &self.marker);
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    }

    /// No process of the test is left: none with its marker (hm, plugins, steps and whatever
    /// they started all carry it), no instance of the fixture plugin, and no cgroup of the run.
    fn assert_nothing_left(&self, run: &Run) {
        assert_no_process_left(&self.marker);
        for pid in run.plugin_pids(&self.plugin) {
            assert_process_gone(pid);
        }
        if let Some(id) = run
            .of_kind("build_start")
            .first()
            .and_then(|e| e["run_id"].as_str())
        {
            let left = hm_tests::cgroups::run_cgroup_dirs(id);
            assert!(left.is_empty(), "the run's cgroups are left: {left:?}");
        }
    }

    /// The one instance of the fixture plugin that ended badly.
    fn crash<'r>(&self, run: &'r Run) -> &'r Value {
        let exits: Vec<&Value> = run
            .of_plugin("plugin_exit", &self.plugin)
            .into_iter()
            .filter(|e| e["clean"] == false)
            .collect();
        assert_eq!(
            exits.len(),
            1,
            "one unclean plugin_exit of {}; {run}",
            self.plugin
        );
        exits[0]
    }
}

/// A failed assertion must not leave processes behind either.
impl Drop for Scenario {
    fn drop(&mut self) {
        for p in hm_tests::processes_with(&self.marker) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `bad` runs on the misbehave fixture in `mode`.
fn misbehave(mode: &str) -> ScenarioBuilder {
    ScenarioBuilder::new(
        mode,
        Bundle::executor("fixture-misbehave", "misbehave", MISBEHAVE),
    )
    .env("MISBEHAVE", mode)
}

/// `calm` was running while the plugin misbehaved, and finished normally.
fn assert_calm_passed(run: &Run) {
    assert_eq!(run.status("calm"), "passed", "{run}");
    assert_eq!(run.lines("calm"), ["calm started", "calm done"], "{run}");
}

/// Every line `step` wrote was reported, in order, before its (first) `step_end`.
fn assert_lines_kept(run: &Run, step: &str) {
    let lines = run.lines(step);
    let expected = expected_lines(step, LINES);
    assert_eq!(
        lines.len(),
        expected.len(),
        "lines of {step} lost or added; {run}"
    );
    assert!(
        lines.iter().zip(&expected).all(|(got, want)| got == want),
        "lines of {step} differ from what it wrote; {run}"
    );
    assert!(
        run.last_index_of("step_log", step) < run.index_of("step_end", step),
        "every line of {step} precedes its step_end; {run}"
    );
}

fn step_message<'r>(run: &'r Run, step: &str) -> &'r str {
    run.step_end(step)["message"].as_str().unwrap_or_default()
}

// ---- the plugin process dies under a step ----

/// A crash kills the plugin by `signal`: the step fails as an executor crash, the plugin's
/// exit says which signal, and the rest of the run is untouched.
fn check_killed_by_signal(mode: &str, signal: i32) {
    let s = misbehave(mode).build();
    let run = s.run(&[], &[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("bad"), "failed", "{run}");
    assert_eq!(run.cause("bad"), Some("executor_crash"), "{run}");
    let crash = s.crash(&run);
    assert_eq!(
        (&crash["cause"], &crash["signal"]),
        (&Value::from("signal"), &Value::from(signal)),
        "{run}"
    );
    assert_eq!(
        crash["pid"],
        run.of_step("step_start", "bad")[0]["plugin_pid"],
        "{run}"
    );
    assert_lines_kept(&run, "bad");
    assert_calm_passed(&run);
    run.assert_one_final_step_end_each();
    s.assert_nothing_left(&run);
}

#[test]
fn a_plugin_that_segfaults_mid_step_fails_the_step_as_an_executor_crash() {
    check_killed_by_signal("segfault", libc::SIGSEGV);
}

#[test]
fn a_plugin_that_aborts_mid_step_fails_the_step_as_an_executor_crash() {
    check_killed_by_signal("abort", libc::SIGABRT);
}

#[test]
fn a_plugin_process_that_exits_101_mid_step_fails_the_step_as_an_executor_crash() {
    let s = misbehave("exit-101").build();
    let run = s.run(&[], &[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("bad"), "failed", "{run}");
    assert_eq!(run.cause("bad"), Some("executor_crash"), "{run}");
    let crash = s.crash(&run);
    assert_eq!(
        (&crash["cause"], &crash["exit_code"]),
        (&Value::from("exit"), &Value::from(101)),
        "{run}"
    );
    let message = step_message(&run, "bad");
    assert!(
        message.contains("101") && message.contains("panicked"),
        "the step's message gives the exit status and the plugin's last output: {message:?}"
    );
    assert_lines_kept(&run, "bad");
    assert_calm_passed(&run);
    s.assert_nothing_left(&run);
}

#[test]
fn an_executor_panic_fails_only_its_step_and_the_plugin_keeps_serving() {
    // `again` runs on the same plugin once `bad` has ended.
    let s = misbehave("panic")
        .file(&format!(
            r#"
[steps.again]
executor = "misbehave"
run = "unused"
env = {{ {LINES_VAR} = "{LINES}" }}
"#
        ))
        .build();
    let run = s.run(&[], &[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("bad"), "failed", "{run}");
    // The executor reported a failure (through the SDK); the plugin did not crash.
    assert_eq!(run.cause("bad"), Some("exit"), "{run}");
    let message = step_message(&run, "bad");
    assert!(
        message.contains("panicked") && message.contains("on purpose"),
        "the step's message carries the panic: {message:?}"
    );
    // Queued but never flushed by the executor: the SDK sent them on its way out.
    assert_lines_kept(&run, "bad");
    assert_eq!(run.status("again"), "passed", "{run}");
    assert_lines_kept(&run, "again");
    let pids = run.plugin_pids(&s.plugin);
    assert_eq!(pids.len(), 1, "one plugin instance served both; {run}");
    for step in ["bad", "again"] {
        assert_eq!(
            run.of_step("step_start", step)[0]["plugin_pid"],
            pids[0],
            "{run}"
        );
    }
    let exits = run.of_plugin("plugin_exit", &s.plugin);
    assert_eq!(exits.len(), 1, "{run}");
    assert_eq!(exits[0]["clean"], true, "exits cleanly at the end; {run}");
    assert_calm_passed(&run);
    s.assert_nothing_left(&run);
}

// ---- the handshake fails ----

/// How a handshake failure shows.
struct HandshakeVerdict<'a> {
    /// The cause of the step that waited for the plugin.
    step_cause: &'a str,
    /// The cause of the plugin's `plugin_exit`.
    exit_cause: &'a str,
    /// Its exit code, where it exited by itself.
    exit_code: Option<i32>,
    /// What hm's stderr must say.
    stderr: &'a [&'a str],
}

/// A plugin that never completes its handshake is a plugin problem (exit 5): its step fails
/// with the whole story on stderr and in its `step_end`, and the json stream shows the process
/// (a `plugin_start` with no protocol, then an unclean `plugin_exit` saying why). Returns the
/// step's message.
fn check_handshake_failure(mode: &str, want: HandshakeVerdict<'_>) -> String {
    let s = ScenarioBuilder::new(
        mode,
        Bundle::executor("fixture-handshake", "handshake", HANDSHAKE),
    )
    .build();
    let run = s.run(&[("HM_FIXTURE_HANDSHAKE", mode)], &[]);
    assert_eq!(run.code(), 5, "{run}");
    assert_eq!(run.build_end()["exit_code"], 5, "{run}");
    assert_eq!(run.status("bad"), "failed", "{run}");
    assert_eq!(run.cause("bad"), Some(want.step_cause), "{run}");
    assert!(
        run.of_step("step_start", "bad").is_empty(),
        "the step never started; {run}"
    );
    let starts = run.of_plugin("plugin_start", &s.plugin);
    assert_eq!(starts.len(), 1, "the plugin's process is on record; {run}");
    assert_eq!(
        starts[0]["protocol"],
        Value::Null,
        "no version agreed; {run}"
    );
    let exit = s.crash(&run);
    assert_eq!(exit["pid"], starts[0]["pid"], "{run}");
    assert_eq!(exit["cause"], want.exit_cause, "{run}");
    if let Some(code) = want.exit_code {
        assert_eq!(exit["exit_code"], code, "{run}");
    }
    let message = step_message(&run, "bad").to_owned();
    assert_eq!(
        exit["message"], message,
        "plugin_exit tells the same story as the step; {run}"
    );
    for needle in want.stderr {
        assert!(
            run.stderr().contains(needle),
            "hm's stderr says {needle:?}; {run}"
        );
    }
    // The fixture's first line of stderr, which hm shows, names its pid.
    let pid: u32 = run
        .stderr()
        .split("fixture-handshake: pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("hm shows the plugin's stderr, with its pid; {run}"));
    assert_eq!(starts[0]["pid"], pid, "{run}");
    assert_process_gone(pid);
    assert_calm_passed(&run);
    hm_tests::schema::assert_valid_events(&run.output.stdout);
    s.assert_nothing_left(&run);
    message
}

#[test]
fn a_plugin_that_exits_before_saying_hello_is_a_plugin_problem() {
    check_handshake_failure(
        "exit-before-hello",
        HandshakeVerdict {
            step_cause: "executor_crash",
            exit_cause: "exit",
            exit_code: Some(3),
            stderr: &[
                "fixture-handshake",
                "Hello",
                "exit status: 3",
                "leaving before saying Hello",
            ],
        },
    );
}

#[test]
fn a_plugin_that_exits_right_after_hello_is_a_plugin_problem() {
    check_handshake_failure(
        "hello-then-exit",
        HandshakeVerdict {
            step_cause: "executor_crash",
            exit_cause: "exit",
            exit_code: Some(4),
            stderr: &["fixture-handshake", "exit status: 4", "said Hello, leaving"],
        },
    );
}

#[test]
fn a_plugin_that_leaves_after_hello_reads_the_same_whether_its_socket_was_reset_or_closed() {
    // Leaving with hm's Welcome unread resets the connection; leaving at once mostly closes it
    // cleanly. Both are one cause, and read the same way.
    let verdict = |stderr| HandshakeVerdict {
        step_cause: "executor_crash",
        exit_cause: "exit",
        exit_code: Some(4),
        stderr,
    };
    let reset = check_handshake_failure(
        "hello-then-leave-unread",
        verdict(&["closed its connection during Init", "exit status: 4"]),
    );
    assert!(
        !reset.contains("invalid frame") && !reset.contains("reset"),
        "a reset between frames is an exit, not a protocol violation: {reset}"
    );
    let closed = check_handshake_failure(
        "hello-then-exit",
        verdict(&["closed its connection during Init"]),
    );
    // What follows the plugin's name and origin (each project has its own directory).
    let first_line = |m: &str| {
        let line = m.lines().next().unwrap_or_default();
        line.split_once(") ")
            .map_or(line, |(_, rest)| rest)
            .to_owned()
    };
    assert_eq!(first_line(&reset), first_line(&closed));
}

#[test]
fn a_plugin_speaking_only_newer_protocols_is_rejected_with_both_ranges() {
    let ours = format!("{}..={}", hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX);
    let theirs = format!(
        "{}..={}",
        hm_ipc::PROTOCOL_MAX + 1,
        hm_ipc::PROTOCOL_MAX + 3
    );
    check_handshake_failure(
        "protocol-too-new",
        HandshakeVerdict {
            // A Hello hm cannot accept is a protocol error; the plugin reads the Reject, says
            // so and exits by itself.
            step_cause: "protocol_error",
            exit_cause: "protocol_error",
            exit_code: Some(2),
            stderr: &["fixture-handshake", &theirs, &ours, "rejected: "],
        },
    );
}

#[test]
fn a_first_frame_that_is_no_frame_is_a_protocol_error_and_a_plugin_problem() {
    let message = check_handshake_failure(
        "garbage-first",
        HandshakeVerdict {
            step_cause: "protocol_error",
            exit_cause: "protocol_error",
            exit_code: None,
            stderr: &["fixture-handshake", "sent an invalid first frame"],
        },
    );
    assert!(message.contains("invalid first frame"), "{message}");
}

#[test]
fn the_install_probe_reads_a_plugin_that_leaves_after_hello_the_same_way_every_time() {
    let project = Project::empty();
    let bundles = tempfile::tempdir().expect("temp dir");
    let bundle = Bundle::executor("fixture-handshake", "handshake", HANDSHAKE);
    let dir = bundle.write_into(bundles.path());
    for mode in ["hello-then-leave-unread", "hello-then-exit"] {
        let mut cmd = project.command(&["plugin", "install", &dir.display().to_string()]);
        cmd.env("HM_FIXTURE_HANDSHAKE", mode);
        let out = Hm::spawn(cmd).finish(RUN_DEADLINE);
        assert_eq!(out.code(), 5, "{mode}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("closed its socket instead of answering a Ping"),
            "{mode}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("invalid frame") && !out.stderr.contains("reset"),
            "{mode}: {}",
            out.stderr
        );
        assert!(
            !project.user_plugins().join("fixture-handshake").exists(),
            "nothing was installed"
        );
    }
}

// ---- the plugin hangs ----

#[test]
fn a_plugin_that_stops_answering_pings_is_killed_with_cause_timeout() {
    let s = misbehave("hang").build();
    let run = s.run(&[("HM_PING_INTERVAL", "200ms")], &[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("bad"), "failed", "{run}");
    assert_eq!(run.cause("bad"), Some("executor_crash"), "{run}");
    let crash = s.crash(&run);
    assert_eq!(crash["cause"], "timeout", "{run}");
    assert_eq!(crash["signal"], libc::SIGKILL, "{run}");
    assert_lines_kept(&run, "bad");
    // Pinged after 200 ms of silence, killed 400 ms later: far below the run's deadline.
    assert!(
        run.output.elapsed < Duration::from_secs(5),
        "the hung plugin was noticed within its ping deadline; {run}"
    );
    assert_calm_passed(&run);
    s.assert_nothing_left(&run);
}

// ---- the plugin breaks the protocol mid-step ----

/// A protocol violation mid-step: the plugin is killed (cause `protocol_error`), its step fails
/// with `protocol_error` and a message containing `reason`, the lines before it are kept.
fn check_violation(mode: &str, reason: &str) {
    let s = ScenarioBuilder::new(mode, Bundle::executor("fixture-wire", "wire", WIRE))
        .env("WIRE", mode)
        .build();
    let run = s.run(&[], &[]);
    assert_eq!(run.status("bad"), "failed", "{run}");
    assert_eq!(run.cause("bad"), Some("protocol_error"), "{run}");
    let crash = s.crash(&run);
    assert_eq!(crash["cause"], "protocol_error", "{run}");
    let message = step_message(&run, "bad");
    assert!(
        message.contains(reason),
        "the step's message says why ({reason:?}): {message:?}"
    );
    assert!(
        !run.lines("bad").contains(&"this line must never be shown"),
        "nothing from an invalid frame is shown; {run}"
    );
    assert_lines_kept(&run, "bad");
    assert_eq!(run.code(), 1, "{run}");
    assert_calm_passed(&run);
    run.assert_one_final_step_end_each();
    s.assert_nothing_left(&run);
}

/// The peak resident set of a live process (`VmHWM`), in bytes; `None` once it has exited.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())?;
    Some(kib * 1024)
}

#[test]
fn a_plugin_that_floods_log_batches_without_credit_is_stopped_and_hm_stays_small() {
    // 1 GiB of output without waiting for credit: a kernel that took it all in would hold
    // much of it; hm refuses the first batch over its credit.
    let s = ScenarioBuilder::new("flood", Bundle::executor("fixture-wire", "wire", WIRE))
        .env("WIRE", "flood")
        .build();
    let mut hm = Hm::spawn(s.command(&[], &[]));
    hm.wait_for_event("the step_end of bad", WAIT, |e: &Value| {
        e["kind"] == "step_end" && e["step"] == "bad"
    });
    // Still running (calm waits for the release): its high-water mark is the whole story.
    let peak = peak_rss(hm.pid());
    s.project.write("release", "");
    let run = hm.finish(RUN_DEADLINE).into_run();
    let peak = peak.unwrap_or_else(|| panic!("hm ended while calm still ran; {run}"));
    assert!(
        peak < 64 << 20,
        "hm peaked at {} MiB while a plugin flooded it",
        peak >> 20
    );
    assert_eq!(run.status("bad"), "failed", "{run}");
    assert_eq!(run.cause("bad"), Some("protocol_error"), "{run}");
    assert_eq!(s.crash(&run)["cause"], "protocol_error", "{run}");
    let message = step_message(&run, "bad");
    assert!(message.contains("without credit"), "{message}");
    // The lines written through the SDK are all there, in order, before the flood's.
    let lines = run.lines("bad");
    let expected = expected_lines("bad", LINES);
    assert_eq!(lines[..expected.len()], expected[..], "{run}");
    let flood = "f".repeat(1023);
    assert!(
        lines[expected.len()..].iter().all(|l| *l == flood),
        "only whole flood lines follow; {run}"
    );
    assert!(
        run.last_index_of("step_log", "bad") < run.index_of("step_end", "bad"),
        "{run}"
    );
    assert_eq!(run.code(), 1, "{run}");
    assert_calm_passed(&run);
    s.assert_nothing_left(&run);
}

#[test]
fn garbage_bytes_instead_of_a_frame_are_a_protocol_error() {
    check_violation("garbage", "bad frame magic");
}

#[test]
fn a_length_header_past_the_inline_cap_is_a_protocol_error() {
    check_violation("oversized", "exceeds the inline cap");
}

#[test]
fn a_truncated_frame_then_exit_is_a_protocol_error() {
    check_violation("truncated", "in the middle of a frame");
}

#[test]
fn a_payload_that_is_no_valid_archive_is_a_protocol_error() {
    check_violation("bad-payload", "invalid");
}

#[test]
fn a_log_chunk_on_an_unknown_stream_is_a_protocol_error() {
    check_violation("bad-stream", "stream 7");
}

#[test]
fn a_second_hello_after_the_handshake_is_a_protocol_error() {
    check_violation("hello", "Hello");
}

#[test]
fn a_welcome_from_a_plugin_is_a_protocol_error() {
    check_violation("welcome", "Welcome");
}

#[test]
fn a_reply_to_a_call_hm_never_made_is_a_protocol_error() {
    check_violation("unknown-reply", "");
}

// ---- the plugin ignores cancellation ----

#[test]
fn a_plugin_that_ignores_cancel_and_sigterm_has_its_step_killed_by_hm() {
    // `bad` times out after 300 ms; its executor ignores the Cancel and SIGTERM, and so does
    // its step's shell. hm kills the step's process group itself, `grace + 2 s` later.
    let s = misbehave("ignore-cancel")
        .run("echo never shown; sleep 1000")
        .step(r#"timeout = "300ms""#)
        .build();
    let run = s.run(&[], &["--grace", "100ms"]);
    assert_eq!(run.code(), 124, "{run}");
    assert_eq!(run.status("bad"), "timed_out", "{run}");
    assert_eq!(run.cause("bad"), Some("timeout"), "{run}");
    assert_eq!(
        run.step_end("bad")["signal"],
        libc::SIGKILL,
        "killed by hm with SIGKILL; {run}"
    );
    assert_lines_kept(&run, "bad");
    assert!(
        run.of_plugin("plugin_exit", &s.plugin)
            .iter()
            .all(|e| e["clean"] == true),
        "the plugin itself was not killed; {run}"
    );
    assert!(run.output.elapsed < Duration::from_secs(5), "{run}");
    assert_calm_passed(&run);
    s.assert_nothing_left(&run);
}

// ---- the plugin leaks a process ----

#[test]
fn a_background_grandchild_an_executor_leaves_behind_does_not_outlive_the_run() {
    // The step's shell puts a sleep in the background and exits; the executor reports the
    // step's process group but, unlike the SDK's helper, kills nothing when the step ends.
    let s = misbehave("leak")
        .run("sleep 1000 & echo $! > leaked.pid")
        .build();
    let run = s.run(&[], &[]);
    assert_eq!(run.status("bad"), "passed", "{run}");
    assert_lines_kept(&run, "bad");
    assert_calm_passed(&run);
    let leaked: u32 = s
        .project
        .read("leaked.pid")
        .trim()
        .parse()
        .expect("the step wrote the leaked pid");
    assert_process_gone(leaked);
    s.assert_nothing_left(&run);
}

// ---- the restart budget ----

#[test]
fn a_crashing_plugin_is_restarted_within_its_budget_and_then_fails_its_steps() {
    // Each `crash*` step kills its plugin (the crash fixture SIGKILLs itself under a step whose
    // CRASH_ONCE_FILE does not exist yet); one job, so they meet the plugin one after another.
    let m = marker("restart-budget");
    let crash_step = |name: &str| {
        format!(
            r#"
[steps.{name}]
executor = "crashy"
run = "touch {name}.ran"
env = {{ CRASH_ONCE_FILE = "{name}.crashed" }}
"#
        )
    };
    let project = Project::new(&format!(
        r#"
{}{}{}
[steps.calm]
run = "echo calm"

[plugins.fixture-crash]
restart = {{ max = 1, within = "60s" }}
"#,
        crash_step("first"),
        crash_step("second"),
        crash_step("third"),
    ));
    project.install(&Bundle::executor("fixture-crash", "crashy", CRASH));
    let mut cmd = project.command(&["run", "--format", "json", "-k", "-j1"]);
    cmd.env(MARKER_VAR, &m);
    let run = Hm::spawn(cmd).finish(RUN_DEADLINE).into_run();
    assert_eq!(run.code(), 1, "{run}");
    for step in ["first", "second", "third"] {
        assert_eq!(run.status(step), "failed", "{run}");
        assert_eq!(run.cause(step), Some("executor_crash"), "{run}");
        assert!(!project.exists(&format!("{step}.ran")), "{step} ran");
    }
    assert!(project.exists("first.crashed") && project.exists("second.crashed"));
    let starts = run.plugin_pids("fixture-crash");
    assert_eq!(starts.len(), 2, "started, then restarted once; {run}");
    assert_ne!(starts[0], starts[1], "{run}");
    let restarts = run.of_plugin("plugin_restart", "fixture-crash");
    assert_eq!(restarts.len(), 1, "{run}");
    assert_eq!(
        (&restarts[0]["restarts"], &restarts[0]["max"]),
        (&Value::from(1), &Value::from(1)),
        "{run}"
    );
    // Restarted when next needed: after `first` ended, before `second` started.
    let restart_at = run
        .events
        .iter()
        .position(|e| e["kind"] == "plugin_restart")
        .unwrap_or_default();
    assert!(run.index_of("step_end", "first") < restart_at, "{run}");
    assert!(restart_at < run.index_of("step_start", "second"), "{run}");
    let exits = run.of_plugin("plugin_exit", "fixture-crash");
    assert_eq!(exits.len(), 2, "{run}");
    assert!(
        exits
            .iter()
            .all(|e| e["cause"] == "signal" && e["signal"] == libc::SIGKILL),
        "{run}"
    );
    // Past the budget: not started again; the step fails at once and says why.
    assert!(run.of_step("step_start", "third").is_empty(), "{run}");
    assert!(!project.exists("third.crashed"));
    let message = step_message(&run, "third");
    assert!(message.contains("not restarted"), "{message:?}; {run}");
    assert_eq!(run.status("calm"), "passed", "{run}");
    run.assert_one_final_step_end_each();
    assert_no_process_left(&m);
    for pid in starts {
        assert_process_gone(pid);
    }
}

// ---- the plugin lies about its step's process group ----

/// `bad` claims process group `claim` for its step, then its plugin aborts: hm kills "the
/// step's group" of a crashed plugin, and must not take a plugin's word for which group that is.
fn claiming(claim: &str) -> Scenario {
    misbehave("claim-pgid").env("CLAIM_PGID", claim).build()
}

/// Runs a [`claiming`] scenario with hm leading a process group of its own, so that a wrong
/// kill stays within the test. `calm` is released from the start: hm may not live to report
/// `bad`'s end.
fn run_claiming(s: &Scenario) -> Run {
    s.project.write("release", "");
    let mut cmd = s.command(&[], &[]);
    cmd.process_group(0);
    let output = Hm::spawn(cmd).finish(RUN_DEADLINE);
    assert_eq!(
        output.status.signal(),
        None,
        "hm was killed ({}) after a crashed plugin named a process group it does not own; \
         stderr:\n{}",
        output.status,
        output.stderr
    );
    output.into_run()
}

#[test]
fn a_crashed_plugin_cannot_make_hm_kill_a_process_group_it_does_not_own() {
    // An innocent process, leading its own group, that the plugin names as its step's.
    let mut victim = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("spawn the victim");
    let s = claiming(&victim.id().to_string());
    let run = run_claiming(&s);
    assert_eq!(run.status("bad"), "failed", "{run}");
    let alive = victim.try_wait().expect("check the victim").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        alive,
        "hm SIGKILLed process group {} because a crashed plugin said it was its step's; {run}",
        victim.id()
    );
    assert_calm_passed(&run);
    s.assert_nothing_left(&run);
}

#[test]
fn a_crashed_plugin_cannot_make_hm_kill_its_own_process_group() {
    // Group 0 means "the caller's own group" to kill(2); `parent` is hm's pid, which leads it.
    for claim in ["0", "parent"] {
        let s = claiming(claim);
        let run = run_claiming(&s);
        assert_eq!(run.code(), 1, "claim {claim}: {run}");
        assert_eq!(
            run.cause("bad"),
            Some("executor_crash"),
            "claim {claim}: {run}"
        );
        assert_calm_passed(&run);
        s.assert_nothing_left(&run);
    }
}
