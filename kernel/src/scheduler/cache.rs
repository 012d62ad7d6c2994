//! The step cache in a run: before a step with `inputs` first reaches its executor, its key is
//! computed and looked up off the run loop (state `Looking`). A hit replays the recorded log,
//! restores the artifacts and outputs, and ends the step `passed` with `cache = "hit"`, without
//! starting its plugin; a miss runs it, records its log, and `data.rs` stores what it left
//! when it passes.

use sha2::{Digest, Sha256};

use super::attempts::Report;
use super::run_loop::{Event, Scheduler};
use super::steps::StepState;
use super::verdict::Verdict;
use crate::cache::key::secret_digest;
use crate::cache::{Entry, KeyInputs, Lookup, Store, compute_key};
use crate::config::referenced_secret;
use crate::events::{CacheStatus, Envelope, StepStatus, Stream};

/// The most log a step may write and still be cached: a bigger one runs every time.
const MAX_LOG_BYTES: usize = 64 * 1024 * 1024;

/// hm's variables that change from run to run (or attempt to attempt) without changing what
/// a step does: never part of a key.
const PER_RUN: [&str; 4] = ["HM_RUN_ID", "HM_ATTEMPT", "HM_OUTPUT", "HM_PROJECT_DIR"];

/// What looking a step up found.
pub(super) struct Looked {
    step: usize,
    outcome: Outcome,
}

enum Outcome {
    Hit {
        key: String,
        entry: Entry,
        log: Vec<(Stream, String)>,
    },
    Miss {
        key: String,
        /// Why an entry that was there could not be used.
        warning: Option<String>,
    },
    /// No key: a file could not be read. The step runs, uncached.
    NoKey(String),
}

impl Scheduler<'_> {
    /// Whether step `i` must be looked up before it reaches its executor; if so, starts that.
    pub(super) fn look_up_first(&mut self, i: usize) -> bool {
        let def = &self.pipeline.steps[self.steps[i].index];
        if self.steps[i].cache_checked || def.inputs.is_empty() {
            return false;
        }
        self.steps[i].cache_checked = true;
        let Some(store) = self.cache.clone() else {
            return false;
        };
        let Some(what) = self.key_inputs(i) else {
            return false;
        };
        self.steps[i].state = StepState::Looking;
        self.steps[i].started = Some(tokio::time::Instant::now());
        let root = self.pipeline.root.clone();
        let replay = !self.opts.no_cache;
        let tx = self.collected_tx.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = look_up(&store, &root, &what, replay);
            let _ = tx.send(Event::Looked(Box::new(Looked { step: i, outcome })));
        });
        true
    }

    /// The volumes of step `i`'s dependency caches, each marked as used. Reading the key files
    /// happens here, on the loop: they are lock files, small by nature. One that cannot be
    /// read leaves the step without that cache, and says so in its log.
    pub(super) fn cache_mounts(&mut self, i: usize) -> Vec<hm_ipc::messages::CacheMount> {
        let def = &self.pipeline.steps[self.steps[i].index];
        if def.caches.is_empty() {
            return Vec::new();
        }
        // A shell step's paths are on the host already, as they were last time.
        if def.executor == "shell" {
            if self.steps[i].attempt == 1 {
                let line = "hm: `cache` keeps directories for steps in containers; this shell \
                            step uses the host's directories as they are";
                self.step_log_line(i, Stream::Stderr, line);
            }
            return Vec::new();
        }
        match crate::cache::volumes::mounts(&self.pipeline.root, &def.caches) {
            Ok(mounts) => {
                if let Some(store) = &self.cache {
                    for mount in &mounts {
                        store.mark_volume(&mount.volume);
                    }
                }
                mounts
            }
            Err(why) => {
                let line = format!("hm: the step's `cache` is not used: {why}");
                self.step_log_line(i, Stream::Stderr, &line);
                Vec::new()
            }
        }
    }

    /// Everything but the input files that goes into step `i`'s key; `None` when the step
    /// cannot even be prepared (it then fails as it would uncached).
    fn key_inputs(&self, i: usize) -> Option<KeyInputs> {
        let def = &self.pipeline.steps[self.steps[i].index];
        let root = &self.pipeline.root;
        let prepared = self.prepare(i, None).ok()?;
        let secret_vars: Vec<&String> = def
            .env
            .iter()
            .filter(|(_, v)| referenced_secret(v).is_some())
            .map(|(k, _)| k)
            .collect();
        let env = prepared
            .env
            .into_iter()
            .filter(|(k, _)| !PER_RUN.contains(&k.as_str()))
            .map(|(k, v)| match secret_vars.contains(&&k) {
                true => (k, secret_digest(&v)),
                false => (k, v),
            })
            .collect();
        let dir = prepared
            .dir
            .strip_prefix(root)
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| prepared.dir.display().to_string());
        let needs = self
            .steps
            .direct_needs(i)
            .into_iter()
            .map(|j| (self.step_name(j).to_owned(), self.stands_for(j)))
            .collect();
        Some(KeyInputs {
            executor: def.executor.clone(),
            run: prepared.run,
            shell: def.shell.argv(),
            dir,
            image: prepared.image,
            image_id: None,
            env,
            matrix: def.matrix.clone().unwrap_or_default(),
            inputs: prepared.inputs,
            needs,
        })
    }

    /// What step `j` (ended) stands for in the key of a step that needs it: its own key, or
    /// what it handed on (its outputs and its artifacts' digests).
    fn stands_for(&self, j: usize) -> String {
        let step = &self.steps[j];
        if let Some(key) = &step.cache_key {
            return key.clone();
        }
        let mut hasher = Sha256::new();
        let status = step.verdict.as_ref().map(|v| v.status.as_str());
        hasher.update(status.unwrap_or("unknown").as_bytes());
        for (key, value) in &step.outputs {
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(key.as_bytes());
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
        for artifact in &step.artifacts {
            hasher.update(artifact.path.as_bytes());
            hasher.update(artifact.sha256.as_bytes());
        }
        crate::cache::key::hex(&hasher.finalize())
    }

    /// A hit's recorded log, to the renderer and to the hooks that observe `step_log`, each
    /// line marked as replayed. Runs of lines of one stream go to the renderer whole, under
    /// one timestamp, as a batch from an executor does (`on_step_output`).
    fn replay(&mut self, i: usize, log: Vec<(Stream, String)>) {
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let name = self.step_name(i).to_owned();
        let mut lines = log.iter().peekable();
        let mut text = String::new();
        while let Some((stream, first)) = lines.next() {
            text.clear();
            text.push_str(first);
            while let Some((_, line)) = lines.next_if(|(s, _)| s == stream) {
                text.push('\n');
                text.push_str(line);
            }
            let text = self.masker.mask(&text);
            let _ = self
                .renderer
                .replayed_logs(&ts, &self.opts.run_id, &name, *stream, &text);
        }
        if self.hooks_want_logs() {
            for (stream, line) in &log {
                let line = self.masker.mask(line);
                let envelope =
                    Envelope::step_log(&ts, &self.opts.run_id, &name, *stream, &line, true);
                self.offer_to_hooks(&envelope);
            }
        }
    }

    /// What the lookup of a step found: a hit ends it, a miss sends it on to its executor.
    pub(super) fn on_looked(&mut self, looked: Looked) {
        let i = looked.step;
        if self.steps[i].state != StepState::Looking {
            return;
        }
        if let Some(reason) = self.steps[i].stop {
            self.steps[i].state = StepState::Running;
            self.end_attempt(i, Verdict::stopped(reason, None));
            return;
        }
        match looked.outcome {
            Outcome::Hit { key, entry, log } => {
                self.steps[i].state = StepState::Running;
                self.replay(i, log);
                let step = &mut self.steps[i];
                step.cache_key = Some(key);
                step.cache_status = Some(CacheStatus::Hit);
                step.saved_ms = Some(entry.duration_ms);
                step.outputs = entry.outputs.clone();
                step.artifacts = entry.listing();
                let verdict = Verdict {
                    status: StepStatus::Passed,
                    cause: None,
                    exit_code: Some(0),
                    signal: None,
                    message: None,
                };
                self.end_attempt_with(i, verdict, Report::default());
            }
            Outcome::Miss { key, warning } => {
                if let Some(warning) = warning {
                    let line = format!(
                        "hm: the cached result could not be used ({warning}); running the step"
                    );
                    self.step_log_line(i, Stream::Stderr, &line);
                }
                let step = &mut self.steps[i];
                step.cache_key = Some(key);
                step.cache_status = Some(CacheStatus::Miss);
                step.cache_log = Some(Vec::new());
                step.state = StepState::Starting;
                self.dispatch(i);
            }
            Outcome::NoKey(why) => {
                let line =
                    format!("hm: cannot compute the step's cache key ({why}); running it uncached");
                self.step_log_line(i, Stream::Stderr, &line);
                self.steps[i].state = StepState::Starting;
                self.dispatch(i);
            }
        }
    }
}

