//! The swarm fixture (`hm_tests::swarm`) against the real thing: several dockerds in network
//! namespaces joined into a swarm, a service placed on a chosen worker, a node cut off, and
//! nothing left after each swarm is dropped (or after its test process was killed). Without
//! root, Docker or namespaces the tests say they were skipped, and fail instead under
//! `HM_REQUIRE_SWARM=1` (set by `.ci/run`).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hm_tests::Value;
use hm_tests::docker::{DockerFixture, docker};
use hm_tests::swarm::{self, Footprint, Swarm, assert_nothing_left};

/// How long a task may take to reach a state, or a node to be marked down; each takes a few
/// seconds.
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// The host's daemon must never join a swarm (the fixture's nodes are daemons of their own).
fn assert_host_daemon_outside_any_swarm() {
    let out = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "inactive",
        "the host's daemon is in a swarm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The task of one-replica service `service`, as `docker inspect` shows it, once `done` says
/// it is where the test wants it.
fn wait_for_task(swarm: &Swarm, service: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = swarm.docker_ok(&["service", "ps", "--quiet", "--no-trunc", service]);
        let task = match ids.lines().collect::<Vec<_>>()[..] {
            [id] => {
                let json = swarm.docker_ok(&["inspect", "--type", "task", id]);
                let parsed: Value = serde_json::from_str(&json).expect("docker inspect is JSON");
                Some(parsed[0].clone())
            }
            _ => None,
        };
        if let Some(task) = task.filter(|t| done(t)) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "the task of {service} did not get there within {WAIT:?}: {}",
            swarm.docker_ok(&["service", "ps", "--no-trunc", service])
        );
        std::thread::sleep(POLL);
    }
}

fn state(task: &Value) -> &str {
    task["Status"]["State"].as_str().unwrap_or_default()
}

#[test]
fn three_nodes_come_up_ready_with_one_manager_and_the_image_on_each() {
    let test = "three_nodes_come_up_ready_with_one_manager_and_the_image_on_each";
    let Some(image) = DockerFixture::new("swarm-ready") else {
        return;
    };
    assert_host_daemon_outside_any_swarm();
    let Some(swarm) = Swarm::start(test, 3) else {
        return;
    };
    swarm.load_image(image.image());

    let listed = swarm.docker_ok(&[
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}} {{.ManagerStatus}}",
    ]);
    let mut nodes: Vec<&str> = listed.lines().map(str::trim_end).collect();
    nodes.sort_unstable();
    assert_eq!(
        nodes,
        ["node-0 Ready Leader", "node-1 Ready", "node-2 Ready"],
        "{listed}"
    );
    let image_id = String::from_utf8_lossy(
        &docker(&["image", "inspect", "--format", "{{.Id}}", image.image()]).stdout,
    )
    .trim()
    .to_owned();
    for node in swarm.nodes() {
        // Each node is a daemon of its own: its own name, address and swarm membership.
        let info = node.docker_ok(&[
            "info",
            "--format",
            "{{.Name}} {{.Swarm.NodeAddr}} {{.Swarm.LocalNodeState}}",
        ]);
        assert_eq!(
            info,
            format!("{} {} active", node.name(), node.address()),
            "{node:?}"
        );
        let loaded = node.docker_ok(&["image", "inspect", "--format", "{{.Id}}", image.image()]);
        assert_eq!(loaded, image_id, "the image on {}", node.name());
    }
    assert_host_daemon_outside_any_swarm();

    let footprint = swarm.footprint();
    drop(swarm);
    assert_nothing_left(&footprint);
}

/// Answers one HTTP request on `listener` with `body`; returns the request's first line.
fn serve_once(listener: TcpListener, body: &str) -> String {
    let (mut stream, _) = listener.accept().expect("a task connects to the host");
    stream
        .set_read_timeout(Some(WAIT))
        .expect("set a read timeout");
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut stream, answer.as_bytes()).expect("answer the task");
    String::from_utf8_lossy(&request)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `docker service logs --raw SERVICE` (stdout and stderr lines), once it has every line of
