//! `hm-benches`: the side-by-side comparisons behind hm's performance targets
//! (`benches/README.md`). Each bench times hm and a baseline in the same run, interleaved,
//! and reports the ratio of the medians against the target; README.md says exactly what each
//! one measures.
//!
//! [`measure`] holds the method (interleaving, medians, the report line), [`child`] runs
//! external processes with a deadline; one module per bench. The `compare` bench target is the
//! command line (`cargo xtask bench` runs it).

pub mod cache_hits;
pub mod call_round_trip;
pub mod child;
pub mod cold_start;
pub mod ctrl_c;
pub mod kernel_rss;
pub mod log_floor;
pub mod log_throughput;
pub mod measure;
pub mod procfs;
pub mod run_steps;
pub mod shm_floor;
pub mod shm_handoff;
pub mod steps_floor;
pub mod swarm_first_line;

use std::path::PathBuf;

pub use measure::{BenchError, Outcome, Target, Unit};

/// What every bench needs to know about this run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Fewer rounds and smaller inputs, for a check that the benches still work.
    pub quick: bool,
    /// The release `hm` binary.
    pub hm: PathBuf,
    /// The trivial binary of the cold-start baseline.
    pub bench_true: PathBuf,
    /// Run both threads of each round-trip pair on one CPU (see `call_round_trip`).
    pub pin: bool,
}

/// One bench: its name on the command line, whether it runs the `hm` binary, and the
/// function that runs it.
pub struct Bench {
    pub name: &'static str,
    pub needs_hm: bool,
    pub run: fn(&Settings) -> Result<Outcome, BenchError>,
}

/// Every bench, in the order of the targets table of `benches/README.md`.
pub const BENCHES: &[Bench] = &[
    Bench {
        name: call_round_trip::NAME,
        needs_hm: false,
        run: call_round_trip::run,
    },
    Bench {
        name: shm_handoff::HANDOFF,
        needs_hm: false,
        run: shm_handoff::run_handoff,
    },
    Bench {
        name: shm_handoff::HANDOFF_MAP,
        needs_hm: false,
        run: shm_handoff::run_handoff_map,
    },
    Bench {
        name: shm_handoff::VS_SOCKET,
        needs_hm: false,
        run: shm_handoff::run_vs_socket,
    },
    Bench {
        name: shm_floor::FLOOR,
        needs_hm: false,
        run: shm_floor::run_floor,
    },
    Bench {
        name: shm_floor::SOCKET_FLOOR,
        needs_hm: false,
        run: shm_floor::run_socket_floor,
    },
    Bench {
        name: cold_start::NAME,
        needs_hm: true,
        run: cold_start::run,
    },
    Bench {
        name: run_steps::NAME,
        needs_hm: true,
        run: run_steps::run,
    },
    Bench {
        name: steps_floor::NAME,
        needs_hm: false,
        run: steps_floor::run,
    },
    Bench {
        name: cache_hits::ONE,
        needs_hm: true,
        run: cache_hits::run_one,
    },
    Bench {
        name: cache_hits::TWENTY,
        needs_hm: true,
        run: cache_hits::run_twenty,
    },
    Bench {
        name: log_throughput::NAME,
        needs_hm: true,
        run: log_throughput::run,
    },
    Bench {
        name: log_floor::NAME,
        needs_hm: false,
        run: log_floor::run,
    },
    Bench {
        name: swarm_first_line::NAME,
        needs_hm: true,
        run: swarm_first_line::run,
    },
    Bench {
        name: kernel_rss::NAME,
        needs_hm: true,
        run: kernel_rss::run,
    },
    Bench {
        name: ctrl_c::NAME,
        needs_hm: true,
        run: ctrl_c::run,
    },
];
