//! Attempts of steps: which steps start ([`Scheduler::schedule`]), sending one to its
//! executor (its cgroup leaf and its `ExecuteStep`), what the executor reports back, and the
//! end of an attempt: its verdict (`verdict.rs` decides), its `step_end`, a retry or the step's
//! end, and fail fast.

use hm_ipc::host::{CallKind, LogFrame};
use std::path::Path;

use hm_ipc::messages::{
    AttemptCall, EnvVar, Execute, ExecuteStep, KernelCall, StepCall, StepLimits, StepResult,
};
use hm_ipc::{ARTIFACTS_SINCE, EXECUTE_SINCE, SERVICES_SINCE};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::plugins::PluginState;
use super::run_loop::Scheduler;
use super::steps::{Needs, StepState};
use super::verdict::{self, Evidence, Next, RetryContext, StopReason, Verdict};
use crate::cgroup::{CgroupError, Leaf, LeafJanitor};
use crate::config::{AttemptEnv, Prepared, Shell, Step};
use crate::events::{BuildEvent, Cause, Envelope, StepEnd, StepStatus, Stream};

/// What the executor reported with the end of an attempt, when it did.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) result: StepResult,
    /// The executor's runtime saw the OOM killer end the step (`StepOutOfMemory`).
    pub(super) out_of_memory: bool,
}

/// A step's `dir` must exist when the step starts (a step it needs may have created it).
fn check_dir(step: &Step, dir: &Path, root: &Path) -> Result<(), String> {
    let shown = dir.strip_prefix(root).unwrap_or(dir);
    let shown = if shown.as_os_str().is_empty() {
        Path::new(".")
    } else {
        shown
    };
    let problem = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => "is not a directory".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        Err(e) => format!("cannot be read: {e}"),
    };
    Err(format!(
        "its dir `{}` {problem} ({}): create it in a step this one needs, or fix `dir` of \
         the step at {}",
        shown.display(),
        dir.display(),
        step.location
    ))
}

/// A `shell` other than the default needs an executor that can be told (protocol 6).
fn check_shell(step: &Step, plugin: &str, protocol: u32) -> Result<(), String> {
    if protocol >= EXECUTE_SINCE || step.shell == Shell::Sh {
        return Ok(());
    }
    Err(format!(
        "its executor plugin `{plugin}` speaks protocol {protocol}, which cannot carry `shell` \
         (added in protocol {EXECUTE_SINCE}): update the plugin, or leave `shell` out"
    ))
}

/// The `ExecuteStep` of one attempt of `step`, rendered as `prepared`.
pub(super) fn execute_request(
    step: &Step,
    attempt: u32,
    prepared: Prepared,
    grace_ms: u64,
    leaf: Option<&Leaf>,
) -> ExecuteStep {
    ExecuteStep {
        step: step.name.clone(),
        attempt,
        run: prepared.run,
        dir: prepared.dir.display().to_string(),
        env: prepared
            .env
            .into_iter()
            .map(|(name, value)| EnvVar { name, value })
            .collect(),
        image: prepared.image,
        with_json: prepared.with_json,
        grace_ms,
        cgroup_procs: leaf.map_or_else(Vec::new, |l| {
            l.procs_files()
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        }),
        limits: StepLimits {
            memory_bytes: step.limits.memory_bytes,
            pids: step.limits.pids,
            cpu_millicores: step.limits.cpu.map(|c| (c * 1000.0).round() as u64),
        },
    }
}

