//! What the service's task says, as the step sees it: waiting for a node (a queue, not a
//! failure), on its way on a node, running, or ended; whether the node it is on was lost; and
//! how an ended task ends the step. Plain functions of the manager's answers, tested without a
//! swarm.

use bollard::models::{Node, NodeState, Task, TaskState};
use hm_sdk::{StepError, StepResult};

/// Where the step's task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not on a node yet: the manager has not placed it, or no node fits. `reason` is the
    /// scheduler's word for why ("no suitable node (insufficient resources on 1 node)").
    Waiting {
        reason: Option<String>,
    },
    /// On node `node` (its ID), being prepared (the image) or started.
    Starting {
        node: String,
    },
    Running {
        node: String,
    },
    Ended(Ending),
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Its container ran and exited with `code`.
    Exited { code: i64, node: Option<String> },
    /// The node refused it (its image is not there and cannot be pulled, a bad mount): nothing
    /// of the step ran.
    Rejected {
        reason: String,
        node: Option<String>,
    },
    /// It ended without an exit of its own (`failed` before its process ran, or `shutdown`,
    /// `orphaned`, `remove`: the swarm stopped it, or lost its node).
    Stopped { state: String, reason: String },
}

/// The task that stands for the step: the one still meant to run if there is one (the
/// service has one slot and never restarts, so there is one task in practice), else the
/// latest.
pub fn current(tasks: &[Task]) -> Option<&Task> {
    let index = |t: &Task| t.version.as_ref().and_then(|v| v.index).unwrap_or(0);
    tasks
        .iter()
        .filter(|t| t.desired_state == Some(TaskState::RUNNING))
        .max_by_key(|t| index(t))
        .or_else(|| tasks.iter().max_by_key(|t| index(t)))
}

/// Where `task` is (no task yet: waiting).
pub fn phase(task: Option<&Task>) -> Phase {
    let Some(task) = task else {
        return Phase::Waiting { reason: None };
    };
    let status = task.status.clone().unwrap_or_default();
    let text = |s: Option<String>| s.filter(|s| !s.is_empty());
    let (message, err) = (text(status.message), text(status.err));
    let node = task.node_id.clone().filter(|n| !n.is_empty());
    let exit_code = status.container_status.and_then(|c| c.exit_code);
    let state = status.state.unwrap_or(TaskState::NEW);
    let reason = || {
        err.clone()
            .or_else(|| message.clone())
            .unwrap_or_else(|| state.to_string())
    };
    match state {
        TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING => Phase::Waiting {
            reason: err.clone(),
        },
        TaskState::ASSIGNED
        | TaskState::ACCEPTED
        | TaskState::PREPARING
        | TaskState::READY
        | TaskState::STARTING => match node {
            Some(node) => Phase::Starting { node },
            None => Phase::Waiting { reason: None },
        },
        TaskState::RUNNING => match node {
            Some(node) => Phase::Running { node },
            None => Phase::Waiting { reason: None },
        },
        TaskState::COMPLETE => Phase::Ended(Ending::Exited {
            code: exit_code.unwrap_or(0),
            node,
        }),
        // A process that exited non-zero; with no exit code of its own, the container never
        // ran it (the command was not found, the runtime failed).
        TaskState::FAILED => match exit_code.filter(|&c| c != 0) {
            Some(code) => Phase::Ended(Ending::Exited { code, node }),
            None => Phase::Ended(Ending::Stopped {
                state: state.to_string(),
                reason: reason(),
            }),
        },
        // The exit code of a rejected task is 0, and means nothing: its state says it all.
        TaskState::REJECTED => Phase::Ended(Ending::Rejected {
            reason: reason(),
            node,
        }),
        TaskState::SHUTDOWN | TaskState::REMOVE | TaskState::ORPHANED => {
            Phase::Ended(Ending::Stopped {
                state: state.to_string(),
                reason: reason(),
            })
        }
    }
}

/// Whether the manager has lost `node`, the one the step's task is on, and in its words how
/// (`"down: heartbeat failure"`); `None` while the node is `ready`.
///
/// A node that misses its heartbeats is marked `down` while its task still reads `running`:
/// the manager cannot hear from it, so the task's state never changes (until it is orphaned,
/// a day later). The node's own state is the only news that it is gone. `unknown` and
/// `disconnected` count too: a node in them runs nothing the manager can follow. A node
/// without a state (an answer missing the field) is not judged lost.
pub fn node_loss(node: &Node) -> Option<String> {
    let status = node.status.clone().unwrap_or_default();
    let state = status.state?;
    match state {
        NodeState::READY => None,
        NodeState::DOWN | NodeState::UNKNOWN | NodeState::DISCONNECTED => {
            Some(match status.message.filter(|m| !m.trim().is_empty()) {
                Some(message) => format!("{state}: {}", message.trim()),
                None => state.to_string(),
            })
        }
    }
}

