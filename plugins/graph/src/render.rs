//! Drawing a [`Graph`] as text: a Mermaid flowchart or a Graphviz DOT digraph. Either way one
//! node per step, labelled with its name and executor, and one edge per need, from the needed
//! step to the one that needs it. Any step name renders: node ids never contain user text in
//! Mermaid, and every piece of user text is escaped for the language it lands in.

use crate::pipeline::Graph;

/// What the output is written in (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mermaid,
    Dot,
}

impl Format {
    /// Every `--format` value, as the user writes it.
    pub const NAMES: &[&str] = &["dot", "mermaid"];

    /// The format `--format` names, `None` for a name that is not one.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mermaid" => Some(Format::Mermaid),
            "dot" => Some(Format::Dot),
            _ => None,
        }
    }

    pub fn render(self, graph: &Graph) -> String {
        match self {
            Format::Mermaid => render_mermaid(graph),
            Format::Dot => render_dot(graph),
        }
    }
}

/// The name a graph is drawn under when the file does not give one.
const UNNAMED: &str = "pipeline";

/// `flowchart TD`, then `sN["NAME<br/>EXECUTOR"]` for step N in file order, then `sA --> sB`
/// per edge.
pub fn render_mermaid(graph: &Graph) -> String {
    let mut out = String::from("flowchart TD\n");
    for (i, step) in graph.steps.iter().enumerate() {
        out.push_str(&format!(
            "    s{i}[\"{}<br/>{}\"]\n",
            mermaid_text(&step.name),
            mermaid_text(&step.executor)
        ));
    }
    for (from, to) in graph.edges() {
        out.push_str(&format!("    s{from} --> s{to}\n"));
    }
    out
}

/// `digraph "NAME" { ... }`, nodes identified by their quoted step names.
pub fn render_dot(graph: &Graph) -> String {
    let name = graph.name.as_deref().unwrap_or(UNNAMED);
    let mut out = format!("digraph {} {{\n", dot_id(name));
    out.push_str("    rankdir=LR;\n    node [shape=box];\n");
    for step in &graph.steps {
        out.push_str(&format!(
            "    {} [label=\"{}\\n{}\"];\n",
            dot_id(&step.name),
            dot_label_text(&step.name),
            dot_label_text(&step.executor)
        ));
    }
    for (from, to) in graph.edges() {
        out.push_str(&format!(
            "    {} -> {};\n",
            dot_id(&graph.steps[from].name),
            dot_id(&graph.steps[to].name)
        ));
    }
    out.push_str("}\n");
    out
}

/// Text for inside a quoted Mermaid label. Mermaid reads `#name;` and `#NUMBER;` as entity
/// codes, and labels are HTML, so the quote, `#`, the HTML specials, the backtick (which
/// starts a Markdown string) and `%` (`%%` starts a comment) are written as entity codes; so
/// is any control character, which could otherwise end the line.
fn mermaid_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '&' => out.push_str("#amp;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '`' => out.push_str("#96;"),
            '%' => out.push_str("#37;"),
            c if c.is_control() => out.push_str(&format!("#{};", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// A DOT quoted id. Inside quotes DOT only unescapes `\"`; a backslash is doubled so that one at
/// the end cannot escape the closing quote, and line breaks are written as `\n` so that every
/// statement stays on one line. Distinct names still give distinct ids.
fn dot_id(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for inside a DOT `label="..."`, where backslash sequences mean something (`\n` a line
/// break, `\N` the node's name): backslashes and quotes are escaped, a line break becomes `\n`,
/// and other control characters are shown as `\u{..}`.
fn dot_label_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::pipeline::parse;

    fn check(format: Format, text: &str, expected: Expect) {
        let graph = parse(text).unwrap_or_else(|problems| panic!("{problems:#?}"));
        expected.assert_eq(&format.render(&graph));
    }

    const DIAMOND: &str = r#"
[pipeline]
name = "ci"

[steps.build]
run = "make"

[steps.lint]
needs = ["build"]

[steps.test]
image = "rust:1.80"
needs = ["build"]

[steps.ship]
needs = ["test", "lint"]
"#;

    #[test]
    fn mermaid_diamond() {
        check(
            Format::Mermaid,
            DIAMOND,
            expect![[r#"
                flowchart TD
                    s0["build<br/>shell"]
                    s1["lint<br/>shell"]
                    s2["test<br/>docker"]
                    s3["ship<br/>shell"]
                    s0 --> s1
                    s0 --> s2
                    s2 --> s3
                    s1 --> s3
            "#]],
        );
    }

    #[test]
    fn dot_diamond() {
        check(
            Format::Dot,
            DIAMOND,
            expect![[r#"
                digraph "ci" {
                    rankdir=LR;
                    node [shape=box];
                    "build" [label="build\nshell"];
                    "lint" [label="lint\nshell"];
                    "test" [label="test\ndocker"];
                    "ship" [label="ship\nshell"];
                    "build" -> "lint";
                    "build" -> "test";
                    "test" -> "ship";
                    "lint" -> "ship";
                }
            "#]],
        );
    }

    const AWKWARD: &str = r#"
[pipeline]
name = 'say "hi" \'

[steps.'a "quoted" step']
executor = "<x> & #1 %%"

[steps.'back\slash\']
needs = ['a "quoted" step']

[steps."two\nlines`"]
needs = ['back\slash\']
"#;

    #[test]
    fn mermaid_escapes_labels_and_never_uses_names_as_ids() {
        check(
            Format::Mermaid,
            AWKWARD,
            expect![[r#"
                flowchart TD
                    s0["a #quot;quoted#quot; step<br/>#lt;x#gt; #amp; #35;1 #37;#37;"]
                    s1["back\slash\<br/>shell"]
                    s2["two#10;lines#96;<br/>shell"]
                    s0 --> s1
                    s1 --> s2
            "#]],
        );
    }

    #[test]
    fn dot_escapes_ids_and_labels() {
        check(
            Format::Dot,
            AWKWARD,
            expect![[r#"
                digraph "say \"hi\" \\" {
                    rankdir=LR;
                    node [shape=box];
                    "a \"quoted\" step" [label="a \"quoted\" step\n<x> & #1 %%"];
                    "back\\slash\\" [label="back\\slash\\\nshell"];
                    "two\nlines`" [label="two\nlines`\nshell"];
                    "a \"quoted\" step" -> "back\\slash\\";
                    "back\\slash\\" -> "two\nlines`";
                }
            "#]],
        );
    }

    #[test]
    fn an_unnamed_pipeline_and_a_lone_step() {
        check(
            Format::Dot,
            "[steps.only]\nrun = \"x\"\n",
            expect![[r#"
                digraph "pipeline" {
                    rankdir=LR;
                    node [shape=box];
                    "only" [label="only\nshell"];
                }
            "#]],
        );
        check(
            Format::Mermaid,
            "[steps.only]\nrun = \"x\"\n",
            expect![[r#"
                flowchart TD
                    s0["only<br/>shell"]
            "#]],
        );
    }

    #[test]
    fn format_names() {
        for name in Format::NAMES {
            assert!(Format::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Format::from_name("Mermaid"), None);
        assert_eq!(Format::from_name(""), None);
    }
}
