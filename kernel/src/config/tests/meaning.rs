//! What a valid `hm.toml` means: defaults, merging, executors, environment.

use super::*;
use std::time::Duration;

#[test]
fn the_design_example_means_what_the_design_says() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let root = tmp.path().join("proj");
    std::fs::create_dir_all(root.join("crates/core")).expect("create dirs");
    check_in(
        &root,
        r#"
[pipeline]
name = "ci"
timeout = "30m"
parallelism = 4
keep_going = false
env = { CI = "true" }

[defaults]
executor = "shell"
timeout = "10m"
limits = { memory = "1GiB", pids = 512, cpu = 2.0 }
retry = { attempts = 2, on = ["crash", "oom"] }

[steps.fmt]
run = "cargo fmt --check"

[steps.test]
run = "cargo test"
needs = ["fmt"]
dir = "crates/core"
env = { RUST_BACKTRACE = "1" }
timeout = "15m"
allow_failure = true
limits = { memory = "4GiB", pids = 1024, cpu = 1.5 }
retry = { attempts = 3, on = ["exit:101", "timeout", "oom", "signal", "crash", "failed"] }

[steps.image]
image = "rust:1.80"
run = "cargo build --release"
needs = ["test"]
with = { pull = "missing" }

[plugins.docker]
limits = { memory = "256MiB", pids = 64 }
restart = { max = 3, within = "60s" }
config = { host = "unix:///var/run/docker.sock" }
required = false
"#,
        r#"pipeline ci timeout=30m parallelism=4 keep_going=false env={CI=true}
plugin docker limits=memory:268435456,pids:64 restart=3/1m required=false handshake=10s config={"host":"unix:///var/run/docker.sock"}
step fmt at hm.toml:15:1 executor=shell run="cargo fmt --check"
  needs=[] dir=. env={CI=true} timeout=10m allow_failure=false limits=memory:1073741824,pids:512,cpu:2 retry=2x[Crash, Oom] image=- with={}
step test at hm.toml:18:1 executor=shell run="cargo test"
  needs=[fmt] dir=crates/core env={CI=true,RUST_BACKTRACE=1} timeout=15m allow_failure=true limits=memory:4294967296,pids:1024,cpu:1.5 retry=3x[Exit(101), Timeout, Oom, Signal, Crash, Failed] image=- with={}
step image at hm.toml:28:1 executor=docker run="cargo build --release"
  needs=[test] dir=. env={CI=true} timeout=10m allow_failure=false limits=memory:1073741824,pids:512,cpu:2 retry=2x[Crash, Oom] image=rust:1.80 with={"pull":"missing"}
"#,
    );
}

#[test]
fn a_minimal_file_gets_every_default() {
    check(
        "[steps.build]\nrun = \"make\"\n",
        "pipeline proj timeout=- parallelism=- keep_going=false env={}
step build at hm.toml:1:1 executor=shell run=\"make\"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
",
    );
}

#[test]
fn steps_may_be_written_as_dotted_keys_or_inline_tables() {
    check(
        "steps.a.run = \"x\"\nsteps.b = { run = \"y\", needs = [\"a\"] }\n",
        "pipeline proj timeout=- parallelism=- keep_going=false env={}
step a at hm.toml:1:7 executor=shell run=\"x\"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
step b at hm.toml:2:11 executor=shell run=\"y\"
  needs=[a] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
",
    );
}

#[test]
fn step_env_overlays_the_pipeline_env() {
    check(
        r#"[pipeline]
env = { A = "pipeline", B = "pipeline" }
[steps.a]
run = "x"
env = { B = "step", C = "step" }
[steps.b]
run = "y"
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={A=pipeline,B=pipeline}
step a at hm.toml:3:1 executor=shell run="x"
  needs=[] dir=. env={A=pipeline,B=step,C=step} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
step b at hm.toml:6:1 executor=shell run="y"
  needs=[] dir=. env={A=pipeline,B=pipeline} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
"#,
    );
}

#[test]
fn defaults_merge_field_by_field_for_limits_and_whole_for_retry() {
    check(
        r#"[defaults]
timeout = "10m"
limits = { memory = "1GiB", pids = 512, cpu = 2 }
retry = { attempts = 2, on = ["crash", "oom"] }
[steps.inherits]
run = "x"
[steps.overrides]
run = "x"
timeout = "1h"
limits = { memory = "4GiB" }
retry = { attempts = 5, on = ["timeout"] }
[steps.partial_retry]
run = "x"
retry = { attempts = 3 }
limits.cpu = 0.5
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
step inherits at hm.toml:5:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=10m allow_failure=false limits=memory:1073741824,pids:512,cpu:2 retry=2x[Crash, Oom] image=- with={}
step overrides at hm.toml:7:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=1h allow_failure=false limits=memory:4294967296,pids:512,cpu:2 retry=5x[Timeout] image=- with={}
step partial_retry at hm.toml:12:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=10m allow_failure=false limits=memory:1073741824,pids:512,cpu:0.5 retry=3x[Failed] image=- with={}
"#,
    );
}

