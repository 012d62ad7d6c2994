//! One step attempt as a Swarm service: its name, and its definition (the step's command,
//! environment, image, labels, limits, grace and placement; one replica that is never
//! restarted, reached by DNS round robin).

use std::collections::HashMap;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, MountVolumeOptions,
    NetworkAttachmentConfig, ResourceObject, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use hm_ipc::messages::StepLimits;
use hm_plugin_docker::owner::Owner;
use hm_plugin_docker::{WORKSPACE, caches};
use hm_sdk::StepRequest;

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

/// What the task runs, besides what the step says: the command and environment the prelude
/// makes ([`crate::prelude`]) and the overlay networks of the services the step lists.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub networks: Vec<String>,
}

/// The service for one attempt of `step` in `image`:
/// - replicated with one replica and restart condition `none`: the task runs once, and a
///   failed one is not started again (hm decides retries). Not job mode: on Docker 20.10 the
///   task of a removed job runs on.
/// - endpoint mode `dnsrr`: no virtual IP, which needs IPVS on every node.
/// - `launch`'s command (the prelude, then the step's shell and `run`; the image's entrypoint
///   is replaced, as the step says what runs) and environment, the owner's labels on the
///   service and its container, its dependency caches as node-local volumes, and the
///   networks of its services.
/// - the step's limits as the task's limits, and its memory and CPU also as reservations, so
///   the manager places the task on a node that has them.
/// - SIGKILL `grace` after the SIGTERM a removal sends.
pub fn definition(
    step: &StepRequest,
    image: &str,
    owner: &Owner,
    options: &StepOptions,
    name: String,
    launch: Launch,
) -> ServiceSpec {
    let labels = owner.labels(&step.step, step.attempt);
    let mounts = caches(step);
    let container = TaskSpecContainerSpec {
        image: Some(image.to_owned()),
        command: Some(launch.command),
        env: Some(launch.env),
        labels: Some(labels.clone()),
        mounts: (!mounts.is_empty()).then_some(mounts),
        stop_grace_period: Some(i64::try_from(step.grace.as_nanos()).unwrap_or(i64::MAX)),
        tty: Some(false),
        open_stdin: Some(false),
        ..Default::default()
    };
    let networks = launch
        .networks
        .into_iter()
        .map(|target| NetworkAttachmentConfig {
            target: Some(target),
            ..Default::default()
        })
        .collect();
    one_task(name, labels, container, &step.limits, options, networks)
}

/// A service of one task, never restarted (hm decides retries), reached by DNS round robin (no
/// virtual IP: that needs IPVS on every node), with `limits` as its task's limits and
/// reservations and `options.constraints` as its placement: a step's, or a pipeline service's.
pub(crate) fn one_task(
    name: String,
    labels: HashMap<String, String>,
    container: TaskSpecContainerSpec,
    limits: &StepLimits,
    options: &StepOptions,
    networks: Vec<NetworkAttachmentConfig>,
) -> ServiceSpec {
    let placement = (!options.constraints.is_empty()).then(|| TaskSpecPlacement {
        constraints: Some(options.constraints.clone()),
        ..Default::default()
    });
    ServiceSpec {
        name: Some(name),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            resources: Some(resources(limits)),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                max_attempts: Some(0),
                ..Default::default()
            }),
            placement,
            networks: (!networks.is_empty()).then_some(networks),
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

/// The step's dependency caches: each a volume on whichever node the task runs on, made there
/// with hm's labels if missing, at its path (a relative one below `/workspace`). A cache is
/// the node's own: a step placed on another node starts with that node's.
fn caches(step: &StepRequest) -> Vec<Mount> {
    step.caches
        .iter()
        .map(|cache| Mount {
            target: Some(if cache.path.starts_with('/') {
                cache.path.clone()
            } else {
                format!("{WORKSPACE}/{}", cache.path)
            }),
            source: Some(cache.volume.clone()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(caches::labels(&cache.path)),
                ..Default::default()
            }),
            ..Default::default()
        })
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
    use hm_ipc::messages::CacheMount;
    use hm_plugin_docker::owner::{ATTEMPT, RUN, STEP};
    use hm_sdk::{OUTPUT_ENV, PROJECT_DIR_ENV};
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
        let launch = Launch {
            command: vec!["sh".into(), "-c".into(), "prelude".into()],
            env: vec!["CI=true".into()],
            networks: Vec::new(),
        };
        definition(
            step,
            "busybox:1",
            &owner,
            options,
            "hm-x-build-2".into(),
            launch,
        )
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
    fn the_task_runs_what_it_is_launched_with_labelled() {
        let spec = spec_of(&step(), &StepOptions::default());
        let labels = spec.labels.clone().unwrap_or_default();
        let task = spec.task_template.unwrap_or_default();
        let container = task.container_spec.unwrap_or_default();
        assert_eq!(container.image.as_deref(), Some("busybox:1"));
        assert_eq!(
            container.command,
            Some(vec!["sh".into(), "-c".into(), "prelude".into()])
        );
        assert_eq!(container.args, None);
        assert_eq!(container.env, Some(vec!["CI=true".into()]));
        // The prelude goes to the step's directory once the workspace is there.
        assert_eq!(container.dir, None);
        assert_eq!(container.mounts, None);
        assert_eq!(task.networks, None);
        assert_eq!(container.stop_grace_period, Some(1_500_000_000));
        assert_eq!(labels[RUN], "19abc-1f");
        assert_eq!(labels[STEP], "build");
        assert_eq!(labels[ATTEMPT], "2");
        assert_eq!(container.labels, Some(labels));
    }

    #[test]
    fn caches_are_node_volumes_and_services_networks() {
        let mut step = step();
        step.caches = vec![
            CacheMount {
                volume: "hm-cache-a".into(),
                path: "/root/.cargo/registry".into(),
            },
            CacheMount {
                volume: "hm-cache-b".into(),
                path: "target".into(),
            },
        ];
        let owner = Owner::current("19abc-1f");
        let launch = Launch {
            networks: vec!["hm-19abc-1f".into()],
            ..Launch::default()
        };
        let task = definition(
            &step,
            "busybox:1",
            &owner,
            &StepOptions::default(),
            "n".into(),
            launch,
        )
        .task_template
        .unwrap_or_default();
        let mounts = task
            .container_spec
            .and_then(|c| c.mounts)
            .unwrap_or_default();
        let described: Vec<_> = mounts
            .iter()
            .map(|m| {
                let labels = m
                    .volume_options
                    .as_ref()
                    .and_then(|o| o.labels.clone())
                    .unwrap_or_default();
                (
                    m.typ,
                    m.source.as_deref().unwrap_or_default(),
                    m.target.as_deref().unwrap_or_default(),
                    labels.get("hm.cache.path").cloned().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            described,
            [
                (
                    Some(MountType::VOLUME),
                    "hm-cache-a",
                    "/root/.cargo/registry",
                    "/root/.cargo/registry".to_owned()
                ),
                (
                    Some(MountType::VOLUME),
                    "hm-cache-b",
                    "/workspace/target",
                    "target".to_owned()
                ),
            ]
        );
        let networks: Vec<_> = task
            .networks
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.target.unwrap_or_default())
            .collect();
        assert_eq!(networks, ["hm-19abc-1f"]);
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
