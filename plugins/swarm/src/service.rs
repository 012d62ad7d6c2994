//! One step attempt's service on the swarm: created, watched to its end (its task's state
//! polled, its logs followed live and completed by a final read, the node it is on watched
//! for going down), removed on cancel (its task gets SIGTERM, then SIGKILL once the grace has
//! passed), and removed in any case before the step answers; an abandoned one is removed in
//! the background.

use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ServiceSpec, Task};
use bollard::query_parameters::{ListTasksOptions, LogsOptions};
use futures_util::{Stream, StreamExt};
use hm_plugin_docker::daemon::{describe, is_status};
use hm_sdk::{OutputStream, StepContext, StepError, StepRequest};
use tokio::time::{Instant, MissedTickBehavior};

use crate::logs::Logs;
use crate::task::{self, Ending, Phase};

/// How often the task's state is asked for.
const POLL: Duration = Duration::from_millis(250);
/// How long after a follow stream ended (the manager closes one opened before the task had
/// started) another is opened.
const FOLLOW_AGAIN: Duration = Duration::from_millis(500);
/// How long the final read of the log may go without a chunk before it is given up.
const FINAL_READ_IDLE: Duration = Duration::from_secs(10);
/// How long past the grace a cancelled task may take to be gone before the step answers. The
/// node's agent stops a removed service's task about a second after the removal (Docker
/// 20.10), and hm kills a plugin that has not answered a cancel 2 s after the grace (then 2 s
/// more): this answers before that, the service being gone either way.
const CANCEL_SLACK: Duration = Duration::from_millis(1500);
/// How often the node the task is on is asked about, while the task is on its way or running.
/// The manager marks a node that missed three heartbeats `down` (~3 s with a 1 s heartbeat,
/// ~15 s with Docker's default 5 s): checking every second adds at most a second to that.
const NODE_CHECK: Duration = Duration::from_secs(1);
/// How long the read of a lost node's log may take in all. The manager asks the node's agent
/// for a service's log, and a node that is down does not answer: what the live read had is
/// what there is, and the step must not wait for a node that may never come back.
const LOST_NODE_READ: Duration = Duration::from_secs(2);
/// How many polls in a row may fail (the manager busy electing a leader, say) before the
/// step fails.
const MAX_POLL_ERRORS: u32 = 40;

type LogStream = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// How the service's run ended.
#[derive(Debug)]
pub enum Ran {
    /// Its task ended, on the node of that hostname (if it reached one).
    Ended {
        ending: Ending,
        node: Option<String>,
    },
    /// hm cancelled the step: the service was removed and its task stopped.
    Cancelled,
    /// The node the task was on went down under it, so how it ends cannot be known; `message`
    /// names the node and what the manager says of it.
    NodeLost { message: String },
}

/// A created service. It is removed by [`StepService::remove`]; if it is dropped without that
/// (a panic, an abandoned future), the removal is started in the background, and the next
/// plugin start's sweep catches what that misses.
pub struct StepService {
    docker: Docker,
    id: String,
    removed: bool,
}

impl StepService {
    pub async fn create(docker: &Docker, spec: ServiceSpec) -> Result<Self, StepError> {
        let created = docker.create_service(spec, None).await.map_err(|e| {
            StepError::Message(format!(
                "cannot create the step's swarm service: {}",
                describe(&e)
            ))
        })?;
        let id = created.id.filter(|id| !id.is_empty()).ok_or_else(|| {
            StepError::Message("the swarm manager created the service without an ID".into())
        })?;
        Ok(Self {
            docker: docker.clone(),
            id,
            removed: false,
        })
    }