#[test]
fn executor_is_explicit_then_docker_for_an_image_then_defaults_then_shell() {
    let steps = r#"
[steps.explicit]
run = "x"
executor = "podman"
image = "alpine"
[steps.image]
run = "x"
image = "alpine"
[steps.plain]
run = "x"
"#;
    let executors = |text: &str| {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let pipeline = parse_str(text, &tmp.path().join("hm.toml")).expect("valid pipeline");
        pipeline
            .steps
            .iter()
            .map(|s| format!("{}={}", s.name, s.executor))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(executors(steps), "explicit=podman image=docker plain=shell");
    // A default executor other than `shell` takes the steps with images too (`swarm`).
    assert_eq!(
        executors(&format!("[defaults]\nexecutor = \"remote\"\n{steps}")),
        "explicit=podman image=remote plain=remote"
    );
    // `shell` runs no images: there `image` still means docker.
    assert_eq!(
        executors(&format!("[defaults]\nexecutor = \"shell\"\n{steps}")),
        "explicit=podman image=docker plain=shell"
    );
}

#[test]
fn file_and_root_are_absolute_and_location_names_the_file_as_given() {
    let pipeline = parse_str("[steps.a]\nrun = \"x\"\n", Path::new("sub/hm.toml")).expect("valid");
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(pipeline.file, cwd.join("sub/hm.toml"));
    assert_eq!(pipeline.root, cwd.join("sub"));
    assert_eq!(pipeline.name, "sub");
    assert_eq!(pipeline.steps[0].dir, cwd.join("sub"));
    assert_eq!(pipeline.steps[0].location, "sub/hm.toml:1:1");
}

#[test]
fn load_reads_the_file_and_reports_what_went_wrong() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let missing = tmp.path().join("hm.toml");
    match load(&missing) {
        Err(err @ LoadError::Read { .. }) => {
            assert_eq!(
                err.to_string(),
                format!("failed to read {}", missing.display())
            );
        }
        other => panic!("expected a read error, got {other:?}"),
    }

    std::fs::write(&missing, "[steps.a]\nrun = 1\n").expect("write");
    match load(&missing) {
        Err(LoadError::Invalid(diagnostics)) => {
            assert_eq!(diagnostics.len(), 1);
            assert_eq!(diagnostics.0[0].file, missing);
            assert_eq!((diagnostics.0[0].line, diagnostics.0[0].col), (2, 7));
        }
        other => panic!("expected diagnostics, got {other:?}"),
    }

    std::fs::write(&missing, "[steps.a]\nrun = \"x\"\n").expect("write");
    let pipeline = load(&missing).expect("valid pipeline");
    assert_eq!(pipeline.file, missing);
    assert_eq!(pipeline.root, tmp.path());
}

#[test]
fn the_pipeline_file_is_found_in_the_start_directory_or_its_parents() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let nested = tmp.path().join("a/b/c");
    std::fs::create_dir_all(&nested).expect("create dirs");
    // A directory called hm.toml is not a pipeline file.
    std::fs::create_dir(tmp.path().join("a/b/hm.toml")).expect("create dir");
    // What lies above the temporary directory is outside the test's control, so only
    // require that nothing between `nested` and it was found.
    assert_eq!(find_pipeline_file(&nested), find_pipeline_file(tmp.path()));

    std::fs::write(tmp.path().join("a/hm.toml"), "").expect("write");
    assert_eq!(
        find_pipeline_file(&nested),
        Some(tmp.path().join("a/hm.toml"))
    );
    std::fs::write(nested.join("hm.toml"), "").expect("write");
    assert_eq!(find_pipeline_file(&nested), Some(nested.join("hm.toml")));
}

#[test]
fn shell_and_allow_failure_come_from_the_step_else_the_defaults() {
    check(
        r#"[defaults]
shell = "bash"
allow_failure = { exit_codes = [77] }
[steps.inherits]
run = "x"
[steps.own]
run = "y"
shell = ["python3", "-c"]
allow_failure = true
[steps.plain]
run = "z"
shell = "sh"
allow_failure = false
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
step inherits at hm.toml:4:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=- allow_failure=exit_codes[77] limits=- retry=1x[] image=- with={} shell=["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c"]
step own at hm.toml:6:1 executor=shell run="y"
  needs=[] dir=. env={} timeout=- allow_failure=true limits=- retry=1x[] image=- with={} shell=["python3", "-c"]
step plain at hm.toml:10:1 executor=shell run="z"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
"#,
    );
}

