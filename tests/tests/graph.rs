//! `hm graph` end to end: the first-party `graph` plugin, built from this workspace, installed as
//! a bundle (its `plugin.toml` beside its executable) with `hm plugin install`, and run through
//! the real `hm` on the example pipeline and on throwaway projects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use hm_tests::{Hm, Output, Project, RUN_DEADLINE};

/// The executable cargo builds for `plugins/graph`.
const EXECUTABLE: &str = "hm-plugin-graph";

/// The steps of examples/hm.toml, and its `needs` as (needed, dependent) edges.
const EXAMPLE_STEPS: &[&str] = &["prepare", "inventory", "ticker", "flaky", "report"];
const EXAMPLE_EDGES: &[(&str, &str)] = &[
    ("prepare", "inventory"),
    ("prepare", "ticker"),
    ("prepare", "flaky"),
    ("inventory", "report"),
    ("ticker", "report"),
    ("flaky", "report"),
];

/// `hm-plugin-graph` as cargo built it for this workspace.
fn graph_executable() -> PathBuf {
    hm_tests::workspace_executable(
        EXECUTABLE,
        "Build it first: `cargo test --workspace` does, or run `cargo build -p hm-kernel -p \
         hm-plugin-graph` before `cargo test -p hm-tests --test graph`.",
    )
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        out.stdout,
        out.stderr
    )
}

/// `project` with the `graph` bundle installed into its user layer (`$XDG_DATA_HOME`): a
/// directory `graph/` holding plugins/graph/plugin.toml and the built executable, as a user
/// would assemble it, installed with `hm plugin install DIR`.
fn install_graph(project: &Project) {
    let base = project
        .root()
        .parent()
        .expect("the project has a parent directory");
    let bundle = base.join("bundle").join("graph");
    std::fs::create_dir_all(&bundle).expect("create the bundle directory");
    std::fs::copy(
        hm_tests::repo_root().join("plugins/graph/plugin.toml"),
        bundle.join("plugin.toml"),
    )
    .expect("copy plugin.toml");
    std::fs::copy(graph_executable(), bundle.join(EXECUTABLE)).expect("copy the executable");
    let out = project.hm(&["plugin", "install", &bundle.display().to_string()]);
    assert_eq!(out.code(), 0, "{}", show(&out));
    assert!(
        project.user_plugins().join("graph/plugin.toml").is_file(),
        "the bundle was not installed into the user layer: {}",
        show(&out)
    );
}

/// A project (its own hm.toml is `hm_toml`) that has `graph` installed.
fn project_with(hm_toml: &str) -> Project {
    let project = Project::new(hm_toml);
    install_graph(&project);
    project
}

fn example() -> String {
    hm_tests::repo_root()
        .join("examples/hm.toml")
        .display()
        .to_string()
}

/// Runs `hm ARGS...` and returns its stdout, failing unless it exits 0 with nothing on stderr.
fn graph_ok(project: &Project, args: &[&str]) -> String {
    let out = project.hm(args);
    assert_eq!(out.code(), 0, "{}", show(&out));
    assert_eq!(out.stderr, "", "{}", show(&out));
    out.stdout
}

// ---- reading the output back ----

/// The nodes (step name → executor) and edges (by step name) of a drawing.
#[derive(Debug, Default, PartialEq, Eq)]
struct Drawing {
    nodes: BTreeMap<String, String>,
    edges: BTreeSet<(String, String)>,
}

impl Drawing {
    fn expect_steps(&self, steps: &[&str], executor: &str) {
        let expected: BTreeMap<String, String> = steps
            .iter()
            .map(|s| ((*s).to_owned(), executor.to_owned()))
            .collect();
        assert_eq!(self.nodes, expected, "nodes of {self:#?}");
    }

    fn expect_edges(&self, edges: &[(&str, &str)]) {
        let expected: BTreeSet<(String, String)> = edges
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(self.edges, expected, "edges of {self:#?}");
    }
}

/// Reads the Mermaid that `hm graph` prints, checking every line against the grammar it uses:
/// `flowchart TD`, then node lines `    ID["NAME<br/>EXECUTOR"]`, then edge lines
/// `    ID --> ID`, ids being `s` and a number, and labels free of raw quotes.
fn parse_mermaid(text: &str) -> Drawing {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("flowchart TD"), "first line of:\n{text}");
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut drawing = Drawing::default();
    for line in lines {
        let stmt = line
            .strip_prefix("    ")
            .unwrap_or_else(|| panic!("not indented by four spaces: {line:?} in:\n{text}"));
        if let Some((from, to)) = stmt.split_once(" --> ") {
            let name = |id: &str| {
                names
                    .get(id)
                    .unwrap_or_else(|| panic!("edge to an undeclared node {id:?}: {line:?}"))
                    .clone()
            };
            assert!(
                drawing.edges.insert((name(from), name(to))),
                "a repeated edge: {line:?}"
            );
            continue;
        }
        let (id, label) = stmt
            .strip_suffix("\"]")
            .and_then(|s| s.split_once("[\""))
            .unwrap_or_else(|| panic!("neither a node nor an edge: {line:?} in:\n{text}"));
        assert!(
            id.strip_prefix('s')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "node id {id:?} is not s<number>: {line:?}"
        );
        assert!(!label.contains('"'), "a raw quote in a label: {line:?}");
        let (name, executor) = label
            .split_once("<br/>")
            .unwrap_or_else(|| panic!("label without <br/>: {line:?}"));
        let (name, executor) = (mermaid_unescape(name), mermaid_unescape(executor));
        assert!(
            names.insert(id, name.clone()).is_none(),
            "node {id} declared twice"
        );
        assert!(
            drawing.nodes.insert(name, executor).is_none(),
            "a step drawn twice: {line:?}"
        );
    }
    drawing
}

