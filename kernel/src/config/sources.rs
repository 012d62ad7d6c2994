//! The files a pipeline is made of: the main `hm.toml` and, through `include = [...]` at the
//! top of a file, the files it names (relative to the file that names them), recursively.
//! They are found and read before anything is checked, so that every file's text is there
//! for positions in messages.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml_edit::Document;

/// An included file.
pub(super) struct Included {
    /// How messages name it: the including file's name joined with the include path.
    pub(super) display: PathBuf,
    pub(super) text: String,
}

/// A problem found while following `include`s: in which file (0 is the main one), where (a
/// local span) and what.
pub(super) struct Problem {
    pub(super) file: usize,
    pub(super) span: Option<Range<usize>>,
    pub(super) message: String,
    pub(super) hint: Option<String>,
}

/// The files of a pipeline, numbered as the checker numbers them: 0 is the main file, then the
/// included ones in the order they were found.
pub(super) struct Sources {
    /// Files 1.. (the main file's text is the caller's).
    pub(super) included: Vec<Included>,
    /// For each file, the files it includes, in order.
    pub(super) children: Vec<Vec<usize>>,
    pub(super) problems: Vec<Problem>,
}

impl Sources {
    /// Every file of the pipeline whose main file is `text`, shown as `display`, at
    /// `absolute`.
    pub(super) fn collect(text: &str, display: &Path, absolute: &Path) -> Sources {
        let mut sources = Sources {
            included: Vec::new(),
            children: vec![Vec::new()],
            problems: Vec::new(),
        };
        let mut paths = vec![normal(absolute)];
        let mut displays = vec![display.to_path_buf()];
        // Depth first, with the chain of files being read, for cycles.
        let mut pending: Vec<(usize, Vec<usize>)> = vec![(0, vec![0])];
        while let Some((file, chain)) = pending.pop() {
            let text = if file == 0 {
                text
            } else {
                sources.included[file - 1].text.as_str()
            };
            // A file that is not TOML is reported when it is checked.
            let Ok(document) = Document::parse(text.to_owned()) else {
                continue;
            };
            let mut found = Vec::new();
            for (name, span) in sources.includes(file, &document) {
                let base = paths[file].parent().unwrap_or(Path::new("/")).to_path_buf();
                let path = normal(&base.join(&name));
                let shown = displays[file]
                    .parent()
                    .map_or_else(|| PathBuf::from(&name), |p| p.join(&name));
                if let Some(known) = paths.iter().position(|p| *p == path) {
                    let (message, hint) = if chain.contains(&known) {
                        (
                            format!("including `{name}` here makes a cycle: it includes this file"),
                            "remove one of the two `include` entries",
                        )
                    } else {
                        (
                            format!("`{name}` is included twice"),
                            "include each file once; its steps and templates are shared",
                        )
                    };
                    sources.problem(file, span, message, Some(hint.to_owned()));
                    continue;
                }
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        sources.included.push(Included {
                            display: shown.clone(),
                            text,
                        });
                        paths.push(path);
                        displays.push(shown);
                        sources.children.push(Vec::new());
                        let n = paths.len() - 1;
                        sources.children[file].push(n);
                        found.push(n);
                    }
                    Err(e) => sources.problem(
                        file,
                        span,
                        format!(
                            "cannot read included file `{name}` ({}): {e}",
                            path.display()
                        ),
                        Some("include paths are relative to the file that names them".to_owned()),
                    ),
                }
            }
            // Reversed onto the stack, so the first include is read first.
            for &n in found.iter().rev() {
                let mut chain = chain.clone();
                chain.push(n);
                pending.push((n, chain));
            }
        }
        sources
    }

    /// The paths `include = [...]` of file `file` names, each with its local span; problems
    /// with its shape are recorded.
    fn includes(
        &mut self,
        file: usize,
        document: &Document<String>,
    ) -> Vec<(String, Option<Range<usize>>)> {
        let Some((key, item)) = document.as_table().get_key_value("include") else {
            return Vec::new();
        };
        let Some(array) = item.as_array() else {
            let hint = match item.as_str() {
                Some(path) => format!("write `include = [\"{path}\"]`"),
                None => "write `include = [\"ci/common.toml\"]`".to_owned(),
            };
            self.problem(
                file,
                item.span().or_else(|| key.span()),
                "`include` must be an array of file paths".to_owned(),
                Some(hint),
            );
            return Vec::new();
        };
        let mut paths = Vec::new();
        for element in array.iter() {
            match element.as_str() {
                Some(path) if !path.trim().is_empty() && !Path::new(path).has_root() => {
                    paths.push((path.to_owned(), element.span()));
                }
                Some(path) => self.problem(
                    file,
                    element.span(),
                    format!("`include` must name files by relative paths, found `{path}`"),
                    Some("include paths are relative to the file that names them".to_owned()),
                ),
                None => self.problem(
                    file,
                    element.span(),
                    "`include` must list file paths as strings".to_owned(),
                    None,
                ),
            }
        }
        paths
    }

    fn problem(
        &mut self,
        file: usize,
        span: Option<Range<usize>>,
        message: String,
        hint: Option<String>,
    ) {
        self.problems.push(Problem {
            file,
            span,
            message,
            hint,
        });
    }

    /// Every file in the order their steps come: a file's includes (and theirs) before the
    /// file itself, as if each `include` stood where the file begins.
    pub(super) fn order(&self) -> Vec<usize> {
        fn visit(sources: &Sources, file: usize, out: &mut Vec<usize>) {
            for &child in &sources.children[file] {
                visit(sources, child, out);
            }
            out.push(file);
        }
        let mut out = Vec::new();
        visit(self, 0, &mut out);
        out
    }
}

/// `path` without `.` and with `..` applied, so one file has one name.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
