//! The docker executor through `hm`, against the real daemon: steps in containers next to
//! shell steps, `/workspace`, exit codes, OOM, limits, and no container left behind after a
//! Ctrl-C, a timeout or the docker plugin's death. Each test builds its own tiny image (see
//! `hm_tests::docker`); without a daemon the tests say they were skipped, and fail instead
//! under `HM_REQUIRE_DOCKER=1`. An unreachable daemon needs no daemon to test.

use std::time::Duration;

use hm_tests::docker::{DockerFixture, containers_of_run, nowhere_socket};
use hm_tests::{Project, Run, Signal, Value, marker};

const WAIT: Duration = Duration::from_secs(30);

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

fn assert_no_container_of(run_id: &str) {
    let left = containers_of_run(run_id);
    assert!(
        left.is_empty(),
        "containers of run {run_id} are left: {left:?} (docker ps -a --filter label=hm.run={run_id})"
    );
}

#[test]
fn a_pipeline_mixing_shell_and_docker_steps_with_needs_passes() {
    let Some(docker) = DockerFixture::new("mixed") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[steps.prepare]
run = "echo prepared"

[steps.inside]
image = "{image}"
run = "echo to-stdout; echo to-stderr >&2; pwd; echo $GREETING in $HM_PROJECT_DIR"
env = {{ GREETING = "hi from env" }}
needs = ["prepare"]

[steps.after]
run = "echo after"
needs = ["inside"]
"#,
        image = docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 0, "{run}");
    for step in ["prepare", "inside", "after"] {
        assert_eq!(run.status(step), "passed", "{step}; {run}");
    }
    assert_eq!(
        run.of_step("step_start", "inside")[0]["executor"],
        "docker",
        "{run}"
    );
    assert!(run.index_of("step_start", "inside") > run.index_of("step_end", "prepare"));
    assert!(run.index_of("step_start", "after") > run.index_of("step_end", "inside"));
    assert_eq!(
        run.stream_lines("inside", "stdout"),
        ["to-stdout", "/workspace", "hi from env in /workspace"],
        "{run}"
    );
    assert_eq!(run.stream_lines("inside", "stderr"), ["to-stderr"], "{run}");
    run.assert_one_final_step_end_each();
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn the_container_sees_the_project_under_workspace() {
    let Some(docker) = DockerFixture::new("workspace") else {
        return;
    };
    let m = marker("workspace");
    let project = Project::new(&format!(
        r#"
[steps.top]
image = "{image}"
run = "cat data/hello.txt"

[steps.nested]
image = "{image}"
dir = "data/deeper"
run = "pwd; cat inner.txt"
"#,
        image = docker.image()
    ));
    project.write("data/hello.txt", &format!("hello from the project {m}\n"));
    project.write("data/deeper/inner.txt", "inner file\n");
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.stream_lines("top", "stdout"),
        [format!("hello from the project {m}").as_str()],
        "{run}"
    );
    assert_eq!(
        run.stream_lines("nested", "stdout"),
        ["/workspace/data/deeper", "inner file"],
        "{run}"
    );
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn a_docker_step_that_exits_3_ends_with_exit_code_3_and_cause_exit() {
    let Some(docker) = DockerFixture::new("exit3") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[steps.three]
image = "{}"
run = "echo before; exit 3"
"#,
        docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 1, "{run}");
    let end = run.step_end("three");
    assert_eq!(end["status"], "failed", "{run}");
    assert_eq!(end["cause"], "exit", "{run}");
    assert_eq!(end["exit_code"], 3, "{run}");
    assert_eq!(run.stream_lines("three", "stdout"), ["before"], "{run}");
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn a_docker_step_runs_its_shell_in_the_container_with_hms_variables() {
    let Some(docker) = DockerFixture::new("shell") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[steps.default]
image = "{image}"
run = """
false
echo after the failure
"""

[steps.plain]
image = "{image}"
shell = ["sh", "-c"]
run = """
false
echo "after the failure: CI=$CI step=$HM_STEP attempt=$HM_ATTEMPT run=$HM_RUN_ID"
"""
"#,
        image = docker.image()
    ));
    let run = run(&project, &docker, &["-k"]);
    let run_id = run_id(&run.events);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(
        run.status("default"),
        "failed",
        "`sh -e` stops at `false`; {run}"
    );
    assert_eq!(run.step_end("default")["exit_code"], 1, "{run}");
    assert!(run.lines("default").is_empty(), "{run}");
    assert_eq!(run.status("plain"), "passed", "{run}");
    assert_eq!(
        run.lines("plain"),
        [format!("after the failure: CI=true step=plain attempt=1 run={run_id}").as_str()],
        "{run}"
    );
    assert_no_container_of(&run_id);
}

