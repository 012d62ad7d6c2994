//! The workspace archive through the `hm` binary: a plugin reads a project file out of it,
//! ignored files are not in it, and no memfd, mapping or descriptor of it is left anywhere
//! once it is no longer needed: not in a plugin after it has answered (even one that crashed
//! holding it), and not in hm once the run's steps are done, while hm is still running.

use std::path::Path;
use std::time::{Duration, Instant};

use hm_tests::{Bundle, Hm, Project, Value, sh_wait_for_file};

const ARCHIVE: &str = env!("CARGO_BIN_EXE_hm-fixture-archive");
/// The kernel's memfd, as `/proc/<pid>/fd` names it.
const ARCHIVE_MEMFD: &str = "memfd:hm-workspace-archive";
const WAIT: Duration = Duration::from_secs(20);

fn bundle() -> Bundle {
    Bundle::executor("fixture-archive", "archive", ARCHIVE).protocol(1, 3)
}

/// A project with files the archive must hold and files it must not.
fn project(steps: &str) -> Project {
    let project = Project::new(steps);
    project.write("hello.txt", "hello from the workspace\nsecond line\n");
    project.write("src/lib.rs", "pub fn f() {}\n");
    project.write(".gitignore", "ignored.txt\n*.tmp\n");
    project.write("ignored.txt", "in .gitignore\n");
    project.write("scratch.tmp", "in .gitignore too\n");
    // The fixture bundle under .hm/ is no workspace content either: hm leaves its own
    // directory out without being told.
    project.write(".hmignore", "private/\n");
    project.write("private/secret.txt", "in .hmignore\n");
    project.write(".git/config", "[core]\n");
    project.write(".git/info/exclude", "excluded.txt\n");
    project.write("excluded.txt", "in .git/info/exclude\n");
    project.install(&bundle());
    project
}

/// The `/proc/<pid>/fd` links and `/proc/<pid>/maps` lines of `pid` that are memfds.
fn memfds(pid: u32) -> (Vec<String>, Vec<String>) {
    let mut fds = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let target = target.to_string_lossy().into_owned();
                if target.contains("memfd:") {
                    fds.push(target);
                }
            }
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("memfd:"))
        .map(str::to_owned)
        .collect();
    (fds, maps)
}

/// Whether `pid` is running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

fn step_is(kind: &'static str, step: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["kind"] == kind && e["step"] == step
}

fn plugin_pid(hm: &mut Hm, plugin: &'static str) -> u32 {
    let start = hm.wait_for_event(&format!("plugin_start of {plugin}"), WAIT, move |e| {
        e["kind"] == "plugin_start" && e["plugin"] == plugin
    });
    start["pid"].as_u64().expect("a pid") as u32
}

