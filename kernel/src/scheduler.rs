//! The run loop: a dataflow DAG scheduler and the supervisor state in one task.
//!
//! One task owns every step's state and every plugin's state and runs the one `select!`
//! loop; plugin connection tasks and signals only send it messages. Each step is a small state
//! machine (`Waiting → Starting → Running → Done`, with retries going back to `Waiting`).
//!
//! Stopping a step is always the same ladder: a `Cancel` frame, the executor's own grace
//! (SIGTERM, then SIGKILL after `--grace`), and, if the plugin has not answered `grace + 2 s`
//! later, SIGKILL to the step's process group from here; if it still has not answered 2 s after
//! that, the plugin is considered hung and its process group is killed.
//!
//! Hooks see the same events as the renderers. A step whose needs are met and
//! that has a slot first passes its `before` hooks on `step_start` (state `Gating`): the kernel
//! asks every such hook and waits, each up to its timeout; one abort ends the step with cause
//! `hook_abort` before any executor sees it. `after` hooks get their events from a bounded
//! queue, one at a time and in order, and the run never waits for them, except at its very end:
//! `build_end` is delivered and the queues drained (for a bounded time) before hook plugins are
//! shut down. A hook that fails, crashes or hangs is reported, killed if hung, and restarted for
//! its next event within the plugin's budget; it fails the run (exit 5) only with
//! `required = true`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hm_ipc::host::CallKind;
use hm_ipc::messages::{
    EnvVar, ExecuteStep, HookEvent, HookPhase, KernelCall, PROJECT_DIR_ENV, StepLimits, StepResult,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::archive::WorkspaceArchive;
use crate::cgroup::{Leaf, LeafJanitor, LeafStats, RunCgroup};
use crate::classify::{StopReason, Verdict, classify, retry_matches, stopped};
use crate::config::Pipeline;
use crate::events::{BuildEvent, Cause, Envelope, Isolation, StepEnd, StepStatus, Stream};
use crate::exit;
use crate::guardian::Guardian;
use crate::hooks::{HookQueue, QueuedEvent, subscription};
use crate::registry::PluginSpec;
use crate::registry::manifest::HookSpec;
use crate::render::Renderer;
use crate::supervisor::attach::AttachPoint;
use crate::supervisor::connection::ConnectionContext;
use crate::supervisor::host_api::HostState;
use crate::supervisor::{
    Confinement, FailedProcess, PluginEvent, PluginEventKind, PluginExit, PluginKey, PluginLink,
    start_plugin,
};

/// After the grace period, how long the kernel waits before killing a step itself, and then
/// before declaring its plugin hung.
const ESCALATE: Duration = Duration::from_secs(2);
/// How long plugins get to exit after `Shutdown` at the end of the run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);
/// At the end of the run, how long hooks get to take their last events (beyond the longest
/// hook timeout) before what is left is dropped.
const HOOK_DRAIN: Duration = Duration::from_secs(10);

/// What `hm run` asked for, beyond the pipeline itself.
pub struct RunOptions {
    pub run_id: String,
    /// Indices of the steps to run (the selection and everything it needs), in file order.
    pub selected: Vec<usize>,
    pub parallelism: usize,
    pub keep_going: bool,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// `-e KEY=VALUE`, applied over every step's env.
    pub env_overrides: Vec<(String, String)>,
    /// The plugin serving each selected step's executor, by step index.
    pub executors: HashMap<usize, PluginSpec>,
    /// The hook plugins the project configures (`[plugins.<name>]`).
    pub hooks: Vec<PluginSpec>,
    /// `--attach NAME=SOCKET`: plugins hm waits for on a socket instead of starting them.
    pub attach: HashMap<String, Arc<AttachPoint>>,
    pub isolation: Isolation,
    pub isolation_reason: Option<String>,
    /// The run's cgroup tree; `None` when hm runs without cgroups.
    pub run_cgroup: Option<Arc<RunCgroup>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepState {
    /// Needs unfinished steps, or waits for a free slot.
    Waiting,
    /// Holds a slot; its `before` hooks on `step_start` have not all answered.
    Gating,
    /// Holds a slot; its plugin is starting.
    Starting,
    /// Its `ExecuteStep` call is in flight.
    Running,
    Done,
}

struct StepRun {
    index: usize,
    state: StepState,
    attempt: u32,
    plugin: usize,
    call: u64,
    started: Option<Instant>,
    deadline: Option<Instant>,
    pgid: Option<i32>,
    stop: Option<StopReason>,
    /// When the kernel must next act on a stop: kill the step's group, then the plugin.
    escalate_at: Option<Instant>,
    escalations: u8,
    verdict: Option<Verdict>,
    allowed_failure: bool,
    /// The attempt's cgroup leaf, while it runs.
    leaf: Option<Leaf>,
    /// Numbers the gates a step passes (one per attempt), so a late answer to an old gate is
    /// never taken for the current one.
    gate: u32,
    /// `before` hooks that have not answered the current gate.
    gates_pending: usize,
    /// The first abort of the current gate: which hook, and why.
    gate_abort: Option<String>,
}

/// A hook call in flight.
struct HookCall {
    kind: &'static str,
    timeout: Duration,
    deadline: Instant,
    /// For a `before` call: the step (position in `steps`) and its gate number.
    gate: Option<(usize, u32)>,
}

enum PluginState {
    Idle,
    Starting,
    Ready {
        pid: u32,
        link: PluginLink,
    },
    /// Started and gone; may be restarted within its budget.
    Exited,
    /// Will not be started again; the message says why.
    Failed(String),
}

struct PluginSlot {
    spec: PluginSpec,
    settings: crate::config::PluginSettings,
    generation: u32,
    state: PluginState,
    pid: u32,
    /// Step indices by call id.
    in_flight: HashMap<u64, usize>,
    restarts: VecDeque<Instant>,
    restart_count: u32,
    shutdown_sent: bool,
    /// The plugin process's cgroup leaf, while it lives.
    leaf: Option<Leaf>,
    /// The events this plugin's hook observes in this run; empty when it is no hook here.
    hooks: Vec<HookSpec>,
    /// `after` events waiting for the hook.
    queue: HookQueue,
    /// Hook calls in flight, by call id.
    hook_calls: HashMap<u64, HookCall>,
    /// The one `after` call in flight: events go one at a time, in order.
    after_call: Option<u64>,
    /// `before` calls waiting for the plugin to start: step, gate, event.
    parked_gates: Vec<(usize, u32, String)>,
    /// Cancels the start of this instance (an attached plugin nobody starts).
    abandon: tokio_util::sync::CancellationToken,
    /// The run gave up waiting for it: its failure to start is no plugin problem.
    abandoned: bool,
}

impl PluginSlot {
    fn new(spec: PluginSpec, settings: crate::config::PluginSettings) -> Self {
        Self {
            spec,
            settings,
            generation: 0,
            state: PluginState::Idle,
            pid: 0,
            in_flight: HashMap::new(),
            restarts: VecDeque::new(),
            restart_count: 0,
            shutdown_sent: false,
            leaf: None,
            hooks: Vec::new(),
            queue: HookQueue::default(),
            hook_calls: HashMap::new(),
            after_call: None,
            parked_gates: Vec::new(),
            abandon: tokio_util::sync::CancellationToken::new(),
            abandoned: false,
        }
    }

    fn is_hook(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Nothing waits for this hook, nor is it answering anything.
    fn hook_idle(&self) -> bool {
        self.queue.is_empty() && self.hook_calls.is_empty() && self.parked_gates.is_empty()
    }
}

pub struct Scheduler<'a> {
    pipeline: &'a Pipeline,
    opts: RunOptions,
    renderer: Box<dyn Renderer + Send>,
    steps: Vec<StepRun>,
    /// Position in `steps` by step index in the pipeline.
    by_index: HashMap<usize, usize>,
    plugins: Vec<PluginSlot>,
    events_tx: mpsc::UnboundedSender<PluginEvent>,
    events_rx: mpsc::UnboundedReceiver<PluginEvent>,
    host: Arc<HostState>,
    /// The workspace archive, built if a plugin asks; dropped once every step is done.
    archive: Arc<WorkspaceArchive>,
    next_call: u64,
    running: usize,
    started_at: Instant,
    pipeline_deadline: Option<Instant>,
    user_cancelled: bool,
    pipeline_timed_out: bool,
    failing_fast: bool,
    plugin_problem: bool,
    /// A plugin refused to start because its environment is missing (exit 4).
    environment_unavailable: bool,
    shutdown_deadline: Option<Instant>,
    /// Cleans up after the kernel if it dies; told about every process group started.
    guardian: Option<Guardian>,
    /// Plugin processes tokio waits for; the orphan reaper leaves them alone.
    children: Arc<Mutex<HashSet<u32>>>,
    /// The exit code `build_end` reported, once it has been emitted. Events after it go to no
    /// renderer and no hook: `build_end` is the last event of every run.
    build_end_code: Option<i32>,
    /// When hooks must have taken their last events.
    drain_deadline: Option<Instant>,
    /// Removes finished step leaves off the run loop.
    janitor: Option<LeafJanitor>,
    /// Everything was killed (second Ctrl-C, or plugins that would not shut down): no plugin
    /// is started again, not even a hook with events left.
    killed_all: bool,
}

impl<'a> Scheduler<'a> {
    pub fn new(
        pipeline: &'a Pipeline,
        opts: RunOptions,
        renderer: Box<dyn Renderer + Send>,
    ) -> Self {
        let mut plugins: Vec<PluginSlot> = Vec::new();
        let mut steps = Vec::new();
        let mut by_index = HashMap::new();
        for &index in &opts.selected {
            let spec = &opts.executors[&index];
            let plugin = slot_for(&mut plugins, pipeline, spec);
            by_index.insert(index, steps.len());
            steps.push(StepRun {
                index,
                state: StepState::Waiting,
                attempt: 1,
                plugin,
                call: 0,
                started: None,
                deadline: None,
                pgid: None,
                stop: None,
                escalate_at: None,
                escalations: 0,
                verdict: None,
                allowed_failure: false,
                leaf: None,
                gate: 0,
                gates_pending: 0,
                gate_abort: None,
            });
        }
        for spec in &opts.hooks {
            let p = slot_for(&mut plugins, pipeline, spec);
            plugins[p].hooks = spec.hooks.clone();
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Self {
            pipeline,
            pipeline_deadline: opts.timeout.map(|t| now + t),
            opts,
            renderer,
            steps,
            by_index,
            plugins,
            events_tx,
            events_rx,
            host: Arc::new(HostState::default()),
            archive: Arc::new(WorkspaceArchive::new(pipeline.root.clone())),
            next_call: 1,
            running: 0,
            started_at: now,
            user_cancelled: false,
            pipeline_timed_out: false,
            failing_fast: false,
            plugin_problem: false,
            environment_unavailable: false,
            shutdown_deadline: None,
            guardian: None,
            children: Arc::default(),
            build_end_code: None,
            drain_deadline: None,
            janitor: None,
            killed_all: false,
        }
    }

    /// Runs the pipeline to the end and returns hm's exit code.
    /// Hands the run's guardian to the scheduler, which reports every process group to it and
    /// dismisses it once everything is cleaned up.
    pub fn with_guardian(mut self, guardian: Option<Guardian>) -> Self {
        self.guardian = guardian;
        self
    }

    pub async fn run(mut self) -> i32 {
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sigchld = signal(SignalKind::child()).ok();
        self.emit(BuildEvent::BuildStart {
            pipeline: self.pipeline.name.clone(),
            steps: self.steps.len(),
            parallelism: self.opts.parallelism,
            isolation: self.opts.isolation,
            isolation_reason: self.opts.isolation_reason.clone(),
        });
        for i in 0..self.steps.len() {
            let step = self.step_name(i).to_owned();
            self.emit(BuildEvent::StepQueued { step });
        }
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut interrupts = 0u32;
        loop {
            self.schedule();
            if self.all_done() && self.finish() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                Some(event) = self.events_rx.recv() => {
                    self.on_plugin_event(event);
                    // Drain what else is queued before rendering, so bursts cost one flush.
                    while let Ok(event) = self.events_rx.try_recv() {
                        self.on_plugin_event(event);
                    }
                }
                Some(()) = recv_signal(&mut sigint) => {
                    interrupts += 1;
                    self.on_interrupt(interrupts);
                }
                Some(()) = recv_signal(&mut sigchld) => {
                    self.reap_orphans();
                }
                Some(()) = recv_signal(&mut sigterm) => {
                    interrupts += 1;
                    self.on_interrupt(interrupts);
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                    self.on_timers();
                }
                _ = ticker.tick() => {
                    let _ = self.renderer.tick();
                }
            }
            let _ = self.renderer.flush();
        }
        if let Some(run) = self.opts.run_cgroup.clone() {
            let janitor = self.janitor.take();
            // Whatever is left (a plugin's stray children) dies with the run's tree, once the
            // janitor has removed the leaves it was given.
            let removed = tokio::task::spawn_blocking(move || {
                if let Some(janitor) = janitor {
                    janitor.finish();
                }
                run.remove()
            })
            .await;
            if let Ok(Err(e)) = removed {
                tracing::warn!("{e}");
            }
        }
        self.archive.close();
        if self.build_end_code.is_none() {
            self.end_build();
        }
        let _ = self.renderer.flush();
        for slot in self.plugins.iter().filter(|s| s.is_hook()) {
            if slot.queue.dropped() > 0 {
                tracing::warn!(
                    "hook {} missed {} event(s): its queue of {} was full, or it could not \
                     take them (see above)",
                    slot.spec.name,
                    slot.queue.dropped(),
                    crate::hooks::QUEUE_CAPACITY
                );
            }
        }
        let code = self.exit_code();
        if Some(code) != self.build_end_code {
            tracing::error!(
                "exiting with {code}, not the {} build_end reported: a required hook failed \
                 after it",
                self.build_end_code.unwrap_or_default()
            );
        }
        self.reap_orphans();
        if let Some(guardian) = self.guardian.take() {
            guardian.dismiss();
        }
        code
    }

    /// Reaps zombies re-parented to the kernel (it is a subreaper), never the plugins tokio
    /// waits for, nor the guardian.
    fn reap_orphans(&self) {
        let mut keep = self
            .children
            .lock()
            .map(|set| set.clone())
            .unwrap_or_default();
        if let Some(guardian) = &self.guardian {
            keep.insert(guardian.pid());
        }
        crate::reaper::reap_orphans(&keep);
    }

    fn exit_code(&self) -> i32 {
        if self.user_cancelled {
            return exit::CANCELLED;
        }
        let failures = self
            .steps
            .iter()
            .filter_map(|s| s.verdict.as_ref().filter(|_| !s.allowed_failure))
            .filter(|v| v.is_failure())
            .collect::<Vec<_>>();
        if self.pipeline_timed_out || failures.iter().any(|v| v.cause == Some(Cause::Timeout)) {
            return exit::TIMEOUT;
        }
        if self.environment_unavailable {
            return exit::ENVIRONMENT;
        }
        if self.plugin_problem {
            return exit::PLUGIN;
        }
        if !failures.is_empty() {
            return exit::STEP_FAILED;
        }
        exit::OK
    }

    // ---- scheduling ----

    /// Starts every step whose needs are met, in file order, while slots are free; skips
    /// steps whose needs failed.
    fn schedule(&mut self) {
        for i in 0..self.steps.len() {
            if self.steps[i].state != StepState::Waiting {
                continue;
            }
            match self.needs_state(i) {
                Needs::Pending => {}
                Needs::Failed => {
                    self.finish_unstarted(i, StepStatus::Skipped, Cause::DependencyFailed);
                }
                Needs::Met => {
                    if self.running >= self.opts.parallelism {
                        continue;
                    }
                    self.running += 1;
                    self.gate(i);
                }
            }
        }
    }

    fn needs_state(&self, i: usize) -> Needs {
        let step = &self.pipeline.steps[self.steps[i].index];
        let mut pending = false;
        for need in &step.needs {
            let Some(&j) = self.by_index.get(need) else {
                continue;
            };
            let dep = &self.steps[j];
            match (&dep.state, &dep.verdict) {
                (StepState::Done, Some(v))
                    if v.status == StepStatus::Passed || dep.allowed_failure => {}
                (StepState::Done, _) => return Needs::Failed,
                _ => pending = true,
            }
        }
        if pending { Needs::Pending } else { Needs::Met }
    }

    /// Sends the step to its plugin, starting the plugin first if needed.
    fn dispatch(&mut self, i: usize) {
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
                self.end_attempt(i, Verdict::failed(Cause::ExecutorCrash, message));
            }
        }
    }

    /// Starts a plugin that exited again if its budget allows (`plugin_restart`), or marks it
    /// failed for good. Returns whether it is starting.
    fn restart_plugin(&mut self, p: usize) -> bool {
        if !self.restart_allowed(p) {
            let slot = &mut self.plugins[p];
            let message = format!(
                "plugin {} crashed more than {} times within {}; not restarted",
                slot.spec.name,
                slot.settings.restart.max,
                humantime::format_duration(slot.settings.restart.within)
            );
            slot.state = PluginState::Failed(message);
            return false;
        }
        let slot = &mut self.plugins[p];
        slot.restart_count += 1;
        slot.restarts.push_back(Instant::now());
        let (plugin, restarts, max) = (
            slot.spec.name.clone(),
            slot.restart_count,
            slot.settings.restart.max,
        );
        // Starting before the event: a hook that observes its own restart must find itself
        // starting, not start a second time.
        self.start_plugin(p);
        self.emit(BuildEvent::PluginRestart {
            plugin,
            restarts,
            max,
        });
        true
    }

    fn restart_allowed(&mut self, p: usize) -> bool {
        let slot = &mut self.plugins[p];
        let now = Instant::now();
        while slot
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > slot.settings.restart.within)
        {
            slot.restarts.pop_front();
        }
        (slot.restarts.len() as u32) < slot.settings.restart.max
    }

    fn start_plugin(&mut self, p: usize) {
        let slot = &mut self.plugins[p];
        slot.generation += 1;
        slot.state = PluginState::Starting;
        slot.shutdown_sent = false;
        let key = PluginKey {
            index: p,
            generation: slot.generation,
        };
        slot.abandon = tokio_util::sync::CancellationToken::new();
        let attach = self.opts.attach.get(&slot.spec.name).cloned();
        let ctx = ConnectionContext {
            run_id: self.opts.run_id.clone(),
            pipeline: self.pipeline.name.clone(),
            project_dir: self.pipeline.root.clone(),
            attach: attach.clone(),
            abandon: slot.abandon.clone(),
            events: self.events_tx.clone(),
            host: self.host.clone(),
            archive: self.archive.clone(),
            children: self.children.clone(),
        };
        let mut confinement = Confinement::default();
        match &self.opts.run_cgroup {
            // A process started by hand is not hm's to confine; its steps still are.
            _ if attach.is_some() => {}
            // A restarted instance gets a leaf of its own: the old one may still be emptying.
            Some(run) => match run.leaf(
                &slot.spec.name,
                &plugin_leaf_name(slot.generation),
                &slot.settings.limits,
            ) {
                Ok(leaf) => {
                    confinement.leaf = Some(leaf.clone());
                    slot.leaf = Some(leaf);
                }
                Err(e) => {
                    let message =
                        format!("plugin {}: cannot create its cgroup: {e}", slot.spec.name);
                    let kind = PluginEventKind::StartFailed {
                        message,
                        unavailable: false,
                        violation: false,
                        process: None,
                    };
                    let _ = self.events_tx.send(PluginEvent { key, kind });
                    return;
                }
            },
            None => confinement.memory_rlimit = slot.settings.limits.memory_bytes,
        }
        start_plugin(
            key,
            slot.spec.clone(),
            slot.settings.clone(),
            confinement,
            ctx,
        );
    }

    fn send_execute(&mut self, i: usize) {
        let p = self.steps[i].plugin;
        let leaf = match self.step_leaf(i) {
            Ok(leaf) => leaf,
            Err(message) => {
                self.steps[i].state = StepState::Running;
                self.end_attempt(i, Verdict::failed(Cause::Exit, message));
                return;
            }
        };
        self.steps[i].leaf = leaf.clone();
        let call = self.next_call;
        self.next_call += 1;
        let step_def = &self.pipeline.steps[self.steps[i].index];
        let mut env: Vec<EnvVar> = step_def
            .env
            .iter()
            .filter(|(k, _)| !self.opts.env_overrides.iter().any(|(o, _)| o == *k))
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: v.clone(),
            })
            .collect();
        env.extend(self.opts.env_overrides.iter().map(|(k, v)| EnvVar {
            name: k.clone(),
            value: v.clone(),
        }));
        env.retain(|var| var.name != PROJECT_DIR_ENV);
        env.push(EnvVar {
            name: PROJECT_DIR_ENV.to_owned(),
            value: self.pipeline.root.display().to_string(),
        });
        let request = KernelCall::ExecuteStep(Box::new(ExecuteStep {
            step: step_def.name.clone(),
            attempt: self.steps[i].attempt,
            run: step_def.run.clone(),
            dir: step_def.dir.display().to_string(),
            env,
            image: step_def.image.clone(),
            with_json: step_def.with_json.clone(),
            grace_ms: self.opts.grace.as_millis() as u64,
            cgroup_procs: leaf
                .as_ref()
                .map(|l| {
                    l.procs_files()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            limits: StepLimits {
                memory_bytes: step_def.limits.memory_bytes,
                pids: step_def.limits.pids,
                cpu_millicores: step_def.limits.cpu.map(|c| (c * 1000.0).round() as u64),
            },
        }));
        let timeout = step_def.timeout;
        let PluginState::Ready { pid, link } = &self.plugins[p].state else {
            return;
        };
        let pid = *pid;
        let sent = link.call(call, CallKind::Execute, &request);
        let now = Instant::now();
        let step = &mut self.steps[i];
        step.state = StepState::Running;
        step.call = call;
        step.started = Some(now);
        step.deadline = timeout.map(|t| now + t);
        step.pgid = None;
        self.plugins[p].in_flight.insert(call, i);
        let (name, attempt, executor) = (
            self.step_name(i).to_owned(),
            self.steps[i].attempt,
            step_def.executor.clone(),
        );
        self.emit(BuildEvent::StepStart {
            step: name,
            attempt,
            executor,
            plugin_pid: pid,
        });
        if let Err(message) = sent {
            // The exit event of the plugin will follow; end the step now with the reason.
            self.plugins[p].in_flight.remove(&call);
            self.end_attempt(i, Verdict::failed(Cause::ExecutorCrash, message));
        }
    }

    /// A fresh cgroup leaf for the step's current attempt, with the step's limits.
    fn step_leaf(&self, i: usize) -> Result<Option<Leaf>, String> {
        let Some(run) = &self.opts.run_cgroup else {
            return Ok(None);
        };
        let step = &self.steps[i];
        let def = &self.pipeline.steps[step.index];
        let plugin = &self.plugins[step.plugin].spec.name;
        let name = format!("step-{}-{}", def.name, step.attempt);
        run.leaf(plugin, &name, &def.limits)
            .map(Some)
            .map_err(|e| format!("cannot create the step's cgroup: {e}"))
    }

    /// Empties and removes a finished attempt's leaf. Processes that escaped the step's
    /// process group (the executor's own cleanup cannot see them) are reported in the step's
    /// log before its `step_end`, then killed.
    fn clean_step_leaf(&mut self, i: usize, leaf: Leaf) {
        let pgid = self.steps[i].pgid;
        let pids = leaf.pids_quick();
        let escaped = pids
            .iter()
            .copied()
            .filter(|&pid| pgid.is_none_or(|g| crate::procfs::stat(pid).map(|s| s.pgrp) != Some(g)))
            .count();
        if escaped > 0 {
            let def = &self.pipeline.steps[self.steps[i].index];
            let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let line = format!(
                "hm: killed {escaped} process(es) that left the step's process group but not its cgroup"
            );
            let _ =
                self.renderer
                    .step_log(&ts, &self.opts.run_id, &def.name, Stream::Stderr, &line);
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

    // ---- plugin events ----

    fn on_plugin_event(&mut self, event: PluginEvent) {
        let p = event.key.index;
        if self.plugins[p].generation != event.key.generation {
            return;
        }
        match event.kind {
            PluginEventKind::Ready {
                pid,
                protocol,
                link,
            } => {
                let slot = &mut self.plugins[p];
                slot.pid = pid;
                slot.state = PluginState::Ready { pid, link };
                // A plugin started by hand (`--attach`) is the user's to stop, not the guardian's.
                if let Some(guardian) = &mut self.guardian
                    && !self.opts.attach.contains_key(&slot.spec.name)
                {
                    guardian.watch_pgid(pid as i32);
                }
                let plugin = slot.spec.name.clone();
                self.emit(BuildEvent::PluginStart {
                    plugin,
                    pid,
                    protocol: Some(protocol),
                });
                for i in 0..self.steps.len() {
                    if self.steps[i].plugin == p && self.steps[i].state == StepState::Starting {
                        if let Some(reason) = self.steps[i].stop {
                            self.steps[i].state = StepState::Running;
                            self.end_attempt(i, stopped_verdict(reason, None));
                        } else {
                            self.send_execute(i);
                        }
                    }
                }
                for (i, gate, json) in std::mem::take(&mut self.plugins[p].parked_gates) {
                    self.send_gate(p, i, gate, json);
                }
                self.pump_hook(p);
            }
            PluginEventKind::StartFailed {
                message,
                unavailable,
                violation,
                process,
            } => {
                if let Some(process) = process {
                    // Its process existed: a CI log shows it started and how it ended.
                    self.emit_failed_start(p, process, &message);
                }
                let serves_steps = self.steps.iter().any(|s| s.plugin == p);
                if self.plugins[p].abandoned {
                    tracing::info!("{message}");
                } else if serves_steps || self.plugins[p].settings.required {
                    if unavailable {
                        self.environment_unavailable = true;
                    } else {
                        self.plugin_problem = true;
                    }
                    tracing::error!("{message}");
                } else {
                    tracing::warn!("{message}; its hook does not observe this run");
                }
                self.plugins[p].state = PluginState::Failed(message.clone());
                self.hook_gone(p, &message);
                for i in 0..self.steps.len() {
                    if self.steps[i].plugin == p && self.steps[i].state == StepState::Starting {
                        self.steps[i].state = StepState::Running;
                        let cause = match violation {
                            true => Cause::ProtocolError,
                            false => Cause::ExecutorCrash,
                        };
                        let verdict = match self.steps[i].stop {
                            Some(reason) => stopped_verdict(reason, None),
                            None => Verdict::failed(cause, message.clone()),
                        };
                        self.end_attempt(i, verdict);
                    }
                }
            }
            PluginEventKind::Log { call, chunks } => {
                if let Some(&i) = self.plugins[p].in_flight.get(&call) {
                    let def = &self.pipeline.steps[self.steps[i].index];
                    // One timestamp per batch: its lines arrived together.
                    let ts =
                        humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                    for (stream, line) in chunks
                        .iter()
                        .flat_map(|(s, text)| text.split('\n').map(move |l| (s, l)))
                    {
                        let _ = self.renderer.step_log(
                            &ts,
                            &self.opts.run_id,
                            &def.name,
                            *stream,
                            line,
                        );
                    }
                    if self.hooks_want_logs() {
                        let step = def.name.clone();
                        for (stream, text) in &chunks {
                            for line in text.split('\n') {
                                let envelope = Envelope {
                                    ts: ts.clone(),
                                    run_id: self.opts.run_id.clone(),
                                    event: BuildEvent::StepLog {
                                        step: step.clone(),
                                        stream: *stream,
                                        line: line.to_owned(),
                                    },
                                };
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
            PluginEventKind::StepDone {
                call,
                result,
                out_of_memory,
            } => {
                if let Some(i) = self.plugins[p].in_flight.remove(&call) {
                    let mut verdict = classify(&result, self.steps[i].stop);
                    if out_of_memory && verdict.is_failure() && self.steps[i].stop.is_none() {
                        // The executor's runtime saw the OOM kill (a container's own cgroup,
                        // which is not the step's leaf).
                        let limit = self.pipeline.steps[self.steps[i].index].limits.memory_bytes;
                        let stats = LeafStats {
                            peak_memory_bytes: result.peak_memory_bytes,
                            ..LeafStats::default()
                        };
                        verdict.cause = Some(Cause::Oom);
                        verdict.message = Some(self::out_of_memory(&stats, limit));
                    }
                    self.end_attempt_with(i, verdict, &result);
                }
            }
            PluginEventKind::CallFailed { call, message }
                if self.plugins[p].hook_calls.contains_key(&call) =>
            {
                self.on_hook_answer(p, call, Err(message));
            }
            PluginEventKind::CallFailed { call, message } => {
                if let Some(i) = self.plugins[p].in_flight.remove(&call) {
                    let verdict = match self.steps[i].stop {
                        Some(reason) => stopped_verdict(reason, Some(message)),
                        None => Verdict::failed(
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
            PluginEventKind::StepProcess { call, pgid } => {
                if let Some(guardian) = &mut self.guardian {
                    guardian.watch_pgid(pgid);
                }
                if let Some(&i) = self.plugins[p].in_flight.get(&call) {
                    self.steps[i].pgid = Some(pgid);
                }
            }
            PluginEventKind::Diagnostic { message } => {
                tracing::warn!(plugin = %self.plugins[p].spec.name, "{message}");
            }
            // The connection's policy lets a hook's answer through only to a hook call.
            PluginEventKind::HookDone { call, abort } => self.on_hook_answer(p, call, Ok(abort)),
            PluginEventKind::Exited(exit) => self.on_plugin_exit(p, exit),
        }
    }

    /// `plugin_start` (no protocol) and `plugin_exit` of a plugin whose process started but
    /// did not complete its handshake.
    fn emit_failed_start(&mut self, p: usize, process: FailedProcess, message: &str) {
        use std::os::unix::process::ExitStatusExt;
        let plugin = self.plugins[p].spec.name.clone();
        self.emit(BuildEvent::PluginStart {
            plugin: plugin.clone(),
            pid: process.pid,
            protocol: None,
        });
        self.emit(BuildEvent::PluginExit {
            plugin,
            pid: process.pid,
            clean: false,
            cause: Some(process.cause),
            exit_code: process.status.and_then(|s| s.code()),
            signal: process.status.and_then(|s| s.signal()),
            message: Some(message.to_owned()),
        });
    }

    fn on_plugin_exit(&mut self, p: usize, exit: PluginExit) {
        use std::os::unix::process::ExitStatusExt;
        let slot = &mut self.plugins[p];
        let expected = slot.shutdown_sent;
        slot.state = PluginState::Exited;
        let stats = slot
            .leaf
            .as_ref()
            .map(|leaf| leaf.stats())
            .unwrap_or_default();
        if let Some(leaf) = slot.leaf.take() {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = leaf.kill().and_then(|()| leaf.remove()) {
                    tracing::warn!("{e}");
                }
            });
        }
        let exit_code = exit.status.and_then(|s| s.code());
        let signal = exit.status.and_then(|s| s.signal());
        let oom = stats.oom_kills.is_some_and(|n| n > 0);
        let (clean, cause) = if exit.violation.is_some() {
            (false, Some(Cause::ProtocolError))
        } else if exit.hung {
            (false, Some(Cause::Timeout))
        } else if oom && signal == Some(libc::SIGKILL) {
            (false, Some(Cause::Oom))
        } else if signal.is_some() {
            (false, Some(Cause::Signal))
        } else if expected && (exit_code == Some(0) || exit.status.is_none()) {
            // An attached plugin has no status for hm: its connection ending after Shutdown
            // is its clean end.
            (true, None)
        } else {
            (false, Some(Cause::Exit))
        };
        let plugin = slot.spec.name.clone();
        let in_flight: Vec<(u64, usize)> = slot.in_flight.drain().collect();
        let message = (!clean).then(|| {
            let mut message = match (&exit.violation, exit.hung) {
                (Some(v), _) => format!("plugin {plugin} broke the protocol and was killed: {v}"),
                (None, true) => format!("plugin {plugin} stopped answering and was killed"),
                (None, false) if oom && signal == Some(libc::SIGKILL) => format!(
                    "plugin {plugin} was killed: {}",
                    out_of_memory(&stats, self.plugins[p].settings.limits.memory_bytes)
                ),
                _ => match (exit_code, signal) {
                    (_, Some(s)) => format!(
                        "plugin {plugin} was killed by signal {}",
                        crate::classify::signal_name(s)
                    ),
                    (Some(c), _) => format!("plugin {plugin} exited with code {c}"),
                    _ => format!("plugin {plugin} exited"),
                },
            };
            if !exit.stderr_tail.is_empty() {
                message.push_str("; its last output: ");
                message.push_str(&exit.stderr_tail.join(" | "));
            }
            message
        });
        self.emit(BuildEvent::PluginExit {
            plugin: plugin.clone(),
            pid: exit.pid,
            clean,
            cause,
            exit_code,
            signal,
            message: message.clone(),
        });
        if let Some(message) = message.filter(|_| !expected) {
            tracing::warn!("{message}");
            let step_cause = if exit.violation.is_some() {
                Cause::ProtocolError
            } else {
                Cause::ExecutorCrash
            };
            for (_, i) in in_flight {
                // Kill what the dead plugin left of the step: it cannot be trusted to have.
                if let Some(pgid) = self.steps[i].pgid {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let verdict = match self.steps[i].stop {
                    Some(reason) => stopped_verdict(reason, None),
                    None => Verdict::failed(step_cause, message.clone()),
                };
                self.end_attempt(i, verdict);
            }
            if self.plugins[p].is_hook() && self.plugins[p].settings.required {
                tracing::error!("hook {plugin} is required (`required = true`): the run fails");
                self.plugin_problem = true;
            }
            self.hook_lost_calls(p, &message);
        }
        // Events still waiting restart the hook (within its budget).
        self.pump_hook(p);
    }

    // ---- ending attempts ----

    fn end_attempt(&mut self, i: usize, verdict: Verdict) {
        self.end_attempt_with(i, verdict, &StepResult::default());
    }

    fn end_attempt_with(&mut self, i: usize, mut verdict: Verdict, result: &StepResult) {
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
        if verdict.is_failure() && self.steps[i].stop.is_none() {
            refine_with_cgroup(&mut verdict, &stats, &def.limits);
        }
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
        let def = &self.pipeline.steps[self.steps[i].index];
        let step = &mut self.steps[i];
        let duration_ms = step.started.map_or(0, |s| s.elapsed().as_millis() as u64);
        let attempt = step.attempt;
        let retry = verdict.is_failure()
            // A hook's decision would only be asked again.
            && verdict.cause != Some(Cause::HookAbort)
            // The step's own timeout may be retried; every other stop ends the step.
            && matches!(step.stop, None | Some(StopReason::StepTimeout))
            && !self.user_cancelled
            && !self.failing_fast
            && !self.pipeline_timed_out
            && attempt < def.retry.attempts
            && def
                .retry
                .on
                .iter()
                .any(|class| retry_matches(*class, &verdict));
        let allowed = verdict.is_failure() && def.allow_failure && !retry;
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
            duration_ms,
            peak_memory_bytes: stats
                .peak_memory_bytes
                .filter(|_| leaf_used)
                .or(result.peak_memory_bytes),
            cpu_ms: stats.cpu_ms.filter(|_| leaf_used).or(result.cpu_ms),
            message: verdict.message.clone(),
            allowed_failure: allowed,
        }));
        if matches!(
            self.steps[i].state,
            StepState::Running | StepState::Starting | StepState::Gating
        ) {
            self.running = self.running.saturating_sub(1);
        }
        let step = &mut self.steps[i];
        step.started = None;
        step.deadline = None;
        step.escalate_at = None;
        step.escalations = 0;
        step.pgid = None;
        if retry {
            step.stop = None;
            step.attempt += 1;
            step.state = StepState::Waiting;
            let cause = verdict.cause.unwrap_or(Cause::Exit);
            self.emit(BuildEvent::StepRetry {
                step: def.name.clone(),
                attempt: attempt + 1,
                cause,
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
    fn finish_unstarted(&mut self, i: usize, status: StepStatus, cause: Cause) {
        let step = &mut self.steps[i];
        step.state = StepState::Done;
        step.verdict = Some(Verdict {
            status,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            message: None,
        });
        let name = self.step_name(i).to_owned();
        let attempt = self.steps[i].attempt;
        self.emit(BuildEvent::StepEnd(StepEnd {
            step: name,
            attempt,
            status,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            duration_ms: 0,
            peak_memory_bytes: None,
            cpu_ms: None,
            message: None,
            allowed_failure: false,
        }));
    }

    // ---- stopping ----

    /// Stops every step: unstarted ones end at once, running ones get the kill ladder.
    fn stop_all(&mut self, reason: StopReason) {
        let (status, cause) = match reason {
            StopReason::FailFast => (StepStatus::Skipped, Cause::Cancelled),
            StopReason::UserCancel => (StepStatus::Cancelled, Cause::Cancelled),
            StopReason::PipelineTimeout | StopReason::StepTimeout => {
                (StepStatus::Skipped, Cause::Timeout)
            }
        };
        // A plugin hm waits for on an attach socket may never come: stop waiting.
        for slot in &mut self.plugins {
            if matches!(slot.state, PluginState::Starting)
                && self.opts.attach.contains_key(&slot.spec.name)
            {
                slot.abandoned = true;
                slot.abandon.cancel();
            }
        }
        for i in 0..self.steps.len() {
            match self.steps[i].state {
                // A step downstream of the failure would not have run anyway; the others
                // were stopped by it.
                StepState::Waiting
                    if reason == StopReason::FailFast && self.downstream_of_failure(i) =>
                {
                    self.finish_unstarted(i, StepStatus::Skipped, Cause::DependencyFailed);
                }
                StepState::Waiting => self.finish_unstarted(i, status, cause),
                StepState::Gating | StepState::Starting | StepState::Running => {
                    self.stop_step(i, reason);
                }
                StepState::Done => {}
            }
        }
    }

    /// Whether step `i` needs, directly or through others, a step that failed (and whose
    /// failure is not allowed).
    fn downstream_of_failure(&self, i: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![i];
        while let Some(at) = stack.pop() {
            for need in &self.pipeline.steps[self.steps[at].index].needs {
                let Some(&j) = self.by_index.get(need) else {
                    continue;
                };
                if !seen.insert(j) {
                    continue;
                }
                let dep = &self.steps[j];
                if dep.verdict.as_ref().is_some_and(|v| v.is_failure()) && !dep.allowed_failure {
                    return true;
                }
                stack.push(j);
            }
        }
        false
    }

    fn stop_step(&mut self, i: usize, reason: StopReason) {
        let step = &mut self.steps[i];
        if step.stop.is_some() {
            return;
        }
        step.stop = Some(reason);
        if step.state == StepState::Gating {
            // No executor has it yet; the hooks' late answers are ignored.
            self.end_attempt(i, stopped_verdict(reason, None));
            return;
        }
        if step.state == StepState::Starting {
            // Ended when its plugin is ready (or fails to start).
            return;
        }
        step.escalate_at = Some(Instant::now() + self.opts.grace + ESCALATE);
        let call = step.call;
        if let PluginState::Ready { link, .. } = &self.plugins[step.plugin].state {
            link.cancel(call);
        }
    }

    fn on_interrupt(&mut self, count: u32) {
        self.user_cancelled = true;
        if count == 1 {
            tracing::warn!(
                "cancelling: waiting for steps to stop (press Ctrl-C again to kill now)"
            );
            self.stop_all(StopReason::UserCancel);
        } else {
            self.stop_all(StopReason::UserCancel);
            self.kill_everything();
        }
    }

    /// Second Ctrl-C: SIGKILL every step's process group and every plugin, now.
    fn kill_everything(&mut self) {
        self.killed_all = true;
        if let Some(run) = self.opts.run_cgroup.clone() {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = run.kill_all() {
                    tracing::warn!("{e}");
                }
            });
        }
        for step in &self.steps {
            if let Some(pgid) = step.pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        for slot in &self.plugins {
            if matches!(
                slot.state,
                PluginState::Ready { .. } | PluginState::Starting
            ) && slot.pid > 0
            {
                let _ = killpg(Pid::from_raw(slot.pid as i32), Signal::SIGKILL);
            }
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if self.pipeline_deadline.is_some_and(|d| now >= d) && !self.pipeline_timed_out {
            self.pipeline_timed_out = true;
            self.pipeline_deadline = None;
            let timeout = self.opts.timeout.map(humantime::format_duration);
            tracing::warn!(
                "the pipeline timeout ({}) has passed: stopping",
                timeout.map(|t| t.to_string()).unwrap_or_default()
            );
            self.stop_all(StopReason::PipelineTimeout);
        }
        for i in 0..self.steps.len() {
            let step = &mut self.steps[i];
            if step.state != StepState::Running {
                continue;
            }
            if step.deadline.is_some_and(|d| now >= d) {
                step.deadline = None;
                self.stop_step(i, StopReason::StepTimeout);
                continue;
            }
            if step.escalate_at.is_some_and(|t| now >= t) {
                step.escalations += 1;
                if step.escalations == 1 {
                    if let Some(pgid) = step.pgid {
                        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    }
                    if let Some(leaf) = step.leaf.clone() {
                        tokio::task::spawn_blocking(move || leaf.kill());
                    }
                    step.escalate_at = Some(now + ESCALATE);
                } else {
                    step.escalate_at = None;
                    let p = step.plugin;
                    let pid = self.plugins[p].pid;
                    tracing::warn!(plugin = %self.plugins[p].spec.name, "the plugin did not stop a step when asked; killing it");
                    if pid > 0 {
                        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
            }
        }
        if self.shutdown_deadline.is_some_and(|d| now >= d) {
            self.shutdown_deadline = None;
            self.kill_everything();
        }
        for p in 0..self.plugins.len() {
            let expired: Vec<u64> = self.plugins[p]
                .hook_calls
                .iter()
                .filter(|(_, call)| now >= call.deadline)
                .map(|(&id, _)| id)
                .collect();
            for id in expired {
                self.on_hook_timeout(p, id);
            }
        }
        if self.drain_deadline.is_some_and(|d| now >= d) {
            self.drain_deadline = None;
            for p in 0..self.plugins.len() {
                if !self.plugins[p].hook_idle() {
                    tracing::warn!(
                        "hook {} did not take its last events in time; stopping it",
                        self.plugins[p].spec.name
                    );
                    self.plugins[p].queue.drop_all();
                    self.kill_plugin(p);
                }
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let steps = self
            .steps
            .iter()
            .filter(|s| s.state == StepState::Running)
            .flat_map(|s| [s.deadline, s.escalate_at]);
        let hooks = self
            .plugins
            .iter()
            .flat_map(|p| p.hook_calls.values().map(|c| Some(c.deadline)));
        steps
            .chain(hooks)
            .chain([
                self.pipeline_deadline,
                self.shutdown_deadline,
                self.drain_deadline,
            ])
            .flatten()
            .min()
    }

    // ---- the end ----

    fn all_done(&self) -> bool {
        self.steps.iter().all(|s| s.state == StepState::Done)
    }

    /// Whether every plugin `which` selects has exited (or never started).
    fn plugins_gone(&self, which: fn(&PluginSlot) -> bool) -> bool {
        self.plugins
            .iter()
            .filter(|p| which(p))
            .all(|p| !matches!(p.state, PluginState::Ready { .. } | PluginState::Starting))
    }

    /// Sends `Shutdown` to the plugins `which` selects, and gives them [`SHUTDOWN_GRACE`].
    fn shut_down_plugins(&mut self, which: fn(&PluginSlot) -> bool) {
        for slot in self.plugins.iter_mut().filter(|p| which(p)) {
            if let PluginState::Ready { link, .. } = &slot.state {
                if !slot.shutdown_sent {
                    slot.shutdown_sent = true;
                    link.shutdown();
                }
            }
        }
        if self.shutdown_deadline.is_none() {
            self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        }
    }

    /// Ends the run once every step is done; `true` when nothing is left to wait for.
    ///
    /// First the plugins that are no hooks are shut down, so their exits are in the stream
    /// before `build_end`; then `build_end` goes out (also to the hooks), the hooks take their
    /// last events (bounded by their timeouts and [`HOOK_DRAIN`]), and are shut down.
    fn finish(&mut self) -> bool {
        // No step can ask for the archive any more: its memory goes now, not when the plugins
        // have exited.
        self.archive.close();
        if self.build_end_code.is_none() {
            // The hooks take the events so far first, so that `build_end` includes what a
            // required hook's failure on them means for the run.
            if self.drain_deadline.is_none() {
                self.drain_deadline =
                    Some(Instant::now() + self.longest_hook_timeout() + HOOK_DRAIN);
            }
            let hooks_idle = self.plugins.iter().all(PluginSlot::hook_idle);
            if !self.plugins_gone(|p| !p.is_hook()) || !hooks_idle {
                self.shut_down_plugins(|p| !p.is_hook());
                return false;
            }
            self.shutdown_deadline = None;
            self.end_build();
        }
        if self.plugins.iter().all(PluginSlot::hook_idle) {
            self.drain_deadline = None;
            if self.plugins_gone(|_| true) {
                return true;
            }
            self.shut_down_plugins(|_| true);
        }
        false
    }

    /// Emits `build_end` with the result as it stands, and starts the hooks' last drain.
    fn end_build(&mut self) {
        let code = self.exit_code();
        let (mut passed, mut failed, mut skipped, mut cancelled) = (0, 0, 0, 0);
        for step in &self.steps {
            match step.verdict.as_ref().map(|v| v.status) {
                Some(StepStatus::Passed) => passed += 1,
                Some(StepStatus::Failed | StepStatus::TimedOut) => failed += 1,
                Some(StepStatus::Skipped) => skipped += 1,
                Some(StepStatus::Cancelled) | None => cancelled += 1,
            }
        }
        let status = match code {
            exit::OK => StepStatus::Passed,
            exit::CANCELLED => StepStatus::Cancelled,
            exit::TIMEOUT => StepStatus::TimedOut,
            _ => StepStatus::Failed,
        };
        self.emit(BuildEvent::BuildEnd {
            status,
            exit_code: code,
            duration_ms: self.started_at.elapsed().as_millis() as u64,
            passed,
            failed,
            skipped,
            cancelled,
        });
        self.build_end_code = Some(code);
        self.drain_deadline = Some(Instant::now() + self.longest_hook_timeout() + HOOK_DRAIN);
    }

    fn longest_hook_timeout(&self) -> Duration {
        self.plugins
            .iter()
            .flat_map(|p| p.hooks.iter().map(|h| h.timeout))
            .max()
            .unwrap_or_default()
    }

    // ---- hooks ----

    /// Passes a step that may start through its `before` hooks on `step_start`, or dispatches
    /// it at once when there are none.
    fn gate(&mut self, i: usize) {
        let gates: Vec<usize> = (0..self.plugins.len())
            .filter(|&p| {
                subscription(&self.plugins[p].hooks, "step_start", HookPhase::Before).is_some()
            })
            .collect();
        if gates.is_empty() {
            self.dispatch(i);
            return;
        }
        let executor_pid = match &self.plugins[self.steps[i].plugin].state {
            PluginState::Ready { pid, .. } => *pid,
            _ => 0,
        };
        let def = &self.pipeline.steps[self.steps[i].index];
        let envelope = Envelope::now(
            &self.opts.run_id,
            BuildEvent::StepStart {
                step: def.name.clone(),
                attempt: self.steps[i].attempt,
                executor: def.executor.clone(),
                plugin_pid: executor_pid,
            },
        );
        let json = QueuedEvent::new(&envelope).json;
        let step = &mut self.steps[i];
        step.state = StepState::Gating;
        step.gate += 1;
        step.gates_pending = gates.len();
        step.gate_abort = None;
        let gate = step.gate;
        for p in gates {
            match &self.plugins[p].state {
                PluginState::Ready { .. } => self.send_gate(p, i, gate, json.clone()),
                PluginState::Starting => self.plugins[p].parked_gates.push((i, gate, json.clone())),
                PluginState::Idle => {
                    self.plugins[p].parked_gates.push((i, gate, json.clone()));
                    self.start_plugin(p);
                }
                PluginState::Exited => {
                    self.plugins[p].parked_gates.push((i, gate, json.clone()));
                    if !self.restart_plugin(p) {
                        let message = self.failed_message(p);
                        self.hook_gone(p, &message);
                    }
                }
                PluginState::Failed(message) => {
                    let message = message.clone();
                    self.resolve_gate(p, i, gate, Err(message));
                }
            }
        }
    }

    fn failed_message(&self, p: usize) -> String {
        match &self.plugins[p].state {
            PluginState::Failed(message) => message.clone(),
            _ => format!("plugin {} is not running", self.plugins[p].spec.name),
        }
    }

    /// Asks a ready hook plugin about a step's `step_start`.
    fn send_gate(&mut self, p: usize, i: usize, gate: u32, json: String) {
        let Some(spec) = subscription(&self.plugins[p].hooks, "step_start", HookPhase::Before)
        else {
            return;
        };
        let event = QueuedEvent {
            kind: "step_start",
            json,
        };
        match self.send_hook_call(p, HookPhase::Before, event, spec.timeout, Some((i, gate))) {
            Ok(_) => {}
            Err(message) => self.resolve_gate(p, i, gate, Err(message)),
        }
    }

    /// Sends one `OnEvent` call to a ready plugin and tracks it with its deadline.
    fn send_hook_call(
        &mut self,
        p: usize,
        phase: HookPhase,
        event: QueuedEvent,
        timeout: Duration,
        gate: Option<(usize, u32)>,
    ) -> Result<u64, String> {
        let PluginState::Ready { link, .. } = &self.plugins[p].state else {
            return Err(format!(
                "plugin {} is not running",
                self.plugins[p].spec.name
            ));
        };
        let call = self.next_call;
        self.next_call += 1;
        let request = KernelCall::OnEvent(Box::new(HookEvent {
            phase,
            kind: event.kind.to_owned(),
            event_json: event.json,
        }));
        link.call(call, CallKind::Hook, &request)?;
        let slot = &mut self.plugins[p];
        slot.hook_calls.insert(
            call,
            HookCall {
                kind: event.kind,
                timeout,
                deadline: Instant::now() + timeout,
                gate,
            },
        );
        Ok(call)
    }

    /// Counts one hook's answer to a gate; the last answer decides: dispatch, or end the step
    /// with `hook_abort`.
    fn resolve_gate(
        &mut self,
        p: usize,
        i: usize,
        gate: u32,
        answer: Result<Option<String>, String>,
    ) {
        let step = &self.steps[i];
        if step.state != StepState::Gating || step.gate != gate {
            return;
        }
        let name = self.plugins[p].spec.name.clone();
        let abort = match answer {
            Ok(abort) => abort.map(|reason| format!("aborted by hook {name}: {reason}")),
            Err(message) => {
                let required = self.plugins[p].settings.required;
                self.hook_failed(p, "step_start", &message);
                // A required hook that cannot answer cannot let the step through.
                required.then(|| format!("required hook {name} could not decide: {message}"))
            }
        };
        let step = &mut self.steps[i];
        if step.gate_abort.is_none() {
            step.gate_abort = abort;
        }
        step.gates_pending = step.gates_pending.saturating_sub(1);
        if step.gates_pending > 0 {
            return;
        }
        match step.gate_abort.take() {
            Some(message) => self.end_attempt(i, Verdict::failed(Cause::HookAbort, message)),
            None => self.dispatch(i),
        }
    }

    /// Queues an event for every hook that observes it after the fact.
    fn offer_to_hooks(&mut self, envelope: &Envelope) {
        let kind = envelope.event.kind();
        let mut event = None;
        for p in 0..self.plugins.len() {
            if subscription(&self.plugins[p].hooks, kind, HookPhase::After).is_none() {
                continue;
            }
            let event = event.get_or_insert_with(|| QueuedEvent::new(envelope));
            self.plugins[p].queue.push(event.clone());
            self.pump_hook(p);
        }
    }

    /// Whether any hook observes `step_log`; the log fast path builds no events otherwise.
    fn hooks_want_logs(&self) -> bool {
        self.plugins
            .iter()
            .any(|p| subscription(&p.hooks, "step_log", HookPhase::After).is_some())
    }

    /// Sends a hook its next event if it has none in flight, starting (or restarting) the
    /// plugin when it is not running.
    fn pump_hook(&mut self, p: usize) {
        if self.killed_all {
            self.plugins[p].queue.drop_all();
            return;
        }
        let slot = &self.plugins[p];
        if slot.after_call.is_some() || slot.queue.is_empty() {
            return;
        }
        match slot.state {
            PluginState::Ready { .. } => {
                while let Some(event) = self.plugins[p].queue.pop() {
                    let Some(spec) =
                        subscription(&self.plugins[p].hooks, event.kind, HookPhase::After)
                    else {
                        continue;
                    };
                    match self.send_hook_call(p, HookPhase::After, event, spec.timeout, None) {
                        Ok(call) => {
                            self.plugins[p].after_call = Some(call);
                            return;
                        }
                        Err(message) => {
                            self.plugins[p].queue.count_lost();
                            tracing::warn!(plugin = %self.plugins[p].spec.name, "{message}");
                        }
                    }
                }
            }
            PluginState::Starting => {}
            PluginState::Idle => self.start_plugin(p),
            PluginState::Exited => {
                if !self.restart_plugin(p) {
                    let message = self.failed_message(p);
                    self.hook_gone(p, &message);
                }
            }
            PluginState::Failed(_) => self.plugins[p].queue.drop_all(),
        }
    }

    fn on_hook_answer(&mut self, p: usize, call: u64, answer: Result<Option<String>, String>) {
        let Some(hook_call) = self.plugins[p].hook_calls.remove(&call) else {
            return;
        };
        match hook_call.gate {
            Some((i, gate)) => self.resolve_gate(p, i, gate, answer),
            None => {
                self.plugins[p].after_call = None;
                if let Err(message) = answer {
                    self.hook_failed(p, hook_call.kind, &message);
                }
                self.pump_hook(p);
            }
        }
    }

    /// A hook call passed its deadline: the hook is hung. It is reported, its call given up,
    /// and the plugin killed (its exit and restart follow as for any crash).
    fn on_hook_timeout(&mut self, p: usize, call: u64) {
        let Some(hook_call) = self.plugins[p].hook_calls.remove(&call) else {
            return;
        };
        let message = format!(
            "did not answer `{}` within {}",
            hook_call.kind,
            humantime::format_duration(hook_call.timeout)
        );
        match hook_call.gate {
            Some((i, gate)) => self.resolve_gate(p, i, gate, Err(message)),
            None => {
                self.plugins[p].after_call = None;
                self.plugins[p].queue.count_lost();
                self.hook_failed(p, hook_call.kind, &message);
            }
        }
        tracing::warn!("hook {} is hung; killing it", self.plugins[p].spec.name);
        self.kill_plugin(p);
    }

    fn kill_plugin(&mut self, p: usize) {
        let slot = &self.plugins[p];
        if matches!(
            slot.state,
            PluginState::Ready { .. } | PluginState::Starting
        ) && slot.pid > 0
        {
            let _ = killpg(Pid::from_raw(slot.pid as i32), Signal::SIGKILL);
        }
    }

    /// Reports a hook's failure; with `required = true` it fails the run.
    fn hook_failed(&mut self, p: usize, kind: &str, message: &str) {
        let slot = &self.plugins[p];
        if slot.settings.required {
            tracing::error!(
                "hook {} failed on `{kind}`: {message} (it is required: the run fails)",
                slot.spec.name
            );
            self.plugin_problem = true;
        } else {
            tracing::warn!("hook {} failed on `{kind}`: {message}", slot.spec.name);
        }
    }

    /// The hook's calls in flight died with its plugin: gates count it as failed, after-events
    /// as lost.
    fn hook_lost_calls(&mut self, p: usize, message: &str) {
        let calls: Vec<(u64, HookCall)> = self.plugins[p].hook_calls.drain().collect();
        self.plugins[p].after_call = None;
        for (_, call) in calls {
            match call.gate {
                Some((i, gate)) => self.resolve_gate(p, i, gate, Err(message.to_owned())),
                None => self.plugins[p].queue.count_lost(),
            }
        }
    }

    /// The hook plugin will not run again in this run: every gate waiting for it counts it as
    /// failed, and its events are dropped.
    fn hook_gone(&mut self, p: usize, message: &str) {
        for (i, gate, _) in std::mem::take(&mut self.plugins[p].parked_gates) {
            self.resolve_gate(p, i, gate, Err(message.to_owned()));
        }
        self.hook_lost_calls(p, message);
        self.plugins[p].queue.drop_all();
    }

    // ---- helpers ----

    fn step_name(&self, i: usize) -> &str {
        &self.pipeline.steps[self.steps[i].index].name
    }

    fn emit(&mut self, event: BuildEvent) {
        if self.build_end_code.is_some() {
            return;
        }
        let envelope = Envelope::now(&self.opts.run_id, event);
        let _ = self.renderer.event(&envelope);
        self.offer_to_hooks(&envelope);
    }
}

enum Needs {
    Pending,
    Met,
    Failed,
}

/// The slot of the plugin `spec` names, added if it has none yet.
fn slot_for(plugins: &mut Vec<PluginSlot>, pipeline: &Pipeline, spec: &PluginSpec) -> usize {
    if let Some(p) = plugins.iter().position(|p| p.spec.name == spec.name) {
        return p;
    }
    let settings = pipeline
        .plugins
        .get(&spec.name)
        .cloned()
        .unwrap_or_else(default_settings);
    plugins.push(PluginSlot::new(spec.clone(), settings));
    plugins.len() - 1
}

fn default_settings() -> crate::config::PluginSettings {
    crate::config::PluginSettings {
        handshake_timeout: Duration::from_secs(10),
        config_json: "{}".into(),
        ..Default::default()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(sig) => sig.recv().await,
        None => std::future::pending().await,
    }
}

/// The verdict of a step the kernel stopped, when no process result says more.
fn stopped_verdict(reason: StopReason, message: Option<String>) -> Verdict {
    let (status, cause) = stopped(reason);
    Verdict {
        status,
        cause: Some(cause),
        exit_code: None,
        signal: None,
        message,
    }
}

/// Turns a failure into `oom` or `pids_limit` when the step's cgroup says that is what it was.
fn refine_with_cgroup(verdict: &mut Verdict, stats: &LeafStats, limits: &crate::config::Limits) {
    if stats.oom_kills.is_some_and(|n| n > 0) {
        verdict.cause = Some(Cause::Oom);
        verdict.message = Some(out_of_memory(stats, limits.memory_bytes));
    } else if stats.pids_limit_hits.is_some_and(|n| n > 0) {
        verdict.cause = Some(Cause::PidsLimit);
        let limit = limits
            .pids
            .map_or_else(|| "its".to_owned(), |n| n.to_string());
        verdict.message = Some(format!("hit the process limit ({limit} processes)"));
    }
}

/// `out of memory (limit 64 MiB, peak 64 MiB)`.
fn out_of_memory(stats: &LeafStats, configured: Option<u64>) -> String {
    let bytes = crate::render::format_bytes;
    let limit = stats
        .memory_limit
        .or(configured)
        .map_or_else(|| "none".to_owned(), bytes);
    match stats.peak_memory_bytes {
        Some(peak) => format!("out of memory (limit {limit}, peak {})", bytes(peak)),
        None => format!("out of memory (limit {limit})"),
    }
}

/// The leaf of a plugin instance: `plugin`, then `plugin-2`, `plugin-3`... for restarts.
fn plugin_leaf_name(generation: u32) -> String {
    match generation {
        0 | 1 => "plugin".to_owned(),
        n => format!("plugin-{n}"),
    }
}
