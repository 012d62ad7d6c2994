//! Services (`[services.NAME]`) through `hm`, against the real daemon: a service is up before
//! the steps that list it start, a docker step reaches it by name on the run's network and a
//! shell step on the host's loopback; one that never gets healthy fails its steps with cause
//! `service` and its last lines; a missing image fails them with cause `image`, as it does a
//! docker step; and after every run no container and no network of it is left. Each test
//! builds its own tiny image (see `hm_tests::docker`); without a daemon the tests say they
//! were skipped, and fail instead under `HM_REQUIRE_DOCKER=1`.
//!
//! The services here trap SIGTERM: busybox's `httpd` and `sleep` run as the container's first
//! process ignore it, and every run would wait out the stop's grace (10 s) for the SIGKILL.

use std::time::{Duration, Instant};

use hm_tests::docker::{BUSYBOX, DockerFixture, containers_of_run, networks_of_run};
use hm_tests::{Project, Run, Signal, Value};

const WAIT: Duration = Duration::from_secs(60);

fn run_id(events: &[Value]) -> String {
    events
        .first()
        .and_then(|e| e["run_id"].as_str())
        .expect("every event has a run_id")
        .to_owned()
}

/// Runs `hm run --format json ARGS` to the end and has `fixture` clean up after its run.
fn run(project: &Project, fixture: &DockerFixture, args: &[&str]) -> Run {
    let run = project.run(args);
    fixture.watch(&run_id(&run.events));
    run
}

fn assert_nothing_left_of(run: &Run) {
    let id = run_id(&run.events);
    let containers = containers_of_run(&id);
    assert!(
        containers.is_empty(),
        "containers of run {id} are left: {containers:?} (docker ps -a --filter label=hm.run={id})"
    );
    let networks = networks_of_run(&id);
    assert!(
        networks.is_empty(),
        "networks of run {id} are left: {networks:?} (docker network ls --filter label=hm.run={id})"
    );
}

/// `[services.web]`: busybox httpd serving `hello-from-service <token>` on 8080, healthy once it
/// answers; the token is drawn when the service starts, so two steps that print the same one
/// reached the same start of it.
fn web_service(image: &str) -> String {
    format!(
        r#"
[services.web]
image = "{image}"
command = ["sh", "-c", "trap 'exit 0' TERM; mkdir -p /www && echo hello-from-service $RANDOM$RANDOM > /www/index.html; httpd -f -p 8080 -h /www & wait"]
ports = [8080]
health = {{ run = "wget -q -O- http://127.0.0.1:8080/", interval = "200ms", retries = 50 }}
with = {{ pull = "never" }}
"#
    )
}

#[test]
fn a_docker_step_reaches_a_service_by_name_and_a_shell_step_on_the_loopback() {
    let Some(docker) = DockerFixture::new("service-web") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
{service}
[steps.inside]
image = "{image}"
services = ["web"]
run = "echo $HM_SERVICE_WEB_HOST:$HM_SERVICE_WEB_PORT_8080; wget -q -O- http://web:8080/"

[steps.outside]
services = ["web"]
run = "echo $HM_SERVICE_WEB_HOST; {BUSYBOX} wget -q -O- http://$HM_SERVICE_WEB_HOST:$HM_SERVICE_WEB_PORT_8080/"
"#,
        service = web_service(docker.image()),
        image = docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.status("inside"), "passed", "{run}");
    assert_eq!(run.status("outside"), "passed", "{run}");
    // In the container the variables name the service and its own port.
    let inside = run.stream_lines("inside", "stdout");
    let outside = run.stream_lines("outside", "stdout");
    assert_eq!(inside.first().copied(), Some("web:8080"), "{run}");
    assert_eq!(outside.first().copied(), Some("127.0.0.1"), "{run}");
    // Both reached it at once (healthy before either started), and the same start of it.
    let served = inside.get(1).copied().unwrap_or_default();
    assert!(served.starts_with("hello-from-service "), "{run}");
    assert_eq!(outside.get(1).copied(), Some(served), "started once: {run}");
    run.assert_one_final_step_end_each();
    assert_nothing_left_of(&run);
}

