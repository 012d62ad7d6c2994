//! `hm doctor`: what it says about the Docker daemon (asked for its version, not just looked
//! for) and about the hooks and subcommands of the installed plugins.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread::JoinHandle;

use hm_tests::{Output, Project};

/// A stand-in for the Docker daemon on a unix socket: answers one request with `response`
/// and returns the request it got.
fn fake_daemon(socket: &Path, response: &'static str) -> JoinHandle<String> {
    let listener = UnixListener::bind(socket).expect("bind the fake daemon");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(response.as_bytes());
        String::from_utf8_lossy(&request).into_owned()
    })
}

fn doctor(project: &Project, docker_host: &str) -> Output {
    let mut cmd = project.command(&["doctor"]);
    cmd.env("DOCKER_HOST", docker_host);
    hm_tests::Hm::spawn(cmd).finish(hm_tests::RUN_DEADLINE)
}

#[test]
fn doctor_asks_the_docker_daemon_for_its_version() {
    let project = Project::new("[steps.a]\nrun = \"true\"\n");
    let socket = project.path("docker.sock");
    let daemon = fake_daemon(
        &socket,
        "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
         {\"Version\":\"99.1\",\"ApiVersion\":\"1.99\"}",
    );
    let out = doctor(&project, &format!("unix://{}", socket.display()));
    let request = daemon.join().expect("the fake daemon");
    assert!(
        request.starts_with("GET /version HTTP/1.0\r\n"),
        "{request}"
    );
    let line = format!(
        "docker: Docker Engine 99.1 (API 1.99) at {}",
        socket.display()
    );
    assert!(out.stdout.contains(&line), "{}", out.stdout);
}

#[test]
fn a_daemon_that_does_not_answer_well_is_reported_with_what_to_do() {
    let project = Project::new("[steps.a]\nrun = \"true\"\n");
    let socket = project.path("docker.sock");
    let daemon = fake_daemon(&socket, "HTTP/1.0 500 Internal Server Error\r\n\r\n");
    let out = doctor(&project, &format!("unix://{}", socket.display()));
    daemon.join().expect("the fake daemon");
    assert!(
        out.stdout
            .contains("does not answer (it answered `HTTP/1.0 500 Internal Server Error`)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("start dockerd"), "{}", out.stdout);
    let gone = project.path("gone.sock");
    let out = doctor(&project, &format!("unix://{}", gone.display()));
    assert!(
        out.stdout
            .contains(&format!("docker: no socket at {}", gone.display())),
        "{}",
        out.stdout
    );
}

#[test]
fn doctor_lists_the_hooks_and_subcommands_of_installed_plugins() {
    let project = Project::new("[steps.a]\nrun = \"true\"\n");
    for exe in [
        env!("CARGO_BIN_EXE_hm-fixture-hook"),
        env!("CARGO_BIN_EXE_hm-fixture-greet"),
    ] {
        let out = project.hm(&["plugin", "install", "--project", exe]);
        assert_eq!(out.code(), 0, "{}", out.stderr);
    }
    let out = project.hm(&["doctor"]);
    assert!(
        out.stdout
            .contains("hooks: gatekeeper (step_start, step_log, step_end, build_end)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("subcommands: hm greet"),
        "{}",
        out.stdout
    );
}