#[test]
fn a_docker_step_past_its_memory_limit_ends_with_cause_oom() {
    let Some(docker) = DockerFixture::new("oom") else {
        return;
    };
    // dd holds one block of 256 MiB in memory: eight times the limit. Each waits a second
    // first: Docker 20.10's containerd starts watching a container for OOM kills only once
    // its process has started, so an OOM kill in the first moments can go unreported (2 of 48
    // containers that allocated at once, 4 at a time on a loaded machine; 0 of 48 after a
    // second), and hm then has no evidence of it (docs/pipeline.md, limits).
    let project = Project::new(&format!(
        r#"
[steps.hog]
image = "{image}"
run = "echo allocating; sleep 1; dd if=/dev/zero of=/dev/null bs=256M count=1"
limits = {{ memory = "32MiB" }}

[steps.survivor]
image = "{image}"
run = "sleep 1; dd if=/dev/zero of=/dev/null bs=256M count=1 || echo the child died, not me"
limits = {{ memory = "32MiB" }}
"#,
        image = docker.image()
    ));
    let run = run(&project, &docker, &["-k"]);
    // Everything there is to know when this goes wrong: the verdict and both steps' output.
    let details = format!(
        "hog: {}; hog said {:?}; survivor said {:?}; {run}",
        run.step_end("hog"),
        run.lines("hog"),
        run.lines("survivor")
    );
    assert_eq!(run.code(), 1, "{details}");
    let end = run.step_end("hog");
    assert_eq!(end["status"], "failed", "{details}");
    assert_eq!(end["cause"], "oom", "{details}");
    assert_eq!(end["signal"], 9, "{run}");
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("out of memory (limit 32 MiB"),
        "{message}; {run}"
    );
    assert_eq!(run.stream_lines("hog", "stdout"), ["allocating"], "{run}");
    // Docker says OOMKilled here too, but the main process went on and exited 0: no OOM.
    assert_eq!(run.status("survivor"), "passed", "{run}");
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn step_limits_become_the_containers_limits() {
    let Some(docker) = DockerFixture::new("limits") else {
        return;
    };
    // cgroup v1 files first, then v2's: whichever the daemon's machine has.
    let project = Project::new(&format!(
        r#"
[steps.limited]
image = "{}"
run = '''
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max
cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max
cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max
'''
limits = {{ memory = "48MiB", pids = 40, cpu = 0.5 }}
"#,
        docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.stream_lines("limited", "stdout"),
        [(48 << 20).to_string().as_str(), "40", "50000"],
        "{run}"
    );
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn a_missing_image_with_pull_never_is_cause_image_and_retried_when_asked() {
    let Some(docker) = DockerFixture::new("pull-never") else {
        return;
    };
    let missing = format!("hm-e2e-missing:{}", marker("absent").to_lowercase());
    let project = Project::new(&format!(
        r#"
[steps.absent]
image = "{missing}"
run = "true"
with = {{ pull = "never" }}
retry = {{ attempts = 2, on = ["image"] }}
"#
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 1, "{run}");
    let end = run.step_end("absent");
    assert_eq!(end["status"], "failed", "{run}");
    assert_eq!(end["cause"], "image", "{run}");
    // `retry.on = ["image"]` tried it again.
    assert_eq!(end["attempt"], 2, "{run}");
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("image {missing} is not present locally"))
            && message.contains("with.pull = \"never\""),
        "{message}; {run}"
    );
}

/// A project whose one docker step says `started`, then sleeps as PID 1 (which ignores
/// SIGTERM: only the SIGKILL after the grace ends it).
fn long_step(docker: &DockerFixture, extra: &str) -> Project {
    Project::new(&format!(
        r#"
[steps.long]
image = "{}"
run = "echo started; exec sleep 1000"
{extra}
"#,
        docker.image()
    ))
}

fn is_started(e: &Value) -> bool {
    e["kind"] == "step_log" && e["step"] == "long" && e["line"] == "started"
}

#[test]
fn ctrl_c_during_a_docker_step_leaves_no_container() {
    let Some(docker) = DockerFixture::new("ctrl-c") else {
        return;
    };
    let project = long_step(&docker, "");
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    hm.wait_for_event("the step's first line", WAIT, is_started);
    let run_id = run_id(hm.events());
    docker.watch(&run_id);
    assert_eq!(
        containers_of_run(&run_id).len(),
        1,
        "the step's container runs"
    );
    hm.signal(Signal::SIGINT);
    let run = hm.finish(WAIT).into_run();
    assert_eq!(run.code(), 130, "{run}");
    assert_eq!(run.status("long"), "cancelled", "{run}");
    assert_eq!(run.cause("long"), Some("cancelled"), "{run}");
    assert_no_container_of(&run_id);
}

#[test]
fn a_docker_step_timeout_leaves_no_container() {
    let Some(docker) = DockerFixture::new("timeout") else {
        return;
    };
    let project = long_step(&docker, r#"timeout = "2s""#);
    let run = run(&project, &docker, &["--grace", "1s"]);
    assert_eq!(run.code(), 124, "{run}");
    assert_eq!(run.status("long"), "timed_out", "{run}");
    assert_eq!(run.cause("long"), Some("timeout"), "{run}");
    assert_eq!(run.stream_lines("long", "stdout"), ["started"], "{run}");
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn hm_removes_the_container_of_a_killed_docker_plugin_when_the_run_ends() {
    let Some(docker) = DockerFixture::new("plugin-kill") else {
        return;
    };
    let project = long_step(&docker, "");
    let mut hm = project.spawn_run(&[]);
    hm.wait_for_event("the step's first line", WAIT, is_started);
    let first = run_id(hm.events());
    docker.watch(&first);
    let plugin = hm
        .events()
        .iter()
        .find(|e| e["kind"] == "plugin_start" && e["plugin"] == "docker")
        .and_then(|e| e["pid"].as_u64())
        .expect("the docker plugin's plugin_start came before the step's output");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(plugin as i32), Signal::SIGKILL)
        .expect("SIGKILL the docker plugin");
    let killed = hm.finish(WAIT).into_run();
    assert_eq!(killed.code(), 1, "{killed}");
    assert_eq!(killed.cause("long"), Some("executor_crash"), "{killed}");
    // The plugin could not remove it; hm did, by the run's label, before it exited.
    assert_no_container_of(&first);
    assert!(
        killed
            .stderr()
            .contains("removed 1 container(s) and 0 network(s) of this run that its plugins left"),
        "{killed}"
    );
}

#[test]
fn the_next_start_removes_containers_whose_hm_is_gone() {
    let Some(docker) = DockerFixture::new("orphan-sweep") else {
        return;
    };
    // A container as a run leaves it when hm, its plugin and its guardian all died: labelled
    // for this machine, its kernel a process that is gone (pid 1 with another start time).
    let dead_run = format!("dead-{}", marker("orphan").to_lowercase());
    docker.watch(&dead_run);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let ns = std::fs::read_link("/proc/self/ns/pid").expect("pid namespace");
    let ns = ns.to_string_lossy();
    let ns = ns.trim_start_matches("pid:[").trim_end_matches(']');
    let created = hm_tests::docker::docker(&[
        "create",
        "--label",
        &format!("hm.run={dead_run}"),
        "--label",
        &format!("hm.host={}:{ns}", boot.trim()),
        "--label",
        "hm.kernel=1:0",
        docker.image(),
        "true",
    ]);
    assert!(created.status.success(), "{created:?}");
    assert_eq!(containers_of_run(&dead_run).len(), 1);

    let next = Project::new(&format!(
        r#"
[steps.quick]
image = "{}"
run = "true"
"#,
        docker.image()
    ));
    let swept = run(&next, &docker, &[]);
    assert_eq!(swept.code(), 0, "{swept}");
    assert_no_container_of(&dead_run);
}

#[test]
fn an_unreachable_docker_host_exits_4_naming_the_address() {
    let socket = nowhere_socket();
    let hosts = [
        format!("unix://{}", socket.display()),
        // Nothing listens on port 1 of loopback: refused at once.
        "tcp://127.0.0.1:1".to_owned(),
    ];
    for host in hosts {
        let project = Project::new(
            r#"
[steps.boxed]
image = "whatever:1"
run = "true"
"#,
        );
        let mut cmd = project.command(&["run"]);
        cmd.env("DOCKER_HOST", &host);
        let out = hm_tests::Hm::spawn(cmd).finish(WAIT);
        assert_eq!(out.code(), 4, "{host}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "cannot reach the Docker daemon at {host} (from DOCKER_HOST)"
            )),
            "{host}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    }
}

#[test]
fn a_docker_host_in_the_plugin_config_wins_over_the_environment() {
    let project = Project::new(&format!(
        r#"
[plugins.docker]
config = {{ host = "unix://{}" }}

[steps.boxed]
image = "whatever:1"
run = "true"
"#,
        nowhere_socket().display()
    ));
    let mut cmd = project.command(&["run"]);
    cmd.env("DOCKER_HOST", "tcp://127.0.0.1:1");
    let out = hm_tests::Hm::spawn(cmd).finish(WAIT);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("(from [plugins.docker].config.host)"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_unknown_key_in_the_plugin_config_fails_the_run_at_its_start() {
    let project = Project::new(
        r#"
[plugins.docker]
config = { hots = "unix:///var/run/docker.sock" }

[steps.boxed]
image = "whatever:1"
run = "true"
"#,
    );
    let out = project.hm(&["run"]);
    assert_eq!(out.code(), 5, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unknown key `hots` in [plugins.docker].config"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_docker_steps_artifacts_and_outputs_reach_docker_and_shell_dependents() {
    let Some(docker) = DockerFixture::new("artifacts") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[steps.build]
image = "{image}"
run = "mkdir -p dist && echo 'app 2.0' > dist/app.txt && echo version=2.0 >> $HM_OUTPUT"
artifacts = ["dist/**"]

[steps.in-docker]
image = "{image}"
needs = ["build"]
run = "cat /workspace/dist/app.txt; echo ${{{{ steps.build.outputs.version }}}}"

[steps.on-host]
needs = ["build"]
run = "cat dist/app.txt; echo $VERSION"
env = {{ VERSION = "${{{{ steps.build.outputs.version }}}}" }}
"#,
        image = docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 0, "{run}");
    let end = run.step_end("build");
    assert_eq!(end["outputs"]["version"], "2.0", "{run}");
    let artifacts = end["artifacts"].as_array().cloned().unwrap_or_default();
    assert_eq!(artifacts.len(), 1, "{run}");
    assert_eq!(artifacts[0]["path"], "dist/app.txt", "{run}");
    assert_eq!(run.lines("in-docker"), ["app 2.0", "2.0"], "{run}");
    assert_eq!(run.lines("on-host"), ["app 2.0", "2.0"], "{run}");
    // The file is in the project where a local build would have put it, with the digest
    // step_end gave.
    let bytes = std::fs::read(project.path("dist/app.txt")).expect("dist/app.txt");
    assert_eq!(bytes, b"app 2.0\n");
    let digest: String = <sha2::Sha256 as sha2::Digest>::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(artifacts[0]["sha256"], digest.as_str(), "{run}");
    assert_eq!(artifacts[0]["bytes"], 8, "{run}");
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn a_docker_step_past_the_artifact_limit_fails_and_writes_nothing() {
    let Some(docker) = DockerFixture::new("artifact-limit") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[pipeline]
artifacts_max = {{ files = 2 }}

[steps.many]
image = "{image}"
run = "mkdir -p out && for i in 1 2 3 4; do echo $i > out/$i.txt; done"
artifacts = ["out/**"]
"#,
        image = docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 1, "{run}");
    let end = run.step_end("many");
    assert_eq!(end["cause"], "artifact", "{run}");
    let message = end["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 2 files"), "{run}");
    assert!(!project.exists("out"), "{run}");
    assert_no_container_of(&run_id(&run.events));
}

/// Removes the named volumes when the test ends, passed or not.
struct Volumes(Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", "-f", name])
                .output();
        }
    }
}

fn cache_volumes() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["volume", "ls", "-q", "--filter", "label=hm.cache"])
        .output()
        .expect("docker volume ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_dependency_cache_keeps_a_directory_across_runs_until_its_key_changes() {
    let Some(docker) = DockerFixture::new("dep-cache") else {
        return;
    };
    let before = cache_volumes();
    let project = Project::new(&format!(
        r#"
[steps.deps]
image = "{image}"
run = "cat /cache/stamp 2>/dev/null || echo empty; echo filled >> /cache/stamp"
cache = [{{ key = ["Cargo.lock"], paths = ["/cache"] }}]

[steps.host]
run = "echo on the host"
cache = [{{ key = ["Cargo.lock"], paths = ["target"] }}]
"#,
        image = docker.image()
    ));
    project.write("Cargo.lock", "v1");
    let mut made = Volumes(Vec::new());
    let first = run(&project, &docker, &[]);
    made.0 = cache_volumes()
        .into_iter()
        .filter(|v| !before.contains(v))
        .collect();
    assert_eq!(first.code(), 0, "{first}");
    assert_eq!(first.lines("deps"), ["empty"], "{first}");
    assert_eq!(made.0.len(), 1, "one volume: {:?}", made.0);
    assert_eq!(
        first.lines("host"),
        [
            "hm: `cache` keeps directories for steps in containers; this shell step uses the host's directories as they are",
            "on the host"
        ],
        "{first}"
    );
    let second = run(&project, &docker, &[]);
    assert_eq!(second.lines("deps"), ["filled"], "{second}");
    // Another key: another, empty volume.
    project.write("Cargo.lock", "v2");
    let third = run(&project, &docker, &[]);
    assert_eq!(third.lines("deps"), ["empty"], "{third}");
    made.0 = cache_volumes()
        .into_iter()
        .filter(|v| !before.contains(v))
        .collect();
    assert_eq!(made.0.len(), 2, "two volumes: {:?}", made.0);
    // Both were used just now: a week's pruning keeps them, pruning the unused of no time not.
    let kept = project.hm(&["cache", "prune"]);
    assert!(
        kept.stdout.contains("and 0 cache volumes"),
        "{}",
        kept.stdout
    );
    let pruned = project.hm(&["cache", "prune", "--unused-for", "0s"]);
    assert!(
        pruned.stdout.contains("and 2 cache volumes"),
        "{}{}",
        pruned.stdout,
        pruned.stderr
    );
    let left: Vec<String> = cache_volumes()
        .into_iter()
        .filter(|v| made.0.contains(v))
        .collect();
    assert!(left.is_empty(), "left: {left:?}");
}

