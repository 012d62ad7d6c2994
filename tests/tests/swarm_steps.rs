//! The swarm executor through `hm`, against a real multi-node swarm on this machine (the
//! swarm fixture, `hm_tests::swarm`): a six-step pipeline placed on every node with its logs
//! complete and in order and its files and outputs carried between the steps over the plugin's
//! file server, dependency caches on a node, artifact limits, services on the run's overlay
//! network, exit codes, the OOM judgement, a step waiting for a node until its timeout, a node
//! lost under a step (cause `node_lost`, retried elsewhere), serve addresses that cannot work,
//! and no service, task container or network left after a Ctrl-C or a SIGKILL of hm. hm reaches
//! the manager through `[plugins.swarm].config.host` (its unix socket, or `tcp://`), and the
//! tasks reach hm at the host's address on the swarm's bridge (`serve`). Without root, Docker
//! or namespaces the tests say they were skipped, and fail instead under `HM_REQUIRE_SWARM=1` /
//! `HM_REQUIRE_DOCKER=1`; the swarm and the image are removed however a test ends.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hm_tests::docker::DockerFixture;
use hm_tests::swarm::Swarm;
use hm_tests::{Hm, Project, Run, Signal, Value};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// How soon after hm is stopped (Ctrl-C) or killed (SIGKILL) a run's services and task
/// containers must be gone from the whole swarm.
const CLEANUP: Duration = Duration::from_secs(10);

/// The line the executor writes on a step's stderr once its task runs.
const RUNNING_ON: &str = "hm: running on node ";

/// A swarm of `nodes` nodes with the test's image on every node; `None` when this machine
/// cannot have one (the fixtures said why). The image goes after the swarm (fields drop in
/// order).
struct Cluster {
    swarm: Swarm,
    image: DockerFixture,
}

impl Cluster {
    fn start(test: &str, nodes: usize) -> Option<Self> {
        let image = DockerFixture::new(test)?;
        let swarm = Swarm::start(test, nodes)?;
        swarm.load_image(image.image());
        Some(Self { swarm, image })
    }

    /// A project whose steps (`steps`, TOML with `{image}` for the image) run on this swarm.
    fn project(&self, steps: &str) -> Project {
        self.project_through(&self.swarm.docker_host(), steps)
    }

    /// [`Cluster::project`] with the manager reached at `host`.
    fn project_through(&self, host: &str, steps: &str) -> Project {
        Project::new(&format!(
            "[plugins.swarm]\nconfig = {{ host = \"{host}\", serve = \"{serve}\" }}\n\n{steps}",
            serve = self.swarm.host_address(),
            steps = steps.replace("{image}", self.image.image()),
        ))
    }

    /// The IDs of run `run_id`'s services on the manager.
    fn services_of(&self, run_id: &str) -> Vec<String> {
        let listed = self.swarm.docker_ok(&[
            "service",
            "ls",
            "--quiet",
            "--filter",
            &format!("label=hm.run={run_id}"),
        ]);
        listed.lines().map(str::to_owned).collect()
    }