/// Records lines of `step` for the cache, while its log may still be stored.
pub(super) fn record(step: &mut super::steps::StepRun, stream: Stream, text: &str) {
    {
        let Some(log) = &mut step.cache_log else {
            return;
        };
        let tag = match stream {
            Stream::Stdout => b'o',
            Stream::Stderr => b'e',
        };
        for line in text.split('\n') {
            log.push(tag);
            log.extend_from_slice(line.as_bytes());
            log.push(b'\n');
        }
        if log.len() <= MAX_LOG_BYTES {
            return;
        }
    }
    step.cache_log = None;
}

/// The ID the Docker daemon (`DOCKER_HOST`, else the default socket) gives `image`; `None`
/// when it does not answer or does not have it, which only makes the key another one.
fn image_id(image: &str) -> Option<String> {
    let daemon = crate::engine::daemon_of(None)?;
    let body =
        crate::engine::request(&daemon, "GET", &format!("/images/{image}/json"), &["200"]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["Id"].as_str().map(str::to_owned)
}

/// The blocking part of a lookup: the key (reading every input file), the entry, and for a hit
/// its log and artifacts (each checked against its digest). A hit that cannot be replayed is
/// a miss, and its entry is removed.
fn look_up(store: &Store, root: &std::path::Path, what: &KeyInputs, replay: bool) -> Outcome {
    let mut what = what.clone();
    if let Some(image) = &what.image {
        what.image_id = image_id(image);
    }
    let key = match compute_key(root, &what) {
        Ok(key) => key,
        Err(why) => return Outcome::NoKey(why),
    };
    if !replay {
        return Outcome::Miss { key, warning: None };
    }
    match store.lookup(&key) {
        Lookup::Miss => Outcome::Miss { key, warning: None },
        Lookup::Corrupt(why) => Outcome::Miss {
            key,
            warning: Some(why),
        },
        Lookup::Hit(entry) => {
            let replayed = store
                .read_log(&entry)
                .and_then(|log| store.restore_artifacts(&entry, root).map(|()| log));
            match replayed {
                Ok(log) => Outcome::Hit { key, entry, log },
                Err(why) => {
                    let _ = store.discard(&key, why.clone());
                    Outcome::Miss {
                        key,
                        warning: Some(why),
                    }
                }
            }
        }
    }
}