/// `expected_stdout`: the logs of a task that has just ended may still be on their way.
fn service_logs(
    swarm: &Swarm,
    service: &str,
    expected_stdout: &[&str],
) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = swarm.docker(&["service", "logs", "--raw", service]);
        let lines = |bytes: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let (stdout, stderr) = (lines(&out.stdout), lines(&out.stderr));
        if out.status.success() && stdout.len() >= expected_stdout.len() {
            return (stdout, stderr);
        }
        assert!(
            Instant::now() < deadline,
            "the logs of {service} are not all there within {WAIT:?} ({}): {stdout:?} {stderr:?}",
            out.status
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn a_one_replica_service_runs_on_the_chosen_worker_to_exit_code_0_with_readable_logs() {
    let test = "a_one_replica_service_runs_on_the_chosen_worker_to_exit_code_0_with_readable_logs";
    let Some(image) = DockerFixture::new("swarm-service") else {
        return;
    };
    let Some(swarm) = Swarm::start(test, 3) else {
        return;
    };
    swarm.load_image(image.image());
    let chosen = swarm.node(2);
    swarm.label_node(chosen, "hm.test", "chosen");
    // The host serves on its address on the swarm's network, as a swarm executor will serve
    // a step's workspace.
    let listener =
        TcpListener::bind((swarm.host_address(), 0)).expect("listen on the host's address");
    let port = listener
        .local_addr()
        .expect("the listener's address")
        .port();
    let server = std::thread::spawn(move || serve_once(listener, "served by the host"));

    let service = "hm-swarm-test-service";
    let script = format!(
        "echo hello from the chosen worker; cat /generation; echo; echo to-stderr >&2; \
         wget -q -O - http://{}:{port}/workspace",
        swarm.host_address()
    );
    // Through DOCKER_HOST, as a swarm executor's users would point the docker CLI at it.
    let created = Command::new("docker")
        .env("DOCKER_HOST", swarm.docker_host())
        .args([
            "service",
            "create",
            "--detach",
            "--name",
            service,
            "--replicas",
            "1",
            "--restart-condition",
            "none",
            "--endpoint-mode",
            "dnsrr",
            "--constraint",
            &format!("node.hostname=={}", chosen.name()),
            "--constraint",
            "node.labels.hm.test==chosen",
            image.image(),
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run docker service create");
    assert!(
        created.status.success(),
        "docker service create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let task = wait_for_task(&swarm, service, |t| {
        !matches!(
            state(t),
            "new"
                | "pending"
                | "assigned"
                | "accepted"
                | "preparing"
                | "ready"
                | "starting"
                | "running"
        )
    });
    assert_eq!(state(&task), "complete", "{task:#}");
    assert_eq!(task["Status"]["ContainerStatus"]["ExitCode"], 0, "{task:#}");
    let chosen_id = swarm.docker_ok(&["node", "inspect", "--format", "{{.ID}}", chosen.name()]);
    assert_eq!(task["NodeID"], chosen_id.as_str(), "{task:#}");
    // Its container is on the chosen node's own daemon, and on no other.
    for node in swarm.nodes() {
        let containers = node.docker_ok(&[
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ]);
        assert_eq!(
            containers.lines().count(),
            usize::from(node.name() == chosen.name()),
            "containers of {service} on {}: {containers:?}",
            node.name()
        );
    }
    assert_eq!(
        server.join().expect("the server thread"),
        "GET /workspace HTTP/1.1"
    );

    let expected = [
        "hello from the chosen worker",
        "first",
        "served by the host",
    ];
    let (stdout, stderr) = service_logs(&swarm, service, &expected);
    assert_eq!(stdout, expected);
    assert!(
        stderr.iter().any(|l| l == "to-stderr"),
        "stderr of {service}: {stderr:?}"
    );

    let footprint = swarm.footprint();
    drop(swarm);
    assert_nothing_left(&footprint);
}

#[test]
fn a_node_cut_off_is_marked_down_while_its_task_still_shows_running() {
    let test = "a_node_cut_off_is_marked_down_while_its_task_still_shows_running";
    let Some(image) = DockerFixture::new("swarm-cut") else {
        return;
    };
    let Some(swarm) = Swarm::start(test, 2) else {
        return;
    };
    swarm.load_image(image.image());
    let worker = swarm.node(1);
    let service = "hm-swarm-test-cut";
    swarm.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        service,
        "--restart-condition",
        "none",
        "--endpoint-mode",
        "dnsrr",
        "--constraint",
        &format!("node.hostname=={}", worker.name()),
        image.image(),
        "sleep",
        "600",
    ]);
    let running = wait_for_task(&swarm, service, |t| state(t) == "running");

    let cut = Instant::now();
    swarm.cut_link(worker);
    let node_state = |swarm: &Swarm| {
        let nodes = swarm.node_list();
        let node = nodes
            .iter()
            .find(|n| n["ID"] == running["NodeID"])
            .cloned()
            .unwrap_or_default();
        node["Status"]["State"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    while node_state(&swarm) != "down" {
        assert!(
            cut.elapsed() < WAIT,
            "{} is still {} {WAIT:?} after its link was cut",
            worker.name(),
            node_state(&swarm)
        );
        std::thread::sleep(POLL);
    }
    eprintln!(
        "{test}: {} marked down {:.1?} after its link was cut",
        worker.name(),
        cut.elapsed()
    );
    // The manager cannot hear from the node, so its task stays as last reported.
    let task = wait_for_task(&swarm, service, |_| true);
    assert_eq!(state(&task), "running", "{task:#}");
    assert_eq!(task["ID"], running["ID"], "{task:#}");
    // The node itself still runs it.
    let on_worker = worker.docker_ok(&[
        "ps",
        "--quiet",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]);
    assert_eq!(on_worker.lines().count(), 1, "{on_worker:?}");

    let restored = Instant::now();
    swarm.restore_link(worker);
    while node_state(&swarm) != "ready" {
        assert!(
            restored.elapsed() < WAIT,
            "{} is still {} {WAIT:?} after its link was restored",
            worker.name(),
            node_state(&swarm)
        );
        std::thread::sleep(POLL);
    }

    // A running task: its container's processes and its shim are removed too.
    let footprint = swarm.footprint();
    drop(swarm);
    assert_nothing_left(&footprint);
}

/// Set in the test process that `a_swarm_left_by_a_killed_test_process_...` starts and kills.
const LEAVE_BEHIND_VAR: &str = "HM_SWARM_TEST_LEAVE_BEHIND";
/// How that process says which swarm it started.
const LEFT_BEHIND_LINE: &str = "swarm left behind: ";

/// A child process killed when dropped, so that a failing test leaves none.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_swarm_left_by_a_killed_test_process_is_removed_by_the_next_start() {
    let test = "a_swarm_left_by_a_killed_test_process_is_removed_by_the_next_start";
    if std::env::var_os(LEAVE_BEHIND_VAR).is_some() {
        // The process to be killed: it starts a swarm, says which, and waits for its end.
        let Some(swarm) = Swarm::start(test, 1) else {
            return;
        };
        println!("{LEFT_BEHIND_LINE}{}", swarm.tag());
        loop {
            std::thread::park();
        }
    }
    if let Some(reason) = swarm::unavailable_reason() {
        swarm::skip(test, &reason);
        return;
    }
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().expect("the test executable"))
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(LEAVE_BEHIND_VAR, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run this test in a process of its own"),
    );
    let stdout = child.0.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // After libtest's `test NAME ... ` on the same line.
            if let Some((_, tag)) = line.split_once(LEFT_BEHIND_LINE) {
                let _ = sender.send(tag.to_owned());
            }
        }
    });
    let tag = receiver
        .recv_timeout(WAIT)
        .expect("the child process starts a swarm");
    let stale = Footprint::of_tag(&tag).expect("the child prints a swarm's tag");
    assert!(
        !stale.leftovers().is_empty(),
        "the swarm {tag} of the child process is running"
    );
    drop(child);

    let Some(swarm) = Swarm::start(test, 1) else {
        return;
    };
    assert_nothing_left(&stale);
    let footprint = swarm.footprint();
    drop(swarm);
    assert_nothing_left(&footprint);
}
