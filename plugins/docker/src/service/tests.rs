//! The pure parts of services: the container's definition, the published ports read back from
//! an inspect, why a service is not up in words, its last lines; then services against the
//! real daemon (`daemon`), which say they were skipped without one.

mod daemon;

use super::*;

fn request(name: &str) -> ServiceRequest {
    ServiceRequest {
        name: name.to_owned(),
        image: "busybox".to_owned(),
        env: vec![("POSTGRES_PASSWORD".into(), "test".into())],
        entrypoint: None,
        command: Some(vec!["httpd".into(), "-f".into()]),
        ports: vec![8080, 5432],
        health: None,
        with: serde_json::Value::Null,
        limits: Default::default(),
        grace: Duration::from_secs(3),
    }
}

fn ready() -> Ready {
    Ready {
        docker: Docker::connect_with_unix(
            crate::daemon::DEFAULT_HOST,
            1,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("a client needs no daemon until it is used"),
        owner: crate::owner::Owner::current("19abc-1"),
    }
}

#[test]
fn a_service_is_on_the_network_by_name_with_its_ports_on_the_loopback() {
    let mut service = request("db");
    service.limits.memory_bytes = Some(64 << 20);
    service.entrypoint = Some(vec!["/bin/sh".into()]);
    let def = definition(&service, &ready(), "net-id");
    assert_eq!(def.image.as_deref(), Some("busybox"));
    assert_eq!(def.hostname.as_deref(), Some("db"));
    assert_eq!(def.entrypoint, Some(vec!["/bin/sh".into()]));
    assert_eq!(def.cmd, Some(vec!["httpd".into(), "-f".into()]));
    assert_eq!(def.env, Some(vec!["POSTGRES_PASSWORD=test".into()]));
    let labels = def.labels.unwrap_or_default();
    assert_eq!(labels[crate::owner::SERVICE], "db");
    assert_eq!(labels[crate::owner::RUN], "19abc-1");
    assert_eq!(
        def.exposed_ports,
        Some(vec!["8080/tcp".to_owned(), "5432/tcp".to_owned()])
    );
    let host = def.host_config.unwrap_or_default();
    assert_eq!(host.network_mode.as_deref(), Some("net-id"));
    assert_eq!(host.memory, Some(64 << 20));
    // The daemon's default log driver: the last lines can be read when it fails.
    assert_eq!(host.log_config, None);
    let bindings = host.port_bindings.unwrap_or_default();
    let binding = bindings["8080/tcp"].clone().unwrap_or_default();
    assert_eq!(
        binding,
        [PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(String::new())
        }]
    );
    let endpoints = def
        .networking_config
        .and_then(|n| n.endpoints_config)
        .unwrap_or_default();
    assert_eq!(endpoints["net-id"].aliases, Some(vec!["db".to_owned()]));
}

#[test]
fn a_service_without_ports_publishes_none_and_keeps_the_images_command() {
    let mut service = request("worker");
    service.ports.clear();
    service.command = None;
    let def = definition(&service, &ready(), "net-id");
    assert_eq!(def.exposed_ports, None);
    assert_eq!(def.cmd, None);
    assert_eq!(def.entrypoint, None);
    assert_eq!(def.host_config.unwrap_or_default().port_bindings, None);
}

fn ports_json(json: serde_json::Value) -> PortMap {
    serde_json::from_value(json).expect("a port map")
}

#[test]
fn published_ports_are_read_from_the_inspect() {
    let map = ports_json(serde_json::json!({
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
        "5432/tcp": [
            {"HostIp": "::1", "HostPort": "40000"},
            {"HostIp": "127.0.0.1", "HostPort": "32769"}
        ],
        "9999/tcp": null
    }));
    assert_eq!(
        published(&[8080, 5432], Some(&map)),
        Ok(vec![
            PublishedPort {
                port: 8080,
                host: "127.0.0.1".into(),
                host_port: 32768
            },
            PublishedPort {
                port: 5432,
                host: "127.0.0.1".into(),
                host_port: 32769
            },
        ])
    );
    assert_eq!(published(&[], None), Ok(Vec::new()));
    let missing = "the daemon did not publish port 9999 on 127.0.0.1";
    assert_eq!(published(&[9999], Some(&map)), Err(missing.into()));
    assert_eq!(
        published(&[7], None),
        Err("the daemon did not publish port 7 on 127.0.0.1".into())
    );
    let unparsable = ports_json(serde_json::json!({
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    }));
    assert!(published(&[80], Some(&unparsable)).is_err());
}

#[test]
fn why_a_service_is_not_up_in_words() {
    let unhealthy = |tries, interval, last: &str| Down::Unhealthy {
        tries,
        interval,
        last: last.to_owned(),
    };
    let cases = [
        (
            unhealthy(30, Duration::from_secs(1), "exit code 1"),
            true,
            r#"service "db" did not become healthy after 30 tries 1s apart (last: exit code 1)"#,
        ),
        (
            unhealthy(50, Duration::from_millis(200), "timed out after 10s"),
            true,
            r#"service "db" did not become healthy after 50 tries 200ms apart (last: timed out after 10s)"#,
        ),
        (
            unhealthy(1, Duration::from_secs(5), "exit code 127"),
            true,
            r#"service "db" did not become healthy after 1 try (last: exit code 127)"#,
        ),
        (
            Down::Exited { code: 3 },
            true,
            r#"service "db" exited with code 3 before it became healthy"#,
        ),
        (
            Down::Exited { code: 0 },
            false,
            r#"service "db" exited with code 0 as soon as it started"#,
        ),
    ];
    for (down, has_health, expected) in cases {
        assert_eq!(down.message("db", has_health), expected);
    }
}

#[test]
fn durations_read_as_hm_toml_writes_them() {
    let cases = [
        (Duration::from_millis(200), "200ms"),
        (Duration::ZERO, "0ms"),
        (Duration::from_secs(1), "1s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_millis(2250), "2.25s"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(7200), "2h"),
    ];
    for (d, expected) in cases {
        assert_eq!(duration(d), expected, "{d:?}");
    }
}

#[test]
fn a_failed_services_log_is_its_last_lines() {
    let output: String = (1..=25).map(|i| format!("line {i}\n")).collect();
    let last = lines(output.as_bytes());
    assert_eq!(last.len(), 20);
    assert_eq!(last.first().map(String::as_str), Some("line 6"));
    assert_eq!(last.last().map(String::as_str), Some("line 25"));
    // A last line without a newline is a line; CRLF is one line end.
    assert_eq!(lines(b"a\r\nb"), ["a", "b"]);
    assert!(lines(b"").is_empty());
    let long = format!("{}\n", "é".repeat(MAX_LOG_LINE));
    let cut = &lines(long.as_bytes())[0];
    assert!(cut.ends_with('…') && cut.len() <= MAX_LOG_LINE + '…'.len_utf8());
}

#[test]
fn a_stopped_container_has_an_exit_code_and_a_running_one_none() {
    let inspected = |running: Option<bool>, exit_code: Option<i64>| ContainerInspectResponse {
        state: Some(bollard::models::ContainerState {
            running,
            exit_code,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(exit_code_if_stopped(&inspected(Some(true), Some(0))), None);
    assert_eq!(
        exit_code_if_stopped(&inspected(Some(false), Some(3))),
        Some(3)
    );
    assert_eq!(exit_code_if_stopped(&inspected(None, None)), Some(-1));
    assert_eq!(
        exit_code_if_stopped(&ContainerInspectResponse::default()),
        None
    );
}
