//! One step attempt as a Swarm service: its name, and its definition (the step's command,
//! environment, image, labels, limits, grace and placement; one replica that is never
//! restarted, reached by DNS round robin).

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use hm_ipc::messages::StepLimits;
use hm_plugin_docker::owner::Owner;
use hm_sdk::{OUTPUT_ENV, PROJECT_DIR_ENV, StepRequest};

use crate::config::StepOptions;

/// The longest service name the manager accepts (a DNS label).
const MAX_NAME: usize = 63;

/// `hm-<run id>-<step>-<attempt>`, made into a name the manager accepts: letters, digits, `-`
/// and `_`, starting and ending with a letter or digit, at most 63 characters. When that
/// changes the step's part (a matrix instance's `[k=v]`, a long name), a hash of the whole
/// name keeps two steps from meeting under one name.
pub fn service_name(run_id: &str, step: &str, attempt: u32) -> String {
    let wanted = format!("hm-{run_id}-{step}");
    let suffix = format!("-{attempt}");
    let mut clean = String::with_capacity(wanted.len());
    for c in wanted.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '-'
        };
        // One `-` for a run of replaced characters.
        if !(c == '-' && clean.ends_with('-')) {
            clean.push(c);
        }
    }
    let mut clean = clean.trim_end_matches(['-', '_']).to_owned();
    if clean == wanted && clean.len() + suffix.len() <= MAX_NAME {
        return clean + &suffix;
    }
    let hash = format!("-{:08x}", fnv1a(wanted.as_bytes()) as u32);
    clean.truncate(MAX_NAME - suffix.len() - hash.len());
    let clean = clean.trim_end_matches(['-', '_']);
    format!("{clean}{hash}{suffix}")
}

/// FNV-1a: a stable hash (the same on every run and Rust version) for names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Environment variables whose values are paths on hm's machine, meaningless on a node.
const HOST_PATHS: &[&str] = &[PROJECT_DIR_ENV, OUTPUT_ENV];

/// The service for one attempt of `step` in `image`:
/// - replicated with one replica and restart condition `none`: the task runs once, and a
///   failed one is not started again (hm decides retries). Not job mode: on Docker 20.10 the
///   task of a removed job runs on.
/// - endpoint mode `dnsrr`: no virtual IP, which needs IPVS on every node.
/// - the step's shell and `run` as the command (the image's entrypoint is replaced, as the step
///   says what runs), its environment without hm's host paths, the owner's labels on the
///   service and its container.
/// - the step's limits as the task's limits, and its memory and CPU also as reservations, so
///   the manager places the task on a node that has them.
/// - SIGKILL `grace` after the SIGTERM a removal sends.
pub fn definition(
    step: &StepRequest,
    image: &str,
    owner: &Owner,
    options: &StepOptions,
    name: String,
) -> ServiceSpec {
    let labels = owner.labels(&step.step, step.attempt);
    let container = TaskSpecContainerSpec {
        image: Some(image.to_owned()),
        command: Some(step.command_line()),
        env: Some(env(step)),
        labels: Some(labels.clone()),
        stop_grace_period: Some(i64::try_from(step.grace.as_nanos()).unwrap_or(i64::MAX)),
        tty: Some(false),
        open_stdin: Some(false),
        ..Default::default()
    };
    let placement = (!options.constraints.is_empty()).then(|| TaskSpecPlacement {
        constraints: Some(options.constraints.clone()),
        ..Default::default()
    });
    ServiceSpec {
        name: Some(name),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            resources: Some(resources(&step.limits)),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                max_attempts: Some(0),
                ..Default::default()
            }),
            placement,
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: None,
        }),
        ..Default::default()
    }
}