/// Polls (bounded) until `pid`, still running, holds no memfd at all; fails with what it
/// still holds, or if it exits first (a process that is gone holds nothing, proving nothing).
fn wait_until_no_memfd(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let held = memfds(pid);
        assert!(
            alive(pid),
            "process {pid} exited before it let go of {held:?}"
        );
        if held.0.is_empty() && held.1.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still holds {held:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn touch(path: &Path) {
    std::fs::write(path, "").expect("create a file");
}

#[test]
fn a_plugin_reads_a_project_file_from_the_archive_without_ignored_files() {
    let project = project(
        r#"
[steps.read]
executor = "archive"
run = "read hello.txt"
env = { ARCHIVE = "print:hello.txt" }
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let lines = run.stream_lines("read", "stdout");
    let content: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("content "))
        .collect();
    assert_eq!(
        content,
        ["hello from the workspace", "second line"],
        "{run}"
    );
    let entries: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("entry "))
        .collect();
    assert_eq!(
        entries,
        [
            ".gitignore",
            ".hmignore",
            "hello.txt",
            "hm.toml",
            "src",
            "src/lib.rs"
        ],
        "ignored files, .git and .hm stay out; {run}"
    );
}

#[test]
fn no_memfd_is_left_in_a_plugin_that_answered_nor_in_hm_after_the_last_step() {
    let project = project(&format!(
        r#"
[steps.read]
executor = "archive"
run = "read hello.txt"
env = {{ ARCHIVE = "print:hello.txt" }}

[steps.hold]
run = '''{wait}'''
needs = ["read"]
"#,
        wait = sh_wait_for_file("release"),
    ));
    let mut command = project.command(&["run", "--format", "json"]);
    command.env("FIXTURE_HOLD_EXIT", project.path("exit-now"));
    let mut hm = Hm::spawn(command);
    let fixture = plugin_pid(&mut hm, "fixture-archive");
    hm.wait_for_event("step_end of read", WAIT, step_is("step_end", "read"));
    let shell = plugin_pid(&mut hm, "shell");
    hm.wait_for_event("step_start of hold", WAIT, step_is("step_start", "hold"));

    // The run is alive and the archive was built. The plugin that read it answered: it holds
    // no descriptor and no mapping. hm holds its one descriptor (no copies), maps nothing.
    assert_eq!(memfds(fixture), (vec![], vec![]), "plugin {fixture}");
    assert_eq!(memfds(shell), (vec![], vec![]), "plugin {shell}");
    let (fds, maps) = memfds(hm.pid());
    assert_eq!(fds.len(), 1, "hm holds exactly its archive: {fds:?}");
    assert!(fds[0].contains(ARCHIVE_MEMFD), "{fds:?}");
    assert!(maps.is_empty(), "hm maps nothing: {maps:?}");

    // The last step ends; the run is still alive (the fixture holds its exit), and hm has
    // dropped the archive.
    touch(&project.path("release"));
    hm.wait_for_event("step_end of hold", WAIT, step_is("step_end", "hold"));
    wait_until_no_memfd(hm.pid());
    assert!(alive(hm.pid()), "the run is still going");
    assert!(alive(fixture), "the fixture holds the run open");
    assert_eq!(memfds(fixture), (vec![], vec![]));

    touch(&project.path("exit-now"));
    let run = hm.finish(WAIT).into_run();
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run.stream_lines("read", "stdout")
            .contains(&"content hello from the workspace"),
        "{run}"
    );
}

#[test]
fn a_plugin_that_crashes_holding_the_archive_leaves_no_memfd_behind() {
    let project = project(
        r#"
[steps.crash]
executor = "archive"
run = "crash"
env = { ARCHIVE = "crash" }
allow_failure = true

[steps.hold]
executor = "archive"
run = "hold"
env = { ARCHIVE = "wait:release" }
needs = ["crash"]
"#,
    );
    let mut command = project.command(&["run", "--format", "json"]);
    command.env("FIXTURE_HOLD_EXIT", project.path("exit-now"));
    let mut hm = Hm::spawn(command);
    let crashed = plugin_pid(&mut hm, "fixture-archive");
    let end = hm.wait_for_event("step_end of crash", WAIT, step_is("step_end", "crash"));
    assert_eq!(end["cause"], "executor_crash", "{end}");
    // The restarted instance runs `hold`.
    let restarted = plugin_pid(&mut hm, "fixture-archive");
    assert_ne!(crashed, restarted);
    hm.wait_for_event("step_start of hold", WAIT, step_is("step_start", "hold"));

    assert!(
        !alive(crashed),
        "the crashed plugin is gone, and its mapping with it"
    );
    assert_eq!(memfds(restarted), (vec![], vec![]));
    let (fds, maps) = memfds(hm.pid());
    assert_eq!(fds.len(), 1, "no copy of the archive leaked in hm: {fds:?}");
    assert!(
        fds[0].contains(ARCHIVE_MEMFD) && maps.is_empty(),
        "{fds:?} {maps:?}"
    );

    touch(&project.path("release"));
    hm.wait_for_event("step_end of hold", WAIT, step_is("step_end", "hold"));
    wait_until_no_memfd(hm.pid());
    assert!(
        alive(hm.pid()) && alive(restarted),
        "the run is still going"
    );

    touch(&project.path("exit-now"));
    let run = hm.finish(WAIT).into_run();
    assert_eq!(run.code(), 0, "crash is allowed to fail; {run}");
    assert!(
        run.stream_lines("crash", "stdout")
            .iter()
            .any(|l| l.starts_with("read ")),
        "the fixture read the archive before it died; {run}"
    );
    assert_eq!(run.status("hold"), "passed", "{run}");
}
