//! `hm graph [--format dot|mermaid] [--file PATH]`: finds the pipeline file the way `hm run`
//! does, reads its step graph and prints it. [`execute`] decides everything (output, messages,
//! exit code) without touching stdout or stderr; [`GraphCommand`] only writes what it decided.

use std::io::Write;
use std::path::{Path, PathBuf};

use hm_sdk::{Subcommand, SubcommandArg};
use serde_json::Value;

use crate::pipeline;
use crate::render::Format;

/// The verb: `hm graph`.
pub const VERB: &str = "graph";
/// What `hm --help` says about it.
pub const ABOUT: &str = "Print the pipeline's step graph (DOT or Mermaid)";
/// The pipeline file looked for in the current directory and its parents (`docs/pipeline.md`).
pub const PIPELINE_FILE: &str = "hm.toml";
/// The format when `--format` is absent: Mermaid renders in GitHub and GitLab Markdown as is.
pub const DEFAULT_FORMAT: Format = Format::Mermaid;

/// Exit code for bad input: usage, a missing file, an invalid pipeline (as `hm` itself).
const USAGE: i32 = 2;
/// Exit code when the graph could not be written.
const OUTPUT_FAILED: i32 = 1;

/// The arguments `hm` parses from the manifest before it starts the plugin.
pub fn args() -> Vec<SubcommandArg> {
    vec![
        SubcommandArg::value("format", "Output format: `mermaid` (the default) or `dot`"),
        SubcommandArg::value(
            "file",
            "The pipeline file (default: hm.toml in the current directory or the nearest parent)",
        ),
    ]
}

/// What one `hm graph` prints and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    /// Errors and warnings, each line ending in a newline.
    pub stderr: String,
    pub code: i32,
}

impl Outcome {
    fn usage(message: String) -> Self {
        Self {
            stdout: String::new(),
            stderr: message + "\n",
            code: USAGE,
        }
    }
}

