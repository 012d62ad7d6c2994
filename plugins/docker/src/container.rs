//! One container for one attempt of one step: its definition (command, environment, working
//! directory, labels, limits, the `/workspace` volume), running it with its output streamed
//! live, the kill ladder on cancel, and its removal with its anonymous volumes.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, KillContainerOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use hm_ipc::messages::StepLimits;
use hm_sdk::process::LineSplitter;
use hm_sdk::{OutputStream, StepContext, StepError, StepRequest};

use crate::daemon::{describe, is_status};
use crate::owner::Owner;
use crate::stats::{Sampler, Usage};

/// Where the workspace archive is unpacked: an anonymous volume, removed with the container.
pub const WORKSPACE: &str = "/workspace";
/// How long output may keep arriving after the container has stopped. Only a daemon that
/// lost track of the stream takes that long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long after a SIGKILL exit the daemon's OOM event may still arrive.
const OOM_EVENT_DELAY: Duration = Duration::from_secs(3);

/// The container's definition: the step's command line (`sh -e -c RUN` by default; the image's
/// entrypoint is replaced, as the step says what runs), the step's environment and working directory, the owner's labels, the
/// step's limits, no log storage (the output is streamed), and `/workspace` as a volume.
pub fn definition(
    step: &StepRequest,
    image: &str,
    owner: &Owner,
    working_dir: &str,
) -> ContainerCreateBody {
    let host_config = HostConfig {
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        binds: Some(crate::caches::binds(step)).filter(|b| !b.is_empty()),
        ..limited(&step.limits)
    };
    ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(step.shell.clone()),
        cmd: Some(vec![step.run.clone()]),
        env: Some(crate::workspace::container_env(step)),
        working_dir: Some(working_dir.to_owned()),
        labels: Some(owner.labels(&step.step, step.attempt)),
        volumes: Some(vec![WORKSPACE.to_owned()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// A host configuration with `limits` (of a step or a service) as the container's.
pub fn limited(limits: &StepLimits) -> HostConfig {
    let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    HostConfig {
        memory: limits.memory_bytes.map(bytes),
        // Equal to `memory`: no swap on top of the limit, as for shell steps.
        memory_swap: limits.memory_bytes.map(bytes),
        pids_limit: limits.pids.map(bytes),
        // Thousandths of a core → billionths of a core.
        nano_cpus: limits
            .cpu_millicores
            .map(|m| bytes(m.saturating_mul(1_000_000))),
        ..Default::default()
    }
}

/// A created container. It is removed (with its volumes) by [`Container::remove`]; if it is
/// dropped without that (a panic, an abandoned future), the removal is started in the
/// background, and the next plugin start's sweep catches what that misses.
pub struct Container {
    docker: Docker,
    id: String,
    removed: bool,
}

impl Container {
    pub async fn create(
        docker: &Docker,
        name: Option<String>,
        definition: ContainerCreateBody,
    ) -> Result<Self, StepError> {
        let options = CreateContainerOptions {
            name,
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), definition)
            .await
            .map_err(|e| {
                StepError::Message(format!("cannot create the container: {}", describe(&e)))
            })?;
        Ok(Self {
            docker: docker.clone(),
            id: created.id,
            removed: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes the container, killing it if it still runs, with its anonymous volumes. A
    /// container the daemon no longer has counts as removed.
    pub async fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        remove(&self.docker, &self.id).await
    }

    /// Runs the created container to its end: output streamed as it comes, stdout and stderr
    /// apart, its memory and CPU sampled until it exits; on cancel SIGTERM, then SIGKILL once
    /// the step's grace has passed.
    pub async fn run(&self, step: &StepRequest, ctx: &StepContext) -> Result<Ended, StepError> {
        let docker = &self.docker;
        let id = self.id.as_str();
        // Attached before the start, so not a byte of output is missed.
        let attach = AttachContainerOptions {
            stdout: true,
            stderr: true,
            stream: true,
            ..Default::default()
        };
        let mut output = docker
            .attach_container(id, Some(attach))
            .await
            .map_err(|e| failed("attach to the container", &e))?
            .output;
        // The daemon's clock is not ours, and its event log is searched by this container's id:
        // a wide margin costs nothing.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(600));
        docker
            .start_container(id, None)
            .await
            .map_err(|e| failed("start the container", &e))?;
        // Sampled from the start until the exit; the daemon's samples of a stopped container
        // are zeros.
        let mut sampler = Sampler::start(docker, id);
        let wait = async {
            let until = WaitContainerOptions {
                condition: "not-running".to_owned(),
            };
            match docker.wait_container(id, Some(until)).next().await {
                // A non-zero exit comes as an error of its own; the code is read afterwards.
                Some(Ok(_) | Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {
                    Ok(())
                }
                Some(Err(e)) => Err(failed("wait for the container", &e)),
                None => Err(StepError::Message(
                    "the Docker daemon ended the wait for the container without an answer".into(),
                )),
            }
        };
        tokio::pin!(wait);

        let mut stdout = LineSplitter::new(OutputStream::Stdout, ctx.max_line_bytes());
        let mut stderr = LineSplitter::new(OutputStream::Stderr, ctx.max_line_bytes());
        let mut exited = false;
        let mut streaming = true;
        let mut unflushed = false;
        let mut cancelled = false;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        while !exited || streaming {
            // Biased: a cancel or a deadline is seen even while output pours in, and queued
            // output goes out only once nothing more is ready, so it is batched but live.
            tokio::select! {
                biased;
                () = ctx.cancelled(), if !cancelled && !exited => {
                    cancelled = true;
                    signal(docker, id, "SIGTERM").await;
                    kill_at = Some(tokio::time::Instant::now() + step.grace);
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() && !exited => {
                    signal(docker, id, "SIGKILL").await;
                    kill_at = None;
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() && streaming => {
                    streaming = false;
                }
                waited = &mut wait, if !exited => {
                    waited?;
                    exited = true;
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                // Before the output: a sample comes about once a second, and must not wait
                // behind output that pours in.
                () = sampler.sample(), if !exited => {}
                chunk = output.next(), if streaming => match chunk {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        stdout.feed(&message, ctx).await?;
                        unflushed = true;
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        stderr.feed(&message, ctx).await?;
                        unflushed = true;
                    }
                    Some(Ok(_)) => {}
                    // The stream ends when the container's stdout and stderr close; an error
                    // means the daemon went away, which the wait reports.
                    Some(Err(_)) | None => streaming = false,
                },
                () = std::future::ready(()), if unflushed => {
                    ctx.flush().await?;
                    unflushed = false;
                }
            }
        }
        // A last line without a newline is still a line.
        stdout.finish(ctx).await?;
        stderr.finish(ctx).await?;
        ctx.flush().await?;
        let usage = sampler.usage();
        // The daemon keeps sending samples until the stream is closed.
        drop(sampler);
        let limit = step.limits.memory_bytes;
        let mut ended = self.inspect(cancelled, usage, limit).await?;
        // The daemon learns of an OOM kill from an event of its own, which can come a while
        // after the exit on a busy machine: a SIGKILLed main process gets that while before it
        // counts as a plain SIGKILL, unless its memory use already says so. Docker 20.10 sets
        // `OOMKilled` only when that event is handled before the exit's, and the two race;
        // the daemon logs an `oom` event whenever it handles it, so its event log is asked too.
        let deadline = tokio::time::Instant::now() + OOM_EVENT_DELAY;
        while ended.exit_code == Some(137)
            && !ended.oom_killed
            && !ended.filled_its_memory()
            && !cancelled
        {
            if self.oom_event_since(started).await {
                ended.oom_killed = true;
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            ended = self.inspect(cancelled, usage, limit).await?;
        }
        Ok(ended)
    }

    /// Whether the daemon's event log has an `oom` event of this container since `since` (a
    /// time since the epoch). Best effort: a daemon that cannot say is taken as a no.
    async fn oom_event_since(&self, since: Duration) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let filters = std::collections::HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("container".to_owned(), vec![self.id.clone()]),
            ("event".to_owned(), vec!["oom".to_owned()]),
        ]);
        let options = EventsOptions {
            since: Some(since.as_secs().to_string()),
            // Up to now: the stream ends once the log is read, instead of waiting for more.
            until: Some((now.as_secs() + 1).to_string()),
            filters: Some(filters),
        };
        let events = self.docker.events(Some(options));
        tokio::pin!(events);
        // A daemon whose clock runs behind ours would hold the stream open: bounded here.
        let first = tokio::time::timeout(Duration::from_secs(2), events.next()).await;
        matches!(first, Ok(Some(Ok(_))))
    }

    async fn inspect(
        &self,
        cancelled: bool,
        usage: Usage,
        memory_limit: Option<u64>,
    ) -> Result<Ended, StepError> {
        let state = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .map_err(|e| failed("inspect the stopped container", &e))?
            .state
            .unwrap_or_default();
        Ok(Ended {
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            cancelled,
            usage,
            memory_limit,
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (docker, id) = (self.docker.clone(), self.id.clone());
            runtime.spawn(async move {
                let _ = remove(&docker, &id).await;
            });
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The daemon's exit code: the main process's, or 128 + the signal that killed it; none
    /// for a container that never started.
    pub exit_code: Option<i64>,
    /// The daemon saw the kernel's OOM killer act in the container (not necessarily on its
    /// main process).
    pub oom_killed: bool,
    pub cancelled: bool,
    /// Its peak memory and CPU time, from the daemon's samples while it ran.
    pub usage: Usage,
    /// The step's memory limit, the container's.
    pub memory_limit: Option<u64>,
}

impl Ended {
    /// Its memory use reached its limit (cgroup v1 keeps that high-water mark exactly): with a
    /// SIGKILLed main process, the OOM killer's doing even before the daemon has said so.
    pub fn filled_its_memory(&self) -> bool {
        matches!(
            (self.usage.peak_memory_bytes, self.memory_limit),
            (Some(peak), Some(limit)) if peak >= limit
        )
    }
}

/// Removes container `id` by force with its anonymous volumes; one the daemon does not have
/// (404), or is already removing (409), counts as removed.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(format!("cannot remove container {id}: {}", describe(&e))),
    }
}

/// Sends `signal` to the container's main process; a container that already stopped is fine.
async fn signal(docker: &Docker, id: &str, signal: &str) {
    let options = KillContainerOptions {
        signal: signal.to_owned(),
    };
    let _ = docker.kill_container(id, Some(options)).await;
}

fn failed(what: &str, error: &bollard::errors::Error) -> StepError {
    StepError::Message(format!("cannot {what}: {}", describe(error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hm_sdk::StepRequest;

    fn step() -> StepRequest {
        StepRequest {
            step: "build".into(),
            attempt: 2,
            run: "make all".into(),
            shell: vec!["bash".into(), "-e".into(), "-c".into()],
            dir: "/project/sub".into(),
            env: vec![("CI".into(), "true".into())],
            image: Some("busybox".into()),
            with: serde_json::Value::Null,
            grace: Duration::from_secs(10),
            cgroup_procs: Vec::new(),
            limits: Default::default(),
            artifacts: Vec::new(),
            artifact_limits: Default::default(),
            caches: Vec::new(),
            services: Vec::new(),
        }
    }

    #[test]
    fn the_container_runs_the_step_with_its_env_dir_and_labels() {
        let owner = Owner::current("1-1");
        let def = definition(&step(), "busybox", &owner, "/workspace/sub");
        assert_eq!(def.image.as_deref(), Some("busybox"));
        assert_eq!(
            def.entrypoint,
            Some(vec!["bash".into(), "-e".into(), "-c".into()])
        );
        assert_eq!(def.cmd, Some(vec!["make all".into()]));
        assert_eq!(def.env, Some(vec!["CI=true".into()]));
        assert_eq!(def.working_dir.as_deref(), Some("/workspace/sub"));
        assert_eq!(def.volumes, Some(vec![WORKSPACE.to_owned()]));
        let labels = def.labels.unwrap_or_default();
        assert_eq!(labels[crate::owner::RUN], "1-1");
        assert_eq!(labels[crate::owner::STEP], "build");
        assert_eq!(labels[crate::owner::ATTEMPT], "2");
        let host = def.host_config.unwrap_or_default();
        assert_eq!(
            (host.memory, host.pids_limit, host.nano_cpus),
            (None, None, None)
        );
    }

    #[test]
    fn limits_become_the_containers() {
        let mut step = step();
        step.limits.memory_bytes = Some(32 << 20);
        step.limits.pids = Some(64);
        step.limits.cpu_millicores = Some(1500);
        let host = definition(&step, "busybox", &Owner::current("1-1"), "/workspace")
            .host_config
            .unwrap_or_default();
        assert_eq!(host.memory, Some(32 << 20));
        assert_eq!(host.memory_swap, Some(32 << 20));
        assert_eq!(host.pids_limit, Some(64));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
    }
}
