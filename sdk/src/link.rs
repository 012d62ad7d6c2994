//! The plugin's side of one connection: queued writes, host calls awaiting their replies,
//! and the log credit granted by the kernel.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hm_ipc::messages::{HostCall, HostReply, LogBatch};
use hm_ipc::{FrameKind, OutFrame, SharedBuffer};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::StepError;

/// A host call's answer: the reply, and the shared buffer that came with it (only
/// `HostReply::Archive` has one; the serve loop checks that they go together).
pub(crate) type Answer = (HostReply, Option<SharedBuffer>);

/// The smallest batch the SDK can keep to: a piece of a split line must hold a whole
/// character (up to 4 bytes) and its separator. hm announces 256 KiB.
const MIN_BATCH_BYTES: usize = 8;

pub(crate) struct Link {
    out: mpsc::UnboundedSender<OutFrame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
    /// One permit per log batch the kernel allows in flight (credit-based flow control).
    credit: Semaphore,
    /// The credit hm granted in `Welcome`: with this many permits free, hm has taken in every
    /// batch sent.
    log_credit: usize,
    /// Woken whenever credit comes back.
    credit_back: Notify,
    pub(crate) max_batch_bytes: usize,
    pub(crate) protocol: u32,
}

impl Link {
    pub(crate) fn new(
        out: mpsc::UnboundedSender<OutFrame>,
        log_credit: u32,
        max_batch_bytes: u32,
        protocol: u32,
    ) -> Self {
        Self {
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            credit: Semaphore::new(log_credit as usize),
            log_credit: log_credit as usize,
            credit_back: Notify::new(),
            max_batch_bytes: (max_batch_bytes as usize).max(MIN_BATCH_BYTES),
            protocol,
        }
    }

    pub(crate) fn send(&self, frame: OutFrame) -> Result<(), StepError> {
        self.out.send(frame).map_err(|_| StepError::Disconnected)
    }

    /// Calls the host API and waits for the answer.
    pub(crate) async fn call(&self, call: &HostCall) -> Result<HostReply, StepError> {
        // Only `OpenArchive` and `OpenArtifacts` are answered with a buffer, and they go
        // through `call_for_buffer`.
        self.call_for_buffer(call).await.map(|(reply, _)| reply)
    }

    /// Calls the host API and waits for the answer and the buffer that may come with it. A
    /// large call (a big value to store) travels in a shared buffer on protocol v3.
    pub(crate) async fn call_for_buffer(&self, call: &HostCall) -> Result<Answer, StepError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = OutFrame::message_for(self.protocol, FrameKind::Call, id, call)
            .map_err(|e| StepError::Message(e.to_string()))?;
        self.await_reply(id, frame).await
    }

    /// Calls the host API with a sealed buffer next to the call (`PutArtifacts`, v7) and waits
    /// for the answer. The payload stays inline: a frame carries one descriptor, and this
    /// one's is the buffer.
    pub(crate) async fn call_with_buffer(
        &self,
        call: &HostCall,
        buffer: OwnedFd,
    ) -> Result<HostReply, StepError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = OutFrame::message(FrameKind::Call, id, call)
            .map_err(|e| StepError::Message(e.to_string()))?
            .with_buffer(buffer);
        self.await_reply(id, frame).await.map(|(reply, _)| reply)
    }

    /// Sends the call `frame` (numbered `id`) and waits for its answer.
    async fn await_reply(&self, id: u64, frame: OutFrame) -> Result<Answer, StepError> {
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        if let Err(e) = self.send(frame) {
            self.lock_pending().remove(&id);
            return Err(e);
        }
        rx.await.map_err(|_| StepError::Disconnected)
    }

    /// Calls the host API without waiting: the reply, when it comes, is dropped.
    pub(crate) fn notify(&self, call: &HostCall) -> Result<(), StepError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = OutFrame::message_for(self.protocol, FrameKind::Call, id, call)
            .map_err(|e| StepError::Message(e.to_string()))?;
        self.send(frame)
    }

    /// Sends one batch of step output, waiting for credit first.
    pub(crate) async fn send_batch(
        &self,
        step_call: u64,
        batch: &LogBatch,
    ) -> Result<(), StepError> {
        let permit = self
            .credit
            .acquire()
            .await
            .map_err(|_| StepError::Disconnected)?;
        permit.forget();
        // The archive is the text plus a few words per chunk.
        let size = batch
            .chunks
            .iter()
            .map(|chunk| chunk.text.len() + 32)
            .sum::<usize>()
            + 32;
        let frame = OutFrame::message_sized(FrameKind::LogBatch, step_call, batch, size)
            .map_err(|e| StepError::Message(e.to_string()))?;
        self.send(frame)
    }

    pub(crate) fn add_credit(&self, batches: u32) {
        self.credit.add_permits(batches as usize);
        self.credit_back.notify_waiters();
    }

    /// Whether hm has taken in every batch sent on this connection (none is in flight).
    pub(crate) fn is_caught_up(&self) -> bool {
        self.credit.available_permits() >= self.log_credit
    }

    /// Resolves once `ready` holds when hm has just taken a batch in (or holds already).
    pub(crate) async fn until_credit_back(&self, ready: impl Fn() -> bool) {
        loop {
            let notified = self.credit_back.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: credit that comes back in between still wakes us.
            notified.as_mut().enable();
            if ready() {
                return;
            }
            notified.await;
        }
    }

    /// Hands a reply to the call waiting for it. A reply nobody waits for (a `notify`) is
    /// dropped; the kernel may answer those.
    /// A buffer that nobody waits for is unmapped right here.
    pub(crate) fn complete(&self, id: u64, reply: HostReply, buffer: Option<SharedBuffer>) {
        if let Some(tx) = self.lock_pending().remove(&id) {
            let _ = tx.send((reply, buffer));
        }
    }

    /// The kernel is gone: wake every waiter with `Disconnected`.
    pub(crate) fn close(&self) {
        self.lock_pending().clear();
        self.credit.close();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        // A poisoned map only means a panic elsewhere mid-insert; the map itself is still sound.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}