    /// The containers of run `run_id` on any node, as `node: id` lines.
    fn containers_of(&self, run_id: &str) -> Vec<String> {
        self.swarm
            .nodes()
            .iter()
            .flat_map(|node| {
                let listed = node.docker_ok(&[
                    "ps",
                    "--all",
                    "--quiet",
                    "--filter",
                    &format!("label=hm.run={run_id}"),
                ]);
                listed
                    .lines()
                    .map(|id| format!("{}: {id}", node.name()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until no node has a container of run `run_id`: removing a service stops and
    /// removes its task's container on its node a moment later.
    fn assert_no_container_of(&self, run_id: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = self.containers_of(run_id);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containers of run {run_id} are still on the nodes after {WAIT:?}: {left:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `within` until the manager has no service of run `run_id` and no node a
    /// container of it; how long that took.
    fn wait_until_run_gone(&self, run_id: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let services = self.services_of(run_id);
            let containers = self.containers_of(run_id);
            if services.is_empty() && containers.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{within:?} on, run {run_id} still has services {services:?} on the manager \
                 and containers {containers:?} on the nodes"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Sets `node`'s availability (`active`, `drain`) on the manager.
    fn set_availability(&self, node: &str, availability: &str) {
        self.swarm
            .docker_ok(&["node", "update", "--availability", availability, node]);
    }

    /// The manager's state for `node` (`ready`, `down`, ...).
    fn node_state(&self, node: &str) -> String {
        self.swarm
            .node_list()
            .iter()
            .find(|n| n["Description"]["Hostname"] == node)
            .and_then(|n| n["Status"]["State"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The IDs of run `run_id`'s networks on the manager.
    fn networks_of(&self, run_id: &str) -> Vec<String> {
        let listed = self.swarm.docker_ok(&[
            "network",
            "ls",
            "--quiet",
            "--filter",
            &format!("label=hm.run={run_id}"),
        ]);
        listed.lines().map(str::to_owned).collect()
    }

    fn assert_no_service_of(&self, run_id: &str) {
        let left = self.services_of(run_id);
        assert!(
            left.is_empty(),
            "services of run {run_id} are left on the manager: {left:?}"
        );
    }
}

fn run_id(events: &[Value]) -> String {
    events
        .first()
        .and_then(|e| e["run_id"].as_str())
        .expect("every event has a run_id")
        .to_owned()
}

/// The node a step's stderr says it ran on.
fn node_of<'a>(run: &'a Run, step: &str) -> &'a str {
    let lines = run.stream_lines(step, "stderr");
    let nodes: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(RUNNING_ON))
        .collect();
    assert_eq!(
        nodes.len(),
        1,
        "one `{RUNNING_ON}` line for {step}: {lines:?}"
    );
    nodes[0]
}

/// Reads hm's events until each `(step, line)` of `wanted` has been logged, in any order.
fn wait_for_lines(hm: &mut Hm, wanted: &[(&str, &str)]) {
    let logged = |e: &Value, step: &str, line: &str| {
        e["kind"] == "step_log" && e["step"] == step && e["line"] == line
    };
    while let Some(&(step, line)) = wanted
        .iter()
        .find(|(step, line)| !hm.events().iter().any(|e| logged(e, step, line)))
    {
        hm.wait_for_event(&format!("{step}'s line {line:?}"), WAIT, |e| {
            logged(e, step, line)
        });
    }
}

/// `count` numbered lines, `<prefix> line <n>`, as a step prints them.
fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix} line {i}")).collect()
}

/// Which node each matrix instance of the six-step pipeline is constrained to, by a node label
/// of its own: two on node 0, one each on nodes 1 and 2.
const PARTS: [(&str, usize); 4] = [("a", 0), ("b", 1), ("c", 2), ("d", 0)];

#[test]
fn six_steps_spread_over_the_nodes_pass_files_and_outputs_with_every_line_in_order() {
    let test = "six_steps_spread_over_the_nodes_pass_files_and_outputs_with_every_line_in_order";
    let Some(cluster) = Cluster::start(test, 3) else {
        return;
    };
    for (part, node) in PARTS {
        cluster
            .swarm
            .label_node(cluster.swarm.node(node), &format!("hm_{part}"), "1");
    }
    // `prepare` makes a file and an output for the four `part`s, each on the node its label
    // says; `join` gathers what they made, wherever the manager puts it.
    let project = cluster.project(
        r#"
[defaults]
executor = "swarm"
image = "{image}"

[steps.prepare]
run = '''
mkdir -p gen
echo "from prepare, over $(cat src/seed.txt)" > gen/input.txt
echo "version=1.2.3" >> "$HM_OUTPUT"
'''
artifacts = ["gen/input.txt"]

[steps.part]
run = '''
mkdir -p out
for i in $(seq 1 200); do echo "${{ matrix.part }} line $i"; done
echo "${{ matrix.part }}: $(cat gen/input.txt), version ${{ steps.prepare.outputs.version }}" > out/${{ matrix.part }}.txt
echo done >&2
'''
needs = ["prepare"]
matrix = { part = ["a", "b", "c", "d"] }
artifacts = ["out/*.txt"]
with = { constraints = ["node.labels.hm_${{ matrix.part }}==1"] }

[steps.join]
run = '''
cat out/a.txt out/b.txt out/c.txt out/d.txt > joined.txt
for i in $(seq 1 200); do echo "join line $i"; done
'''
needs = ["part"]
artifacts = ["joined.txt"]
"#,
    );
    project.write("src/seed.txt", "the seed");
    let mut hm = project.spawn_run(&[]);
    // How long a swarm step takes from its start to its first line.
    let started = hm.wait_for_event("a step_start", WAIT, |e| e["kind"] == "step_start");
    let start = Instant::now();
    hm.wait_for_event("a step's first line", WAIT, |e| {
        e["kind"] == "step_log" && e["stream"] == "stdout"
    });
    eprintln!(
        "{test}: first line {:.1?} after the first step_start ({})",
        start.elapsed(),
        started["step"]
    );
    let run = hm.finish(WAIT * 2).into_run();
    let id = run_id(&run.events);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.step_end("prepare")["outputs"]["version"],
        "1.2.3",
        "{run}"
    );
    let mut nodes = BTreeSet::new();
    for (part, node) in PARTS {
        let step = format!("part[part={part}]");
        let node = format!("node-{node}");
        assert_eq!(run.status(&step), "passed", "{step}; {run}");
        assert_eq!(run.of_step("step_start", &step)[0]["executor"], "swarm");
        assert_eq!(
            run.stream_lines(&step, "stdout"),
            numbered(part, 200),
            "{step}; {run}"
        );
        assert!(
            run.stream_lines(&step, "stderr").contains(&"done"),
            "{step}; {run}"
        );
        assert_eq!(node_of(&run, &step), node, "{run}");
        // The step's end says where it ran, as the summary does.
        assert_eq!(run.step_end(&step)["node"], node.as_str(), "{run}");
        let artifacts = &run.step_end(&step)["artifacts"];
        assert_eq!(artifacts[0]["path"], format!("out/{part}.txt"), "{run}");
        nodes.insert(node);
    }
    assert_eq!(run.status("join"), "passed", "{run}");
    assert_eq!(run.stream_lines("join", "stdout"), numbered("join", 200));
    nodes.insert(node_of(&run, "join").to_owned());
    assert_eq!(nodes.len(), 3, "the steps ran on {nodes:?}");
    // Every part's file reached `join`, and `join`'s came back into the project.
    let joined: Vec<String> = PARTS
        .iter()
        .map(|(part, _)| format!("{part}: from prepare, over the seed, version 1.2.3"))
        .collect();
    assert_eq!(
        project.read("joined.txt").lines().collect::<Vec<_>>(),
        joined
    );
    assert_eq!(run.step_end("join")["artifacts"][0]["path"], "joined.txt");
    run.assert_one_final_step_end_each();
    cluster.assert_no_service_of(&id);
    cluster.assert_no_container_of(&id);
}

#[test]
fn a_swarm_step_that_exits_3_fails_with_exit_code_3_and_cause_exit() {
    let test = "a_swarm_step_that_exits_3_fails_with_exit_code_3_and_cause_exit";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let project = cluster.project(
        r#"
[steps.fail]
executor = "swarm"
image = "{image}"
run = "echo about to fail; exit 3"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("fail"), "failed", "{run}");
    assert_eq!(run.cause("fail"), Some("exit"), "{run}");
    assert_eq!(run.step_end("fail")["exit_code"], 3, "{run}");
    assert_eq!(
        run.stream_lines("fail", "stdout"),
        ["about to fail"],
        "{run}"
    );
    cluster.assert_no_service_of(&run_id(&run.events));
}

#[test]
fn a_dependency_cache_stays_on_its_node_and_artifact_limits_hold() {
    let test = "a_dependency_cache_stays_on_its_node_and_artifact_limits_hold";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    let project = cluster.project(
        r#"
[pipeline]
artifacts_max = { files = 2 }

[steps.fill]
executor = "swarm"
image = "{image}"
run = '''
if [ -e deps/runs ]; then echo "runs before: $(wc -l < deps/runs)"; else echo "deps: empty"; fi
echo x >> deps/runs
'''
cache = [{ key = ["lock.txt"], paths = ["deps"] }]
with = { constraints = ["node.hostname==node-1"] }

[steps.many]
executor = "swarm"
image = "{image}"
run = "mkdir -p out && touch out/1 out/2 out/3"
artifacts = ["out/*"]
# After `fill`: its failure would otherwise cancel `fill` (fail-fast) if that were slower.
needs = ["fill"]
"#,
    );
    project.write("lock.txt", "v1");
    let first = project.run(&[]);
    assert_eq!(first.status("fill"), "passed", "{first}");
    assert_eq!(
        first.stream_lines("fill", "stdout"),
        ["deps: empty"],
        "{first}"
    );
    assert_eq!(first.status("many"), "failed", "{first}");
    assert_eq!(first.cause("many"), Some("artifact"), "{first}");
    let message = first.step_end("many")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("more than 2 files"), "{first}");
    // The second run finds what the first left in the cache, on the node it ran on.
    let second = project.run(&[]);
    assert_eq!(
        second.stream_lines("fill", "stdout"),
        ["runs before: 1"],
        "{second}"
    );
    let volumes = |node: usize| {
        cluster.swarm.node(node).docker_ok(&[
            "volume",
            "ls",
            "--quiet",
            "--filter",
            "label=hm.cache.path=deps",
        ])
    };
    assert_eq!(volumes(1).lines().count(), 1, "node-1's cache volumes");
    assert_eq!(
        volumes(0).lines().count(),
        0,
        "node-0 ran no step with a cache"
    );
    for run in [&first, &second] {
        cluster.assert_no_service_of(&run_id(&run.events));
    }
}

#[test]
fn swarm_steps_reach_swarm_services_by_name_and_a_sick_one_fails_its_steps() {
    let test = "swarm_steps_reach_swarm_services_by_name_and_a_sick_one_fails_its_steps";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    // `web` is constrained away from the steps' node: they reach it across the overlay.
    let project = cluster.project(
        r#"
[defaults]
executor = "swarm"
image = "{image}"

[services.web]
image = "{image}"
command = ["sh", "-c", "mkdir -p /www && echo hello from web > /www/index.html && exec httpd -f -p 8080 -h /www"]
ports = [8080]
health = { run = "wget -q -O /dev/null http://127.0.0.1:8080/", interval = "1s" }
with = { constraints = ["node.hostname==node-1"] }

[services.sick]
image = "{image}"
command = ["sh", "-c", "trap 'exit 1' TERM; echo sick is starting; sleep 600 & wait"]
health = { run = "false", interval = "1s", retries = 2 }

[steps.fetch]
run = 'wget -q -O - "http://$HM_SERVICE_WEB_HOST:$HM_SERVICE_WEB_PORT_8080/"'
services = ["web"]
with = { constraints = ["node.hostname==node-0"] }

[steps.needs_sick]
run = "echo never"
services = ["sick"]
# After `fetch`: its failure would otherwise cancel `fetch` (fail-fast) if that were slower.
needs = ["fetch"]
"#,
    );
    // Services stop with the grace: `httpd` ignores SIGTERM.
    let run = project.run(&["--grace", "1s"]);
    let id = run_id(&run.events);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("fetch"), "passed", "{run}");
    assert_eq!(
        run.stream_lines("fetch", "stdout"),
        ["hello from web"],
        "{run}"
    );
    assert_eq!(node_of(&run, "fetch"), "node-0", "{run}");
    assert_eq!(run.status("needs_sick"), "failed", "{run}");
    assert_eq!(run.cause("needs_sick"), Some("service"), "{run}");
    let message = run.step_end("needs_sick")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("sick never became healthy"),
        "{message}; {run}"
    );
    assert!(
        run.stream_lines("needs_sick", "stderr")
            .iter()
            .any(|line| line.contains("sick is starting")),
        "{run}"
    );
    cluster.assert_no_service_of(&id);
    cluster.assert_no_container_of(&id);
    assert_eq!(
        cluster.networks_of(&id),
        Vec::<String>::new(),
        "the run's network is left"
    );
}

#[test]
fn serve_addresses_hm_cannot_use_exit_4_and_those_nodes_cannot_reach_fail_the_step() {
    let test = "serve_addresses_hm_cannot_use_exit_4_and_those_nodes_cannot_reach_fail_the_step";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let project = |serve: &str| {
        Project::new(&format!(
            "[plugins.swarm]\nconfig = {{ host = \"{}\", serve = \"{serve}\" }}\n\n\
             [steps.remote]\nexecutor = \"swarm\"\nimage = \"{}\"\nrun = \"echo the step \
             ran\"\n",
            cluster.swarm.docker_host(),
            cluster.image.image()
        ))
    };
    // An address of no interface here (TEST-NET-1): the run ends at its start.
    let run = project("192.0.2.1").run(&[]);
    assert_eq!(run.code(), 4, "{run}");
    assert!(
        run.stderr().contains(
            "cannot serve the swarm tasks their files on 192.0.2.1:0 \
             ([plugins.swarm].config.serve)"
        ),
        "{run}"
    );
    assert!(
        run.stderr()
            .contains("hint: set [plugins.swarm].config.serve"),
        "{run}"
    );
    // hm's loopback: the plugin can listen there, and a node's own loopback answers nothing.
    let run = project("127.0.0.1").run(&[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("remote"), "failed", "{run}");
    let message = run.step_end("remote")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("could not start the step"), "{run}");
    assert_eq!(
        run.stream_lines("remote", "stdout"),
        Vec::<&str>::new(),
        "{run}"
    );
    let stderr = run.stream_lines("remote", "stderr");
    assert!(
        stderr
            .iter()
            .any(|line| line
                .starts_with("hm: cannot fetch the workspace from hm at http://127.0.0.1:")),
        "{run}"
    );
    cluster.assert_no_service_of(&run_id(&run.events));
}

#[test]
fn a_step_whose_service_no_node_can_take_times_out_with_it() {
    let test = "a_step_whose_service_no_node_can_take_times_out_with_it";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let project = cluster.project(
        r#"
[defaults]
executor = "swarm"
image = "{image}"

[services.nowhere]
image = "{image}"
command = ["sleep", "1000"]
with = { constraints = ["node.labels.no_such_label==1"] }

[steps.waits]
run = "echo never"
services = ["nowhere"]
timeout = "3s"
"#,
    );
    let started = Instant::now();
    let run = project.run(&["--grace", "1s"]);
    // hm's exit code when a step timed out.
    assert_eq!(run.code(), 124, "{run}");
    assert_eq!(run.status("waits"), "timed_out", "{run}");
    assert_eq!(run.cause("waits"), Some("timeout"), "{run}");
    assert!(started.elapsed() < WAIT, "{run}");
    let id = run_id(&run.events);
    cluster.assert_no_service_of(&id);
    assert_eq!(cluster.networks_of(&id), Vec::<String>::new(), "{run}");
}

#[test]
fn a_swarm_step_over_its_memory_limit_fails_with_cause_oom() {
    let test = "a_swarm_step_over_its_memory_limit_fails_with_cause_oom";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    // Doubles a shell variable until the 32 MiB limit stops it.
    let project = cluster.project(
        r#"
[steps.hog]
executor = "swarm"
image = "{image}"
run = 'echo hogging; x=0123456789abcdef; while true; do x="$x$x"; done'
limits = { memory = "32MiB" }
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("hog"), "failed", "{run}");
    assert_eq!(run.cause("hog"), Some("oom"), "{run}");
    assert_eq!(run.stream_lines("hog", "stdout"), ["hogging"], "{run}");
    cluster.assert_no_service_of(&run_id(&run.events));
}

#[test]
fn a_step_no_node_can_take_waits_with_the_reason_until_its_timeout() {
    let test = "a_step_no_node_can_take_waits_with_the_reason_until_its_timeout";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    let project = cluster.project(
        r#"
[steps.nowhere]
executor = "swarm"
image = "{image}"
run = "echo never"
with = { constraints = ["node.labels.hm-test-absent==yes"] }
timeout = "3s"
"#,
    );
    let run = project.run(&["--grace", "1s"]);
    assert_eq!(run.code(), 124, "{run}");
    assert_eq!(run.status("nowhere"), "timed_out", "{run}");
    assert_eq!(run.cause("nowhere"), Some("timeout"), "{run}");
    let stderr = run.stream_lines("nowhere", "stderr");
    let waiting: Vec<&&str> = stderr
        .iter()
        .filter(|l| l.starts_with("hm: waiting for a node: "))
        .collect();
    assert_eq!(
        waiting.len(),
        1,
        "one line while the reason stays: {stderr:?}"
    );
    // The scheduler's own words.
    assert!(
        waiting[0].contains("no suitable node") && waiting[0].contains("constraint"),
        "{stderr:?}"
    );
    assert!(run.stream_lines("nowhere", "stdout").is_empty(), "{run}");
    cluster.assert_no_service_of(&run_id(&run.events));
}

#[test]
fn ctrl_c_during_a_swarm_step_exits_130_and_leaves_no_service() {
    let test = "ctrl_c_during_a_swarm_step_exits_130_and_leaves_no_service";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    let project = cluster.project(
        r#"
[steps.long]
executor = "swarm"
image = "{image}"
run = "echo started; exec sleep 1000"
"#,
    );
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    hm.wait_for_event("the step's first line", WAIT, |e| {
        e["kind"] == "step_log" && e["step"] == "long" && e["line"] == "started"
    });
    let id = run_id(hm.events());
    assert_eq!(cluster.services_of(&id).len(), 1, "the step's service runs");
    let signalled = Instant::now();
    hm.signal(Signal::SIGINT);
    let run = hm.finish(WAIT).into_run();
    eprintln!("{test}: hm exited {:.1?} after SIGINT", signalled.elapsed());
    assert_eq!(run.code(), 130, "{run}");
    assert_eq!(run.status("long"), "cancelled", "{run}");
    assert_eq!(run.cause("long"), Some("cancelled"), "{run}");
    cluster.assert_no_service_of(&id);
    cluster.assert_no_container_of(&id);
}

#[test]
fn a_daemon_that_is_no_swarm_manager_exits_4_saying_how_to_fix_it() {
    // The host's own daemon, which is in no swarm (the swarm fixture never touches it).
    let Some(image) = DockerFixture::new("swarm-not-manager") else {
        return;
    };
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    let project = Project::new(&format!(
        r#"
[plugins.swarm]
config = {{ host = "{host}" }}

[steps.somewhere]
executor = "swarm"
image = "{}"
run = "true"
"#,
        image.image()
    ));
    let run = project.run(&[]);
    assert_eq!(run.code(), 4, "{run}");
    assert!(
        run.stderr().contains(&format!(
            "{host} (from [plugins.swarm].config.host) is not a swarm manager"
        )),
        "{run}"
    );
    assert!(run.stderr().contains("docker swarm init"), "{run}");
}

#[test]
fn the_next_start_removes_services_whose_hm_is_gone() {
    let test = "the_next_start_removes_services_whose_hm_is_gone";
    let Some(cluster) = Cluster::start(test, 1) else {
        return;
    };
    // A service as a run leaves it when hm, its plugin and its guardian all died: labelled for
    // this machine, its kernel a process that is gone (pid 1 with another start time).
    let dead_run = format!("dead-{}", hm_tests::marker("swarm-orphan").to_lowercase());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let ns = std::fs::read_link("/proc/self/ns/pid").expect("pid namespace");
    let ns = ns.to_string_lossy();
    let ns = ns.trim_start_matches("pid:[").trim_end_matches(']');
    cluster.swarm.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--label",
        &format!("hm.run={dead_run}"),
        "--label",
        &format!("hm.host={}:{ns}", boot.trim()),
        "--label",
        "hm.kernel=1:0",
        "--restart-condition",
        "none",
        "--endpoint-mode",
        "dnsrr",
        cluster.image.image(),
        "sleep",
        "1000",
    ]);
    assert_eq!(cluster.services_of(&dead_run).len(), 1);