impl Scheduler<'_> {
    /// Starts every step whose needs are met, in file order, while slots are free; skips
    /// steps whose needs failed.
    pub(super) fn schedule(&mut self) {
        self.release_services(false);
        let mut running = self.steps.running();
        for i in 0..self.steps.len() {
            if self.steps[i].state != StepState::Waiting {
                continue;
            }
            match self.steps.needs(i) {
                Needs::Pending => {}
                Needs::Never(cause) => {
                    let message = self.never_message(i, cause);
                    self.finish_unstarted(i, StepStatus::Skipped, cause, message);
                }
                Needs::Met if !self.steps[i].condition_checked => {
                    if let Err(why) = self.condition_holds(i) {
                        let message = format!("its condition is false: {why}");
                        self.finish_unstarted(
                            i,
                            StepStatus::Skipped,
                            Cause::Condition,
                            Some(message),
                        );
                        continue;
                    }
                    self.steps[i].condition_checked = true;
                    if running < self.opts.parallelism {
                        running += 1;
                        self.gate(i);
                    }
                }
                Needs::Met if running < self.opts.parallelism => {
                    running += 1;
                    self.gate(i);
                }
                Needs::Met => {}
            }
        }
    }

    /// Why step `i` will never run, when its cause needs more words.
    fn never_message(&self, i: usize, cause: Cause) -> Option<String> {
        match cause {
            Cause::Manual if self.steps.skipped_need(i).is_none() => Some(format!(
                "a manual step runs only when named: `hm run '{}'`",
                self.step_name(i)
            )),
            Cause::Condition | Cause::Manual => match self.steps.skipped_need(i) {
                Some(j) => Some(format!("it needs {}, which was skipped", self.step_name(j))),
                None => Some("nothing it needs failed (it runs on_failure)".to_owned()),
            },
            _ => None,
        }
    }

    /// Whether step `i`'s `if` holds, against its environment (hm's own under the step's).
    fn condition_holds(&self, i: usize) -> Result<(), String> {
        let def = &self.pipeline.steps[self.steps[i].index];
        let Some(condition) = &def.condition else {
            return Ok(());
        };
        let secrets = |name: &str| self.secret_value(name);
        let outputs = |step: &str, key: &str| self.output_of(i, step, key);
        let env = def.environment(AttemptEnv {
            overrides: &self.opts.env_overrides,
            project_dir: &self.pipeline.root,
            run_id: &self.opts.run_id,
            attempt: self.steps[i].attempt,
            inherited_ci: self.opts.inherited_ci.as_deref(),
            secrets: &secrets,
            outputs: &outputs,
            output_file: None,
        });
        crate::condition::holds(
            condition,
            &self.pipeline.root,
            self.opts.changes.as_ref(),
            |name| {
                env.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| std::env::var(name).ok())
            },
        )
    }

    /// Sends the step to its plugin, starting the plugin first if needed; a step with
    /// `inputs` is looked up in the cache first.
    pub(super) fn dispatch(&mut self, i: usize) {
        if self.look_up_first(i) || self.await_services(i) {
            return;
        }
        let p = self.steps[i].plugin;
        match &self.plugins[p].state {
            PluginState::Ready { .. } => self.send_execute(i),
            PluginState::Starting => self.steps[i].state = StepState::Starting,
            PluginState::Idle => {
                self.steps[i].state = StepState::Starting;
                self.start_plugin(p);
            }
            PluginState::Exited => {
                self.steps[i].state = StepState::Starting;
                if !self.restart_plugin(p) {
                    self.dispatch(i);
                }
            }
            PluginState::Failed(message) => {
                let message = message.clone();
                self.steps[i].state = StepState::Running;
                self.end_attempt(
                    i,
                    Verdict::failed(Cause::ExecutorCrash, message.to_string()),
                );
            }
        }
    }

    /// Sends the step's current attempt to its (ready) plugin, in a fresh cgroup leaf.
    pub(super) fn send_execute(&mut self, i: usize) {
        let p = self.steps[i].plugin;
        let PluginState::Ready { link, .. } = &self.plugins[p].state else {
            return;
        };
        let protocol = link.protocol();
        let output_file = self.new_output_file(i);
        self.steps[i].upload = None;
        // Each attempt's log is its own: a retry records afresh.
        if self.steps[i].cache_key.is_some() && self.cache.is_some() {
            self.steps[i].cache_log = Some(Vec::new());
        }
        let def = &self.pipeline.steps[self.steps[i].index];
        let root = &self.pipeline.root;
        let prepared = self
            .prepare(i, output_file.as_deref())
            .and_then(|prepared| {
                check_dir(def, &prepared.dir, root)?;
                check_shell(def, &self.plugins[p].spec.name, protocol)?;
                Ok(prepared)
            });
        let prepared = match prepared {
            Ok(mut prepared) => {
                prepared.env.extend(self.service_env(i));
                prepared
            }
            Err(message) => {
                self.steps[i].state = StepState::Running;
                self.end_attempt(i, Verdict::failed(Cause::Setup, message));
                return;
            }
        };
        let leaf = match self.step_leaf(i) {
            Ok(leaf) => leaf,
            Err(e) => {
                self.steps[i].state = StepState::Running;
                let message = format!("cannot create the step's cgroup: {e}");
                self.end_attempt(i, Verdict::failed(Cause::Exit, message));
                return;
            }
        };
        let call = self.next_call;
        self.next_call += 1;
        self.steps[i].artifact_globs = prepared.artifacts.clone();
        let def = &self.pipeline.steps[self.steps[i].index];
        let request = execute_request(
            def,
            self.steps[i].attempt,
            prepared,
            self.opts.grace.as_millis() as u64,
            leaf.as_ref(),
        );
        let caches = self.cache_mounts(i);
        let step_call = |request| StepCall {
            execute: Execute {
                step: request,
                shell: def.shell.argv(),
            },
            artifacts: self.steps[i].artifact_globs.clone(),
            artifacts_max_files: self.pipeline.artifacts_max.files,
            artifacts_max_bytes: self.pipeline.artifacts_max.bytes,
            caches,
        };
        let call_message = if protocol >= SERVICES_SINCE {
            KernelCall::Attempt(Box::new(AttemptCall {
                step: step_call(request),
                services: def.services.clone(),
            }))
        } else if protocol >= ARTIFACTS_SINCE {
            KernelCall::Step(Box::new(step_call(request)))
        } else if protocol >= EXECUTE_SINCE {
            KernelCall::Execute(Box::new(Execute {
                step: request,
                shell: def.shell.argv(),
            }))
        } else {
            KernelCall::ExecuteStep(Box::new(request))
        };
        self.steps[i].leaf = leaf;
        self.steps[i].output_file = output_file;
        let PluginState::Ready { pid, link } = &self.plugins[p].state else {
            return;
        };
        let pid = *pid;
        let attempt = self.steps[i].attempt;
        let _step = tracing::debug_span!("step", step = %def.name, attempt).entered();
        tracing::debug!(call, plugin = %self.plugins[p].spec.name, "execute");
        let sent = link.call(call, CallKind::Execute, &call_message);
        let now = Instant::now();
        let step = &mut self.steps[i];
        step.state = StepState::Running;
        step.call = call;
        step.started = Some(now);
        // Counted from the wait for its services, if it waited.
        step.deadline = step.deadline.or_else(|| def.timeout.map(|t| now + t));
        step.pgid = None;
        step.node = None;
        self.plugins[p].in_flight.insert(call, i);
        self.emit(BuildEvent::StepStart {
            step: def.name.clone(),
            attempt: self.steps[i].attempt,
            executor: def.executor.clone(),
            plugin_pid: pid,
        });
        if let Err(message) = sent {
            // The exit event of the plugin will follow; end the step now with the reason.
            self.plugins[p].in_flight.remove(&call);
            self.end_attempt(
                i,
                Verdict::failed(Cause::ExecutorCrash, message.to_string()),
            );
        }
    }

    /// Step `i`'s current attempt rendered: its expressions filled from its matrix values, its
    /// environment (secrets included) and the outputs of the steps it needs.
    pub(super) fn prepare(&self, i: usize, output_file: Option<&Path>) -> Result<Prepared, String> {
        let def = &self.pipeline.steps[self.steps[i].index];
        let root = &self.pipeline.root;
        let secrets = |name: &str| self.secret_value(name);
        let outputs = |step: &str, key: &str| self.output_of(i, step, key);
        def.prepare(
            root,
            AttemptEnv {
                overrides: &self.opts.env_overrides,
                project_dir: root,
                run_id: &self.opts.run_id,
                attempt: self.steps[i].attempt,
                inherited_ci: self.opts.inherited_ci.as_deref(),
                secrets: &secrets,
                outputs: &outputs,
                output_file,
            },
        )
    }

    /// A fresh cgroup leaf for the step's current attempt, with the step's limits.
    fn step_leaf(&self, i: usize) -> Result<Option<Leaf>, CgroupError> {
        let Some(run) = &self.opts.run_cgroup else {
            return Ok(None);
        };
        let step = &self.steps[i];
        let def = &self.pipeline.steps[step.index];
        let plugin = &self.plugins[step.plugin].spec.name;
        let name = format!("step-{}-{}", def.file_name(), step.attempt);
        run.step_leaf(plugin, &name, &def.limits).map(Some)
    }

    /// A batch of output of the step running as `call`: to the renderer, and to the hooks
    /// that observe `step_log`; then the batch's credit goes back to the plugin. The batch's
    /// text is read where the frame brought it; each chunk (lines joined by `\n`) goes to the
    /// renderer whole.
    pub(super) fn on_step_output(&mut self, p: usize, call: u64, batch: &LogFrame) {
        if let Some(&i) = self.plugins[p].in_flight.get(&call) {
            let def = &self.pipeline.steps[self.steps[i].index];
            // One timestamp per batch: its lines arrived together.
            let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let stream_of = |s: u8| match s {
                0 => Stream::Stdout,
                _ => Stream::Stderr,
            };
            let raw = batch.chunks().map(|(s, t)| (stream_of(s), t));
            let masked: Vec<(Stream, std::borrow::Cow<'_, str>)>;
            let chunks: Vec<(Stream, &str)> = if self.masker.is_active() {
                masked = raw.map(|(s, text)| (s, self.masker.mask(text))).collect();
                masked.iter().map(|(s, t)| (*s, t.as_ref())).collect()
            } else {
                raw.collect()
            };
            for (stream, text) in &chunks {
                let _ = self
                    .renderer
                    .step_logs(&ts, &self.opts.run_id, &def.name, *stream, text);
            }
            for (stream, text) in &chunks {
                super::cache::record(&mut self.steps[i], *stream, text);
            }
            if self.hooks_want_logs() {
                for (stream, text) in &chunks {
                    for line in text.split('\n') {
                        let envelope = Envelope::step_log(
                            &ts,
                            &self.opts.run_id,
                            &def.name,
                            *stream,
                            line,
                            false,
                        );
                        self.offer_to_hooks(&envelope);
                    }
                }
            }
        }
        // The batch is consumed: the plugin may send another.
        if let PluginState::Ready { link, .. } = &self.plugins[p].state {
            link.grant_credit();
        }
    }

    /// The executor's answer to the step running as `call`.
    pub(super) fn on_step_done(
        &mut self,
        p: usize,
        call: u64,
        result: StepResult,
        out_of_memory: bool,
    ) {
        if let Some(i) = self.plugins[p].in_flight.remove(&call) {
            let verdict = verdict::classify(&result, self.steps[i].stop);
            let report = Report {
                result,
                out_of_memory,
            };
            self.end_with_collection(i, verdict, report);
        }
    }

    /// The executor could not run the step running as `call` at all.
    /// The executor could not run the step of `call`, or lost it; `cause` when the executor
    /// said why (`image`, `node_lost`), else cause `exit`.
    pub(super) fn on_step_refused(
        &mut self,
        p: usize,
        call: u64,
        message: String,
        cause: Option<Cause>,
    ) {
        if let Some(i) = self.plugins[p].in_flight.remove(&call) {
            let verdict = match (self.steps[i].stop, cause) {
                (Some(reason), _) => Verdict::stopped(reason, Some(message)),
                (None, Some(cause)) => Verdict::failed(cause, message),
                (None, None) => Verdict::failed(
                    Cause::Exit,
                    format!(
                        "the {} executor could not run it: {message}",
                        self.plugins[p].spec.name
                    ),
                ),
            };
            self.end_attempt(i, verdict);
        }
    }

    /// Empties and removes a finished attempt's leaf. Processes that escaped the step's
    /// process group (the executor's own cleanup cannot see them) are reported in the step's
    /// log before its `step_end`, then killed.
    fn clean_step_leaf(&mut self, i: usize, leaf: Leaf) {
        let pgid = self.steps[i].pgid;
        let escaped = leaf
            .pids_quick()
            .iter()
            .filter(|&&pid| {
                pgid.is_none_or(|g| hm_ipc::procfs::stat(pid).map(|s| s.pgrp) != Some(g))
            })
            .count();
        if escaped > 0 {
            let line = format!(
                "hm: killed {escaped} process(es) that left the step's process group but not its \
                 cgroup"
            );
            self.step_log_line(i, Stream::Stderr, &line);
        }
        if self.janitor.is_none() {
            match LeafJanitor::start() {
                Ok(janitor) => self.janitor = Some(janitor),
                Err(e) => tracing::warn!("cannot start the cgroup janitor thread: {e}"),
            }
        }
        match &self.janitor {
            Some(janitor) => janitor.remove(leaf),
            // Emptying may wait for dying processes: never in the run loop.
            None => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = leaf.kill().and_then(|()| leaf.remove()) {
                        tracing::warn!("{e}");
                    }
                });
            }
        }
    }

    /// Ends the current attempt of step `i` with `verdict`, the executor having said nothing
    /// more.
    pub(super) fn end_attempt(&mut self, i: usize, verdict: Verdict) {
        self.end_attempt_with(i, verdict, Report::default());
    }

    /// Ends the current attempt of step `i`: the final verdict, the leaf cleaned up, one
    /// `step_end`, then a retry or the step's end (and fail fast).
    pub(super) fn end_attempt_with(&mut self, i: usize, verdict: Verdict, report: Report) {
        let def = &self.pipeline.steps[self.steps[i].index];
        // What went wrong is only asked of a failure.
        let stats = self.steps[i]
            .leaf
            .as_ref()
            .map(|leaf| match verdict.is_failure() {
                true => leaf.stats(),
                false => leaf.usage(),
            })
            .unwrap_or_default();
        let mut verdict = verdict::finalize(
            verdict,
            Evidence {
                stop: self.steps[i].stop,
                executor_oom: report.out_of_memory,
                executor_peak: report.result.peak_memory_bytes,
                stats: &stats,
                limits: &def.limits,
            },
        );
        // A leaf that never held a process peaked at 0 bytes (a docker step's container has a
        // cgroup of its own): its numbers are not the step's, the executor's may be.
        let leaf_used = stats.peak_memory_bytes.is_some_and(|peak| peak > 0);
        if let Some(leaf) = self.steps[i].leaf.take() {
            self.clean_step_leaf(i, leaf);
        } else if let Some(pgid) = self.steps[i].pgid {
            // Without a cgroup the step's process group is all hm knows of it: nothing in it
            // may outlive the step, whatever its executor did. The group cannot have been
            // reused while a member is alive, and is only signalled if one is.
            if killpg(Pid::from_raw(pgid), None).is_ok() {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        let step = &self.steps[i];
        let attempt = step.attempt;
        let _step = tracing::debug_span!("step", step = %def.name, attempt).entered();
        let next = verdict::next(
            &verdict,
            RetryContext {
                attempt,
                retry: &def.retry,
                allow_failure: &def.allow_failure,
                stop: step.stop,
                run_stopping: self.user_cancelled || self.failing_fast || self.pipeline_timed_out,
            },
        );
        let allowed = next
            == Next::Done {
                allowed_failure: true,
            };
        tracing::debug!(
            status = verdict.status.as_str(),
            cause = verdict.cause.map(|c| c.as_str()),
            retry = next == Next::Retry,
            "attempt ended"
        );
        if allowed && verdict.message.is_none() {
            verdict.message = Some("failure allowed".into());
        }
        self.emit(BuildEvent::StepEnd(StepEnd {
            step: def.name.clone(),
            attempt,
            status: verdict.status,
            cause: verdict.cause,
            exit_code: verdict.exit_code,
            signal: verdict.signal,
            duration_ms: step.started.map_or(0, |s| s.elapsed().as_millis() as u64),
            peak_memory_bytes: stats
                .peak_memory_bytes
                .filter(|_| leaf_used)
                .or(report.result.peak_memory_bytes),
            cpu_ms: stats.cpu_ms.filter(|_| leaf_used).or(report.result.cpu_ms),
            message: verdict.message.clone(),
            allowed_failure: allowed,
            matrix: def.matrix.clone(),
            cache: self.steps[i].cache_status,
            saved_ms: self.steps[i].saved_ms,
            artifacts: self.steps[i].artifacts.clone(),
            outputs: self.steps[i].outputs.clone(),
            node: self.steps[i].node.clone(),
        }));
        let step = &mut self.steps[i];
        step.started = None;
        step.deadline = None;
        step.ladder = None;
        step.pgid = None;
        if next == Next::Retry {
            step.stop = None;
            step.attempt += 1;
            step.state = StepState::Waiting;
            self.emit(BuildEvent::StepRetry {
                step: def.name.clone(),
                attempt: attempt + 1,
                cause: verdict.cause.unwrap_or(Cause::Exit),
            });
            return;
        }
        step.state = StepState::Done;
        step.allowed_failure = allowed;
        let failed = verdict.is_failure() && !allowed;
        step.verdict = Some(verdict);
        if failed && !self.opts.keep_going && !self.failing_fast {
            self.failing_fast = true;
            self.stop_all(StopReason::FailFast);
        }
    }

    /// Ends a step that never started, with exactly one `step_end`.
    pub(super) fn finish_unstarted(
        &mut self,
        i: usize,
        status: StepStatus,
        cause: Cause,
        message: Option<String>,
    ) {
        let step = &mut self.steps[i];
        step.state = StepState::Done;
        step.verdict = Some(Verdict {
            status,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            message: message.clone(),
        });
        let (step, attempt) = (self.step_name(i).to_owned(), self.steps[i].attempt);
        let matrix = self.pipeline.steps[self.steps[i].index].matrix.clone();
        self.emit(BuildEvent::StepEnd(StepEnd {
            step,
            attempt,
            matrix,
            status,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            duration_ms: 0,
            peak_memory_bytes: None,
            cpu_ms: None,
            message,
            allowed_failure: false,
            cache: None,
            saved_ms: None,
            artifacts: Vec::new(),
            outputs: Vec::new(),
            node: None,
        }));
    }

    /// One line of hm's own in step `i`'s log (to the renderer and the hooks), masked.
    pub(super) fn step_log_line(&mut self, i: usize, stream: Stream, line: &str) {
        let def = &self.pipeline.steps[self.steps[i].index];
        self.emit(BuildEvent::StepLog {
            step: def.name.clone(),
            stream,
            line: line.to_owned(),
            replayed: false,
        });
    }
}
