//! The command line of the comparisons: `cargo bench -p hm-benches --bench compare -- [--quick]
//! [--hm PATH] [NAME...]`, normally started by `cargo xtask bench`. Prints one line per bench
//! as it finishes; exits 1 if a bench could not run, 2 on a bad argument. A missed target is
//! reported, not an error: the figures are what this is for; nor is a bench skipped because this
//! machine cannot run it (`swarm-first-line` without a swarm), which says why.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use hm_benches::{BENCHES, BenchError, Outcome, Settings};

const USAGE: &str = "\
usage: compare [--quick] [--no-pin] [--hm PATH] [NAME...]

  --quick     fewer rounds, and 256 MiB instead of 1 GiB of log
  --no-pin    let the scheduler place the threads of call-round-trip (default: one CPU)
  --hm PATH   the release hm binary (default: target/release/hm of this workspace)
  NAME        run only these benches: call-round-trip, shm-handoff, shm-handoff-map,
              shm-vs-socket, shm-floor, shm-socket-floor, cold-start, run-200-steps,
              steps-floor, cached-step, cached-20-steps, log-throughput, log-floor,
              swarm-first-line, kernel-rss-1000, ctrl-c (default: all)
";

fn main() -> ExitCode {
    let mut quick = false;
    let mut pin = true;
    let mut hm = None;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            "--quick" => quick = true,
            "--no-pin" => pin = false,
            "--hm" => match args.next() {
                Some(path) => hm = Some(PathBuf::from(path)),
                None => return usage("--hm needs a path"),
            },
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with('-') => return usage(&format!("unknown option {flag}")),
            name => {
                if !BENCHES.iter().any(|b| b.name == name) {
                    return usage(&format!("no bench called {name:?}"));
                }
                names.push(name.to_owned());
            }
        }
    }
    let selected: Vec<_> = BENCHES
        .iter()
        .filter(|b| names.is_empty() || names.iter().any(|n| n == b.name))
        .collect();

    let hm = hm.unwrap_or_else(default_hm);
    if selected.iter().any(|b| b.needs_hm) && !hm.is_file() {
        eprintln!(
            "{} is missing: build it with `cargo build --release -p hm-kernel` (`cargo xtask \
             bench` does that first)",
            hm.display()
        );
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        quick,
        hm,
        bench_true: PathBuf::from(env!("CARGO_BIN_EXE_bench-true")),
        pin,
    };

    println!(
        "{}{}{}",
        machine(),
        if quick { ", --quick" } else { "" },
        if pin { "" } else { ", --no-pin" }
    );
    println!("{}", Outcome::header());
    let mut units = Vec::new();
    let (mut missed, mut broken) = (0, 0);
    for bench in selected {
        let _ = std::io::stdout().flush();
        match (bench.run)(&settings) {
            Ok(outcome) => {
                println!("{}", outcome.line());
                if !outcome.met() {
                    missed += 1;
                }
                units.push(format!("  {}: {}", outcome.name, outcome.unit));
            }
            // A bench this machine cannot run (no swarm here) says so; it is not a failure.
            Err(BenchError::Skipped { reason }) => {
                println!("{:<16} SKIPPED: {reason}", bench.name);
            }
            Err(e) => {
                println!("{:<16} ERROR: {e}", bench.name);
                broken += 1;
            }
        }
    }
    if !units.is_empty() {
        println!(
            "\nfigures are medians over rounds (interleaved with the baseline where there is \
             one):"
        );
        for unit in units {
            println!("{unit}");
        }
    }
    if missed > 0 {
        println!("{missed} target(s) missed");
    }
    if broken > 0 {
        eprintln!("{broken} bench(es) could not run");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("compare: {problem}\n\n{USAGE}");
    ExitCode::from(2)
}

/// `target/release/hm` next to this package (or under `CARGO_TARGET_DIR`).
fn default_hm() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join("hm")
}

/// CPU count and model, so a pasted report says where it was measured.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("machine: {cpus} CPUs, {model}")
}
