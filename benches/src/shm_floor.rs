//! Benches `shm-floor` and `shm-socket-floor`: the least any runner can spend when a plugin
//! reads every byte of a 256 MiB buffer it was handed in shared memory, against the baselines
//! of `shm-handoff` and `shm-vs-socket`.
//!
//! Not targets of their own: they tell how much of those two targets is left for hm once the
//! page tables of a fresh mapping are paid. Ours is the least a receiver can do with a sealed
//! buffer it did not have before, with no frame, no socket, no second thread: map the memory
//! file read-only (hm's own `mmap`, as the plugin's side does), read every byte, unmap it.
//! Every round maps afresh, as every handoff does: a plugin may keep nothing once it has
//! answered, and a mapping kept across rounds would no longer measure a handoff.
//!
//! - `shm-floor`: baseline, the read of the plugin's own memory (`shm-handoff`'s).
//! - `shm-socket-floor`: baseline, the same bytes through a Unix socket (`shm-vs-socket`'s).

use std::time::{Duration, Instant};

use hm_ipc::SealedBuffer;

use crate::Settings;
use crate::measure::{BenchError, Outcome, Target, interleave};
use crate::shm_handoff::{SocketPair, fold, plan, source};

pub const FLOOR: &str = "shm-floor";
pub const SOCKET_FLOOR: &str = "shm-socket-floor";

pub fn run_floor(settings: &Settings) -> Result<Outcome, BenchError> {
    let source = source();
    let fresh = FreshMapping::new(&source)?;
    let own = source.clone();
    let samples = interleave(
        plan(settings),
        || fresh.round(FLOOR),
        || {
            let start = Instant::now();
            let sum = fold(std::hint::black_box(&own));
            let elapsed = start.elapsed();
            fresh.check(FLOOR, sum).map(|()| elapsed)
        },
    )?;
    Ok(Outcome::new(
        FLOOR,
        &samples,
        Target::TimeFloor(1.1),
        "per 256 MiB mapped afresh, read and unmapped; baseline: the same read of the \
         plugin's own memory",
    ))
}

pub fn run_socket_floor(settings: &Settings) -> Result<Outcome, BenchError> {
    let source = source();
    let fresh = FreshMapping::new(&source)?;
    let baseline = SocketPair::start()?;
    let samples = interleave(
        plan(settings),
        || fresh.round(SOCKET_FLOOR),
        || baseline.round(&source, fresh.expected),
    );
    let stopped = baseline.stop();
    let samples = samples?;
    stopped?;
    Ok(Outcome::new(
        SOCKET_FLOOR,
        &samples,
        Target::ThroughputFloor(5.0),
        "per 256 MiB mapped afresh, read and unmapped; baseline: the same bytes through the \
         socket",
    ))
}

/// The sealed buffer, filled before timing, and what reading it must give.
struct FreshMapping {
    buffer: SealedBuffer,
    expected: u64,
}

impl FreshMapping {
    fn new(source: &[u8]) -> Result<Self, BenchError> {
        let buffer = SealedBuffer::from_bytes("hm-bench-floor", source)
            .map_err(|e| BenchError::failed("the shared buffer", e.to_string()))?;
        Ok(Self {
            buffer,
            expected: fold(source),
        })
    }

    /// Maps the buffer afresh, reads every byte, unmaps it.
    fn round(&self, bench: &str) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let view = self
            .buffer
            .map()
            .map_err(|e| BenchError::failed(bench, e.to_string()))?;
        let sum = fold(view.as_slice());
        drop(view);
        let elapsed = start.elapsed();
        self.check(bench, sum).map(|()| elapsed)
    }

    fn check(&self, bench: &str, sum: u64) -> Result<(), BenchError> {
        if sum == self.expected {
            Ok(())
        } else {
            Err(BenchError::failed(
                bench,
                format!("read {sum:#x}, expected {:#x}", self.expected),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_mapping_reads_every_byte_that_was_sealed() {
        let source: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let fresh = FreshMapping::new(&source).unwrap();
        fresh.round(FLOOR).unwrap();
        fresh.round(FLOOR).unwrap();
        let wrong = fresh.expected ^ 1;
        assert!(fresh.check(FLOOR, wrong).is_err());
    }
}
