//! The step graph of a pipeline file (`hm.toml`, `docs/pipeline.md`), read with `toml_edit`: the
//! pipeline's name, every step in file order with its executor, and the `needs` edges.
//!
//! Only what the graph shows is read and checked; everything else in the file (`run`, limits,
//! unknown keys) is `hm validate`'s business. Every problem found is reported, each with its
//! line and column, so one run of `hm graph` shows them all.

use std::collections::HashMap;
use std::ops::Range;

use toml_edit::{Document, Item, Key, TableLike};

/// The executor of a step that names none and has no `image`, when `[defaults]` names none.
pub const DEFAULT_EXECUTOR: &str = "shell";
/// The executor of a step that sets `image` but no `executor`.
pub const IMAGE_EXECUTOR: &str = "docker";

/// A pipeline's steps and the edges between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// `[pipeline].name`; `None` when the file does not set it (hm then names the pipeline
    /// after the file's directory).
    pub name: Option<String>,
    /// In the order the file lists them.
    pub steps: Vec<Step>,
}

/// One step: a node of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// The executor that runs it, after the defaulting rules: `executor`, else `docker` when
    /// `image` is set, else `[defaults].executor`, else `shell`.
    pub executor: String,
    /// Indices into [`Graph::steps`] of the steps this one needs, each once, in `needs` order.
    pub needs: Vec<usize>,
}

impl Graph {
    /// Every edge as `(needed, dependent)`: dependents in file order, then in `needs` order.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.steps
            .iter()
            .enumerate()
            .flat_map(|(dependent, step)| step.needs.iter().map(move |&need| (need, dependent)))
    }

    /// One dependency cycle, if there is any, as step names from a step through what it needs
    /// back to itself (`a -> b -> a`: `a` needs `b`, which needs `a`). hm refuses to run such a
    /// pipeline; the graph still draws it, which is how one finds the cycle.
    pub fn cycle(&self) -> Option<Vec<&str>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unvisited,
            OnPath,
            Done,
        }
        let mut marks = vec![Mark::Unvisited; self.steps.len()];
        for start in 0..self.steps.len() {
            if marks[start] != Mark::Unvisited {
                continue;
            }
            // Depth-first without recursion: a pipeline file can be arbitrarily deep.
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            marks[start] = Mark::OnPath;
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                let Some(&need) = self.steps[node].needs.get(*next) else {
                    marks[node] = Mark::Done;
                    path.pop();
                    continue;
                };
                *next += 1;
                match marks[need] {
                    Mark::Unvisited => {
                        marks[need] = Mark::OnPath;
                        path.push((need, 0));
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|&(n, _)| n == need).unwrap_or(0);
                        let mut names: Vec<&str> = path[from..]
                            .iter()
                            .map(|&(n, _)| self.steps[n].name.as_str())
                            .collect();
                        names.push(self.steps[need].name.as_str());
                        return Some(names);
                    }
                    Mark::Done => {}
                }
            }
        }
        None
    }
}

/// Something wrong with the file, where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column (in characters), when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    /// A lowercase fragment: "step `b` needs unknown step `c`".
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    /// `FILE:LINE:COL: error: MESSAGE`, and the hint on a line of its own, as hm prints
    /// pipeline errors.
    pub fn render(&self, file: &str) -> String {
        let mut text = match self.at {
            Some((line, col)) => format!("{file}:{line}:{col}: error: {}", self.message),
            None => format!("{file}: error: {}", self.message),
        };
        if let Some(hint) = &self.hint {
            text.push_str(&format!("\n  hint: {hint}"));
        }
        text
    }
}

