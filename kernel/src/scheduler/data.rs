//! Data between steps in a run: the outputs a step leaves in `$HM_OUTPUT` and the artifacts
//! its `artifacts` globs take, collected off the run loop when it passes, listed in its
//! `step_end`, and handed to the steps after it (outputs through `${{ steps.S.outputs.K }}`,
//! artifacts in the project directory and, for steps that run elsewhere, as one sealed tar).

use std::path::PathBuf;

use hm_ipc::SharedBuffer;

use super::attempts::Report;
use super::plugins::PluginState;
use super::run_loop::{Event, Scheduler};
use super::steps::StepState;
use super::verdict::Verdict;
use crate::artifacts::{self, Collected};
use crate::config::ArtifactLimits;
use crate::events::{Cause, StepStatus, Stream};
use crate::outputs::{self, Outputs};

/// A passed step's result for the cache, stored once its outputs and artifacts are in.
struct ToStore {
    store: crate::cache::Store,
    key: String,
    log: Vec<u8>,
    step: String,
    duration_ms: u64,
    masker: crate::secrets::Masker,
}

impl ToStore {
    /// Stores the result; a failure only means the next run runs the step again.
    fn save(self, root: &std::path::Path, outputs: &Outputs, artifacts: &[artifacts::Artifact]) {
        // An output holding a secret's value would put the value on disk: such a step runs
        // every time.
        if outputs
            .iter()
            .any(|(_, v)| matches!(self.masker.mask(v), std::borrow::Cow::Owned(_)))
        {
            tracing::info!(step = %self.step, "not cached: an output holds a secret");
            return;
        }
        let left = crate::cache::store::Left {
            step: &self.step,
            duration_ms: self.duration_ms,
            log: &self.log,
            outputs,
            artifacts,
        };
        if let Err(e) = self.store.save(&self.key, left, root) {
            tracing::warn!(step = %self.step, "cannot store the step's result in the cache: {e}");
        }
    }
}

/// What taking in a passed step's outputs and artifacts found.
pub(super) struct Collection {
    /// The step's position.
    pub(super) step: usize,
    /// Its attempt, so a stale result is never taken for a later one.
    attempt: u32,
    verdict: Verdict,
    report: Report,
    outputs: Result<Outputs, String>,
    artifacts: Result<Collected, String>,
}