#[test]
fn a_service_goes_with_its_volumes_after_its_last_step() {
    let Some(docker) = DockerFixture::new("service-volume") else {
        return;
    };
    // The image declares a volume, as database images do: each container gets its own.
    let image = format!("{}-volume", docker.image());
    let dockerfile = format!("FROM {}\nVOLUME /data\n", docker.image());
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &image, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut build| {
            use std::io::Write;
            build
                .stdin
                .take()
                .expect("stdin is piped")
                .write_all(dockerfile.as_bytes())?;
            build.wait_with_output()
        })
        .expect("run docker build");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = hm_tests::docker::docker_quiet(&["rmi", "-f", &self.0]);
        }
    }
    let _image = Remove(image.clone());
    assert!(built.status.success(), "docker build: {built:?}");
    let project = Project::new(&format!(
        r#"
[services.db]
image = "{image}"
command = ["sh", "-c", "trap 'exit 0' TERM; echo kept > /data/file; sleep 1000 & wait"]
with = {{ pull = "never" }}

[steps.uses]
services = ["db"]
run = "echo started; while [ ! -e go ]; do sleep 0.05; done"
"#
    ));
    let mut hm = project.spawn_run(&[]);
    let started = hm.wait_for_event("the step's first line", WAIT, |e: &Value| {
        e["kind"] == "step_log" && e["line"] == "started"
    });
    let id = started["run_id"].as_str().expect("run_id").to_owned();
    docker.watch(&id);
    let service = format!("hm-{id}-svc-db");
    let mounts = hm_tests::docker::docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}} {{end}}",
        &service,
    ]);
    let volumes: Vec<String> = String::from_utf8_lossy(&mounts.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(volumes.len(), 1, "the service's /data volume: {mounts:?}");
    std::fs::write(project.path("go"), "").expect("let the step end");
    let run = hm.finish(WAIT).into_run();
    assert_eq!(run.code(), 0, "{run}");
    assert_nothing_left_of(&run);
    let volume = hm_tests::docker::docker(&["volume", "inspect", &volumes[0]]);
    assert!(
        !volume.status.success(),
        "volume {} of the service is left",
        volumes[0]
    );
}

#[test]
fn a_service_that_never_gets_healthy_fails_its_steps_with_its_last_lines() {
    let Some(docker) = DockerFixture::new("service-unhealthy") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[services.db]
image = "{image}"
command = ["sh", "-c", "trap 'exit 0' TERM; echo db is starting; echo no disk >&2; sleep 1000 & wait"]
health = {{ run = "exit 1", interval = "50ms", retries = 3 }}
with = {{ pull = "never" }}

[steps.uses]
services = ["db"]
run = "echo should-not-run"

[steps.docker-uses]
image = "{image}"
services = ["db"]
run = "echo should-not-run"

[steps.other]
run = "echo runs-without-db"
"#,
        image = docker.image()
    ));
    // `-k`: no fail fast, so every step is judged on its own.
    let run = run(&project, &docker, &["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    for step in ["uses", "docker-uses"] {
        let end = run.step_end(step);
        assert_eq!(end["status"], "failed", "{step}: {run}");
        assert_eq!(end["cause"], "service", "{step}: {run}");
        let message = end["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(
                r#"service "db" did not become healthy after 3 tries 50ms apart (last: exit code 1)"#
            ),
            "{step}: {message}; {run}"
        );
        let lines = run.lines(step);
        assert!(!lines.contains(&"should-not-run"), "{step}: {run}");
        for said in ["db is starting", "no disk"] {
            assert!(
                lines.iter().any(|l| l.contains(said)),
                "{step} shows the service's `{said}`: {lines:?}"
            );
        }
    }
    // A step that does not list it passes.
    assert_eq!(run.status("other"), "passed", "{run}");
    assert_nothing_left_of(&run);
}