    let project = cluster.project(
        r#"
[steps.quick]
executor = "swarm"
image = "{image}"
run = "true"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    cluster.assert_no_service_of(&dead_run);
}

#[test]
fn a_lost_node_fails_its_step_with_node_lost_and_the_retry_runs_elsewhere() {
    let test = "a_lost_node_fails_its_step_with_node_lost_and_the_retry_runs_elsewhere";
    let Some(cluster) = Cluster::start(test, 3) else {
        return;
    };
    let (manager, spare, lost) = (
        cluster.swarm.node(0).name().to_owned(),
        cluster.swarm.node(1).name().to_owned(),
        cluster.swarm.node(2),
    );
    // The first attempt can only go to node-2; once it runs there, the manager takes new
    // tasks again, and it is the only ready node left for the retry when node-2 is cut off.
    cluster.set_availability(&manager, "drain");
    cluster.set_availability(&spare, "drain");
    let project = cluster.project(
        r#"
[steps.fragile]
executor = "swarm"
image = "{image}"
run = 'echo "attempt $HM_ATTEMPT started"; if [ "$HM_ATTEMPT" = 1 ]; then exec sleep 1000; fi; echo "attempt $HM_ATTEMPT done"'
retry = { attempts = 2, on = ["node_lost"] }
"#,
    );
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    let on_lost = format!("{RUNNING_ON}{}", lost.name());
    wait_for_lines(
        &mut hm,
        &[("fragile", &on_lost), ("fragile", "attempt 1 started")],
    );
    cluster.set_availability(&manager, "active");

    let cut = Instant::now();
    cluster.swarm.cut_link(lost);
    let first_end = hm.wait_for_event("the first attempt's step_end", WAIT, |e| {
        e["kind"] == "step_end" && e["step"] == "fragile" && e["attempt"] == 1
    });
    eprintln!(
        "{test}: the first attempt ended {:.1?} after {}'s link was cut",
        cut.elapsed(),
        lost.name()
    );
    let run = hm.finish(WAIT).into_run();
    let id = run_id(&run.events);
    assert_eq!(first_end["status"], "failed", "{run}");
    assert_eq!(first_end["cause"], "node_lost", "{run}");
    let message = first_end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("the node {} (id ", lost.name()))
            && message.contains("went down"),
        "{message}"
    );
    assert_eq!(run.of_step("step_retry", "fragile").len(), 1, "{run}");
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.status("fragile"), "passed", "{run}");
    assert_eq!(run.step_end("fragile")["attempt"], 2, "{run}");
    // Each attempt says where it ran: the lost node, then the manager.
    let stderr = run.stream_lines("fragile", "stderr");
    let nodes: Vec<&str> = stderr
        .iter()
        .filter_map(|l| l.strip_prefix(RUNNING_ON))
        .collect();
    assert_eq!(nodes, [lost.name(), manager.as_str()], "{stderr:?}");
    // The lost attempt's output up to the loss, then the retry's.
    assert_eq!(
        run.stream_lines("fragile", "stdout"),
        ["attempt 1 started", "attempt 2 started", "attempt 2 done"],
        "{run}"
    );
    run.assert_one_final_step_end_each();
    cluster.assert_no_service_of(&id);

    // The cut node still runs the lost attempt's task; once it is back, it learns that the
    // service is gone and removes the task's container.
    cluster.swarm.restore_link(lost);
    let restored = Instant::now();
    while cluster.node_state(lost.name()) != "ready" {
        assert!(
            restored.elapsed() < WAIT,
            "{} is not ready {WAIT:?} after its link was restored",
            lost.name()
        );
        std::thread::sleep(POLL);
    }
    cluster.assert_no_container_of(&id);
}