/// Reads the step graph out of pipeline text. An `Err` holds every problem found, in file
/// order, never none.
pub fn parse(text: &str) -> Result<Graph, Vec<Problem>> {
    let mut reader = Reader {
        text,
        problems: Vec::new(),
    };
    let document = match Document::parse(text) {
        Ok(document) => document,
        Err(err) => {
            let message = format!("invalid TOML: {}", err.message().trim_end());
            reader.report(err.span(), message, None);
            return Err(reader.problems);
        }
    };
    let root = document.as_table();

    let name = root
        .get_key_value("pipeline")
        .and_then(|(key, item)| reader.table(key, item, "[pipeline]"))
        .and_then(|pipeline| reader.string(pipeline, "name", "[pipeline]"));
    let default_executor = root
        .get_key_value("defaults")
        .and_then(|(key, item)| reader.table(key, item, "[defaults]"))
        .and_then(|defaults| reader.string(defaults, "executor", "[defaults]"));

    let Some((steps_key, steps_item)) = root.get_key_value("steps") else {
        reader.report(
            None,
            "the pipeline has no steps".to_owned(),
            Some("add one: `[steps.build]` with `run = \"...\"`".to_owned()),
        );
        return Err(reader.problems);
    };
    let Some(steps_table) = reader.table(steps_key, steps_item, "[steps]") else {
        return Err(reader.problems);
    };
    if steps_table.is_empty() {
        reader.report(
            steps_key.span(),
            "the pipeline has no steps".to_owned(),
            Some("add one: `[steps.build]` with `run = \"...\"`".to_owned()),
        );
    }

    // First every step's own fields, then `needs` against the complete list of names: a step
    // may need one that the file lists after it.
    let mut drafts = Vec::new();
    for (name, _) in steps_table.iter() {
        let Some((key, item)) = steps_table.get_key_value(name) else {
            continue;
        };
        let label = format!("[{}]", step_path(name));
        let step = reader.table(key, item, &label);
        let executor = step.and_then(|s| reader.string(s, "executor", &label));
        let image = step.and_then(|s| reader.string(s, "image", &label));
        let needs = step.map_or_else(Vec::new, |s| reader.needs(s, &label));
        let executor = executor
            .or_else(|| image.map(|_| IMAGE_EXECUTOR.to_owned()))
            .or_else(|| default_executor.clone())
            .unwrap_or_else(|| DEFAULT_EXECUTOR.to_owned());
        drafts.push((name.to_owned(), executor, needs));
    }

    let names: Vec<&str> = drafts.iter().map(|(name, _, _)| name.as_str()).collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut steps = Vec::with_capacity(drafts.len());
    for (name, executor, needs) in &drafts {
        let mut resolved: Vec<usize> = Vec::new();
        for (need, span) in needs {
            match index.get(need.as_str()) {
                // Listing a step twice adds no second edge, as in hm.
                Some(i) if resolved.contains(i) => {}
                Some(&i) => resolved.push(i),
                None => {
                    // A step cannot need itself, so its own name is no suggestion.
                    let others: Vec<&str> = names.iter().copied().filter(|n| n != name).collect();
                    let hint = match closest(need, &others) {
                        Some(close) => format!("did you mean `{}`?", close.escape_debug()),
                        None => format!("steps in this file: {}", listed(&names)),
                    };
                    let message = format!(
                        "step `{}` needs unknown step `{}`",
                        name.escape_debug(),
                        need.escape_debug()
                    );
                    reader.report(span.clone(), message, Some(hint));
                }
            }
        }
        steps.push(Step {
            name: name.clone(),
            executor: executor.clone(),
            needs: resolved,
        });
    }

    if reader.problems.is_empty() {
        Ok(Graph { name, steps })
    } else {
        // Stable: problems at one place keep the order they were found in.
        reader.problems.sort_by_key(|p| p.at);
        Err(reader.problems)
    }
}

/// Walks one document, collecting problems and carrying on after each.
struct Reader<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn report(&mut self, span: Option<Range<usize>>, message: String, hint: Option<String>) {
        let at = span.map(|span| position(self.text, span.start));
        self.problems.push(Problem { at, message, hint });
    }

    /// `item` as a table (a `[header]` table, an inline table or a dotted-key table).
    fn table<'t>(&mut self, key: &Key, item: &'t Item, label: &str) -> Option<&'t dyn TableLike> {
        let table = item.as_table_like();
        if table.is_none() {
            self.report(
                item.span().or_else(|| key.span()),
                format!(
                    "{label} must be a table, found {}",
                    article(item.type_name())
                ),
                None,
            );
        }
        table
    }

    /// The non-empty string under `name` in `table`, `None` when it is absent or reported.
    fn string(&mut self, table: &dyn TableLike, name: &str, label: &str) -> Option<String> {
        let (key, item) = table.get_key_value(name)?;
        match item.as_str() {
            Some(text) if !text.is_empty() => Some(text.to_owned()),
            Some(_) => {
                self.report(
                    item.span().or_else(|| key.span()),
                    format!("`{name}` in {label} must not be empty"),
                    None,
                );
                None
            }
            None => {
                self.report(
                    item.span().or_else(|| key.span()),
                    format!(
                        "`{name}` in {label} must be a string, found {}",
                        article(item.type_name())
                    ),
                    None,
                );
                None
            }
        }
    }

    /// `needs = ["a", "b"]`: the names with where each is written.
    fn needs(&mut self, step: &dyn TableLike, label: &str) -> Vec<(String, Option<Range<usize>>)> {
        let Some((key, item)) = step.get_key_value("needs") else {
            return Vec::new();
        };
        let Some(array) = item.as_array() else {
            self.report(
                item.span().or_else(|| key.span()),
                format!(
                    "`needs` in {label} must be an array of step names, found {}",
                    article(item.type_name())
                ),
                Some("write `needs = [\"build\"]`".to_owned()),
            );
            return Vec::new();
        };
        let mut needs = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(name) => needs.push((name.to_owned(), value.span())),
                None => self.report(
                    value.span(),
                    format!(
                        "`needs` in {label} must list step names, found {}",
                        article(value.type_name())
                    ),
                    Some("write each step name in quotes: `needs = [\"build\"]`".to_owned()),
                ),
            }
        }
        needs
    }
}