/// Undoes Mermaid entity codes (`#quot;`, `#35;`, ...).
fn mermaid_unescape(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('#') {
        out.push_str(&rest[..at]);
        let code = &rest[at + 1..];
        let end = code
            .find(';')
            .unwrap_or_else(|| panic!("an unterminated entity code in {text:?}"));
        let c = match &code[..end] {
            "quot" => '"',
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            n => n
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .unwrap_or_else(|| panic!("an unknown entity code #{n}; in {text:?}")),
        };
        out.push(c);
        rest = &code[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Reads the DOT that `hm graph` prints: `digraph "NAME" {`, its attribute lines, node lines
/// `"ID" [label="NAME\nEXECUTOR"];`, edge lines `"ID" -> "ID";` and `}`. Returns the name.
fn parse_dot(text: &str) -> (String, Drawing) {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let (name, rest) = header
        .strip_prefix("digraph ")
        .map(quoted)
        .unwrap_or_else(|| panic!("not a digraph: {text}"));
    assert_eq!(rest, " {", "header of:\n{text}");
    let mut drawing = Drawing::default();
    let mut closed = false;
    for line in lines {
        assert!(!closed, "text after the closing brace: {line:?}");
        if line == "}" {
            closed = true;
            continue;
        }
        let stmt = line
            .strip_prefix("    ")
            .unwrap_or_else(|| panic!("not indented by four spaces: {line:?}"));
        if stmt == "rankdir=LR;" || stmt == "node [shape=box];" {
            continue;
        }
        let (first, rest) = quoted(stmt);
        if let Some(rest) = rest.strip_prefix(" -> ") {
            let (second, rest) = quoted(rest);
            assert_eq!(rest, ";", "edge line {line:?}");
            for end in [&first, &second] {
                assert!(
                    drawing.nodes.contains_key(end),
                    "edge to an undeclared node: {line:?}"
                );
            }
            assert!(
                drawing.edges.insert((first, second)),
                "a repeated edge: {line:?}"
            );
        } else {
            let (label, rest) = rest
                .strip_prefix(" [label=")
                .map(quoted)
                .unwrap_or_else(|| panic!("neither a node nor an edge: {line:?}"));
            assert_eq!(rest, "];", "node line {line:?}");
            let (label_name, executor) = label
                .split_once("\\n")
                .unwrap_or_else(|| panic!("label without a line break: {line:?}"));
            assert_eq!(label_name, first, "the label names the node: {line:?}");
            drawing.nodes.insert(first, executor.to_owned());
        }
    }
    assert!(closed, "no closing brace in:\n{text}");
    (name, drawing)
}

/// A DOT quoted string at the start of `text` (only `\"` unescaped, as DOT does; the examples
/// have no backslashes) and what follows it.
fn quoted(text: &str) -> (String, &str) {
    let body = text
        .strip_prefix('"')
        .unwrap_or_else(|| panic!("expected a quoted string at {text:?}"));
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (value, &body[i + 1..]),
            '\\' => match chars.next() {
                Some((_, '"')) => value.push('"'),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => break,
            },
            c => value.push(c),
        }
    }
    panic!("an unterminated quoted string: {text:?}")
}

// ---- the tests ----

#[test]
fn help_lists_the_graph_verb_and_its_arguments() {
    let project = project_with("[steps.a]\nrun = \"true\"\n");
    let help = graph_ok(&project, &["--help"]);
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("graph ") && l.contains("step graph")),
        "{help}"
    );
    let help = graph_ok(&project, &["graph", "--help"]);
    assert!(help.contains("--format <VALUE>"), "{help}");
    assert!(help.contains("--file <VALUE>"), "{help}");
}

#[test]
fn mermaid_has_exactly_the_steps_and_needs_of_the_example() {
    let project = project_with("[steps.a]\nrun = \"true\"\n");
    let text = graph_ok(
        &project,
        &["graph", "--format", "mermaid", "--file", &example()],
    );
    let drawing = parse_mermaid(&text);
    drawing.expect_steps(EXAMPLE_STEPS, "shell");
    drawing.expect_edges(EXAMPLE_EDGES);
    // Mermaid is the default.
    let default = graph_ok(&project, &["graph", "--file", &example()]);
    assert_eq!(default, text);
}

