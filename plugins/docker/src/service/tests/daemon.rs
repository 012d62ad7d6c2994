//! Services against the real daemon, driven as hm drives them (start, then stop) through the
//! plugin's own state: up once healthy and reachable by name on the run's network and on the
//! loopback; a service that never gets healthy, or exits, fails with its last lines and leaves
//! nothing; concurrent starts share one network, which goes with the last stop; a stop during
//! a start cancels it; the sweep removes the network of a dead run.
//!
//! Each test imports its own image from a static busybox (nothing can be pulled here) and runs
//! as a run of its own, whose id ends in this process's pid so that the sweep of another test
//! never takes its containers for orphans. Without a daemon or busybox the tests say they were
//! skipped, and fail instead under `HM_REQUIRE_DOCKER=1` (all of which `hm_tests::docker` does).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hm_sdk::{HealthCheck, InitInfo, ServiceError, ServiceRequest, Services};
use hm_tests::docker::{DockerFixture, containers_of_run, docker, networks_of_run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::executor::State;
use crate::service::DockerServices;

/// How long a test waits for what should take a moment.
const WAIT: Duration = Duration::from_secs(30);

/// A test's image, plugin state and run; dropping it removes whatever the run left, then the
/// image.
struct Fixture {
    docker: DockerFixture,
    run_id: String,
    services: DockerServices,
}

impl Fixture {
    fn new(test: &str) -> Option<Self> {
        let docker = DockerFixture::new(test)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run_id = format!("{test}{nanos:x}-{:x}", std::process::id());
        docker.watch(&run_id);
        let state = std::sync::Arc::new(State::default());
        let info = InitInfo {
            config: serde_json::Value::Null,
            pipeline: "services".into(),
            run_id: run_id.clone(),
        };
        let fixture = Self {
            docker,
            run_id,
            services: DockerServices {
                state: state.clone(),
            },
        };
        state.start(&info).expect("the daemon answers");
        Some(fixture)
    }

    fn service(&self, name: &str, script: &str) -> ServiceRequest {
        ServiceRequest {
            name: name.to_owned(),
            image: self.image().to_owned(),
            env: vec![("GREETING".into(), format!("hello-from-{name}"))],
            entrypoint: None,
            command: Some(vec!["sh".into(), "-c".into(), script.into()]),
            ports: Vec::new(),
            health: None,
            with: serde_json::json!({ "pull": "never" }),
            limits: Default::default(),
            grace: Duration::from_secs(1),
        }
    }

    fn image(&self) -> &str {
        self.docker.image()
    }

    fn containers(&self) -> Vec<String> {
        containers_of_run(&self.run_id)
    }

    fn networks(&self) -> Vec<String> {
        networks_of_run(&self.run_id)
    }

    fn assert_nothing_left(&self) {
        assert_eq!(self.containers(), Vec::<String>::new(), "containers left");
        assert_eq!(self.networks(), Vec::<String>::new(), "networks left");
    }

    async fn network(&self) -> Option<String> {
        self.services.state.services.network().await
    }
}

/// httpd serving `$GREETING` on 8080, healthy once it answers.
const WEB: &str =
    "mkdir -p /www && echo $GREETING > /www/index.html && exec httpd -f -p 8080 -h /www";

fn health(run: &str, interval: Duration, retries: u32) -> Option<HealthCheck> {
    Some(HealthCheck {
        command: vec!["sh".into(), "-c".into(), run.into()],
        interval,
        timeout: Duration::from_secs(5),
        retries,
    })
}

fn web(fixture: &Fixture, name: &str) -> ServiceRequest {
    ServiceRequest {
        ports: vec![8080],
        health: health(
            "wget -q -O- http://127.0.0.1:8080/",
            Duration::from_millis(100),
            100,
        ),
        ..fixture.service(name, WEB)
    }
}

/// `GET /` from the host: the body.
async fn get(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the published port");
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .unwrap_or_default()
}

fn failure(result: Result<Vec<hm_sdk::PublishedPort>, ServiceError>) -> (String, Vec<String>) {
    match result {
        Err(ServiceError::Failed { message, log }) => (message, log),
        other => panic!("expected the service to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn a_healthy_service_is_reachable_by_name_and_on_the_loopback_until_stopped() {
    let Some(fixture) = Fixture::new("healthy") else {
        return;
    };
    let ports = tokio::time::timeout(WAIT, fixture.services.start(web(&fixture, "web")))
        .await
        .expect("the service is up in time")
        .expect("the service is up");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!((ports[0].port, ports[0].host.as_str()), (8080, "127.0.0.1"));
    assert_eq!(get(ports[0].host_port).await, "hello-from-web");

    // A container on the run's network reaches it by name, as a docker step does.
    let network = fixture.network().await.expect("the run has a network");
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        &network,
        fixture.image(),
        "wget",
        "-q",
        "-O-",
        "http://web:8080/",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-web",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels = docker(&["network", "inspect", "-f", "{{json .Labels}}", &network]);
    let labels = String::from_utf8_lossy(&labels.stdout);
    assert!(
        labels.contains(&fixture.run_id) && labels.contains("hm.host"),
        "{labels}"
    );

    fixture.services.stop("web".into()).await.expect("stopped");
    fixture.assert_nothing_left();
    assert_eq!(fixture.network().await, None);
    // Stopping it again, or a service never started, is fine.
    fixture.services.stop("web".into()).await.expect("gone");
    fixture
        .services
        .stop("other".into())
        .await
        .expect("never started");
}

#[tokio::test]
async fn a_service_that_never_gets_healthy_fails_with_its_last_lines_and_leaves_nothing() {
    let Some(fixture) = Fixture::new("unhealthy") else {
        return;
    };
    let script = "for i in $(seq 1 30); do echo line $i; done; exec sleep 1000";
    let service = ServiceRequest {
        health: health("exit 1", Duration::from_millis(50), 3),
        ..fixture.service("db", script)
    };
    let started = tokio::time::timeout(WAIT, fixture.services.start(service))
        .await
        .expect("the start ends in time");
    let (message, log) = failure(started);
    assert_eq!(
        message,
        r#"service "db" did not become healthy after 3 tries 50ms apart (last: exit code 1)"#
    );
    let last: Vec<String> = (11..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(log, last);
    fixture.assert_nothing_left();
}

#[tokio::test]
async fn a_service_that_exits_fails_at_once_with_its_exit_code() {
    let Some(fixture) = Fixture::new("exits") else {
        return;
    };
    let service = ServiceRequest {
        // Far more patience than the test has: the exit must end the wait.
        health: health("exit 1", Duration::from_secs(1), 1000),
        // Its last words on stderr: the log holds both streams.
        ..fixture.service("db", "echo $GREETING >&2; sleep 0.3; exit 3")
    };
    let started = tokio::time::timeout(WAIT, fixture.services.start(service))
        .await
        .expect("the exit ends the wait");
    let (message, log) = failure(started);
    assert_eq!(
        message,
        r#"service "db" exited with code 3 before it became healthy"#
    );
    assert_eq!(log, ["hello-from-db"]);
    fixture.assert_nothing_left();
}

#[tokio::test]
async fn a_missing_image_that_may_not_be_pulled_is_an_image_failure() {
    let Some(fixture) = Fixture::new("noimage") else {
        return;
    };
    let service = ServiceRequest {
        image: format!("{}-missing", fixture.image()),
        ..fixture.service("db", "true")
    };
    match fixture.services.start(service).await {
        Err(ServiceError::Image(message)) => {
            assert!(message.contains("with.pull = \"never\""), "{message}")
        }
        other => panic!("expected an image failure, got {other:?}"),
    }
    fixture.assert_nothing_left();
}

#[tokio::test]
async fn concurrent_services_share_one_network_which_goes_with_the_last() {
    let Some(fixture) = Fixture::new("shared") else {
        return;
    };
    let (a, b) = tokio::time::timeout(
        WAIT,
        futures_util::future::join(
            fixture.services.start(web(&fixture, "a")),
            fixture.services.start(web(&fixture, "b")),
        ),
    )
    .await
    .expect("both are up in time");
    let (a, b) = (a.expect("a is up"), b.expect("b is up"));
    assert_ne!(a[0].host_port, b[0].host_port);
    assert_eq!(fixture.networks().len(), 1, "one network for the run");
    assert_eq!(fixture.containers().len(), 2);

    fixture.services.stop("a".into()).await.expect("a stopped");
    assert_eq!(fixture.networks().len(), 1, "b still needs the network");
    assert_eq!(get(b[0].host_port).await, "hello-from-b");
    fixture.services.stop("b".into()).await.expect("b stopped");
    fixture.assert_nothing_left();

    // A start after the last stop makes the network again.
    let again = fixture.services.start(web(&fixture, "a")).await;
    assert_eq!(again.expect("a is up again").len(), 1);
    assert_eq!(fixture.networks().len(), 1);
    fixture.services.stop("a".into()).await.expect("a stopped");
    fixture.assert_nothing_left();
}

#[tokio::test]
async fn a_stop_during_the_start_ends_it_and_removes_the_service() {
    let Some(fixture) = Fixture::new("interrupted") else {
        return;
    };
    let service = ServiceRequest {
        health: health("exit 1", Duration::from_millis(100), 10_000),
        ..fixture.service("slow", "exec sleep 1000")
    };
    let start = fixture.services.start(service);
    let stop = async {
        // Once its container exists, the service is surely starting.
        let deadline = tokio::time::Instant::now() + WAIT;
        while fixture.containers().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no container");
            tokio::task::yield_now().await;
        }
        fixture.services.stop("slow".into()).await
    };
    let (started, stopped) = tokio::time::timeout(WAIT, futures_util::future::join(start, stop))
        .await
        .expect("the stop ends the start in time");
    stopped.expect("stopped");
    let (message, _) = failure(started);
    assert_eq!(message, r#"service "slow" was stopped before it was up"#);
    fixture.assert_nothing_left();
}

#[tokio::test]
async fn the_sweep_removes_the_network_of_a_dead_run() {
    let Some(fixture) = Fixture::new("sweep") else {
        return;
    };
    let owner = crate::owner::Owner::current(&fixture.run_id);
    let mut labels = owner.run_labels();
    // A plugin process that is gone: this one, started at another time.
    let me = owner.plugin.expect("this process has a start time");
    labels.insert(
        crate::owner::PLUGIN.to_owned(),
        format!("{}:{}", me.pid, me.start + 1),
    );
    let mut args = vec!["network".to_owned(), "create".to_owned()];
    for (key, value) in &labels {
        args.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    args.push(format!("hm-{}-dead", fixture.run_id));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let created = docker(&args);
    assert!(created.status.success(), "{created:?}");
    assert_eq!(fixture.networks().len(), 1);

    let ready = fixture.services.state.ready().await.expect("connected");
    let swept = crate::sweep::orphans(&ready.docker, &owner.host)
        .await
        .expect("the sweep ran");
    assert!(swept.networks >= 1, "{swept:?}");
    assert_eq!(fixture.networks(), Vec::<String>::new());
}