/// 1-based line and column (counted in characters) of a byte offset; past the end clamps.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// `steps.NAME` as TOML would write it: `NAME` quoted unless it is a bare key.
fn step_path(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        format!("steps.{name}")
    } else {
        format!("steps.\"{}\"", name.escape_debug())
    }
}

/// "a string", "an integer", "an inline table".
fn article(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}

/// `` `a`, `b`, `c` `` for a hint; long lists are cut.
fn listed(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut text: Vec<String> = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{}`", n.escape_debug()))
        .collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    text.join(", ")
}

/// The candidate closest to `input` when it is a likely typo: at most a third of the input's
/// length in edits (at least one), as cargo and hm decide it.
fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let input: Vec<char> = input.to_lowercase().chars().collect();
    let max = (input.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for &candidate in candidates {
        let other: Vec<char> = candidate.to_lowercase().chars().collect();
        let distance = edit_distance(&input, &other);
        if distance <= max && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Optimal string alignment distance: Levenshtein plus swaps of two adjacent characters, so
/// `biuld` is one edit from `build`.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    // Three rolling rows: a swap looks two rows back.
    let mut before_prev: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before_prev[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before_prev, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    /// Parses `text` and describes the result: one line per step (`name [executor] <- needs`)
    /// or the rendered problems.
    fn check(text: &str, expected: Expect) {
        let actual = match parse(text) {
            Ok(graph) => {
                let mut out = format!("name: {}\n", graph.name.as_deref().unwrap_or("-"));
                for step in &graph.steps {
                    let needs: Vec<&str> = step
                        .needs
                        .iter()
                        .map(|&i| graph.steps[i].name.as_str())
                        .collect();
                    out.push_str(&format!(
                        "{} [{}] <- [{}]\n",
                        step.name,
                        step.executor,
                        needs.join(", ")
                    ));
                }
                out
            }
            Err(problems) => problems
                .iter()
                .map(|p| p.render("hm.toml") + "\n")
                .collect(),
        };
        expected.assert_eq(&actual);
    }

    #[test]
    fn a_diamond_keeps_file_order_and_needs_order() {
        check(
            r#"
[pipeline]
name = "ci"

[steps.build]
run = "make"

[steps.lint]
run = "make lint"
needs = ["build"]

[steps.test]
run = "make test"
needs = ["build"]

[steps.ship]
run = "make ship"
needs = ["test", "lint"]
"#,
            expect![[r#"
                name: ci
                build [shell] <- []
                lint [shell] <- [build]
                test [shell] <- [build]
                ship [shell] <- [test, lint]
            "#]],
        );
    }

    #[test]
    fn executors_follow_hms_defaulting_rules() {
        // Explicit wins; then `image` means docker; then [defaults]; then shell.
        check(
            r#"
[defaults]
executor = "podman"

[steps.explicit]
run = "x"
executor = "remote"
image = "alpine"

[steps.image]
run = "x"
image = "alpine"

[steps.defaulted]
run = "x"
"#,
            expect![[r#"
                name: -
                explicit [remote] <- []
                image [docker] <- []
                defaulted [podman] <- []
            "#]],
        );
        check(
            "[steps.plain]\nrun = \"x\"\n[steps.boxed]\nimage = \"alpine\"\n",
            expect![[r#"
                name: -
                plain [shell] <- []
                boxed [docker] <- []
            "#]],
        );
    }

    #[test]
    fn a_step_may_need_one_listed_after_it_and_duplicates_add_no_edge() {
        check(
            "[steps.b]\nneeds = [\"a\", \"a\"]\n[steps.a]\nrun = \"x\"\n",
            expect![[r#"
                name: -
                b [shell] <- [a]
                a [shell] <- []
            "#]],
        );
    }

    #[test]
    fn inline_and_dotted_tables_are_steps_too() {
        check(
            "steps = { a = { run = \"x\" }, b = { needs = [\"a\"], image = \"i\" } }\n",
            expect![[r#"
                name: -
                a [shell] <- []
                b [docker] <- [a]
            "#]],
        );
    }

    #[test]
    fn names_that_need_quoting_are_kept_verbatim() {
        check(
            r#"
[pipeline]
name = "say \"hi\" <now>"

[steps."a \"quoted\" step"]
run = "x"

[steps."x#y&<z>"]
needs = ["a \"quoted\" step"]
"#,
            expect![[r#"
                name: say "hi" <now>
                a "quoted" step [shell] <- []
                x#y&<z> [shell] <- [a "quoted" step]
            "#]],
        );
    }

    #[test]
    fn unknown_needs_are_all_reported_with_positions_and_hints() {
        check(
            r#"[steps.build]
run = "x"

[steps.test]
needs = ["biuld", "nothing-like-it"]

[steps."we\"ird"]
needs = ["tset"]
"#,
            expect![[r#"
                hm.toml:5:10: error: step `test` needs unknown step `biuld`
                  hint: did you mean `build`?
                hm.toml:5:19: error: step `test` needs unknown step `nothing-like-it`
                  hint: steps in this file: `build`, `test`, `we\"ird`
                hm.toml:8:10: error: step `we\"ird` needs unknown step `tset`
                  hint: did you mean `test`?
            "#]],
        );
    }

    #[test]
    fn toml_syntax_errors_say_where() {
        check(
            "[steps.a]\nrun = \"x\"\nneeds = [\"a\",\n",
            expect![[r#"
                hm.toml:3:14: error: invalid TOML: unclosed array, expected `]`
            "#]],
        );
        check(
            "[steps.a]\nrun = = 1\n",
            expect![[r#"
                hm.toml:2:7: error: invalid TOML: extra `=`, expected nothing
            "#]],
        );
    }

    #[test]
    fn wrong_shapes_are_reported_together() {
        check(
            r#"pipeline = 3
[defaults]
executor = ""
[steps.a]
executor = 7
image = true
needs = "b"
[steps.b]
needs = [1, "a"]
"#,
            expect![[r#"
                hm.toml:1:12: error: [pipeline] must be a table, found an integer
                hm.toml:3:12: error: `executor` in [defaults] must not be empty
                hm.toml:5:12: error: `executor` in [steps.a] must be a string, found an integer
                hm.toml:6:9: error: `image` in [steps.a] must be a string, found a boolean
                hm.toml:7:9: error: `needs` in [steps.a] must be an array of step names, found a string
                  hint: write `needs = ["build"]`
                hm.toml:9:10: error: `needs` in [steps.b] must list step names, found an integer
                  hint: write each step name in quotes: `needs = ["build"]`
            "#]],
        );
        check(
            "steps = 1\n",
            expect![[r#"
                hm.toml:1:9: error: [steps] must be a table, found an integer
            "#]],
        );
        check(
            "[steps.a]\nrun = \"x\"\n[steps]\nb = 2\n",
            expect![[r#"
                hm.toml:4:5: error: [steps.b] must be a table, found an integer
            "#]],
        );
    }

    #[test]
    fn a_pipeline_without_steps_is_refused() {
        check(
            "[pipeline]\nname = \"x\"\n",
            expect![[r#"
                hm.toml: error: the pipeline has no steps
                  hint: add one: `[steps.build]` with `run = "..."`
            "#]],
        );
        check(
            "[steps]\n",
            expect![[r#"
                hm.toml:1:2: error: the pipeline has no steps
                  hint: add one: `[steps.build]` with `run = "..."`
            "#]],
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        check(
            "[steps.a]\nneeds = [\"ç\", \"zz\"]\n",
            expect![[r#"
                hm.toml:2:10: error: step `a` needs unknown step `ç`
                  hint: steps in this file: `a`
                hm.toml:2:15: error: step `a` needs unknown step `zz`
                  hint: steps in this file: `a`
            "#]],
        );
    }

    #[test]
    fn cycles_are_found_in_need_order() {
        let cycle = |text: &str| {
            parse(text)
                .expect("valid")
                .cycle()
                .map(|names| names.join(" -> "))
        };
        assert_eq!(
            cycle(
                "[steps.a]\nneeds = [\"b\"]\n[steps.b]\nneeds = [\"c\"]\n[steps.c]\nneeds = [\"a\"]\n"
            ),
            Some("a -> b -> c -> a".to_owned())
        );
        assert_eq!(
            cycle("[steps.a]\nneeds = [\"a\"]\n"),
            Some("a -> a".to_owned())
        );
        assert_eq!(
            cycle("[steps.a]\n[steps.b]\nneeds = [\"a\"]\n[steps.c]\nneeds = [\"a\", \"b\"]\n"),
            None
        );
    }
}
