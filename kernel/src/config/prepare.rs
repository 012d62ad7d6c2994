//! What a step is when it starts: its expressions rendered against its matrix values and its
//! environment, and its working directory made absolute.

use std::path::{Component, Path, PathBuf};

use super::expr::{self, Ref};
use super::matrix;
use super::model::{AttemptEnv, OutputLookup, Step};

/// One attempt of a step, everything rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub run: String,
    pub dir: PathBuf,
    pub image: Option<String>,
    pub with_json: String,
    pub env: Vec<(String, String)>,
    /// `artifacts` and `inputs` with their expressions (a matrix value in a path) filled in.
    pub artifacts: Vec<String>,
    pub inputs: Vec<String>,
}

/// Why a relative `dir` is not one: it is absolute, or `..` climbs out of the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirProblem {
    Empty,
    Absolute,
    LeavesRoot,
}

impl DirProblem {
    pub fn describe(self) -> &'static str {
        match self {
            DirProblem::Empty => "is empty",
            DirProblem::Absolute => "is not a relative path",
            DirProblem::LeavesRoot => "leaves the pipeline's directory",
        }
    }
}

/// `text` as a relative path below the root, lexically normalised (`a/../b` is `b`).
/// Symbolic links are the user's business; a plain `..` out of the project almost always
/// means the file was moved without its paths.
pub fn normalize_dir(text: &str) -> Result<PathBuf, DirProblem> {
    if text.is_empty() {
        return Err(DirProblem::Empty);
    }
    let path = Path::new(text);
    if path.has_root() {
        return Err(DirProblem::Absolute);
    }
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir if normal.pop() => {}
            _ => return Err(DirProblem::LeavesRoot),
        }
    }
    Ok(normal)
}

impl Step {
    /// `text` with its expressions filled from this instance's matrix values, `env` (the
    /// step's environment) and the outputs of the steps it needs (`outputs`); what is not
    /// there renders empty.
    pub fn render(
        &self,
        text: &str,
        env: &[(String, String)],
        outputs: OutputLookup<'_>,
    ) -> String {
        expr::render(text, |reference| match reference {
            Ref::Matrix(key) => self
                .matrix
                .as_ref()
                .and_then(|values| matrix::lookup(values, key))
                .cloned()
                .unwrap_or_default(),
            Ref::Env(name) => env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            Ref::Output { step, key } => outputs(step, key).unwrap_or_default(),
        })
    }

    /// The attempt as its executor gets it; an error (cause `setup`) when a `dir` made of
    /// expressions turns out not to be a directory inside the project.
    pub fn prepare(&self, root: &Path, attempt: AttemptEnv<'_>) -> Result<Prepared, String> {
        let env = self.environment(attempt);
        let outputs = attempt.outputs;
        let dir = match &self.dir_template {
            None => self.dir.clone(),
            Some(template) => {
                let text = self.render(template, &env, outputs);
                let relative = normalize_dir(&text).map_err(|problem| {
                    format!(
                        "its dir `{template}` is `{text}`, which {}; dir must name a directory \
                         inside the project (step at {})",
                        problem.describe(),
                        self.location
                    )
                })?;
                root.join(relative)
            }
        };
        Ok(Prepared {
            run: self.render(&self.run, &env, outputs),
            dir,
            image: self
                .image
                .as_ref()
                .map(|image| self.render(image, &env, outputs)),
            with_json: self.render_json(&self.with_json, &env, outputs),
            artifacts: self
                .artifacts
                .iter()
                .map(|g| self.render(g, &env, outputs))
                .collect(),
            inputs: self
                .inputs
                .iter()
                .map(|g| self.render(g, &env, outputs))
                .collect(),
            env,
        })
    }

    /// The strings of a JSON text rendered; the text itself when it has no expression.
    fn render_json(
        &self,
        json: &str,
        env: &[(String, String)],
        outputs: OutputLookup<'_>,
    ) -> String {
        if !expr::is_template(json) {
            return json.to_owned();
        }
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(json) else {
            return json.to_owned();
        };
        self.render_strings(&mut value, env, outputs);
        value.to_string()
    }

    fn render_strings(
        &self,
        value: &mut serde_json::Value,
        env: &[(String, String)],
        outputs: OutputLookup<'_>,
    ) {
        match value {
            serde_json::Value::String(text) => *text = self.render(text, env, outputs),
            serde_json::Value::Array(items) => {
                items
                    .iter_mut()
                    .for_each(|v| self.render_strings(v, env, outputs));
            }
            serde_json::Value::Object(map) => {
                map.values_mut()
                    .for_each(|v| self.render_strings(v, env, outputs));
            }
            _ => {}
        }
    }
}
