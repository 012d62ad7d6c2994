//! What the run loop keeps for each hook plugin: the events waiting for it,
//! bounded so that a slow hook never grows the kernel's memory or slows the run down, and the
//! count of what had to be dropped.
//!
//! The scheduler owns one [`HookQueue`] per hook plugin and decides when to deliver; this module
//! knows nothing about plugins or steps.

use std::collections::VecDeque;

use crate::events::Envelope;
use crate::registry::manifest::{HookPhase, HookSpec};

/// The most events that wait for one hook plugin. Past it, new events are dropped and counted:
/// the run never waits for an after-hook.
pub const QUEUE_CAPACITY: usize = 1024;

/// One event for a hook: its kind and the JSON object of `--format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub kind: &'static str,
    pub json: String,
}

impl QueuedEvent {
    pub fn new(envelope: &Envelope) -> Self {
        Self {
            kind: envelope.event.kind(),
            // Serialising plain data into a String cannot fail.
            json: serde_json::to_string(envelope).unwrap_or_default(),
        }
    }
}

/// The after-phase events waiting for one hook plugin, oldest first. They are delivered one at
/// a time, so a hook sees them in the order they happened.
#[derive(Debug)]
pub struct HookQueue {
    events: VecDeque<QueuedEvent>,
    capacity: usize,
    dropped: u64,
}

impl Default for HookQueue {
    fn default() -> Self {
        Self::with_capacity(QUEUE_CAPACITY)
    }
}

impl HookQueue {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Queues `event`, or drops and counts it when the queue is full.
    pub fn push(&mut self, event: QueuedEvent) {
        if self.events.len() >= self.capacity {
            self.dropped += 1;
        } else {
            self.events.push_back(event);
        }
    }

    pub fn pop(&mut self) -> Option<QueuedEvent> {
        self.events.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Drops everything still waiting (the hook cannot take it any more) and counts it.
    pub fn drop_all(&mut self) {
        self.dropped += self.events.len() as u64;
        self.events.clear();
    }

    /// Counts an event that was sent but never answered (its hook died or hung).
    pub fn count_lost(&mut self) {
        self.dropped += 1;
    }

    /// Events this hook never saw.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The subscription of `hooks` that covers events of `kind` in `phase`, if any.
pub fn subscription(hooks: &[HookSpec], kind: &str, phase: HookPhase) -> Option<HookSpec> {
    hooks
        .iter()
        .copied()
        .find(|h| h.phase == phase && h.covers(kind))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(n: usize) -> QueuedEvent {
        QueuedEvent {
            kind: "step_log",
            json: n.to_string(),
        }
    }

    #[test]
    fn a_full_queue_drops_new_events_and_counts_them() {
        let mut queue = HookQueue::with_capacity(2);
        for n in 0..5 {
            queue.push(event(n));
        }
        assert_eq!(queue.dropped(), 3);
        assert_eq!(queue.pop(), Some(event(0)));
        queue.push(event(5));
        assert_eq!(queue.pop(), Some(event(1)));
        assert_eq!(queue.pop(), Some(event(5)));
        assert_eq!(queue.pop(), None);
        queue.push(event(6));
        queue.drop_all();
        queue.count_lost();
        assert!(queue.is_empty());
        assert_eq!(queue.dropped(), 5);
    }

    #[test]
    fn subscriptions_match_by_kind_and_phase() {
        let spec = |event, phase| HookSpec {
            event,
            phase,
            timeout: Duration::from_secs(1),
        };
        let hooks = [
            spec("step_start", HookPhase::Before),
            spec("*", HookPhase::After),
        ];
        assert_eq!(
            subscription(&hooks, "step_start", HookPhase::Before).map(|h| h.event),
            Some("step_start")
        );
        assert_eq!(
            subscription(&hooks, "step_end", HookPhase::After).map(|h| h.event),
            Some("*")
        );
        assert_eq!(subscription(&hooks, "step_end", HookPhase::Before), None);
        let only_end = [spec("step_end", HookPhase::After)];
        assert_eq!(subscription(&only_end, "build_end", HookPhase::After), None);
    }
}