    /// Removes the service (its task, if still running, is stopped: SIGTERM, SIGKILL after the
    /// grace). One the manager no longer has counts as removed.
    pub async fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        remove(&self.docker, &self.id).await
    }

    /// Watches the service until its task has ended, its node is lost, or hm cancels the step:
    /// the task's state every [`POLL`] (a line on stderr when it waits for a node, and why; one
    /// when it runs, and where), its node's every [`NODE_CHECK`] once it is on one, its output
    /// as it comes, completed once it has ended (or as far as can be read from a lost node).
    pub async fn run(&self, step: &StepRequest, ctx: &StepContext) -> Result<Ran, StepError> {
        let mut logs = Logs::new(ctx);
        let mut follow = Some(self.logs(true));
        let mut follow_again: Option<Instant> = None;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut waiting_for: Option<String> = None;
        let mut running_on: Option<String> = None;
        let mut task_id: Option<String> = None;
        let mut poll_errors = 0;
        let mut node_checked: Option<Instant> = None;
        let mut unflushed = false;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let ending = loop {
            // Biased: a cancel is seen even while output pours in, and queued output goes out
            // only once nothing more is ready, so it is batched but live.
            tokio::select! {
                biased;
                () = ctx.cancelled() => {
                    self.cancel(task_id, &mut follow, &mut logs, step, ctx).await?;
                    return Ok(Ran::Cancelled);
                }
                _ = poll.tick() => {
                    let tasks = match self.tasks().await {
                        Ok(tasks) => {
                            poll_errors = 0;
                            tasks
                        }
                        Err(e) if is_status(&e, 404) => {
                            return Err(StepError::Message(format!(
                                "the step's swarm service {} was removed by someone else",
                                self.id
                            )));
                        }
                        Err(e) => {
                            poll_errors += 1;
                            if poll_errors >= MAX_POLL_ERRORS {
                                return Err(StepError::Message(format!(
                                    "cannot ask the swarm manager about the step's task: {}",
                                    describe(&e)
                                )));
                            }
                            continue;
                        }
                    };
                    let current = task::current(&tasks);
                    if let Some(id) = current.and_then(|t| t.id.clone()) {
                        task_id = Some(id);
                    }
                    let phase = task::phase(current);
                    let on_node = match &phase {
                        Phase::Starting { node } | Phase::Running { node } => Some(node.clone()),
                        Phase::Waiting { .. } | Phase::Ended(_) => None,
                    };
                    match phase {
                        Phase::Waiting { reason: Some(reason) } if waiting_for.as_ref() != Some(&reason) => {
                            ctx.line(OutputStream::Stderr, format!("hm: waiting for a node: {reason}")).await?;
                            unflushed = true;
                            waiting_for = Some(reason);
                        }
                        Phase::Running { node } if running_on.is_none() => {
                            running_on = Some(self.announce(&node, ctx).await?);
                            unflushed = true;
                        }
                        Phase::Waiting { .. } | Phase::Starting { .. } | Phase::Running { .. } => {}
                        Phase::Ended(ending) => break ending,
                    }
                    // Only while the task is not over: an ended task's verdict stands, whatever
                    // became of its node since.
                    if let Some(node) = on_node
                        && node_checked.is_none_or(|at| at.elapsed() >= NODE_CHECK)
                    {
                        node_checked = Some(Instant::now());
                        if let Some(loss) = self.node_loss(&node).await {
                            drop(follow.take());
                            self.read_to_end(&mut logs, ctx, Some(LOST_NODE_READ)).await?;
                            let hostname = running_on.unwrap_or(loss.hostname);
                            return Ok(Ran::NodeLost {
                                message: format!(
                                    "the node {hostname} (id {node}) the step ran on went down: \
                                     the swarm manager reports it {}",
                                    loss.state
                                ),
                            });
                        }
                    }
                }
                () = tokio::time::sleep_until(follow_again.unwrap_or(far)), if follow.is_none() && follow_again.is_some() => {
                    follow_again = None;
                    logs.restart();
                    follow = Some(self.logs(true));
                }
                chunk = next_chunk(&mut follow) => match chunk {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        unflushed |= logs.feed(OutputStream::Stdout, &message, ctx).await?;
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        unflushed |= logs.feed(OutputStream::Stderr, &message, ctx).await?;
                    }
                    Some(Ok(_)) => {}
                    // A follow opened before the task started may end at once, and any may
                    // end early: another read goes on from where this one was.
                    Some(Err(_)) | None => {
                        follow = None;
                        follow_again = Some(Instant::now() + FOLLOW_AGAIN);
                    }
                },
                () = std::future::ready(()), if unflushed => {
                    ctx.flush().await?;
                    unflushed = false;
                }
            }
        };
        // The follow stream lags and may miss the end: one more read, from the start, which
        // has every line now that the task has ended.
        drop(follow);
        let node_id = match &ending {
            Ending::Exited { node, .. } | Ending::Rejected { node, .. } => node.clone(),
            Ending::Stopped { .. } => None,
        };
        // A short task may have ended between two polls: it ran, and where is still news.
        let ran_on = match (running_on, node_id) {
            (Some(hostname), _) => Some(hostname),
            (None, Some(id)) if matches!(ending, Ending::Exited { .. }) => {
                Some(self.announce(&id, ctx).await?)
            }
            (None, Some(id)) => Some(self.hostname(&id).await),
            (None, None) => None,
        };
        self.read_to_end(&mut logs, ctx, None).await?;
        Ok(Ran::Ended {
            ending,
            node: ran_on,
        })
    }

    /// Writes `hm: running on node <hostname>` on the step's stderr and tells hm (the step's
    /// `step_end` and the summary show it); returns the hostname.
    async fn announce(&self, node: &str, ctx: &StepContext) -> Result<String, StepError> {
        let hostname = self.hostname(node).await;
        ctx.line(
            OutputStream::Stderr,
            format!("hm: running on node {hostname}"),
        )
        .await?;
        ctx.placed_on(hostname.clone()).await?;
        Ok(hostname)
    }

    /// Whether the manager has lost node `id` (see [`task::node_loss`]); a node it no longer
    /// knows has left the swarm. An unanswered question is no news: the next check asks again.
    async fn node_loss(&self, id: &str) -> Option<NodeLoss> {
        match self.docker.inspect_node(id).await {
            Ok(node) => task::node_loss(&node).map(|state| NodeLoss {
                hostname: node
                    .description
                    .and_then(|d| d.hostname)
                    .unwrap_or_else(|| id.to_owned()),
                state,
            }),
            Err(e) if is_status(&e, 404) => Some(NodeLoss {
                hostname: id.to_owned(),
                state: "gone: the node left the swarm".into(),
            }),
            Err(_) => None,
        }
    }

    /// The hostname of node `id`, or its ID if the manager does not say.
    async fn hostname(&self, id: &str) -> String {
        self.docker
            .inspect_node(id)
            .await
            .ok()
            .and_then(|node| node.description)
            .and_then(|d| d.hostname)
            .unwrap_or_else(|| id.to_owned())
    }

    /// The final read: the whole log from its start, each stream's lines past those already
    /// sent; then a last line without a newline, and everything flushed. `within` bounds the
    /// whole read (a lost node's log), else only the wait for each chunk is.
    async fn read_to_end(
        &self,
        logs: &mut Logs,
        ctx: &StepContext,
        within: Option<Duration>,
    ) -> Result<(), StepError> {
        logs.restart();
        let mut read = self.logs(false);
        let deadline = within.map(|within| Instant::now() + within);
        let problem = loop {
            let chunk = tokio::select! {
                biased;
                // The step has ended: a cancel now only cuts the reading short.
                () = ctx.cancelled() => break None,
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    break Some(format!(
                        "its node did not answer within {}s",
                        within.unwrap_or_default().as_secs()
                    ));
                }
                chunk = tokio::time::timeout(FINAL_READ_IDLE, read.next()) => chunk,
            };
            match chunk {
                Ok(Some(Ok(LogOutput::StdOut { message }))) => {
                    logs.feed(OutputStream::Stdout, &message, ctx).await?;
                }
                Ok(Some(Ok(LogOutput::StdErr { message }))) => {
                    logs.feed(OutputStream::Stderr, &message, ctx).await?;
                }
                Ok(Some(Ok(_))) => {}
                Ok(None) => break None,
                Ok(Some(Err(e))) => break Some(describe(&e)),
                Err(_) => {
                    break Some(format!("no output came for {}s", FINAL_READ_IDLE.as_secs()));
                }
            }
        };
        logs.finish(ctx).await?;
        if let Some(problem) = problem {
            ctx.line(
                OutputStream::Stderr,
                format!(
                    "hm: the end of the step's log could not be read from the swarm: {problem}"
                ),
            )
            .await?;
            ctx.flush().await?;
        }
        Ok(())
    }

    /// The cancel: the service goes (its task gets SIGTERM, then SIGKILL once the grace has
    /// passed), and the step answers once the task no longer runs, or the grace and a little
    /// more have passed. Output that still comes meanwhile is sent.
    async fn cancel(
        &self,
        mut task_id: Option<String>,
        follow: &mut Option<LogStream>,
        logs: &mut Logs,
        step: &StepRequest,
        ctx: &StepContext,
    ) -> Result<(), StepError> {
        // The task may have been created since the last poll.
        if let Ok(tasks) = self.tasks().await
            && let Some(id) = task::current(&tasks).and_then(|t| t.id.clone())
        {
            task_id = Some(id);
        }
        if let Err(e) = remove(&self.docker, &self.id).await {
            ctx.line(OutputStream::Stderr, format!("hm: {e}")).await?;
        }
        let deadline = Instant::now() + step.grace + CANCEL_SLACK;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => break,
                _ = poll.tick() => {
                    if !self.still_running(task_id.as_deref()).await {
                        break;
                    }
                }
                chunk = next_chunk(follow) => match chunk {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        logs.feed(OutputStream::Stdout, &message, ctx).await?;
                        ctx.flush().await?;
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        logs.feed(OutputStream::Stderr, &message, ctx).await?;
                        ctx.flush().await?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => *follow = None,
                },
            }
        }
        logs.finish(ctx).await
    }

    /// Whether task `id` is still on its way or running. A task the manager no longer has
    /// (the service's removal reaps its tasks once they have stopped) is not.
    async fn still_running(&self, id: Option<&str>) -> bool {
        let Some(id) = id else {
            return false;
        };
        match self.docker.inspect_task(id).await {
            Ok(task) => !matches!(task::phase(Some(&task)), Phase::Ended(_)),
            Err(e) => !is_status(&e, 404),
        }
    }

    async fn tasks(&self) -> Result<Vec<Task>, bollard::errors::Error> {
        let options = ListTasksOptions {
            filters: Some([("service".to_owned(), vec![self.id.clone()])].into()),
        };
        self.docker.list_tasks(Some(options)).await
    }

    /// A read of the service's log from its start: live (`follow`) or what there is now.
    fn logs(&self, follow: bool) -> LogStream {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        Box::pin(self.docker.service_logs(&self.id, Some(options)))
    }
}

/// A node the manager has lost: its hostname, and its state in the manager's words.
struct NodeLoss {
    hostname: String,
    state: String,
}

impl Drop for StepService {
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

/// The next chunk of a log read, or never when there is none.
async fn next_chunk(
    read: &mut Option<LogStream>,
) -> Option<Result<LogOutput, bollard::errors::Error>> {
    match read {
        Some(read) => read.next().await,
        None => std::future::pending().await,
    }
}

/// Removes service `id`; one the manager does not have (404) counts as removed.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    match docker.delete_service(id).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(format!(
            "cannot remove swarm service {id}: {}",
            describe(&e)
        )),
    }
}
