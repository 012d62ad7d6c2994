//! The run loop: a dataflow DAG scheduler and the supervisor state in one task (DESIGN §5).
//!
//! One task owns every step's state and every plugin's state and runs the one `select!`
//! loop; plugin connection tasks and signals only send it messages. Each step is a small state
//! machine (`Waiting → Starting → Running → Done`, with retries going back to `Waiting`).
//!
//! Stopping a step is always the same ladder: a `Cancel` frame, the executor's own grace
//! (SIGTERM, then SIGKILL after `--grace`), and, if the plugin has not answered `grace + 2 s`
//! later, SIGKILL to the step's process group from here; if it still has not answered 2 s after
//! that, the plugin is considered hung and its process group is killed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hm_ipc::messages::{
    Credit, EnvVar, ExecuteStep, KernelCall, PROJECT_DIR_ENV, StepLimits, StepResult,
};
use hm_ipc::{FrameKind, OutFrame};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::archive::WorkspaceArchive;
use crate::cgroup::{Leaf, LeafStats, RunCgroup};
use crate::classify::{StopReason, Verdict, classify, retry_matches, stopped};
use crate::config::Pipeline;
use crate::events::{BuildEvent, Cause, Envelope, Isolation, StepEnd, StepStatus, Stream};
use crate::exit;
use crate::guardian::Guardian;
use crate::registry::PluginSpec;
use crate::render::Renderer;
use crate::supervisor::connection::ConnectionContext;
use crate::supervisor::host_api::HostState;
use crate::supervisor::{
    Confinement, PluginEvent, PluginEventKind, PluginExit, PluginKey, start_plugin,
};

/// After the grace period, how long the kernel waits before killing a step itself, and then
/// before declaring its plugin hung.
const ESCALATE: Duration = Duration::from_secs(2);
/// How long plugins get to exit after `Shutdown` at the end of the run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);

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
    pub isolation: Isolation,
    pub isolation_reason: Option<String>,
    /// The run's cgroup tree; `None` when hm runs without cgroups.
    pub run_cgroup: Option<Arc<RunCgroup>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepState {
    /// Needs unfinished steps, or waits for a free slot.
    Waiting,
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
}

