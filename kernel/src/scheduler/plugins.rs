//! The run's plugins as the run loop sees them: one [`PluginSlot`] per plugin the run uses,
//! started lazily, restarted within its budget ([`RestartWindow`]), and judged when it exits
//! ([`judge_exit`]). The connection to each instance is `supervisor::connection`'s; this
//! module decides what its start, its failure and its exit mean for the run.

use std::collections::{HashMap, VecDeque};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::hook_queue::HookQueue;
use super::hooks::HookCall;
use super::run_loop::Scheduler;
use super::steps::StepState;
use super::verdict::{Verdict, out_of_memory, signal_name};
use crate::cgroup::{Leaf, LeafStats};
use crate::config::{Pipeline, PluginSettings, RestartBudget};
use crate::events::{BuildEvent, Cause};
use crate::registry::PluginSpec;
use crate::registry::manifest::HookSpec;
use crate::supervisor::connection::ConnectionContext;
use crate::supervisor::{
    Confinement, FailedProcess, PluginEvent, PluginEventKind, PluginExit, PluginKey, PluginLink,
    start_plugin,
};

pub(super) enum PluginState {
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

/// One plugin of the run, across its restarts.
pub(super) struct PluginSlot {
    pub(super) spec: PluginSpec,
    pub(super) settings: PluginSettings,
    pub(super) generation: u32,
    pub(super) state: PluginState,
    pub(super) pid: u32,
    /// Step positions by call id.
    pub(super) in_flight: HashMap<u64, usize>,
    pub(super) restarts: RestartWindow,
    pub(super) shutdown_sent: bool,
    /// The plugin process's cgroup leaf, while it lives.
    pub(super) leaf: Option<Leaf>,
    /// The events this plugin's hook observes in this run; empty when it is no hook here.
    pub(super) hooks: Vec<HookSpec>,
    /// `after` events waiting for the hook.
    pub(super) queue: HookQueue,
    /// Hook calls in flight, by call id.
    pub(super) hook_calls: HashMap<u64, HookCall>,
    /// The one `after` call in flight: events go one at a time, in order.
    pub(super) after_call: Option<u64>,
    /// `before` calls waiting for the plugin to start: step, gate, event.
    pub(super) parked_gates: Vec<(usize, u32, String)>,
    /// Cancels the start of this instance (an attached plugin nobody starts).
    pub(super) abandon: tokio_util::sync::CancellationToken,
    /// The run gave up waiting for it: its failure to start is no plugin problem.
    pub(super) abandoned: bool,
}

impl PluginSlot {
    fn new(spec: PluginSpec, settings: PluginSettings) -> Self {
        Self {
            restarts: RestartWindow::new(settings.restart),
            spec,
            settings,
            generation: 0,
            state: PluginState::Idle,
            pid: 0,
            in_flight: HashMap::new(),
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

    pub(super) fn is_hook(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Nothing waits for this hook, nor is it answering anything.
    pub(super) fn hook_idle(&self) -> bool {
        self.queue.is_empty() && self.hook_calls.is_empty() && self.parked_gates.is_empty()
    }
}

/// The slot of the plugin `spec` names, added if it has none yet.
pub(super) fn slot_for(
    plugins: &mut Vec<PluginSlot>,
    pipeline: &Pipeline,
    spec: &PluginSpec,
) -> usize {
    if let Some(p) = plugins.iter().position(|p| p.spec.name == spec.name) {
        return p;
    }
    plugins.push(PluginSlot::new(
        spec.clone(),
        pipeline.plugin_settings(&spec.name),
    ));
    plugins.len() - 1
}

/// A plugin's restart budget (`restart = { max, within }`), like an OTP supervisor's
/// intensity: at most `max` restarts within any `within`.
#[derive(Debug, Clone)]
pub(super) struct RestartWindow {
    budget: RestartBudget,
    recent: VecDeque<Instant>,
    /// Restarts in the whole run.
    count: u32,
}

impl RestartWindow {
    pub(super) fn new(budget: RestartBudget) -> Self {
        Self {
            budget,
            recent: VecDeque::new(),
            count: 0,
        }
    }

    /// Takes one restart at `now` if the budget has room; returns the run's restart count.
    pub(super) fn take(&mut self, now: Instant) -> Option<u32> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.budget.within)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.budget.max {
            return None;
        }
        self.recent.push_back(now);
        self.count += 1;
        Some(self.count)
    }
}

/// How a plugin's exit reads in `plugin_exit`: clean or not, and why.
pub(super) fn judge_exit(exit: &PluginExit, expected: bool, oom: bool) -> (bool, Option<Cause>) {
    use std::os::unix::process::ExitStatusExt;
    let exit_code = exit.status.and_then(|s| s.code());
    let signal = exit.status.and_then(|s| s.signal());
    if exit.violation.is_some() {
        (false, Some(Cause::ProtocolError))
    } else if exit.hung {
        (false, Some(Cause::Timeout))
    } else if oom && signal == Some(libc::SIGKILL) {
        (false, Some(Cause::Oom))
    } else if signal.is_some() {
        (false, Some(Cause::Signal))
    } else if expected && (exit_code == Some(0) || exit.status.is_none()) {
        // An attached plugin has no status for hm: its connection ending after Shutdown is
        // its clean end.
        (true, None)
    } else {
        (false, Some(Cause::Exit))
    }
}

/// What hm says about an exit that was not clean.
fn exit_message(plugin: &str, exit: &PluginExit, oom: Option<String>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut message = match (&exit.violation, exit.hung, oom) {
        (Some(v), _, _) => format!("plugin {plugin} broke the protocol and was killed: {v}"),
        (None, true, _) => format!("plugin {plugin} stopped answering and was killed"),
        (None, false, Some(oom)) => format!("plugin {plugin} was killed: {oom}"),
        _ => match (
            exit.status.and_then(|s| s.code()),
            exit.status.and_then(|s| s.signal()),
        ) {
            (_, Some(s)) => format!("plugin {plugin} was killed by signal {}", signal_name(s)),
            (Some(c), _) => format!("plugin {plugin} exited with code {c}"),
            _ => format!("plugin {plugin} exited"),
        },
    };
    if !exit.stderr_tail.is_empty() {
        message.push_str("; its last output: ");
        message.push_str(&exit.stderr_tail.join(" | "));
    }
    message
}

/// The leaf of a plugin instance: `plugin`, then `plugin-2`, `plugin-3`... for restarts.
fn plugin_leaf_name(generation: u32) -> String {
    match generation {
        0 | 1 => "plugin".to_owned(),
        n => format!("plugin-{n}"),
    }
}

impl Scheduler<'_> {
    /// Starts a plugin that exited again if its budget allows (`plugin_restart`), or marks it
    /// failed for good. Returns whether it is starting.
    pub(super) fn restart_plugin(&mut self, p: usize) -> bool {
        let slot = &mut self.plugins[p];
        let Some(restarts) = slot.restarts.take(Instant::now()) else {
            let message = format!(
                "plugin {} crashed more than {} times within {}; not restarted",
                slot.spec.name,
                slot.settings.restart.max,
                humantime::format_duration(slot.settings.restart.within)
            );
            slot.state = PluginState::Failed(message);
            return false;
        };
        let (plugin, max) = (slot.spec.name.clone(), slot.settings.restart.max);
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

    /// Starts a new instance of plugin `p`: its cgroup leaf (or rlimit), then the connection
    /// task, which reports back as [`PluginEvent`]s.
    pub(super) fn start_plugin(&mut self, p: usize) {
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
            notice: self.opts.notice.clone(),
        };
        let mut confinement = Confinement::default();
        match &self.opts.run_cgroup {
            // A process started by hand is not hm's to confine; its steps still are.
            _ if attach.is_some() => {}
            // A restarted instance gets a leaf of its own: the old one may still be emptying.
            Some(run) => match run.plugin_leaf(
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

    /// SIGKILLs plugin `p`'s process group, if an instance is running.
    pub(super) fn kill_plugin(&mut self, p: usize) {
        let slot = &self.plugins[p];
        if matches!(
            slot.state,
            PluginState::Ready { .. } | PluginState::Starting
        ) && slot.pid > 0
        {
            let _ = killpg(Pid::from_raw(slot.pid as i32), Signal::SIGKILL);
        }
    }

    /// Routes what a plugin's connection reported; events of an instance that was replaced
    /// since are ignored.
    pub(super) fn on_plugin_event(&mut self, event: PluginEvent) {
        let p = event.key.index;
        if self.plugins[p].generation != event.key.generation {
            return;
        }
        match event.kind {
            PluginEventKind::Ready {
                pid,
                protocol,
                link,
            } => self.on_plugin_ready(p, pid, protocol, link),
            PluginEventKind::StartFailed {
                message,
                unavailable,
                violation,
                process,
            } => self.on_start_failed(p, message, unavailable, violation, process),
            PluginEventKind::Log { call, batch } => self.on_step_output(p, call, &batch),
            PluginEventKind::StepDone {
                call,
                result,
                out_of_memory,
            } => self.on_step_done(p, call, result, out_of_memory),
            PluginEventKind::CallFailed { call, message }
                if self.plugins[p].hook_calls.contains_key(&call) =>
            {
                self.on_hook_answer(p, call, Err(message));
            }
            PluginEventKind::CallFailed { call, message } if self.services.owns(p, call) => {
                self.on_service_call_failed(call, message);
            }
            PluginEventKind::CallFailed { call, message } => {
                self.on_step_refused(p, call, message, None);
            }
            PluginEventKind::ImageUnavailable { call, message } => {
                self.on_step_refused(p, call, message, Some(Cause::Image));
            }
            PluginEventKind::Placed { call, node } => {
                if let Some(&i) = self.plugins[p].in_flight.get(&call) {
                    self.steps[i].node = Some(node);
                }
            }
            PluginEventKind::NodeLost { call, message } => {
                self.on_step_refused(p, call, message, Some(Cause::NodeLost));
            }
            PluginEventKind::ServiceUp { call, ports } => self.on_service_up(call, ports),
            PluginEventKind::ServiceFailed { call, failure } => {
                self.on_service_start_failed(call, failure);
            }
            PluginEventKind::ServiceStopped { call } => self.on_service_stopped(call),
            PluginEventKind::StepProcess { call, pgid } => {
                if let Some(guardian) = &mut self.guardian {
                    guardian.watch_pgid(pgid);
                }
                if let Some(&i) = self.plugins[p].in_flight.get(&call) {
                    self.steps[i].pgid = Some(pgid);
                }
            }
            PluginEventKind::Artifacts { call, upload } => {
                self.on_artifacts_upload(p, call, upload)
            }
            PluginEventKind::OpenArtifacts { host_call, call } => {
                self.on_open_artifacts(p, host_call, call);
            }
            PluginEventKind::Diagnostic { message } => {
                let message = self.masker.mask(&message);
                tracing::warn!(plugin = %self.plugins[p].spec.name, "{message}");
            }
            // The connection's policy lets a hook's answer through only to a hook call.
            PluginEventKind::HookDone { call, abort } => self.on_hook_answer(p, call, Ok(abort)),
            PluginEventKind::Exited(exit) => self.on_plugin_exit(p, exit),
        }
    }

    fn on_plugin_ready(&mut self, p: usize, pid: u32, protocol: u32, link: PluginLink) {
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
                    self.end_attempt(i, Verdict::stopped(reason, None));
                } else {
                    self.send_execute(i);
                }
            }
        }
        self.on_service_plugin_ready(p);
        for (i, gate, json) in std::mem::take(&mut self.plugins[p].parked_gates) {
            self.send_gate(p, i, gate, json);
        }
        self.pump_hook(p);
    }