/// A run of two long steps, one on node-0 and one on node-1, and hm once both print their
/// first line.
/// Two steps that run until stopped, one on each node, reaching the manager at `host`; with
/// `service`, both list a swarm service (so the run has an overlay network too).
fn two_long_steps(cluster: &Cluster, host: &str, service: bool) -> (Project, Hm) {
    let services = if service {
        "[services.web]\nexecutor = \"swarm\"\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", \
         \"trap 'exit 0' TERM; sleep 1000 & wait\"]\n\n"
    } else {
        ""
    };
    let listed = if service { "services = [\"web\"]" } else { "" };
    let project = cluster.project_through(
        host,
        &format!(
            r#"{services}
[steps.first]
executor = "swarm"
image = "{{image}}"
run = "echo started; exec sleep 1000"
with = {{ constraints = ["node.hostname==node-0"] }}
{listed}

[steps.second]
executor = "swarm"
image = "{{image}}"
run = "echo started; exec sleep 1000"
with = {{ constraints = ["node.hostname==node-1"] }}
{listed}
"#
        ),
    );
    // The steps' `sleep` gets the SIGTERM from the prelude, and the service ends on it.
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    wait_for_lines(&mut hm, &[("first", "started"), ("second", "started")]);
    (project, hm)
}

#[test]
fn kill_9_of_hm_mid_run_leaves_no_service_task_container_or_network_within_10_s() {
    let test = "kill_9_of_hm_mid_run_leaves_no_service_task_container_or_network_within_10_s";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    // A manager reached over TCP, as a remote one is, and a service: the guardian removes
    // the services through that address, and the run's overlay network once the nodes have
    // let go of it.
    let host = cluster.swarm.manager().tcp_host();
    let (_project, mut hm) = two_long_steps(&cluster, &host, true);
    let id = run_id(hm.events());
    assert_eq!(
        cluster.services_of(&id).len(),
        3,
        "both steps' services and the pipeline's service run"
    );
    assert_eq!(
        cluster.containers_of(&id).len(),
        3,
        "the steps' and the service's tasks run"
    );
    assert_eq!(cluster.networks_of(&id).len(), 1, "the run's network");
    let killed = Instant::now();
    hm.signal(Signal::SIGKILL);
    // What the guardian does is the test: hm's own end says nothing.
    let _ = hm.finish(WAIT);
    let services_gone = {
        while !cluster.services_of(&id).is_empty() {
            assert!(
                killed.elapsed() < CLEANUP,
                "services of run {id} are still on the manager {CLEANUP:?} after SIGKILL"
            );
            std::thread::sleep(POLL);
        }
        killed.elapsed()
    };
    let left = CLEANUP.saturating_sub(killed.elapsed());
    cluster.wait_until_run_gone(&id, left);
    let containers_gone = killed.elapsed();
    while !cluster.networks_of(&id).is_empty() {
        assert!(
            killed.elapsed() < CLEANUP,
            "the network of run {id} is still on the manager {CLEANUP:?} after SIGKILL"
        );
        std::thread::sleep(POLL);
    }
    eprintln!(
        "{test}: after SIGKILL of hm, no service of the run in {services_gone:.1?}, no task \
         container in {containers_gone:.1?}, no network in {:.1?}",
        killed.elapsed()
    );
}

#[test]
fn ctrl_c_with_steps_on_two_nodes_exits_130_and_leaves_no_service_and_no_task_container() {
    let test =
        "ctrl_c_with_steps_on_two_nodes_exits_130_and_leaves_no_service_and_no_task_container";
    let Some(cluster) = Cluster::start(test, 2) else {
        return;
    };
    let (_project, mut hm) = two_long_steps(&cluster, &cluster.swarm.docker_host(), false);
    let id = run_id(hm.events());
    assert_eq!(cluster.containers_of(&id).len(), 2, "both steps' tasks run");
    let signalled = Instant::now();
    hm.signal(Signal::SIGINT);
    let run = hm.finish(WAIT).into_run();
    let exited = signalled.elapsed();
    assert_eq!(run.code(), 130, "{run}");
    for step in ["first", "second"] {
        assert_eq!(run.status(step), "cancelled", "{step}: {run}");
    }
    cluster.assert_no_service_of(&id);
    cluster.wait_until_run_gone(&id, CLEANUP.saturating_sub(signalled.elapsed()));
    eprintln!(
        "{test}: hm exited {exited:.1?} after SIGINT, no task container of the run {:.1?} \
         after it",
        signalled.elapsed()
    );
}
