//! Hooks in the run loop: a step whose needs are met and that has a slot first passes its
//! `before` hooks on `step_start` (state `Gating`): the kernel asks every such hook and waits,
//! each up to its timeout; one abort ends the step with cause `hook_abort` before any executor
//! sees it. `after` hooks get their events from a bounded queue ([`HookQueue`]), one at a time
//! and in order, and the run never waits for them, except at its very end (`end.rs`). A hook
//! that fails, crashes or hangs is reported, killed if hung, and restarted for its next event
//! within the plugin's budget; it fails the run (exit 5) only with `required = true`.

use std::time::Duration;

use hm_ipc::host::CallKind;
use hm_ipc::messages::{HookEvent, HookPhase, KernelCall};
use tokio::time::Instant;

#[cfg(doc)]
use super::hook_queue::HookQueue;
use super::hook_queue::{QueuedEvent, subscription};
use super::plugins::PluginState;
use super::run_loop::Scheduler;
use super::steps::StepState;
use super::verdict::Verdict;
use crate::events::{BuildEvent, Cause, Envelope};
use crate::supervisor::events::LinkError;

/// A hook call in flight.
pub(super) struct HookCall {
    pub(super) kind: &'static str,
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
    /// For a `before` call: the step (position in `steps`) and its gate number.
    pub(super) gate: Option<(usize, u32)>,
}

impl Scheduler<'_> {
    /// Passes a step that may start through its `before` hooks on `step_start`, or dispatches
    /// it at once when there are none.
    pub(super) fn gate(&mut self, i: usize) {
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
    pub(super) fn send_gate(&mut self, p: usize, i: usize, gate: u32, json: String) {
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
            Err(e) => self.resolve_gate(p, i, gate, Err(e.to_string())),
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
    ) -> Result<u64, LinkError> {
        let PluginState::Ready { link, .. } = &self.plugins[p].state else {
            return Err(LinkError::Closed);
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
    pub(super) fn resolve_gate(
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
    pub(super) fn offer_to_hooks(&mut self, envelope: &Envelope) {
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
    pub(super) fn hooks_want_logs(&self) -> bool {
        self.plugins
            .iter()
            .any(|p| subscription(&p.hooks, "step_log", HookPhase::After).is_some())
    }

    /// Sends a hook its next event if it has none in flight, starting (or restarting) the
    /// plugin when it is not running.
    pub(super) fn pump_hook(&mut self, p: usize) {
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

    pub(super) fn on_hook_answer(
        &mut self,
        p: usize,
        call: u64,
        answer: Result<Option<String>, String>,
    ) {
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
    pub(super) fn on_hook_timeout(&mut self, p: usize, call: u64) {
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
    pub(super) fn hook_lost_calls(&mut self, p: usize, message: &str) {
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
    pub(super) fn hook_gone(&mut self, p: usize, message: &str) {
        for (i, gate, _) in std::mem::take(&mut self.plugins[p].parked_gates) {
            self.resolve_gate(p, i, gate, Err(message.to_owned()));
        }
        self.hook_lost_calls(p, message);
        self.plugins[p].queue.drop_all();
    }
}
