//! The dispatcher: [`Scheduler`] owns every step's and every plugin's state and runs the one
//! `select!` loop. Each arm becomes an [`Event`], and [`Scheduler::handle`] is the one place
//! that acts on events; the handlers it calls live beside this file, one concern each.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::plugins::{PluginSlot, slot_for};
use super::steps::{Selected, Steps};
use crate::archive::WorkspaceArchive;
use crate::cgroup::{LeafJanitor, RunCgroup};
use crate::config::{Pipeline, When};
use crate::events::{BuildEvent, Envelope, Isolation};
use crate::guardian::Guardian;
use crate::registry::PluginSpec;
use crate::render::Renderer;
use crate::supervisor::PluginEvent;
use crate::supervisor::attach::AttachPoint;
use crate::supervisor::host_api::HostState;

/// How often the live view is redrawn.
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
    /// `CI` in hm's own environment: steps get it instead of `CI=true`.
    pub inherited_ci: Option<String>,
    /// Steps named on the command line (pipeline indices): manual steps run only then.
    pub named: Vec<usize>,
    /// What changed in the project, when a selected step's `if` asks.
    pub changes: Option<crate::condition::Changes>,
    /// The values of the secrets the steps refer to; masked wherever hm shows text.
    pub secrets: crate::secrets::Secrets,
    /// `--no-cache`: no step is replayed from the cache (passing steps are still stored).
    pub no_cache: bool,
    /// The plugin serving each selected step's executor, by step index.
    pub executors: HashMap<usize, PluginSpec>,
    /// The hook plugins the project configures (`[plugins.<name>]`).
    pub hooks: Vec<PluginSpec>,
    /// The plugin running each service a selected step lists, by service name.
    pub services: HashMap<String, PluginSpec>,
    /// `--attach NAME=SOCKET`: plugins hm waits for on a socket instead of starting them.
    pub attach: HashMap<String, Arc<AttachPoint>>,
    pub isolation: Isolation,
    pub isolation_reason: Option<String>,
    /// The run's cgroup tree; `None` when hm runs without cgroups.
    pub run_cgroup: Option<Arc<RunCgroup>>,
    /// What hm tells the user outside the event stream.
    pub notice: crate::launch::Notice,
}

/// What woke the run loop.
pub(super) enum Event {
    /// A plugin's connection reported something.
    Plugin(PluginEvent),
    /// Ctrl-C or SIGTERM; the count says how many so far.
    Interrupt(u32),
    /// A child exited: orphans may wait to be reaped.
    ChildExited,
    /// A deadline may have passed.
    Timer,
    /// Time to redraw the live view.
    Tick,
    /// A passed step's outputs and artifacts were taken in.
    Collected(Box<super::data::Collection>),
    /// A step's cache lookup ended.
    Looked(Box<super::cache::Looked>),
}

/// The run: one task owns all of it, and everything else sends it messages.
pub struct Scheduler<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) opts: RunOptions,
    pub(super) renderer: Box<dyn Renderer + Send>,
    pub(super) steps: Steps,
    pub(super) plugins: Vec<PluginSlot>,
    pub(super) services: super::services::Services,
    pub(super) events_tx: mpsc::UnboundedSender<PluginEvent>,
    events_rx: mpsc::UnboundedReceiver<PluginEvent>,
    /// Where collections of passed steps report (`data.rs`).
    pub(super) collected_tx: mpsc::UnboundedSender<Event>,
    collected_rx: mpsc::UnboundedReceiver<Event>,
    /// The run's `$HM_OUTPUT` files; `None` if it could not be created (a warning said so).
    pub(super) run_dir: Option<crate::outputs::RunDir>,
    /// Masks the secrets' values in everything the run shows and hands on.
    pub(super) masker: crate::secrets::Masker,
    /// The step cache, when a selected step has `inputs` (and it could be opened).
    pub(super) cache: Option<crate::cache::Store>,
    pub(super) host: Arc<HostState>,
    /// The workspace archive, built if a plugin asks; dropped once every step is done.
    pub(super) archive: Arc<WorkspaceArchive>,
    pub(super) next_call: u64,
    pub(super) started_at: Instant,
    pub(super) pipeline_deadline: Option<Instant>,
    pub(super) user_cancelled: bool,
    pub(super) pipeline_timed_out: bool,
    pub(super) failing_fast: bool,
    pub(super) plugin_problem: bool,
    /// A plugin refused to start because its environment is missing (exit 4).
    pub(super) environment_unavailable: bool,
    pub(super) shutdown_deadline: Option<Instant>,
    /// Cleans up after the kernel if it dies; told about every process group started.
    pub(super) guardian: Option<Guardian>,
    /// Plugin processes tokio waits for; the orphan reaper leaves them alone.
    pub(super) children: Arc<Mutex<HashSet<u32>>>,
    /// The exit code `build_end` reported, once it has been emitted. Events after it go to no
    /// renderer and no hook: `build_end` is the last event of every run.
    pub(super) build_end_code: Option<i32>,
    /// When hooks must have taken their last events.
    pub(super) drain_deadline: Option<Instant>,
    /// Removes finished step leaves off the run loop.
    pub(super) janitor: Option<LeafJanitor>,
    /// Everything was killed (second Ctrl-C, or plugins that would not shut down): no plugin
    /// is started again, not even a hook with events left.
    pub(super) killed_all: bool,
}

