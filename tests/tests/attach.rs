//! Attach mode (`docs/protocol.md`): `hm run --attach NAME=SOCKET` waits for the plugin to be
//! started by hand with `HM_IPC_SOCKET=SOCKET` instead of starting it, here the built-in shell
//! plugin (`hm __plugin shell`) started by the test.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use hm_tests::{Project, RUN_DEADLINE, hm_bin};
use nix::sys::signal::Signal;

const WAITING: &str = "hm: waiting for plugin shell: start it with HM_IPC_SOCKET=";

fn project() -> Project {
    Project::new("[steps.hello]\nrun = \"echo attached hello; echo to stderr >&2\"\n")
}

/// The plugin as a developer would start it: by hand, from hm's own binary.
fn start_shell_plugin(socket: &std::path::Path) -> std::process::Child {
    Command::new(hm_bin())
        .args(["__plugin", "shell"])
        .env("HM_IPC_SOCKET", socket)
        .env_remove("HM_IPC_FD")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the shell plugin by hand")
}

#[test]
fn an_attached_plugin_runs_the_steps_and_the_socket_goes_away() {
    let project = project();
    let dir = project.path("debug");
    let socket = dir.join("shell.sock");
    let arg = format!("shell={}", socket.display());
    let mut hm = project.spawn_run(&["--attach", &arg]);
    let said = hm.wait_for_stderr(WAITING, RUN_DEADLINE);
    assert!(said.contains(&socket.display().to_string()), "{said}");
    let mode = std::fs::metadata(&dir)
        .expect("the socket's directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let mut plugin = start_shell_plugin(&socket);
    let run = hm.finish(RUN_DEADLINE).into_run();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(run.status("hello"), "passed");
    assert_eq!(run.stream_lines("hello", "stdout"), ["attached hello"]);
    assert_eq!(run.stream_lines("hello", "stderr"), ["to stderr"]);
    let start = &run.of_kind("plugin_start")[0];
    assert_eq!(
        start["pid"],
        plugin.id(),
        "the plugin is the process the test started"
    );
    // `Shutdown` at the end of the run: the plugin exits by itself, cleanly, and hm says so
    // (it has no exit status of a process it did not start: the end of the connection is it).
    let status = plugin.wait().expect("wait for the plugin");
    assert!(status.success(), "{status:?}");
    let exits = run.of_kind("plugin_exit");
    assert_eq!(exits.len(), 1, "{}", run.stderr());
    assert_eq!(exits[0]["clean"], true, "{:#}", exits[0]);
    assert_eq!(exits[0]["cause"], hm_tests::Value::Null, "{:#}", exits[0]);
    hm_tests::schema::assert_valid_events(&run.output.stdout);
    assert!(
        !socket.exists() && !dir.exists(),
        "hm removes what it created"
    );
}

#[test]
fn ctrl_c_while_waiting_for_an_attach_ends_the_run() {
    let project = project();
    let socket = project.path("debug/shell.sock");
    let arg = format!("shell={}", socket.display());
    let mut hm = project.spawn_run(&["--attach", &arg]);
    hm.wait_for_stderr(WAITING, RUN_DEADLINE);
    hm.signal(Signal::SIGINT);
    let run = hm.finish(RUN_DEADLINE).into_run();
    assert_eq!(run.code(), 130, "{}", run.stderr());
    assert_eq!(run.status("hello"), "cancelled", "{}", run.stderr());
    assert!(!socket.exists());
}

#[test]
fn attach_must_name_a_plugin_the_run_uses() {
    let project = project();
    let socket = project.path("debug/docker.sock");
    let out = project.hm(&["run", "--attach", &format!("docker={}", socket.display())]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("this run does not use plugin `docker`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("it uses: shell"), "{}", out.stderr);
    let out = project.hm(&["run", "--attach", "shell"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("write NAME=SOCKET"), "{}", out.stderr);
}

#[test]
fn a_socket_where_others_could_reach_it_is_refused() {
    let project = project();
    let shared = project.path("shared");
    std::fs::create_dir(&shared).expect("create the directory");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let arg = format!("shell={}", shared.join("shell.sock").display());
    let out = project.hm(&["run", "--attach", &arg]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("open to others (mode 755"),
        "{}",
        out.stderr
    );
    assert!(!project.exists("hello-ran"));
    // A socket left behind by a killed hm is named, not silently replaced.
    let private = project.path("private");
    std::fs::create_dir(&private).expect("create the directory");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(private.join("shell.sock"), "").expect("a stale file");
    let arg = format!("shell={}", private.join("shell.sock").display());
    let out = project.hm(&["run", "--attach", &arg]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
}

#[test]
fn a_plugin_started_without_hm_says_how_to_attach() {
    let out = Command::new(hm_bin())
        .args(["__plugin", "shell"])
        .env_remove("HM_IPC_FD")
        .env_remove("HM_IPC_SOCKET")
        .output()
        .expect("run the plugin");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hm run --attach NAME=SOCKET"), "{stderr}");
}