/// How an ended task ends the step. `image` is the step's, `node` the hostname of the node it
/// was on (if known), `memory_limited` whether the step has a memory limit.
///
/// Out of memory is this plugin's judgement: the swarm API reports no `OOMKilled`, so a
/// process killed by SIGKILL (exit 137) in a step with a memory limit, which hm did not cancel,
/// counts as killed by the OOM killer. A SIGKILL from elsewhere in such a step reads the same.
pub fn verdict(
    ending: &Ending,
    image: &str,
    node: Option<&str>,
    memory_limited: bool,
) -> Result<StepResult, StepError> {
    let on = node.map(|n| format!(" on node {n}")).unwrap_or_default();
    match ending {
        Ending::Exited { code: 137, .. } if memory_limited => {
            Err(StepError::OutOfMemory(StepResult {
                signal: Some(9),
                ..StepResult::default()
            }))
        }
        Ending::Exited { code, .. } => Ok(StepResult {
            exit_code: Some(i32::try_from(*code).unwrap_or(i32::MAX)),
            ..StepResult::default()
        }),
        Ending::Rejected { reason, .. } if image_missing(reason) => Err(StepError::Image(format!(
            "image {image} is not available{on}: {reason}\n  hint: every node that may run the \
             step needs the image: push it to a registry the nodes can pull from, or load it \
             on each node (or constrain the step to nodes that have it with with.constraints)"
        ))),
        Ending::Rejected { reason, .. } => Err(StepError::Message(format!(
            "the swarm rejected the step's task{on}: {reason}"
        ))),
        Ending::Stopped { state, reason } if state == "failed" => Err(StepError::Message(format!(
            "the step's task failed{on} before its command ran: {reason}"
        ))),
        Ending::Stopped { state, reason } => Err(StepError::Message(format!(
            "the swarm shut the step's task down{on} before it ended (task state {state}: \
             {reason}); the node may have left the swarm or been drained"
        ))),
    }
}