impl<'a> Scheduler<'a> {
    pub fn new(
        pipeline: &'a Pipeline,
        opts: RunOptions,
        renderer: Box<dyn Renderer + Send>,
    ) -> Self {
        let mut plugins: Vec<PluginSlot> = Vec::new();
        let mut selected = Vec::new();
        for &index in &opts.selected {
            let plugin = slot_for(&mut plugins, pipeline, &opts.executors[&index]);
            let step = &pipeline.steps[index];
            let when = match step.when {
                When::Manual if opts.named.contains(&index) => When::OnSuccess,
                when => when,
            };
            let needs = step
                .needs
                .iter()
                .map(|&n| (n, step.optional_needs.contains(&n)))
                .collect();
            selected.push(Selected {
                index,
                needs,
                plugin,
                when,
            });
        }
        let mut services = super::services::Services::default();
        let mut names: Vec<&String> = opts.services.keys().collect();
        names.sort();
        for name in names {
            let p = slot_for(&mut plugins, pipeline, &opts.services[name]);
            services.add(name.clone(), p);
        }
        for spec in &opts.hooks {
            let p = slot_for(&mut plugins, pipeline, spec);
            plugins[p].hooks = spec.hooks.clone();
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (collected_tx, collected_rx) = mpsc::unbounded_channel();
        let run_dir = match crate::outputs::RunDir::create(&opts.run_id) {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!("cannot create the run's directory for $HM_OUTPUT files: {e}");
                None
            }
        };
        let masker = opts.secrets.masker();
        let cached = opts
            .selected
            .iter()
            .any(|&i| !pipeline.steps[i].inputs.is_empty() || !pipeline.steps[i].caches.is_empty());
        let cache = match cached.then(|| crate::cache::Store::open(pipeline.cache.dir.as_deref())) {
            Some(Ok(store)) => Some(store),
            Some(Err(e)) => {
                tracing::warn!("cannot open the step cache ({e}): steps with inputs run uncached");
                None
            }
            None => None,
        };
        let now = Instant::now();
        Self {
            collected_tx,
            collected_rx,
            run_dir,
            masker,
            cache,
            pipeline,
            pipeline_deadline: opts.timeout.map(|t| now + t),
            opts,
            renderer,
            steps: Steps::new(selected),
            plugins,
            services,
            events_tx,
            events_rx,
            host: Arc::new(HostState::default()),
            archive: Arc::new(WorkspaceArchive::new(pipeline.root.clone())),
            next_call: 1,
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

    /// Hands the run's guardian to the scheduler, which reports every process group to it and
    /// dismisses it once everything is cleaned up.
    pub fn with_guardian(mut self, mut guardian: Option<Guardian>) -> Self {
        if let (Some(guardian), Some(dir)) = (&mut guardian, &self.run_dir) {
            guardian.watch_dir(dir.path());
        }
        self.guardian = guardian;
        self
    }

    /// Runs the pipeline to the end and returns hm's exit code.
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
            if self.steps.all_done() && self.finish() {
                break;
            }
            let wake = self.next_wake();
            let event = tokio::select! {
                Some(event) = self.events_rx.recv() => Event::Plugin(event),
                Some(event) = self.collected_rx.recv() => event,
                Some(()) = recv_signal(&mut sigint) => {
                    interrupts += 1;
                    Event::Interrupt(interrupts)
                }
                Some(()) = recv_signal(&mut sigterm) => {
                    interrupts += 1;
                    Event::Interrupt(interrupts)
                }
                Some(()) = recv_signal(&mut sigchld) => Event::ChildExited,
                () = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                    Event::Timer
                }
                _ = ticker.tick() => Event::Tick,
            };
            self.handle(event);
            let _ = self.renderer.flush();
        }
        self.wind_up().await
    }

    /// Acts on one event of the run loop.
    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Plugin(event) => {
                self.on_plugin_event(event);
                // Drain what else is queued before rendering, so bursts cost one flush.
                while let Ok(event) = self.events_rx.try_recv() {
                    self.on_plugin_event(event);
                }
            }
            Event::Interrupt(count) => self.on_interrupt(count),
            Event::ChildExited => self.reap_orphans(),
            Event::Timer => self.on_timers(),
            Event::Tick => {
                let _ = self.renderer.tick();
            }
            Event::Collected(collection) => self.on_collected(*collection),
            Event::Looked(looked) => self.on_looked(*looked),
        }
    }

    /// Reaps zombies re-parented to the kernel (it is a subreaper), never the plugins tokio
    /// waits for, nor the guardian.
    pub(super) fn reap_orphans(&self) {
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

    pub(super) fn step_name(&self, i: usize) -> &str {
        &self.pipeline.steps[self.steps[i].index].name
    }

    /// Hands an event to the renderer and to the hooks that observe it.
    pub(super) fn emit(&mut self, mut event: BuildEvent) {
        if self.build_end_code.is_some() {
            return;
        }
        if self.masker.is_active() {
            event.mask(&self.masker);
        }
        let envelope = Envelope::now(&self.opts.run_id, event);
        let _ = self.renderer.event(&envelope);
        self.offer_to_hooks(&envelope);
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