#[test]
fn dot_has_the_same_steps_and_needs() {
    let project = project_with("[steps.a]\nrun = \"true\"\n");
    let text = graph_ok(
        &project,
        &["graph", "--format", "dot", "--file", &example()],
    );
    let (name, drawing) = parse_dot(&text);
    assert_eq!(name, "example");
    drawing.expect_steps(EXAMPLE_STEPS, "shell");
    drawing.expect_edges(EXAMPLE_EDGES);
}

#[test]
fn the_pipeline_file_is_found_from_a_subdirectory_like_hm_run() {
    let project = project_with(
        "[defaults]\nexecutor = \"shell\"\n\
         [steps.fetch]\nrun = \"true\"\n\
         [steps.build]\nimage = \"busybox\"\nrun = \"true\"\nneeds = [\"fetch\"]\n\
         [steps.\"odd \\\"name\\\" #1\"]\nrun = \"true\"\nneeds = [\"build\", \"fetch\"]\n",
    );
    let dir = project.path("deep/er");
    std::fs::create_dir_all(&dir).expect("create a subdirectory");
    let out = Hm::spawn(project.command_in(&dir, &["graph"])).finish(RUN_DEADLINE);
    assert_eq!(out.code(), 0, "{}", show(&out));
    let drawing = parse_mermaid(&out.stdout);
    let odd = "odd \"name\" #1";
    assert_eq!(
        drawing.nodes,
        BTreeMap::from([
            ("fetch".to_owned(), "shell".to_owned()),
            ("build".to_owned(), "docker".to_owned()),
            (odd.to_owned(), "shell".to_owned()),
        ])
    );
    drawing.expect_edges(&[("fetch", "build"), ("build", odd), ("fetch", odd)]);
    // Without `[pipeline].name` the graph is named after the project directory, as in hm.
    let out =
        Hm::spawn(project.command_in(&dir, &["graph", "--format", "dot"])).finish(RUN_DEADLINE);
    assert_eq!(out.code(), 0, "{}", show(&out));
    let (name, dot) = parse_dot(&out.stdout);
    assert_eq!(name, "project");
    assert_eq!(dot.edges, drawing.edges);
}

#[test]
fn a_missing_file_is_a_usage_error_that_says_where_it_looked() {
    let project = project_with("[steps.a]\nrun = \"true\"\n");
    let out = project.hm(&["graph", "--file", "nowhere/hm.toml"]);
    assert_eq!(out.code(), 2, "{}", show(&out));
    assert_eq!(out.stdout, "", "{}", show(&out));
    assert!(out.stderr.contains("nowhere/hm.toml"), "{}", show(&out));
    assert!(
        out.stderr
            .contains(&project.path("nowhere/hm.toml").display().to_string()),
        "{}",
        show(&out)
    );

    // No hm.toml here or above: the message names the directory the search started in.
    let empty = Project::empty();
    install_graph(&empty);
    let out = empty.hm(&["graph"]);
    assert_eq!(out.code(), 2, "{}", show(&out));
    assert_eq!(out.stdout, "", "{}", show(&out));
    assert!(out.stderr.contains("no hm.toml in"), "{}", show(&out));
    assert!(
        out.stderr.contains(&empty.root().display().to_string()),
        "{}",
        show(&out)
    );
    assert!(out.stderr.contains("--file"), "{}", show(&out));
}

#[test]
fn an_unknown_format_is_a_usage_error_listing_the_valid_ones() {
    let project = project_with("[steps.a]\nrun = \"true\"\n");
    let out = project.hm(&["graph", "--format", "svg"]);
    assert_eq!(out.code(), 2, "{}", show(&out));
    assert_eq!(out.stdout, "", "{}", show(&out));
    assert!(
        out.stderr.contains("unknown --format `svg`"),
        "{}",
        show(&out)
    );
    assert!(out.stderr.contains("dot, mermaid"), "{}", show(&out));
}

#[test]
fn an_invalid_pipeline_is_a_usage_error_with_line_and_column() {
    let project = project_with("[steps.a]\nrun = \"true\"\n");
    project.write("broken.toml", "[steps.a]\nrun = \"true\"\nneeds = [\"b\"\n");
    let out = project.hm(&["graph", "--file", "broken.toml"]);
    assert_eq!(out.code(), 2, "{}", show(&out));
    assert_eq!(out.stdout, "", "{}", show(&out));
    assert!(
        out.stderr.starts_with("broken.toml:3:") && out.stderr.contains("invalid TOML"),
        "{}",
        show(&out)
    );

    project.write(
        "unknown.toml",
        "[steps.a]\nrun = \"true\"\n[steps.b]\nneeds = [\"A\"]\n",
    );
    let out = project.hm(&["graph", "--file", "unknown.toml"]);
    assert_eq!(out.code(), 2, "{}", show(&out));
    assert_eq!(out.stdout, "", "{}", show(&out));
    assert_eq!(
        out.stderr,
        "unknown.toml:4:10: error: step `b` needs unknown step `A`\n  hint: did you mean `a`?\n",
        "{}",
        show(&out)
    );
}
