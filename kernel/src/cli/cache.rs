//! `hm cache`: what the step cache holds, and removing it (docs/caching.md).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use hm_kernel::cache::Store;
use hm_kernel::exit;
use hm_kernel::render::format_bytes;

use super::{error_text, print_out};

/// `hm cache` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// List the cached step results, most recently used first.
    List {
        /// The pipeline file whose `[cache] dir` to use (default: hm.toml here or above).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Show one entry: its step, log size, outputs and artifacts.
    Show {
        /// The key, or a prefix of it that names one entry.
        key: String,
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Remove the entries not used for a while (and the contents nothing names any more).
    Prune {
        /// Remove what was not used for this long (e.g. 7d, 12h).
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = hm_kernel::config::parse_duration)]
        unused_for: Duration,
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Remove everything in the cache.
    Clear {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
}

pub fn run(command: CacheCommand) -> i32 {
    let file = match &command {
        CacheCommand::List { file }
        | CacheCommand::Show { file, .. }
        | CacheCommand::Prune { file, .. }
        | CacheCommand::Clear { file } => file.clone(),
    };
    let store = match open(file) {
        Ok(store) => store,
        Err(message) => {
            errln!("{}", error_text(&message));
            return exit::USAGE;
        }
    };
    match command {
        CacheCommand::List { .. } => list(&store),
        CacheCommand::Show { key, .. } => show(&store, &key),
        CacheCommand::Prune { unused_for, .. } => {
            let pruned = store.prune(Some(unused_for), None);
            let (volumes, problems) = store.prune_volumes(unused_for);
            print_out(&format!(
                "removed {} entries and {} blobs ({}), and {} cache volumes\n",
                pruned.entries,
                pruned.blobs,
                format_bytes(pruned.bytes),
                volumes.len()
            ));
            for volume in &volumes {
                print_out(&format!("  volume {volume}\n"));
            }
            for problem in &problems {
                errln!("warning: cannot remove the cache volume {problem}");
            }
            exit::OK
        }
        CacheCommand::Clear { .. } => match store.clear() {
            Ok(()) => {
                print_out(&format!("cleared {}\n", store.root().display()));
                exit::OK
            }
            Err(e) => {
                errln!("{}", error_text(&format!("cannot clear the cache: {e}")));
                exit::ENVIRONMENT
            }
        },
    }
}

/// The store of the pipeline's `[cache] dir` when there is a pipeline, else the default one.
fn open(file: Option<PathBuf>) -> Result<Store, String> {
    let pipeline = match &file {
        Some(path) => Some(hm_kernel::config::load(path).map_err(|e| e.to_string())?),
        None => std::env::current_dir()
            .ok()
            .and_then(|cwd| hm_kernel::config::find_pipeline_file(&cwd))
            .and_then(|path| hm_kernel::config::load(&path).ok()),
    };
    let dir = pipeline.and_then(|p| p.cache.dir);
    Store::open(dir.as_deref()).map_err(|e| format!("cannot open the cache: {e}"))
}

fn list(store: &Store) -> i32 {
    let entries = store.entries();
    if entries.is_empty() {
        print_out(&format!(
            "the cache at {} is empty\n",
            store.root().display()
        ));
        return exit::OK;
    }
    let now = SystemTime::now();
    let mut out = String::new();
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|(entry, used)| {
            let age = now.duration_since(*used).unwrap_or_default();
            [
                entry.key[..12].to_owned(),
                entry.step.clone(),
                format!(
                    "{} ago",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                ),
                format_bytes(entry.size()),
                entry.hits.to_string(),
            ]
        })
        .collect();
    let mut widths = [3usize, 4, 4, 4, 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = ["key", "step", "used", "size", "hits"].map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let total: u64 = entries.iter().map(|(e, _)| e.size()).sum();
    out.push_str(&format!(
        "{} entries, {} in {}\n",
        entries.len(),
        format_bytes(total),
        store.root().display()
    ));
    print_out(&out);
    exit::OK
}

fn show(store: &Store, key: &str) -> i32 {
    let matching: Vec<_> = store
        .entries()
        .into_iter()
        .filter(|(e, _)| e.key.starts_with(key))
        .collect();
    let [(entry, _)] = matching.as_slice() else {
        let why = match matching.len() {
            0 => format!("no cache entry has a key starting with `{key}`"),
            n => format!("{n} cache entries have a key starting with `{key}`: give more of it"),
        };
        errln!(
            "{}",
            error_text(&format!("{why}\n  hint: `hm cache list` shows them"))
        );
        return exit::USAGE;
    };
    let mut out = format!(
        "key: {}\nstep: {}\nran in: {}\nhits: {}\nlog: {}\n",
        entry.key,
        entry.step,
        humantime::format_duration(Duration::from_millis(entry.duration_ms)),
        entry.hits,
        entry
            .log
            .as_ref()
            .map_or_else(|| "none".to_owned(), |l| format_bytes(l.bytes)),
    );
    for (k, v) in &entry.outputs {
        out.push_str(&format!("output: {k}={v}\n"));
    }
    for a in &entry.artifacts {
        out.push_str(&format!(
            "artifact: {} ({}, sha256 {})\n",
            a.path,
            format_bytes(a.bytes),
            a.sha256
        ));
    }
    print_out(&out);
    exit::OK
}