/// Runs `hm graph` with `args` (the JSON object `hm` sends: `format` and `file`, each a string
/// or null) in `cwd`, up to the text it would print.
pub fn execute(args: &Value, cwd: &Path) -> Outcome {
    let format = match args.get("format").and_then(Value::as_str) {
        None => DEFAULT_FORMAT,
        Some(name) => match Format::from_name(name) {
            Some(format) => format,
            None => {
                return Outcome::usage(format!(
                    "error: unknown --format `{}`\n  hint: valid formats: {}",
                    name.escape_debug(),
                    Format::NAMES.join(", ")
                ));
            }
        },
    };
    let (path, shown) = match args.get("file").and_then(Value::as_str) {
        Some(file) => (cwd.join(file), file.to_owned()),
        None => match find_pipeline_file(cwd) {
            Some(path) => {
                let shown = display_path(&path, cwd);
                (path, shown)
            }
            None => {
                return Outcome::usage(format!(
                    "error: no {PIPELINE_FILE} in {} or any parent directory\n  hint: run \
                     `hm graph` inside a project, or name the file with `--file PATH`",
                    cwd.display()
                ));
            }
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            return Outcome::usage(format!(
                "error: cannot read the pipeline file {shown}: {e}\n  hint: looked at {}",
                path.display()
            ));
        }
    };
    let mut graph = match pipeline::parse(&text) {
        Ok(graph) => graph,
        Err(problems) => {
            let mut stderr = String::new();
            for problem in &problems {
                stderr.push_str(&problem.render(&shown));
                stderr.push('\n');
            }
            return Outcome {
                stdout: String::new(),
                stderr,
                code: USAGE,
            };
        }
    };
    if graph.name.is_none() {
        // hm names a pipeline without `[pipeline].name` after the file's directory.
        graph.name = std::path::absolute(&path).ok().and_then(|p| {
            p.parent()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
    }
    let mut stderr = String::new();
    if let Some(cycle) = graph.cycle() {
        let cycle: Vec<String> = cycle.iter().map(|n| n.escape_debug().to_string()).collect();
        stderr.push_str(&format!(
            "warning: {shown}: dependency cycle: {}; `hm run` refuses this pipeline\n  hint: \
             `a -> b` means `a` needs `b`; remove one of these `needs` entries\n",
            cycle.join(" -> ")
        ));
    }
    Outcome {
        stdout: format.render(&graph),
        stderr,
        code: 0,
    }
}

/// `hm.toml` in `start` or the nearest parent that has one, like `hm run`.
fn find_pipeline_file(start: &Path) -> Option<PathBuf> {
    // A relative start has too few ancestors (`.` has none), so walk the absolute form.
    let start = std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .map(|dir| dir.join(PIPELINE_FILE))
        .find(|file| file.is_file())
}

/// `path` as the user would type it from `cwd`: relative when it lies below it.
fn display_path(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd)
        .ok()
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The handler `hm graph` runs: [`execute`] in the current directory, then the writing.
pub struct GraphCommand;

impl Subcommand for GraphCommand {
    async fn run(&self, args: Value) -> i32 {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let outcome = execute(&args, &cwd);
        // Nothing useful can be done when stderr itself is gone.
        let _ = std::io::stderr()
            .lock()
            .write_all(outcome.stderr.as_bytes());
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(outcome.stdout.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => outcome.code,
            // `hm graph | head` is not an error: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => outcome.code,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: cannot write the graph: {e}");
                OUTPUT_FAILED
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PIPELINE: &str = "[steps.a]\nrun = \"x\"\n[steps.b]\nneeds = [\"a\"]\n";

    /// A directory `project/` holding `hm.toml` (when given) and an empty `project/sub/dir/`.
    fn project(hm_toml: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = temp.path().join("project");
        std::fs::create_dir_all(root.join("sub/dir")).expect("create dirs");
        if let Some(text) = hm_toml {
            std::fs::write(root.join(PIPELINE_FILE), text).expect("write hm.toml");
        }
        (temp, root)
    }

    #[test]
    fn mermaid_by_default_from_the_nearest_pipeline_file() {
        let (_temp, root) = project(Some(PIPELINE));
        let out = execute(
            &json!({"format": null, "file": null}),
            &root.join("sub/dir"),
        );
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stderr, "");
        assert_eq!(
            out.stdout,
            "flowchart TD\n    s0[\"a<br/>shell\"]\n    s1[\"b<br/>shell\"]\n    s0 --> s1\n"
        );
    }

    #[test]
    fn an_unnamed_pipeline_is_named_after_its_directory() {
        let (_temp, root) = project(Some(PIPELINE));
        let out = execute(&json!({"format": "dot", "file": null}), &root);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.starts_with("digraph \"project\" {\n"), "{out:?}");
        let out = execute(&json!({"format": "dot", "file": "hm.toml"}), &root);
        assert!(out.stdout.starts_with("digraph \"project\" {\n"), "{out:?}");
    }

    #[test]
    fn a_named_file_is_read_relative_to_the_current_directory() {
        let (_temp, root) = project(None);
        std::fs::write(root.join("sub/other.toml"), PIPELINE).expect("write");
        let out = execute(&json!({"file": "sub/other.toml"}), &root);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("s0 --> s1"), "{out:?}");
    }

    #[test]
    fn bad_input_is_exit_2_with_the_problem_on_stderr_only() {
        let (_temp, root) = project(None);
        let cases = [
            (
                json!({"format": "svg"}),
                "error: unknown --format `svg`\n  hint: valid formats: dot, mermaid\n".to_owned(),
            ),
            (
                json!({"file": null}),
                format!(
                    "error: no hm.toml in {} or any parent directory\n  hint: run `hm graph` \
                     inside a project, or name the file with `--file PATH`\n",
                    root.display()
                ),
            ),
        ];
        for (args, expected) in cases {
            let out = execute(&args, &root);
            assert_eq!(out.code, 2, "{args}: {out:?}");
            assert_eq!(out.stdout, "", "{args}");
            assert_eq!(out.stderr, expected, "{args}");
        }
        let out = execute(&json!({"file": "missing.toml"}), &root);
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr
                .starts_with("error: cannot read the pipeline file missing.toml: "),
            "{out:?}"
        );
        assert!(
            out.stderr
                .contains(&root.join("missing.toml").display().to_string()),
            "{out:?}"
        );
    }

    #[test]
    fn pipeline_problems_name_the_file_as_found() {
        let (_temp, root) = project(Some("[steps.a]\nneeds = [\"b\"]\n"));
        let out = execute(&json!({}), &root.join("sub"));
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(out.stdout, "");
        let expected = format!(
            "{}:2:10: error: step `a` needs unknown step `b`\n  hint: steps in this file: `a`\n",
            root.join(PIPELINE_FILE).display()
        );
        assert_eq!(out.stderr, expected);
        let out = execute(&json!({}), &root);
        assert!(out.stderr.starts_with("hm.toml:2:10: error:"), "{out:?}");
    }

    #[test]
    fn a_cycle_is_drawn_with_a_warning() {
        let (_temp, root) = project(Some(
            "[steps.a]\nneeds = [\"b\"]\n[steps.b]\nneeds = [\"a\"]\n",
        ));
        let out = execute(&json!({"format": "mermaid"}), &root);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("s1 --> s0\n    s0 --> s1\n"), "{out:?}");
        assert_eq!(
            out.stderr,
            "warning: hm.toml: dependency cycle: a -> b -> a; `hm run` refuses this pipeline\n  \
             hint: `a -> b` means `a` needs `b`; remove one of these `needs` entries\n"
        );
    }
}