    fn on_start_failed(
        &mut self,
        p: usize,
        message: String,
        unavailable: bool,
        violation: bool,
        process: Option<FailedProcess>,
    ) {
        if let Some(process) = process {
            // Its process existed: a CI log shows it started and how it ended.
            self.emit_failed_start(p, process, &message);
        }
        let serves_steps = self.steps.iter().any(|s| s.plugin == p)
            || self.services.slots.iter().any(|s| s.plugin == p);
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
        self.on_service_plugin_gone(p, &format!("could not start: {message}"));
        let cause = match violation {
            true => Cause::ProtocolError,
            false => Cause::ExecutorCrash,
        };
        for i in 0..self.steps.len() {
            if self.steps[i].plugin == p && self.steps[i].state == StepState::Starting {
                self.steps[i].state = StepState::Running;
                let verdict = match self.steps[i].stop {
                    Some(reason) => Verdict::stopped(reason, None),
                    None => Verdict::failed(cause, message.clone()),
                };
                self.end_attempt(i, verdict);
            }
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
        let stats: LeafStats = slot
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
        let oom = stats.oom_kills.is_some_and(|n| n > 0);
        let (clean, cause) = judge_exit(&exit, expected, oom);
        let plugin = slot.spec.name.clone();
        let in_flight: Vec<(u64, usize)> = slot.in_flight.drain().collect();
        let message = (!clean).then(|| {
            let oom = (cause == Some(Cause::Oom))
                .then(|| out_of_memory(&stats, self.plugins[p].settings.limits.memory_bytes));
            exit_message(&plugin, &exit, oom)
        });
        self.emit(BuildEvent::PluginExit {
            plugin: plugin.clone(),
            pid: exit.pid,
            clean,
            cause,
            exit_code: exit.status.and_then(|s| s.code()),
            signal: exit.status.and_then(|s| s.signal()),
            message: message.clone(),
        });
        if let Some(message) = message.filter(|_| !expected) {
            tracing::warn!("{message}");
            let step_cause = match exit.violation {
                Some(_) => Cause::ProtocolError,
                None => Cause::ExecutorCrash,
            };
            for (_, i) in in_flight {
                // Kill what the dead plugin left of the step: it cannot be trusted to have.
                if let Some(pgid) = self.steps[i].pgid {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let verdict = match self.steps[i].stop {
                    Some(reason) => Verdict::stopped(reason, None),
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
        self.on_service_plugin_gone(p, "exited");
        // Events still waiting restart the hook (within its budget).
        self.pump_hook(p);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_restart_budget_counts_restarts_within_its_window() {
        let mut window = RestartWindow::new(RestartBudget {
            max: 2,
            within: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(window.take(at(0)), Some(1));
        assert_eq!(window.take(at(10)), Some(2));
        assert_eq!(window.take(at(20)), None, "two within a minute already");
        // The first restart leaves the window after 60 s.
        assert_eq!(window.take(at(61)), Some(3));
        assert_eq!(window.take(at(62)), None);
        let mut never = RestartWindow::new(RestartBudget {
            max: 0,
            within: Duration::from_secs(1),
        });
        assert_eq!(never.take(t0), None);
    }

    fn exit(status: Option<ExitStatus>, violation: bool, hung: bool) -> PluginExit {
        PluginExit {
            pid: 7,
            status,
            violation: violation.then(|| "bad frame".to_owned()),
            hung,
            stderr_tail: Vec::new(),
        }
    }

    #[test]
    fn a_plugin_exit_is_clean_only_after_shutdown_with_status_0() {
        let code = |c: i32| Some(ExitStatus::from_raw(c << 8));
        let killed = |s: i32| Some(ExitStatus::from_raw(s));
        // (exit, shutdown was sent, OOM in its cgroup, clean, cause)
        let cases = [
            (exit(code(0), false, false), true, false, true, None),
            (
                exit(code(0), false, false),
                false,
                false,
                false,
                Some(Cause::Exit),
            ),
            (
                exit(code(3), false, false),
                true,
                false,
                false,
                Some(Cause::Exit),
            ),
            (
                exit(killed(11), false, false),
                true,
                false,
                false,
                Some(Cause::Signal),
            ),
            (
                exit(killed(9), false, false),
                false,
                true,
                false,
                Some(Cause::Oom),
            ),
            (
                exit(killed(9), true, false),
                false,
                false,
                false,
                Some(Cause::ProtocolError),
            ),
            (
                exit(killed(9), false, true),
                false,
                false,
                false,
                Some(Cause::Timeout),
            ),
            // An attached plugin: no status, its connection's end after Shutdown is clean.
            (exit(None, false, false), true, false, true, None),
            (
                exit(None, false, false),
                false,
                false,
                false,
                Some(Cause::Exit),
            ),
        ];
        for (exit, expected, oom, clean, cause) in cases {
            assert_eq!(judge_exit(&exit, expected, oom), (clean, cause), "{exit:?}");
        }
    }

    #[test]
    fn an_unclean_exit_says_what_happened_and_what_the_plugin_wrote_last() {
        let mut crashed = exit(Some(ExitStatus::from_raw(11)), false, false);
        crashed.stderr_tail = vec!["panicked".into(), "bye".into()];
        assert_eq!(
            exit_message("p", &crashed, None),
            "plugin p was killed by signal SIGSEGV (11); its last output: panicked | bye"
        );
        assert_eq!(
            exit_message("p", &exit(None, true, false), None),
            "plugin p broke the protocol and was killed: bad frame"
        );
        assert_eq!(
            exit_message("p", &exit(None, false, false), Some("out of memory".into())),
            "plugin p was killed: out of memory"
        );
    }
}