enum PluginState {
    Idle,
    Starting,
    Ready {
        pid: u32,
        writer: mpsc::UnboundedSender<OutFrame>,
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
    /// This instance's unanswered calls, shared with its connection (which polices replies).
    calls: Arc<Mutex<HashSet<u64>>>,
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
            let plugin = match plugins.iter().position(|p| p.spec.name == spec.name) {
                Some(p) => p,
                None => {
                    plugins.push(PluginSlot {
                        spec: spec.clone(),
                        settings: pipeline
                            .plugins
                            .get(&spec.name)
                            .cloned()
                            .unwrap_or_else(default_settings),
                        generation: 0,
                        state: PluginState::Idle,
                        pid: 0,
                        in_flight: HashMap::new(),
                        restarts: VecDeque::new(),
                        restart_count: 0,
                        shutdown_sent: false,
                        leaf: None,
                        calls: Arc::default(),
                    });
                    plugins.len() - 1
                }
            };
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
            });
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
            if self.all_done() {
                if self.plugins_gone() {
                    break;
                }
                // No step can ask for the archive any more: its memory goes now, not when
                // the plugins have exited.
                self.archive.close();
                self.shut_down_plugins();
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
            // Whatever is left (a plugin's stray children) dies with the run's tree.
            let removed = tokio::task::spawn_blocking(move || run.remove()).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!("{e}");
            }
        }
        self.archive.close();
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
        let _ = self.renderer.flush();
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
                    self.dispatch(i);
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
                if self.restart_allowed(p) {
                    self.steps[i].state = StepState::Starting;
                    let slot = &mut self.plugins[p];
                    slot.restart_count += 1;
                    slot.restarts.push_back(Instant::now());
                    let (plugin, restarts, max) = (
                        slot.spec.name.clone(),
                        slot.restart_count,
                        slot.settings.restart.max,
                    );
                    self.emit(BuildEvent::PluginRestart {
                        plugin,
                        restarts,
                        max,
                    });
                    self.start_plugin(p);
                } else {
                    let slot = &mut self.plugins[p];
                    let message = format!(
                        "plugin {} crashed more than {} times within {}; not restarted",
                        slot.spec.name,
                        slot.settings.restart.max,
                        humantime::format_duration(slot.settings.restart.within)
                    );
                    slot.state = PluginState::Failed(message);
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
        slot.calls = Arc::default();
        let ctx = ConnectionContext {
            run_id: self.opts.run_id.clone(),
            pipeline: self.pipeline.name.clone(),
            events: self.events_tx.clone(),
            host: self.host.clone(),
            archive: self.archive.clone(),
            children: self.children.clone(),
            calls: slot.calls.clone(),
        };
        let mut confinement = Confinement::default();
        match &self.opts.run_cgroup {
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
        let PluginState::Ready { pid, writer } = &self.plugins[p].state else {
            return;
        };
        let (pid, writer) = (*pid, writer.clone());
        // Registered before it is sent, so the connection accepts its reply and output.
        if let Ok(mut calls) = self.plugins[p].calls.lock() {
            calls.insert(call);
        }
        let sent = OutFrame::message(FrameKind::Call, call, &request)
            .map_err(|e| e.to_string())
            .and_then(|frame| {
                writer
                    .send(frame)
                    .map_err(|_| "plugin connection closed".to_string())
            });
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
        let pids = leaf.pids();
        let escaped = pids
            .iter()
            .copied()
            .filter(|&pid| pgid.is_none_or(|g| process_group(pid) != Some(g)))
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
        if pids.is_empty() && leaf.remove().is_ok() {
            return;
        }
        // Emptying may wait for dying processes: never in the run loop.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = leaf.kill().and_then(|()| leaf.remove()) {
                tracing::warn!("{e}");
            }
        });
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
                writer,
            } => {
                let slot = &mut self.plugins[p];
                slot.pid = pid;
                slot.state = PluginState::Ready { pid, writer };
                if let Some(guardian) = &mut self.guardian {
                    guardian.watch_pgid(pid as i32);
                }
                let plugin = slot.spec.name.clone();
                self.emit(BuildEvent::PluginStart {
                    plugin,
                    pid,
                    protocol,
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
            }
            PluginEventKind::StartFailed {
                message,
                unavailable,
            } => {
                if unavailable {
                    self.environment_unavailable = true;
                } else {
                    self.plugin_problem = true;
                }
                tracing::error!("{message}");
                self.plugins[p].state = PluginState::Failed(message.clone());
                for i in 0..self.steps.len() {
                    if self.steps[i].plugin == p && self.steps[i].state == StepState::Starting {
                        self.steps[i].state = StepState::Running;
                        let verdict = match self.steps[i].stop {
                            Some(reason) => stopped_verdict(reason, None),
                            None => Verdict::failed(Cause::ExecutorCrash, message.clone()),
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
                }
                // The batch is consumed: the plugin may send another.
                if let PluginState::Ready { writer, .. } = &self.plugins[p].state {
                    if let Ok(frame) =
                        OutFrame::message(FrameKind::Credit, 0, &Credit { batches: 1 })
                    {
                        let _ = writer.send(frame);
                    }
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
            PluginEventKind::HookDone { .. } => {}
            PluginEventKind::Exited(exit) => self.on_plugin_exit(p, exit),
        }
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
        } else if exit_code == Some(0) && expected {
            (true, None)
        } else {
            (false, Some(Cause::Exit))
        };
        let plugin = slot.spec.name.clone();
        let in_flight: Vec<(u64, usize)> = slot.in_flight.drain().collect();
        self.emit(BuildEvent::PluginExit {
            plugin: plugin.clone(),
            pid: exit.pid,
            clean,
            cause,
            exit_code,
            signal,
        });
        if !clean && !expected {
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
        }
    }

    // ---- ending attempts ----

    fn end_attempt(&mut self, i: usize, verdict: Verdict) {
        self.end_attempt_with(i, verdict, &StepResult::default());
    }

    fn end_attempt_with(&mut self, i: usize, mut verdict: Verdict, result: &StepResult) {
        let def = &self.pipeline.steps[self.steps[i].index];
        let stats = self.steps[i]
            .leaf
            .as_ref()
            .map(|leaf| leaf.stats())
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
            StepState::Running | StepState::Starting
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
            StopReason::FailFast => (StepStatus::Skipped, Cause::DependencyFailed),
            StopReason::UserCancel => (StepStatus::Cancelled, Cause::Cancelled),
            StopReason::PipelineTimeout | StopReason::StepTimeout => {
                (StepStatus::Skipped, Cause::Timeout)
            }
        };
        for i in 0..self.steps.len() {
            match self.steps[i].state {
                StepState::Waiting => self.finish_unstarted(i, status, cause),
                StepState::Starting | StepState::Running => self.stop_step(i, reason),
                StepState::Done => {}
            }
        }
    }

    fn stop_step(&mut self, i: usize, reason: StopReason) {
        let step = &mut self.steps[i];
        if step.stop.is_some() {
            return;
        }
        step.stop = Some(reason);
        if step.state == StepState::Starting {
            // Ended when its plugin is ready (or fails to start).
            return;
        }
        step.escalate_at = Some(Instant::now() + self.opts.grace + ESCALATE);
        let call = step.call;
        if let PluginState::Ready { writer, .. } = &self.plugins[step.plugin].state {
            let _ = writer.send(OutFrame::empty(FrameKind::Cancel, call));
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
    }

    fn next_wake(&self) -> Option<Instant> {
        let steps = self
            .steps
            .iter()
            .filter(|s| s.state == StepState::Running)
            .flat_map(|s| [s.deadline, s.escalate_at]);
        steps
            .chain([self.pipeline_deadline, self.shutdown_deadline])
            .flatten()
            .min()
    }

    // ---- the end ----

    fn all_done(&self) -> bool {
        self.steps.iter().all(|s| s.state == StepState::Done)
    }

    fn plugins_gone(&self) -> bool {
        self.plugins
            .iter()
            .all(|p| !matches!(p.state, PluginState::Ready { .. } | PluginState::Starting))
    }

    fn shut_down_plugins(&mut self) {
        for slot in &mut self.plugins {
            if let PluginState::Ready { writer, .. } = &slot.state {
                if !slot.shutdown_sent {
                    slot.shutdown_sent = true;
                    let _ = writer.send(OutFrame::empty(FrameKind::Shutdown, 0));
                }
            }
        }
        if self.shutdown_deadline.is_none() {
            self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        }
    }

    // ---- helpers ----

    fn step_name(&self, i: usize) -> &str {
        &self.pipeline.steps[self.steps[i].index].name
    }

    fn emit(&mut self, event: BuildEvent) {
        let envelope = Envelope::now(&self.opts.run_id, event);
        let _ = self.renderer.event(&envelope);
    }
}

enum Needs {
    Pending,
    Met,
    Failed,
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

/// The process group of `pid`, from /proc.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(2)?.parse().ok()
}

/// The leaf of a plugin instance: `plugin`, then `plugin-2`, `plugin-3`... for restarts.
fn plugin_leaf_name(generation: u32) -> String {
    match generation {
        0 | 1 => "plugin".to_owned(),
        n => format!("plugin-{n}"),
    }
}
