//! The context an executor gets with each step: the host API (log, step output, key-value
//! state, the workspace archive, artifacts) and the step's cancellation as a future.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hm_ipc::SealedBuffer;
use hm_ipc::messages::{
    ArtifactUpload, HostCall, HostReply, KvKey, KvScope, KvWrite, LogBatch, LogChunk, LogLevel,
    LogRecord, StepProcess, StepRef,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::StepError;
use crate::archive::Archive;
use crate::link::Link;

/// Which of the step's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Handed to [`crate::Executor::execute`]; cheap to clone.
#[derive(Clone)]
pub struct StepContext {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<Link>,
    call_id: u64,
    cancel: CancellationToken,
    batch: Mutex<Pending>,
}

/// How long a partial batch may wait for more lines once hm has caught up (see
/// [`StepContext::flush_or_defer`]).
const LINGER: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Pending {
    chunks: Vec<LogChunk>,
    bytes: usize,
    /// When the first line of this batch was queued.
    since: Option<Instant>,
    /// The text buffer of the last batch sent, emptied: the next batch's first chunk reuses it
    /// instead of growing a new one.
    spare: String,
}

impl Pending {
    /// Appends whole lines (joined by `\n`) of `stream`, extending the last chunk when it is
    /// of the same stream.
    fn push(&mut self, stream: OutputStream, lines: &str) {
        let stream = stream as u8;
        self.since.get_or_insert_with(Instant::now);
        self.bytes += lines.len() + 1;
        match self.chunks.last_mut() {
            Some(last) if last.stream == stream => {
                last.text.push('\n');
                last.text.push_str(lines);
            }
            _ => {
                let mut text = std::mem::take(&mut self.spare);
                text.push_str(lines);
                self.chunks.push(LogChunk { stream, text });
            }
        }
    }
}

impl StepContext {
    pub(crate) fn new(link: Arc<Link>, call_id: u64, cancel: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                link,
                call_id,
                cancel,
                batch: Mutex::new(Pending::default()),
            }),
        }
    }

    /// The id of the step call (`ExecuteStep`, `Execute` or `Step`) this context serves.
    pub fn call_id(&self) -> u64 {
        self.inner.call_id
    }

    /// The most bytes of text one batch of output may carry; longer lines are split.
    pub fn max_line_bytes(&self) -> usize {
        self.inner.link.max_batch_bytes
    }

    /// Queues one line of step output (without its newline). Lines are sent in batches;
    /// call [`Self::flush`] when no more output is immediately available so the user sees it
    /// live. A line longer than a batch may carry ([`Self::max_line_bytes`]) is split, at
    /// character boundaries, into lines that fit: hm refuses a larger batch.
    pub async fn line(&self, stream: OutputStream, text: String) -> Result<(), StepError> {
        self.lines(stream, &text).await
    }

    /// Queues several whole lines of one stream at once, joined by `\n` (no trailing newline).
    pub(crate) async fn lines(
        &self,
        stream: OutputStream,
        mut text: &str,
    ) -> Result<(), StepError> {
        let max = self.inner.link.max_batch_bytes;
        loop {
            let (pending_bytes, empty) = {
                let pending = self.lock_batch();
                (pending.bytes, pending.chunks.is_empty())
            };
            let room = max.saturating_sub(pending_bytes + 1);
            if text.len() <= room {
                let full = {
                    let mut pending = self.lock_batch();
                    pending.push(stream, text);
                    pending.bytes >= max
                };
                return if full { self.flush().await } else { Ok(()) };
            }
            let first_line = text.find('\n').unwrap_or(text.len());
            if empty && first_line > room {
                // Longer than a whole batch may be: it goes out in pieces, each a line.
                let mut cut = room.min(first_line);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.lock_batch().push(stream, &text[..cut]);
                text = &text[cut..];
                self.flush().await?;
                continue;
            }
            // Too much for this batch: send the lines that fit (or, into an empty batch, at
            // least the first line) and go on with the rest.
            let cut = match text
                .get(..room.min(text.len()))
                .and_then(|head| head.rfind('\n'))
            {
                Some(cut) => Some(cut),
                None if empty => text.find('\n'),
                None => None,
            };
            if let Some(cut) = cut {
                self.lock_batch().push(stream, &text[..cut]);
                text = &text[cut + 1..];
            }
            self.flush().await?;
        }
    }

    /// Sends queued output now (waiting for log credit if the kernel is behind).
    pub async fn flush(&self) -> Result<(), StepError> {
        let chunks = {
            let mut pending = self.lock_batch();
            pending.bytes = 0;
            pending.since = None;
            std::mem::take(&mut pending.chunks)
        };
        if chunks.is_empty() {
            return Ok(());
        }
        let batch = LogBatch { chunks };
        let sent = self.inner.link.send_batch(self.inner.call_id, &batch).await;
        if let Some(chunk) = batch.chunks.into_iter().next() {
            let mut text = chunk.text;
            text.clear();
            self.lock_batch().spare = text;
        }
        sent
    }

    /// The step's output is drained for now: sends what is queued if hm has taken in every
    /// batch sent before and the batch's first line has waited 2 ms (`LINGER`), and otherwise
    /// leaves it queued until then ([`Self::deferred`]). Like Nagle's algorithm with a short timer:
    /// while hm is busy with earlier batches, a short batch would not be shown any sooner, and
    /// a writer faster than the plugin drains its pipe in small reads, one per write of the
    /// writer; waiting a little lets the batch fill, so a chatty step costs far fewer frames.
    pub async fn flush_or_defer(&self) -> Result<(), StepError> {
        if self.inner.link.is_caught_up() && self.lingered(Instant::now()) {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Whether the queued batch's first line was queued at least [`LINGER`] before `now`.
    fn lingered(&self, now: Instant) -> bool {
        self.lock_batch()
            .since
            .is_some_and(|since| now.duration_since(since) >= LINGER)
    }

    /// Resolves when output [`Self::flush_or_defer`] left queued should go out: hm has taken
    /// in every earlier batch and the first queued line has waited 2 ms (`LINGER`). Call
    /// [`Self::flush`] then. Pending while nothing is queued; a step's read loop selects on it
    /// beside its reads.
    pub async fn deferred(&self) {
        loop {
            self.inner
                .link
                .until_credit_back(|| {
                    self.inner.link.is_caught_up() && !self.lock_batch().chunks.is_empty()
                })
                .await;
            // Every queued line set `since`; should one not have, it waits from now.
            let since = self.lock_batch().since.unwrap_or_else(Instant::now);
            tokio::time::sleep_until(since + LINGER).await;
            if !self.lock_batch().chunks.is_empty() {
                return;
            }
        }
    }

    /// A diagnostic from the plugin about this step, shown by hm (not step output).
    pub fn log(&self, level: LogLevel, message: impl Into<String>) -> Result<(), StepError> {
        self.inner.link.notify(&HostCall::Log(Box::new(LogRecord {
            level,
            message: message.into(),
        })))
    }

    /// Resolves when hm cancels this step (timeout, fail-fast, Ctrl-C).
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Tells hm the process group the step's processes run in, so hm can kill them itself if
    /// this plugin stops answering.
    pub fn report_process_group(&self, pgid: i32) -> Result<(), StepError> {
        self.inner
            .link
            .notify(&HostCall::StepProcess(Box::new(StepProcess {
                step_call: self.inner.call_id,
                pgid,
            })))
    }

    /// Reads a value from hm's key-value store.
    pub async fn kv_get(&self, scope: KvScope, key: &str) -> Result<Option<String>, StepError> {
        let key = self.key(scope, key);
        match self
            .inner
            .link
            .call(&HostCall::KvGet(Box::new(key)))
            .await?
        {
            HostReply::Value(v) => Ok(*v),
            HostReply::Ok => Ok(None),
            HostReply::Error(e) => Err(StepError::Message(e.message)),
            HostReply::Archive(_) => Err(StepError::Message(
                "hm answered a key-value read with an archive".into(),
            )),
        }
    }

    /// The workspace archive: a tar of the project that hm builds once per run (on the first
    /// request of any plugin), mapped read-only into this process. Nothing is copied: the
    /// bytes are hm's sealed shared buffer. Drop the [`Archive`] when done with it (before the
    /// step answers), which unmaps it.
    ///
    /// Needs protocol 3 (an `hm` that has shared buffers); older ones are told apart with an
    /// error that says so.
    pub async fn open_archive(&self) -> Result<Archive, StepError> {
        let protocol = self.inner.link.protocol;
        if protocol < hm_ipc::SHM_SINCE {
            return Err(StepError::Message(format!(
                "this hm speaks protocol {protocol}, which has no workspace archive (it needs \
                 protocol {}): upgrade hm",
                hm_ipc::SHM_SINCE
            )));
        }
        match self
            .inner
            .link
            .call_for_buffer(&HostCall::OpenArchive)
            .await?
        {
            // The serve loop checked that the buffer came with the reply and has its length.
            (HostReply::Archive(_), Some(buffer)) => Ok(Archive::new(buffer)),
            (HostReply::Error(e), _) => Err(StepError::Message(format!(
                "hm could not provide the workspace archive: {}",
                e.message
            ))),
            (other, _) => Err(StepError::Message(format!(
                "hm answered OpenArchive with {other:?}"
            ))),
        }
    }

    /// The artifacts of the steps this step needs (directly or through others): a tar of
    /// their files, paths relative to the project root, mapped read-only like
    /// [`Self::open_archive`]. An executor that runs the step outside the project directory
    /// unpacks it on top of the workspace; one that runs it in the project directory has
    /// nothing to do, as hm put the files there.
    ///
    /// `Ok(None)` when there are none, and from an hm older than protocol 7 (which has no
    /// artifacts: nothing is asked).
    pub async fn open_artifacts(&self) -> Result<Option<Archive>, StepError> {
        if self.inner.link.protocol < hm_ipc::ARTIFACTS_SINCE {
            return Ok(None);
        }
        let call = HostCall::OpenArtifacts(Box::new(StepRef {
            step_call: self.inner.call_id,
        }));
        match self.inner.link.call_for_buffer(&call).await? {
            // The serve loop checked that the buffer came with the reply and has its length.
            (HostReply::Archive(_), Some(buffer)) => Ok(Some(Archive::new(buffer))),
            (HostReply::Ok, _) => Ok(None),
            (HostReply::Error(e), _) => Err(StepError::Message(format!(
                "hm could not provide the artifacts of the steps this one needs: {}",
                e.message
            ))),
            (other, _) => Err(StepError::Message(format!(
                "hm answered OpenArtifacts with {other:?}"
            ))),
        }
    }

    /// Sends this step's artifacts to hm: `tar` holds the files that match
    /// [`crate::StepRequest::artifacts`] (regular files, and directories if you like; paths
    /// relative to the project root, within the step's
    /// [`crate::StepRequest::artifact_limits`]). Call it once, after the step passed and before
    /// `execute` returns; hm then lists them in the step's `step_end` and hands them to the
    /// steps that need it. Only an executor that runs steps where hm cannot see their files
    /// (a container, another machine) sends them: hm collects the artifacts of a step whose
    /// executor sends none from the project directory.
    ///
    /// Write the tar with [`tar::Builder`](https://docs.rs/tar) over a
    /// [`crate::BufferWriter`] and seal it: it travels as a sealed shared buffer, not copied.
    /// A no-op from an hm older than protocol 7.
    pub async fn put_artifacts(&self, tar: SealedBuffer) -> Result<(), StepError> {
        if self.inner.link.protocol < hm_ipc::ARTIFACTS_SINCE {
            return Ok(());
        }
        let call = HostCall::PutArtifacts(Box::new(ArtifactUpload {
            step_call: self.inner.call_id,
            len: tar.len() as u64,
            problem: None,
        }));
        let fd = tar
            .share()
            .map_err(|e| StepError::Message(format!("cannot hand the artifacts to hm: {e}")))?;
        // Our own descriptor goes now; the frame's copy is closed once it is sent.
        drop(tar);
        let reply = self.inner.link.call_with_buffer(&call, fd).await?;
        artifacts_sent(reply)
    }

    /// Tells hm why this step's artifacts could not be collected (too many files or bytes:
    /// [`crate::artifacts::Tally::add`]'s message, or the runtime failed to produce them),
    /// instead of [`Self::put_artifacts`]. hm fails the step with cause `artifact` and
    /// `message`. A no-op from an hm older than protocol 7.
    pub async fn artifacts_problem(&self, message: impl Into<String>) -> Result<(), StepError> {
        if self.inner.link.protocol < hm_ipc::ARTIFACTS_SINCE {
            return Ok(());
        }
        let call = HostCall::PutArtifacts(Box::new(ArtifactUpload {
            step_call: self.inner.call_id,
            len: 0,
            problem: Some(message.into()),
        }));
        let reply = self.inner.link.call(&call).await?;
        artifacts_sent(reply)
    }

    /// Tells hm which node of a cluster the step runs on (its name, as the cluster knows it):
    /// shown in the step's `step_end` and in the summary. A no-op from an hm older than
    /// protocol 8.
    pub async fn placed_on(&self, node: impl Into<String>) -> Result<(), StepError> {
        if self.inner.link.protocol < hm_ipc::SERVICES_SINCE {
            return Ok(());
        }
        let call = HostCall::Placed(Box::new(hm_ipc::messages::Placement {
            step_call: self.inner.call_id,
            node: node.into(),
        }));
        match self.inner.link.call(&call).await? {
            HostReply::Error(e) => Err(StepError::Message(e.message)),
            _ => Ok(()),
        }
    }

    /// Writes (or with `None`, deletes) a value in hm's key-value store.
    pub async fn kv_set(
        &self,
        scope: KvScope,
        key: &str,
        value: Option<String>,
    ) -> Result<(), StepError> {
        let key = self.key(scope, key);
        match self
            .inner
            .link
            .call(&HostCall::KvSet(Box::new(KvWrite { key, value })))
            .await?
        {
            HostReply::Error(e) => Err(StepError::Message(e.message)),
            _ => Ok(()),
        }
    }

    fn key(&self, scope: KvScope, key: &str) -> KvKey {
        let step_call = if scope == KvScope::Step {
            self.inner.call_id
        } else {
            0
        };
        KvKey {
            scope,
            step_call,
            key: key.to_owned(),
        }
    }

    fn lock_batch(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.batch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// hm's answer to `PutArtifacts`.
fn artifacts_sent(reply: HostReply) -> Result<(), StepError> {
    match reply {
        HostReply::Ok => Ok(()),
        HostReply::Error(e) => Err(StepError::Message(format!(
            "hm did not take the step's artifacts: {}",
            e.message
        ))),
        other => Err(StepError::Message(format!(
            "hm answered PutArtifacts with {other:?}"
        ))),
    }
}