#[test]
fn a_cached_docker_step_runs_again_when_its_image_is_another_by_the_same_name() {
    let Some(docker) = DockerFixture::new("cached-image") else {
        return;
    };
    let project = Project::new(&format!(
        r#"
[steps.build]
image = "{image}"
run = "echo built"
inputs = ["src/**"]
"#,
        image = docker.image()
    ));
    project.write("src/a", "a");
    let first = run(&project, &docker, &[]);
    assert_eq!(first.step_end("build")["cache"], "miss", "{first}");
    let second = run(&project, &docker, &[]);
    assert_eq!(second.step_end("build")["cache"], "hit", "{second}");
    assert_eq!(second.lines("build"), ["built"], "{second}");
    docker.rebuild();
    let third = run(&project, &docker, &[]);
    assert_eq!(third.step_end("build")["cache"], "miss", "{third}");
}

#[test]
fn a_docker_steps_end_reports_the_memory_and_cpu_it_used() {
    let Some(docker) = DockerFixture::new("usage") else {
        return;
    };
    // 50 MB held in a shell variable while the shell burns CPU for about 3 s: several of the
    // daemon's samples (about one a second) see both. The bounds leave room for a loaded machine.
    let project = Project::new(&format!(
        r#"
[steps.busy]
image = "{image}"
run = '''
x=$(head -c 50000000 /dev/zero | tr '\0' a)
end=$(( $(date +%s) + 3 ))
while [ $(date +%s) -lt $end ]; do :; done
echo held ${{#x}} bytes
'''
"#,
        image = docker.image()
    ));
    let run = run(&project, &docker, &[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.lines("busy"), ["held 50000000 bytes"], "{run}");
    let end = run.step_end("busy");
    let peak = end["peak_memory_bytes"].as_u64();
    assert!(
        peak.is_some_and(|bytes| bytes >= 40_000_000),
        "peak_memory_bytes {peak:?}; {run}"
    );
    let cpu = end["cpu_ms"].as_u64();
    assert!(cpu.is_some_and(|ms| ms >= 300), "cpu_ms {cpu:?}; {run}");
    assert_no_container_of(&run_id(&run.events));
}

#[test]
fn each_image_is_pulled_once_per_run_and_its_progress_shown_once() {
    let Some(docker) = DockerFixture::new("pull-once") else {
        return;
    };
    let Some(registry) = hm_tests::registry::Registry::start("pull-once") else {
        return;
    };
    let image = registry.publish(docker.image(), &marker("pulled").to_lowercase());
    let project = Project::new(&format!(
        r#"
[steps.a]
image = "{image}"
run = "echo a"

[steps.b]
image = "{image}"
run = "echo b"

[steps.after]
image = "{image}"
run = "echo after"
needs = ["a", "b"]
"#
    ));
    let pulling = |run: &Run| -> Vec<String> {
        run.events
            .iter()
            .filter(|e| e["kind"] == "step_log")
            .filter(|e| {
                e["line"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("hm: pulling"))
            })
            .map(|e| {
                let text = |key: &str| e[key].as_str().unwrap_or_default().to_owned();
                format!("{}: {}", text("step"), text("line"))
            })
            .collect()
    };
    // `a` and `b` start together and need the image at once: one pull, shown in one log.
    let first = run(&project, &docker, &["-j", "2"]);
    assert_eq!(first.code(), 0, "{first}");
    let pulls = pulling(&first);
    assert_eq!(pulls.len(), 1, "{pulls:?}; {first}");
    assert!(
        pulls[0].ends_with(&format!("hm: pulling {image}")),
        "{pulls:?}"
    );
    // The next run finds it present: nothing is pulled.
    let second = run(&project, &docker, &["-j", "2"]);
    assert_eq!(second.code(), 0, "{second}");
    assert_eq!(pulling(&second), Vec::<String>::new(), "{second}");
}