impl Scheduler<'_> {
    /// The value of secret `name`.
    pub(super) fn secret_value(&self, name: &str) -> Option<String> {
        self.opts.secrets.get(name).map(str::to_owned)
    }

    /// Output `key` of `step` for step `i`: of the step of that name, or of the instance of
    /// the matrix step of that name that `i` needs (its nearest).
    pub(super) fn output_of(&self, i: usize, step: &str, key: &str) -> Option<String> {
        let ancestors = self.steps.ancestors(i);
        let named = |j: &usize| self.step_name(*j) == step;
        let instance = |j: &usize| self.pipeline.steps[self.steps[*j].index].base == step;
        let j = ancestors
            .iter()
            .find(|j| named(j))
            .or_else(|| ancestors.iter().find(|j| instance(j)))?;
        self.steps[*j]
            .outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The executor of the step running as `call` collected its artifacts where it ran.
    pub(super) fn on_artifacts_upload(
        &mut self,
        p: usize,
        call: u64,
        upload: Result<SharedBuffer, String>,
    ) {
        if let Some(&i) = self.plugins[p].in_flight.get(&call) {
            self.steps[i].upload = Some(upload);
        }
    }

    /// Answers host call `host_call`: the artifacts the step running as `call` sees, from
    /// every step it needs, directly or not (a nearer step's file wins).
    pub(super) fn on_open_artifacts(&mut self, p: usize, host_call: u64, call: u64) {
        let PluginState::Ready { link, .. } = &self.plugins[p].state else {
            return;
        };
        let link = link.clone();
        let Some(&i) = self.plugins[p].in_flight.get(&call) else {
            link.answer_archive(host_call, Err(format!("call {call} is not a running step")));
            return;
        };
        let mut files: Vec<String> = Vec::new();
        for j in self.steps.ancestors(i).into_iter().rev() {
            files.extend(self.steps[j].artifacts.iter().map(|a| a.path.clone()));
        }
        let root = self.pipeline.root.clone();
        tokio::task::spawn_blocking(move || {
            let answer = artifacts::pack(&root, &files)
                .and_then(|sealed| match sealed {
                    None => Ok(None),
                    Some(sealed) => {
                        let fd = sealed.share().map_err(|e| e.to_string())?;
                        Ok(Some((fd, sealed.len() as u64)))
                    }
                })
                .map_err(|e| format!("cannot pack the artifacts of the steps it needs: {e}"));
            link.answer_archive(host_call, answer);
        });
    }

    /// A new `$HM_OUTPUT` file for step `i`'s current attempt.
    pub(super) fn new_output_file(&mut self, i: usize) -> Option<PathBuf> {
        let def = &self.pipeline.steps[self.steps[i].index];
        let run_dir = self.run_dir.as_ref()?;
        match run_dir.output_file(&def.file_name(), self.steps[i].attempt) {
            Ok(path) => Some(path),
            Err(e) => {
                tracing::warn!("cannot create the $HM_OUTPUT file of {}: {e}", def.name);
                None
            }
        }
    }

    /// Step `i` passed: its outputs and artifacts are taken in off the run loop, and the
    /// attempt ends when they are (`on_collected`). Anything else ends it now.
    pub(super) fn end_with_collection(&mut self, i: usize, verdict: Verdict, report: Report) {
        let def = &self.pipeline.steps[self.steps[i].index];
        let upload = self.steps[i].upload.take();
        // Most steps write no outputs: an empty file needs no read off the run loop, and the
        // attempt can end at once (one hop to a blocking thread and back less per step).
        let output_file = self.steps[i]
            .output_file
            .take()
            .filter(|path| !outputs::surely_empty(path));
        let log = self.steps[i].cache_log.take();
        // What passed and may be stored: the store, the key and the recorded log.
        let to_store = match (&self.cache, &self.steps[i].cache_key, log) {
            (Some(store), Some(key), Some(log)) => Some(ToStore {
                store: store.clone(),
                key: key.clone(),
                log,
                step: def.name.clone(),
                duration_ms: self.steps[i]
                    .started
                    .map_or(0, |s| s.elapsed().as_millis() as u64),
                masker: self.masker.clone(),
            }),
            _ => None,
        };
        let wanted = !self.steps[i].artifact_globs.is_empty()
            || upload.is_some()
            || output_file.is_some()
            || to_store.is_some();
        if verdict.status != StepStatus::Passed || !wanted {
            self.end_attempt_with(i, verdict, report);
            return;
        }
        self.steps[i].state = StepState::Collecting;
        self.steps[i].deadline = None;
        let root = self.pipeline.root.clone();
        let globs = self.steps[i].artifact_globs.clone();
        let limits: ArtifactLimits = self.pipeline.artifacts_max;
        let tx = self.collected_tx.clone();
        let attempt = self.steps[i].attempt;
        tokio::task::spawn_blocking(move || {
            let outputs = match &output_file {
                Some(path) => outputs::read(path),
                None => Ok(Vec::new()),
            };
            let artifacts = match upload {
                Some(Ok(tar)) => artifacts::unpack(tar.as_slice(), &root, &globs, limits),
                Some(Err(problem)) => Err(problem),
                None if globs.is_empty() => Ok(Collected::default()),
                None => artifacts::collect(&root, &globs, limits),
            };
            if let (Some(to_store), Ok(outputs), Ok(collected)) = (to_store, &outputs, &artifacts) {
                to_store.save(&root, outputs, &collected.artifacts);
            }
            let _ = tx.send(Event::Collected(Box::new(Collection {
                step: i,
                attempt,
                verdict,
                report,
                outputs,
                artifacts,
            })));
        });
    }

    /// What `end_with_collection` took in: the attempt ends, failed with cause `setup` (bad
    /// outputs) or `artifact` (bad artifacts), or passed with them.
    pub(super) fn on_collected(&mut self, collection: Collection) {
        let i = collection.step;
        if self.steps[i].state != StepState::Collecting
            || self.steps[i].attempt != collection.attempt
        {
            return;
        }
        let mut verdict = collection.verdict;
        // The step's process did exit 0: its code stays in the verdict.
        let failed = |cause, message| Verdict {
            exit_code: verdict.exit_code,
            ..Verdict::failed(cause, message)
        };
        match (collection.outputs, collection.artifacts) {
            (Err(message), _) => {
                verdict = failed(Cause::Setup, message);
            }
            (Ok(_), Err(problem)) => {
                verdict = failed(Cause::Artifact, problem);
            }
            (Ok(outputs), Ok(collected)) => {
                for glob in &collected.unmatched {
                    let line = format!("hm: artifact glob `{glob}` matched no file");
                    self.step_log_line(i, Stream::Stderr, &line);
                }
                self.steps[i].outputs = outputs;
                self.steps[i].artifacts = collected.artifacts;
            }
        }
        self.end_attempt_with(i, verdict, collection.report);
    }
}