/// Whether a rejection says the node has no such image and could not pull it.
pub fn image_missing(reason: &str) -> bool {
    let reason = reason.to_lowercase();
    [
        "no such image",
        "pull access denied",
        "manifest unknown",
        "repository does not exist",
        "not found: manifest",
        "image not found",
    ]
    .iter()
    .any(|needle| reason.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerStatus, ObjectVersion, TaskStatus};

    fn task(state: TaskState, exit_code: Option<i64>, err: &str, message: &str) -> Task {
        Task {
            node_id: Some("n1".into()),
            desired_state: Some(TaskState::RUNNING),
            status: Some(TaskStatus {
                state: Some(state),
                err: Some(err.into()),
                message: Some(message.into()),
                container_status: Some(ContainerStatus {
                    exit_code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(state: TaskState, exit_code: Option<i64>, err: &str, expected: Phase) {
        assert_eq!(
            phase(Some(&task(state, exit_code, err, "a message"))),
            expected,
            "{state}"
        );
    }

    #[test]
    fn states_become_phases() {
        let node = || "n1".to_string();
        assert_eq!(phase(None), Phase::Waiting { reason: None });
        check(TaskState::NEW, None, "", Phase::Waiting { reason: None });
        let no_node = "no suitable node (insufficient resources on 1 node)";
        check(
            TaskState::PENDING,
            None,
            no_node,
            Phase::Waiting {
                reason: Some(no_node.into()),
            },
        );
        for state in [
            TaskState::ASSIGNED,
            TaskState::PREPARING,
            TaskState::STARTING,
        ] {
            check(state, None, "", Phase::Starting { node: node() });
        }
        check(
            TaskState::RUNNING,
            None,
            "",
            Phase::Running { node: node() },
        );
        let exited = |code| {
            Phase::Ended(Ending::Exited {
                code,
                node: Some(node()),
            })
        };
        check(TaskState::COMPLETE, Some(0), "", exited(0));
        check(TaskState::COMPLETE, None, "", exited(0));
        check(
            TaskState::FAILED,
            Some(3),
            "task: non-zero exit (3)",
            exited(3),
        );
        check(TaskState::FAILED, Some(137), "", exited(137));
        check(
            TaskState::FAILED,
            Some(0),
            "starting container failed: no such file",
            Phase::Ended(Ending::Stopped {
                state: "failed".into(),
                reason: "starting container failed: no such file".into(),
            }),
        );
        // Rejected: the state counts, not the exit code (0 there).
        check(
            TaskState::REJECTED,
            Some(0),
            "No such image: nope:1",
            Phase::Ended(Ending::Rejected {
                reason: "No such image: nope:1".into(),
                node: Some(node()),
            }),
        );
        for state in [TaskState::SHUTDOWN, TaskState::ORPHANED, TaskState::REMOVE] {
            check(
                state,
                Some(0),
                "",
                Phase::Ended(Ending::Stopped {
                    state: state.to_string(),
                    reason: "a message".into(),
                }),
            );
        }
    }

    #[test]
    fn the_task_meant_to_run_stands_for_the_step() {
        let with = |index, desired| Task {
            version: Some(ObjectVersion { index: Some(index) }),
            desired_state: Some(desired),
            ..Default::default()
        };
        let tasks = [
            with(9, TaskState::SHUTDOWN),
            with(5, TaskState::RUNNING),
            with(3, TaskState::SHUTDOWN),
        ];
        assert_eq!(
            current(&tasks).and_then(|t| t.version.clone()),
            tasks[1].version
        );
        let ended = [with(3, TaskState::SHUTDOWN), with(7, TaskState::SHUTDOWN)];
        assert_eq!(
            current(&ended).and_then(|t| t.version.clone()),
            ended[1].version
        );
        assert!(current(&[]).is_none());
    }

    fn exited(code: i64) -> Ending {
        Ending::Exited { code, node: None }
    }

    #[test]
    fn endings_become_verdicts() {
        let code = |ending: &Ending, limited| {
            verdict(ending, "img", Some("node-2"), limited).map(|r| (r.exit_code, r.signal))
        };
        assert_eq!(code(&exited(0), false).ok(), Some((Some(0), None)));
        assert_eq!(code(&exited(3), true).ok(), Some((Some(3), None)));
        // 137 without a memory limit is a plain SIGKILL exit code.
        assert_eq!(code(&exited(137), false).ok(), Some((Some(137), None)));
        match verdict(&exited(137), "img", None, true) {
            Err(StepError::OutOfMemory(result)) => assert_eq!(result.signal, Some(9)),
            other => panic!("not out of memory: {other:?}"),
        }
        let rejected = |reason: &str| Ending::Rejected {
            reason: reason.into(),
            node: None,
        };
        match verdict(
            &rejected("No such image: img:1"),
            "img:1",
            Some("w1"),
            false,
        ) {
            Err(StepError::Image(message)) => {
                assert!(message.contains("image img:1 is not available on node w1"));
                assert!(message.contains("No such image: img:1"));
            }
            other => panic!("not an image error: {other:?}"),
        }
        match verdict(&rejected("invalid mount config"), "img", None, false) {
            Err(StepError::Message(message)) => {
                assert!(message.contains("rejected"), "{message}");
                assert!(message.contains("invalid mount config"), "{message}");
            }
            other => panic!("not a message: {other:?}"),
        }
        let stopped = Ending::Stopped {
            state: "orphaned".into(),
            reason: "node is down".into(),
        };
        match verdict(&stopped, "img", Some("w2"), false) {
            Err(StepError::Message(message)) => {
                assert!(message.contains("shut the step's task down on node w2"));
                assert!(message.contains("orphaned: node is down"), "{message}");
            }
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn a_node_down_unknown_or_disconnected_is_lost_and_a_ready_one_is_not() {
        use bollard::models::NodeStatus;
        let node = |state: Option<NodeState>, message: &str| Node {
            id: Some("n2".into()),
            status: Some(NodeStatus {
                state,
                message: Some(message.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let check = |state, message: &str, expected: Option<&str>| {
            assert_eq!(
                node_loss(&node(state, message)).as_deref(),
                expected,
                "{state:?} {message:?}"
            );
        };
        check(Some(NodeState::READY), "", None);
        // A ready node's message says nothing of a loss.
        check(Some(NodeState::READY), "heartbeat failure", None);
        check(
            Some(NodeState::DOWN),
            "heartbeat failure",
            Some("down: heartbeat failure"),
        );
        check(Some(NodeState::DOWN), "", Some("down"));
        check(Some(NodeState::UNKNOWN), " ", Some("unknown"));
        check(
            Some(NodeState::DISCONNECTED),
            "node is disconnected",
            Some("disconnected: node is disconnected"),
        );
        check(None, "heartbeat failure", None);
        assert_eq!(node_loss(&Node::default()), None);
    }

    #[test]
    fn missing_images_are_told_apart_from_other_rejections() {
        for missing in [
            "No such image: busybox:nope",
            "pull access denied for x, repository does not exist",
            "manifest unknown",
        ] {
            assert!(image_missing(missing), "{missing}");
        }
        for other in [
            "invalid mount config for type bind",
            "no space left on device",
        ] {
            assert!(!image_missing(other), "{other}");
        }
    }
}
