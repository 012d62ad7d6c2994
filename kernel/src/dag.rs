//! The step graph: which steps a run selects, in what levels they can run, who depends on
//! whom, and (for the parser) where the cycles are. Edges point from a step to what it needs.

use std::collections::VecDeque;
use std::fmt;

use crate::config::Pipeline;
use crate::suggest::did_you_mean;

/// `hm run STEP...` named steps that the pipeline does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    #[error("{}; steps in {pipeline}: {}", UnknownList(.unknown), known.join(", "))]
    UnknownSteps {
        /// Every unknown name, in the order given, with the closest known name if any.
        unknown: Vec<UnknownStep>,
        pipeline: String,
        /// All step names, in file order.
        known: Vec<String>,
    },
    /// `NAME[key=value,...]` names a matrix step, but no instance of it has those values.
    #[error("no instance of `{step}` matches `{selector}`: {reason}; its instances: {}", instances.join(", "))]
    NoInstance {
        selector: String,
        step: String,
        reason: String,
        instances: Vec<String>,
    },
}

/// One name that matched no step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStep {
    pub name: String,
    pub suggestion: Option<String>,
}

/// "unknown step `biuld` (did you mean `build`?)" for one or several names.
struct UnknownList<'a>(&'a [UnknownStep]);

impl fmt::Display for UnknownList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.len() == 1 {
            "unknown step "
        } else {
            "unknown steps "
        })?;
        for (i, step) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{}`", step.name)?;
            if let Some(suggestion) = &step.suggestion {
                write!(f, " (did you mean `{suggestion}`?)")?;
            }
        }
        Ok(())
    }
}

/// The steps named and everything they need, transitively, in file order; every step when
/// `names` is empty. All unknown names are reported together.
pub fn select(p: &Pipeline, names: &[String]) -> Result<Vec<usize>, SelectError> {
    if names.is_empty() {
        return Ok((0..p.steps.len()).collect());
    }
    let mut bases: Vec<&str> = Vec::new();
    for step in &p.steps {
        if !bases.contains(&step.base.as_str()) {
            bases.push(&step.base);
        }
    }
    let mut selected = vec![false; p.steps.len()];
    let mut pending = Vec::new();
    let mut unknown = Vec::new();
    let mut no_instance = None;
    for name in names {
        match matching(p, name) {
            Ok(found) => pending.extend(found),
            Err(None) => unknown.push(UnknownStep {
                name: name.clone(),
                suggestion: did_you_mean(name, bases.iter().copied()).map(str::to_owned),
            }),
            Err(Some(error)) => no_instance = no_instance.or(Some(error)),
        }
    }
    if !unknown.is_empty() {
        return Err(SelectError::UnknownSteps {
            unknown,
            pipeline: p.name.clone(),
            known: bases.iter().map(|&b| b.to_owned()).collect(),
        });
    }
    if let Some(error) = no_instance {
        return Err(error);
    }
    // An explicit stack rather than recursion: a long `needs` chain is user-controlled.
    while let Some(i) = pending.pop() {
        if !std::mem::replace(&mut selected[i], true) {
            pending.extend(p.steps[i].needs.iter().copied());
        }
    }
    Ok(selected
        .iter()
        .enumerate()
        .filter(|&(_, &on)| on)
        .map(|(i, _)| i)
        .collect())
}

/// The steps `names` match themselves (not what they need). Names that match nothing are
/// left out: [`select`] reports them.
pub fn named(p: &Pipeline, names: &[String]) -> Vec<usize> {
    let mut named: Vec<usize> = names
        .iter()
        .filter_map(|name| matching(p, name).ok())
        .flatten()
        .collect();
    named.sort_unstable();
    named.dedup();
    named
}

/// The steps `name` selects: the step of that name, every instance of a matrix step of that
/// name, or, for `NAME[key=value,...]`, the instances with those values. `Err(None)` when no
/// step has that name.
fn matching(p: &Pipeline, name: &str) -> Result<Vec<usize>, Option<SelectError>> {
    let by_name = |wanted: &str| -> Vec<usize> {
        (0..p.steps.len())
            .filter(|&i| p.steps[i].name == wanted || p.steps[i].base == wanted)
            .collect()
    };
    let exact = by_name(name);
    if !exact.is_empty() {
        return Ok(exact);
    }
    let Some((base, filter)) = name.strip_suffix(']').and_then(|rest| rest.split_once('[')) else {
        return Err(None);
    };
    let instances: Vec<usize> = (0..p.steps.len())
        .filter(|&i| p.steps[i].base == base)
        .collect();
    if instances.is_empty() {
        return Err(None);
    }
    let fail = |reason: String| {
        Err(Some(SelectError::NoInstance {
            selector: name.to_owned(),
            step: base.to_owned(),
            reason,
            instances: instances.iter().map(|&i| p.steps[i].name.clone()).collect(),
        }))
    };
    let mut pairs = Vec::new();
    for pair in filter.split(',') {
        let Some((key, value)) = pair.split_once('=') else {
            return fail(format!("`{pair}` is not `key=value`"));
        };
        pairs.push((key.trim(), value.trim()));
    }
    let keys: Vec<&str> = instances
        .iter()
        .filter_map(|&i| p.steps[i].matrix.as_ref())
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    if keys.is_empty() {
        return fail("it has no matrix".to_owned());
    }
    if let Some((key, _)) = pairs.iter().find(|(key, _)| !keys.contains(key)) {
        return fail(format!("`{key}` is not one of its matrix keys"));
    }
    let found: Vec<usize> = instances
        .iter()
        .copied()
        .filter(|&i| {
            let values = p.steps[i].matrix.as_deref().unwrap_or_default();
            pairs
                .iter()
                .all(|(key, value)| values.iter().any(|(k, v)| k == key && v == value))
        })
        .collect();
    if found.is_empty() {
        return fail("none has those values".to_owned());
    }
    Ok(found)
}

/// Groups `selected` by depth: level 0 needs nothing, level n needs something at level n-1
/// and nothing deeper. Each level is in file order. Needs outside `selected` are ignored.
/// Steps on a cycle cannot be placed and are left out; a parsed pipeline has none.
pub fn levels(p: &Pipeline, selected: &[usize]) -> Vec<Vec<usize>> {
    let mut in_selection = vec![false; p.steps.len()];
    for &i in selected {
        in_selection[i] = true;
    }
    let dependents = dependents(p);
    // Kahn's algorithm: a step is placed once everything it needs is placed.
    let mut waiting_on: Vec<usize> = p
        .steps
        .iter()
        .map(|step| step.needs.iter().filter(|&&n| in_selection[n]).count())
        .collect();
    let mut depth = vec![0usize; p.steps.len()];
    let mut ready: VecDeque<usize> = (0..p.steps.len())
        .filter(|&i| in_selection[i] && waiting_on[i] == 0)
        .collect();
    let mut levels: Vec<Vec<usize>> = Vec::new();
    while let Some(i) = ready.pop_front() {
        if levels.len() <= depth[i] {
            levels.resize_with(depth[i] + 1, Vec::new);
        }
        levels[depth[i]].push(i);
        for &d in &dependents[i] {
            if !in_selection[d] {
                continue;
            }
            depth[d] = depth[d].max(depth[i] + 1);
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    for level in &mut levels {
        level.sort_unstable();
    }
    levels
}

/// Reverse edges: for each step, the steps that need it, in file order.
pub fn dependents(p: &Pipeline) -> Vec<Vec<usize>> {
    let mut dependents = vec![Vec::new(); p.steps.len()];
    for (i, step) in p.steps.iter().enumerate() {
        for &need in &step.needs {
            dependents[need].push(i);
        }
    }
    dependents
}

/// Every dependency cycle once, each starting and ending at its earliest node in file order:
/// `[a, b, c, a]`. Self-edges are the caller's to report and are ignored here.
///
/// Each strongly connected component with more than one node holds at least one cycle; the
/// shortest one through its earliest node is reported, which names every step a user must
/// look at without listing the whole component's edges.
pub(crate) fn cycles(needs: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut cycles: Vec<Vec<usize>> = strongly_connected(needs)
        .into_iter()
        .filter(|component| component.len() > 1)
        .filter_map(|component| shortest_cycle(needs, &component))
        .collect();
    cycles.sort_by_key(|cycle| cycle[0]);
    cycles
}

/// The shortest path from the component's first node back to itself (breadth first).
fn shortest_cycle(needs: &[Vec<usize>], component: &[usize]) -> Option<Vec<usize>> {
    let start = *component.iter().min()?;
    let mut in_component = vec![false; needs.len()];
    for &i in component {
        in_component[i] = true;
    }
    let mut parent: Vec<Option<usize>> = vec![None; needs.len()];
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in &needs[node] {
            if next == start {
                // Walk back from the last node to the start, then read it forwards.
                let mut back = Vec::new();
                let mut at = node;
                while at != start {
                    back.push(at);
                    at = parent[at]?;
                }
                let mut path = vec![start];
                path.extend(back.into_iter().rev());
                path.push(start);
                return Some(path);
            }
            if in_component[next] && next != start && parent[next].is_none() {
                parent[next] = Some(node);
                queue.push_back(next);
            }
        }
    }
    None
}

/// Tarjan's algorithm, iterative so that a long chain of steps cannot overflow the stack.
fn strongly_connected(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNVISITED: usize = usize::MAX;
    let n = graph.len();
    let mut order = vec![UNVISITED; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next_order = 0;
    let mut components = Vec::new();
    for root in 0..n {
        if order[root] != UNVISITED {
            continue;
        }
        // Frames of (node, index of the next edge to follow).
        let mut frames = vec![(root, 0usize)];
        order[root] = next_order;
        low[root] = next_order;
        next_order += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(frame) = frames.last_mut() {
            let v = frame.0;
            if let Some(&w) = graph[v].get(frame.1) {
                frame.1 += 1;
                if order[w] == UNVISITED {
                    order[w] = next_order;
                    low[w] = next_order;
                    next_order += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    frames.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(order[w]);
                }
                continue;
            }
            frames.pop();
            if let Some(&(u, _)) = frames.last() {
                low[u] = low[u].min(low[v]);
            }
            if low[v] == order[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    /// A pipeline from `name: need need ...` lines, in that file order.
    fn pipeline(spec: &str) -> Pipeline {
        let mut text = String::new();
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, needs) = line.split_once(':').unwrap_or((line, ""));
            let needs: Vec<String> = needs.split_whitespace().map(|n| format!("{n:?}")).collect();
            text.push_str(&format!(
                "[steps.{name}]\nrun = \"true\"\nneeds = [{}]\n",
                needs.join(", ")
            ));
        }
        let tmp = tempfile::tempdir().expect("temporary directory");
        parse_str(&text, &tmp.path().join("hm.toml")).expect("test pipeline is valid")
    }

    fn names(p: &Pipeline, indices: &[usize]) -> String {
        indices
            .iter()
            .map(|&i| p.steps[i].name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    const DIAMOND: &str = "
        lint:
        fmt:
        build: fmt
        unit: build
        docs: build
        release: unit docs lint
        other:
    ";

    #[test]
    fn select_takes_named_steps_and_their_needs_in_file_order() {
        let p = pipeline(DIAMOND);
        let check = |wanted: &[&str], expected: &str| {
            let wanted: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
            let selected = select(&p, &wanted).expect("known names");
            assert_eq!(names(&p, &selected), expected, "select {wanted:?}");
        };
        check(&[], "lint fmt build unit docs release other");
        check(&["unit"], "fmt build unit");
        check(&["docs", "fmt", "docs"], "fmt build docs");
        check(&["release"], "lint fmt build unit docs release");
        check(&["other", "lint"], "lint other");
    }

    #[test]
    fn select_reports_every_unknown_name_with_suggestions() {
        let p = pipeline(DIAMOND);
        let err = |wanted: &[&str]| {
            let wanted: Vec<String> = wanted.iter().map(|s| (*s).to_owned()).collect();
            select(&p, &wanted).expect_err("unknown names").to_string()
        };
        let known = "steps in tmp: lint, fmt, build, unit, docs, release, other";
        let known = known.replace("tmp", &p.name);
        assert_eq!(
            err(&["biuld"]),
            format!("unknown step `biuld` (did you mean `build`?); {known}")
        );
        assert_eq!(
            err(&["unit", "zzz", "relase"]),
            format!("unknown steps `zzz`, `relase` (did you mean `release`?); {known}")
        );
    }

    #[test]
    fn levels_group_steps_by_depth() {
        let p = pipeline(DIAMOND);
        let render = |levels: Vec<Vec<usize>>| {
            levels
                .iter()
                .map(|level| names(&p, level))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let all: Vec<usize> = (0..p.steps.len()).collect();
        assert_eq!(
            render(levels(&p, &all)),
            "lint fmt other | build | unit docs | release"
        );
        // The depth is the longest path: `release` waits for `unit` even though `lint` is at 0.
        let selected = select(&p, &["release".to_owned()]).expect("known");
        assert_eq!(
            render(levels(&p, &selected)),
            "lint fmt | build | unit docs | release"
        );
        // Needs outside the selection do not count.
        assert_eq!(render(levels(&p, &[2, 3])), "build | unit");
        assert_eq!(render(levels(&p, &[])), "");
    }

    #[test]
    fn dependents_are_reverse_edges_in_file_order() {
        let p = pipeline(DIAMOND);
        let rendered: Vec<String> = dependents(&p)
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{}<-[{}]", p.steps[i].name, names(&p, d)))
            .collect();
        assert_eq!(
            rendered.join(" "),
            "lint<-[release] fmt<-[build] build<-[unit docs] unit<-[release] docs<-[release] \
             release<-[] other<-[]"
        );
    }

    #[test]
    fn cycles_are_found_once_each_from_their_earliest_node() {
        let check = |graph: &[&[usize]], expected: &[&[usize]]| {
            let graph: Vec<Vec<usize>> = graph.iter().map(|edges| edges.to_vec()).collect();
            let expected: Vec<Vec<usize>> = expected.iter().map(|c| c.to_vec()).collect();
            assert_eq!(cycles(&graph), expected, "graph {graph:?}");
        };
        check(&[], &[]);
        check(&[&[1], &[2], &[]], &[]);
        check(&[&[0]], &[]);
        check(&[&[1], &[0]], &[&[0, 1, 0]]);
        check(&[&[], &[3], &[1], &[2]], &[&[1, 3, 2, 1]]);
        // One component with several cycles: the shortest through node 0 is named.
        check(&[&[1], &[2, 0], &[0]], &[&[0, 1, 0]]);
        // Two separate cycles, found in file order of their first node.
        check(&[&[2], &[3], &[0], &[1]], &[&[0, 2, 0], &[1, 3, 1]]);
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        const N: usize = 200_000;
        // 0 needs 1 needs 2 ... and the last needs 0: one cycle through every node.
        let graph: Vec<Vec<usize>> = (0..N).map(|i| vec![(i + 1) % N]).collect();
        let found = cycles(&graph);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), N + 1);
        assert_eq!((found[0][0], found[0][1], found[0][N]), (0, 1, 0));
    }
}