#[test]
fn kill_9_of_hm_leaves_no_container_and_no_network_of_its_run() {
    let Some(docker) = DockerFixture::new("service-kill9") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
{service}
[steps.long]
image = "{image}"
services = ["web"]
run = "echo started; exec sleep 1000"
"#,
        service = web_service(docker.image()),
        image = docker.image()
    ));
    let mut hm = project.spawn_run(&[]);
    let started = hm.wait_for_event("the step's first line", WAIT, |e: &Value| {
        e["kind"] == "step_log" && e["line"] == "started"
    });
    let id = started["run_id"].as_str().expect("run_id").to_owned();
    docker.watch(&id);
    assert_eq!(
        containers_of_run(&id).len(),
        2,
        "the service and the step run"
    );
    assert_eq!(networks_of_run(&id).len(), 1, "the services' network");
    hm.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    hm.finish(WAIT);
    // The guardian removes them as soon as the kernel is gone, not the next run.
    let deadline = killed_at + Duration::from_secs(5);
    let left = || (containers_of_run(&id), networks_of_run(&id));
    while left() != (vec![], vec![]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left(), (vec![], vec![]), "left 5 s after kill -9 of hm");
}

#[test]
fn ctrl_c_while_a_service_is_starting_gives_it_up_and_leaves_nothing() {
    let Some(docker) = DockerFixture::new("service-ctrl-c") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[services.slow]
image = "{image}"
command = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
health = {{ run = "exit 1", interval = "100ms", retries = 100000 }}
with = {{ pull = "never" }}

[steps.waits]
services = ["slow"]
run = "echo should-not-run"
"#,
        image = docker.image()
    ));
    let mut hm = project.spawn_run(&[]);
    let started = hm.wait_for_event("the run's start", WAIT, |e: &Value| {
        e["kind"] == "build_start"
    });
    let id = started["run_id"].as_str().expect("run_id").to_owned();
    docker.watch(&id);
    // The service's container exists: its start is waiting for a health check that never
    // passes.
    let deadline = Instant::now() + WAIT;
    while containers_of_run(&id).is_empty() {
        assert!(Instant::now() < deadline, "the service was never created");
        std::thread::sleep(Duration::from_millis(20));
    }
    hm.signal(Signal::SIGINT);
    let run = hm.finish(WAIT).into_run();
    assert_eq!(run.code(), 130, "{run}");
    assert_eq!(run.status("waits"), "cancelled", "{run}");
    assert!(!run.lines("waits").contains(&"should-not-run"), "{run}");
    // The plugin gave the start up and removed it itself: hm found nothing left to remove.
    assert!(
        !run.stderr().contains("of this run that its plugins left"),
        "{run}"
    );
    assert_nothing_left_of(&run);
}

#[test]
fn a_missing_image_is_cause_image_for_a_service_and_for_a_docker_step() {
    let Some(docker) = DockerFixture::new("service-noimage") else {
        return;
    };
    let missing = format!("{}-missing", docker.image());
    let project = Project::new(&format!(
        r#"
[services.db]
image = "{missing}"
with = {{ pull = "never" }}

[steps.uses]
services = ["db"]
run = "true"

[steps.container]
image = "{missing}"
with = {{ pull = "never" }}
run = "true"
"#
    ));
    // `-k`: no fail fast, so every step is judged on its own.
    let run = run(&project, &docker, &["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    for step in ["uses", "container"] {
        let end = run.step_end(step);
        assert_eq!(end["status"], "failed", "{step}: {run}");
        assert_eq!(end["cause"], "image", "{step}: {run}");
        let message = end["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&missing) && message.contains(r#"with.pull = "never""#),
            "{step}: {message}; {run}"
        );
    }
    assert_nothing_left_of(&run);
}
