//! Removes finished leaves on a thread of its own, so the run loop never waits for `rmdir` in
//! every hierarchy (or for a leaf's last processes to die) between one step and the next.

use std::sync::mpsc;
use std::thread::JoinHandle;

use super::run::Leaf;

/// A thread that empties and removes the leaves it is given, in order.
#[derive(Debug)]
pub struct LeafJanitor {
    leaves: Option<mpsc::Sender<Leaf>>,
    thread: Option<JoinHandle<()>>,
}

impl LeafJanitor {
    pub fn start() -> std::io::Result<Self> {
        let (leaves, queue) = mpsc::channel::<Leaf>();
        let thread = std::thread::Builder::new()
            .name("hm-cgroup-janitor".into())
            .spawn(move || {
                for leaf in queue {
                    // An empty leaf goes at once; one that still holds processes (they left the
                    // step's process group, or are still dying) is killed first.
                    if leaf.remove().is_ok() {
                        continue;
                    }
                    if let Err(e) = leaf.kill().and_then(|()| leaf.remove()) {
                        tracing::warn!("{e}");
                    }
                }
            })?;
        Ok(Self {
            leaves: Some(leaves),
            thread: Some(thread),
        })
    }

    /// Queues `leaf` for removal. If the thread is gone, removes it here.
    pub fn remove(&self, leaf: Leaf) {
        let Some(leaves) = &self.leaves else {
            return;
        };
        if let Err(mpsc::SendError(leaf)) = leaves.send(leaf) {
            if let Err(e) = leaf.kill().and_then(|()| leaf.remove()) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Waits until every queued leaf is gone. Blocks: call it off the run loop.
    pub fn finish(mut self) {
        drop(self.leaves.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