/// The step's environment as `NAME=value`, without hm's host paths.
fn env(step: &StepRequest) -> Vec<String> {
    step.env
        .iter()
        .filter(|(name, _)| !HOST_PATHS.contains(&name.as_str()))
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// The step's limits as the task's limits; memory and CPU also as its reservations.
fn resources(limits: &StepLimits) -> TaskSpecResources {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let memory_bytes = limits.memory_bytes.map(int);
    // Thousandths of a core → billionths of a core.
    let nano_cpus = limits
        .cpu_millicores
        .map(|m| int(m.saturating_mul(1_000_000)));
    TaskSpecResources {
        limits: Some(Limit {
            memory_bytes,
            nano_cpus,
            pids: limits.pids.map(int),
        }),
        reservations: Some(ResourceObject {
            memory_bytes,
            nano_cpus,
            generic_resources: None,
        }),
        // No swap on top of the memory limit, as for shell and docker steps (engines before
        // API 1.43 ignore it; the swarm tests' nodes have no swap).
        swap_bytes: memory_bytes.map(|_| 0),
        memory_swappiness: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hm_plugin_docker::owner::{ATTEMPT, RUN, STEP};
    use std::time::Duration;

    fn step() -> StepRequest {
        StepRequest {
            step: "build".into(),
            attempt: 2,
            run: "make all".into(),
            shell: vec!["sh".into(), "-e".into(), "-c".into()],
            dir: "/project/sub".into(),
            env: vec![
                ("CI".into(), "true".into()),
                (PROJECT_DIR_ENV.into(), "/project".into()),
                (OUTPUT_ENV.into(), "/run/user/1/hm-x/build".into()),
                ("HM_STEP".into(), "build".into()),
            ],
            image: Some("busybox".into()),
            with: serde_json::Value::Null,
            grace: Duration::from_millis(1500),
            cgroup_procs: Vec::new(),
            limits: Default::default(),
            artifacts: Vec::new(),
            artifact_limits: Default::default(),
            caches: Vec::new(),
            services: Vec::new(),
        }
    }

    fn spec_of(step: &StepRequest, options: &StepOptions) -> ServiceSpec {
        let owner = Owner::current("19abc-1f");
        definition(step, "busybox:1", &owner, options, "hm-x-build-2".into())
    }

    #[test]
    fn one_replica_never_restarted_without_a_virtual_ip() {
        let spec = spec_of(&step(), &StepOptions::default());
        assert_eq!(spec.name.as_deref(), Some("hm-x-build-2"));
        let mode = spec.mode.unwrap_or_default();
        assert_eq!(mode.replicated.and_then(|r| r.replicas), Some(1));
        assert!(mode.replicated_job.is_none() && mode.global.is_none());
        let task = spec.task_template.unwrap_or_default();
        assert_eq!(
            task.restart_policy.and_then(|r| r.condition),
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert_eq!(
            spec.endpoint_spec.and_then(|e| e.mode),
            Some(EndpointSpecModeEnum::DNSRR)
        );
        assert!(task.placement.is_none());
    }

    #[test]
    fn the_task_runs_the_steps_command_and_env_without_host_paths() {
        let spec = spec_of(&step(), &StepOptions::default());
        let labels = spec.labels.clone().unwrap_or_default();
        let container = spec
            .task_template
            .and_then(|t| t.container_spec)
            .unwrap_or_default();
        assert_eq!(container.image.as_deref(), Some("busybox:1"));
        assert_eq!(
            container.command,
            Some(vec![
                "sh".into(),
                "-e".into(),
                "-c".into(),
                "make all".into()
            ])
        );
        assert_eq!(container.args, None);
        assert_eq!(
            container.env,
            Some(vec!["CI=true".into(), "HM_STEP=build".into()])
        );
        // The image's working directory: there is no workspace on the node.
        assert_eq!(container.dir, None);
        assert_eq!(container.stop_grace_period, Some(1_500_000_000));
        assert_eq!(labels[RUN], "19abc-1f");
        assert_eq!(labels[STEP], "build");
        assert_eq!(labels[ATTEMPT], "2");
        assert_eq!(container.labels, Some(labels));
    }

    #[test]
    fn limits_are_the_tasks_limits_and_reservations() {
        let mut step = step();
        step.limits.memory_bytes = Some(32 << 20);
        step.limits.pids = Some(64);
        step.limits.cpu_millicores = Some(1500);
        let resources = spec_of(&step, &StepOptions::default())
            .task_template
            .and_then(|t| t.resources)
            .unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        assert_eq!(limits.memory_bytes, Some(32 << 20));
        assert_eq!(limits.nano_cpus, Some(1_500_000_000));
        assert_eq!(limits.pids, Some(64));
        let reservations = resources.reservations.unwrap_or_default();
        assert_eq!(reservations.memory_bytes, Some(32 << 20));
        assert_eq!(reservations.nano_cpus, Some(1_500_000_000));
        assert_eq!(resources.swap_bytes, Some(0));

        let unlimited = spec_of(&self::step(), &StepOptions::default())
            .task_template
            .and_then(|t| t.resources)
            .unwrap_or_default();
        assert_eq!(unlimited.limits, Some(Limit::default()));
        assert_eq!(unlimited.reservations, Some(ResourceObject::default()));
        assert_eq!(unlimited.swap_bytes, None);
    }

    #[test]
    fn constraints_are_the_placement() {
        let options = StepOptions {
            constraints: vec!["node.labels.zone==a".into(), "node.role!=manager".into()],
        };
        let placement = spec_of(&step(), &options)
            .task_template
            .and_then(|t| t.placement)
            .unwrap_or_default();
        assert_eq!(placement.constraints, Some(options.constraints));
    }

    #[test]
    fn names_are_what_the_manager_accepts_and_distinct() {
        let check = |run: &str, step: &str, attempt: u32, expected: &str| {
            let name = service_name(run, step, attempt);
            assert_eq!(name, expected, "{step}");
            assert!(name.len() <= MAX_NAME, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}"
            );
        };
        check("19abc-1f", "build", 1, "hm-19abc-1f-build-1");
        check("19abc-1f", "unit_tests", 3, "hm-19abc-1f-unit_tests-3");
        let matrix = service_name("19abc-1f", "test[rust=stable]", 1);
        assert!(
            matrix.starts_with("hm-19abc-1f-test-rust-stable-"),
            "{matrix}"
        );
        assert!(matrix.ends_with("-1"), "{matrix}");
        // Two names that clean up alike stay apart.
        assert_ne!(matrix, service_name("19abc-1f", "test[rust.stable]", 1));
        let long = service_name("19abc-1f", &"x".repeat(100), 2);
        assert_eq!(long.len(), MAX_NAME, "{long}");
        assert!(long.ends_with("-2"), "{long}");
        assert_ne!(long, service_name("19abc-1f", &"x".repeat(101), 2));
    }
}