#[test]
fn every_step_environment_ends_with_what_hm_sets() {
    let pipeline = parse_str(
        "[steps.a]\nrun = \"x\"\nenv = { HM_STEP = \"mine\", CI = \"yes\", KEEP = \"1\" }\n",
        Path::new("/p/hm.toml"),
    )
    .expect("valid");
    let step = &pipeline.steps[0];
    let env = |overrides: &[(String, String)], inherited_ci| {
        step.environment(AttemptEnv {
            overrides,
            project_dir: Path::new("/p"),
            run_id: "r-1",
            attempt: 3,
            inherited_ci,
            secrets: &|_| None,
            outputs: &|_, _| None,
            output_file: None,
        })
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
    };
    let hm_set = "HM_PROJECT_DIR=/p HM_RUN_ID=r-1 HM_STEP=a HM_ATTEMPT=3";
    // The step's own CI wins over hm's environment; HM_STEP from the file is replaced.
    assert_eq!(env(&[], Some("1")), format!("CI=yes KEEP=1 {hm_set}"));
    let over = [
        ("CI".to_owned(), "no".to_owned()),
        ("HM_RUN_ID".to_owned(), "x".to_owned()),
    ];
    assert_eq!(env(&over, None), format!("KEEP=1 CI=no {hm_set}"));

    let bare = parse_str("[steps.a]\nrun = \"x\"\n", Path::new("/p/hm.toml")).expect("valid");
    let env = |inherited_ci| {
        bare.steps[0]
            .environment(AttemptEnv {
                overrides: &[],
                project_dir: Path::new("/p"),
                run_id: "r-1",
                attempt: 1,
                inherited_ci,
                secrets: &|_| None,
                outputs: &|_, _| None,
                output_file: None,
            })
            .into_iter()
            .find(|(k, _)| k == "CI")
            .map(|(_, v)| v)
    };
    assert_eq!(env(None).as_deref(), Some("true"));
    assert_eq!(env(Some("woodpecker")).as_deref(), Some("woodpecker"));
}

#[test]
fn templates_stack_over_defaults_key_by_key_for_tables_and_whole_for_the_rest() {
    check(
        r#"[defaults]
executor = "remote"
timeout = "10m"
env = { A = "defaults", D = "defaults" }
limits = { cpu = 2 }
retry = { attempts = 2 }
[templates.base]
env = { A = "base", B = "base" }
limits = { memory = "1MiB", pids = 9 }
with = { x = 1, y = { deep = true } }
retry = { attempts = 3, on = ["oom"] }
run = "from base"
[templates.top]
extends = ["base"]
with = { y = { other = true }, z = 3 }
limits = { pids = 10 }
[steps.s]
extends = ["top"]
env = { A = "step" }
image = "alpine"
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
step s at hm.toml:17:1 executor=remote run="from base"
  needs=[] dir=. env={A=step,B=base,D=defaults} timeout=10m allow_failure=false limits=memory:1048576,pids:10,cpu:2 retry=3x[Oom] image=alpine with={"x":1,"y":{"other":true},"z":3}
"#,
    );
}

#[test]
fn services_take_defaults_and_steps_inherit_them_from_defaults() {
    let pipeline = parse_str(
        r#"
[services.pg]
image = "postgres:16"
env = { POSTGRES_PASSWORD = { secret = "PG" } }
ports = [5432, 5432, 8080]
health = { run = "pg_isready" }

[services.web]
image = "busybox"
command = ["httpd", "-f"]
health = { run = "true", interval = "200ms", timeout = "2s", retries = 5 }

[defaults]
services = ["pg"]

[steps.unit]
run = "make unit"
services = []

[steps.it]
run = "make it"

[steps.e2e]
run = "make e2e"
services = ["pg", "web"]
"#,
        Path::new("/p/hm.toml"),
    )
    .expect("valid");
    let pg = &pipeline.services["pg"];
    assert_eq!(pg.executor, "docker");
    assert_eq!(
        pg.ports,
        [5432, 8080],
        "a port listed twice is published once"
    );
    assert_eq!(
        pg.health,
        Some(Health {
            run: "pg_isready".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            retries: 30,
        })
    );
    assert_eq!(referenced_secret(&pg.env["POSTGRES_PASSWORD"]), Some("PG"));
    let web = &pipeline.services["web"];
    assert_eq!(web.command, Some(vec!["httpd".to_owned(), "-f".to_owned()]));
    assert_eq!(web.entrypoint, None);
    assert_eq!(
        web.health
            .as_ref()
            .map(|h| (h.interval, h.timeout, h.retries)),
        Some((Duration::from_millis(200), Duration::from_secs(2), 5))
    );
    let services: Vec<(&str, Vec<String>)> = pipeline
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.services.clone()))
        .collect();
    assert_eq!(
        services,
        [
            ("unit", vec![]),
            ("it", vec!["pg".to_owned()]),
            ("e2e", vec!["pg".to_owned(), "web".to_owned()]),
        ]
    );
}
