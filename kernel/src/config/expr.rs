//! Expressions in `hm.toml` strings: `${{ matrix.NAME }}`, `${{ env.NAME }}` and
//! `${{ steps.STEP.outputs.KEY }}`. `$${{` is a literal `${{`. Nothing else is evaluated: no
//! functions, no operators.
//!
//! A string keeps its expressions until the step starts ([`render`]), when everything they
//! refer to is known, so a value is never read back as an expression (a matrix value holding
//! `${{` stays text).

use std::ops::Range;

use crate::suggest::did_you_mean;

const OPEN: &str = "${{";
const CLOSE: &str = "}}";
const CONTEXTS: &[&str] = &["matrix", "env", "steps"];

/// What an expression refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// `matrix.NAME`: the instance's value of a matrix key.
    Matrix(String),
    /// `env.NAME`: a variable of the step's environment.
    Env(String),
    /// `steps.STEP.outputs.KEY`: an output of a step this one needs.
    Output { step: String, key: String },
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Matrix(name) => write!(f, "matrix.{name}"),
            Ref::Env(name) => write!(f, "env.{name}"),
            Ref::Output { step, key } => write!(f, "steps.{step}.outputs.{key}"),
        }
    }
}

/// One expression of a string, and where it is in it (bytes, `${{` to `}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub reference: Ref,
    pub range: Range<usize>,
}

/// A string that is not a valid template: what is wrong and where in the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub range: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

enum Piece<'a> {
    Text(&'a str),
    /// `$${{`: a literal `${{`.
    Escaped,
    Expression(Expression),
}

/// Every expression in `text`, or the first problem.
pub fn expressions(text: &str) -> Result<Vec<Expression>, ExprError> {
    Ok(pieces(text)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Expression(expression) => Some(expression),
            _ => None,
        })
        .collect())
}

/// Whether `text` has anything to render (an expression or an escape).
pub fn is_template(text: &str) -> bool {
    text.contains(OPEN)
}

/// `text` with each expression replaced by `value(reference)` and each `$${{` by `${{`. A
/// string that does not parse (it was checked when the file was read) is returned as it is.
pub fn render(text: &str, mut value: impl FnMut(&Ref) -> String) -> String {
    if !is_template(text) {
        return text.to_owned();
    }
    let Ok(pieces) = pieces(text) else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Escaped => out.push_str(OPEN),
            Piece::Expression(e) => out.push_str(&value(&e.reference)),
        }
    }
    out
}

fn pieces(text: &str) -> Result<Vec<Piece<'_>>, ExprError> {
    let mut pieces = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find(OPEN) {
        let start = rest + found;
        if start > 0 && text.as_bytes()[start - 1] == b'$' {
            pieces.push(Piece::Text(&text[rest..start - 1]));
            pieces.push(Piece::Escaped);
            rest = start + OPEN.len();
            continue;
        }
        pieces.push(Piece::Text(&text[rest..start]));
        let inner_start = start + OPEN.len();
        let Some(close) = text[inner_start..].find(CLOSE) else {
            return Err(ExprError {
                range: start..text.len(),
                message: "`${{` is not closed with `}}`".to_owned(),
                hint: Some("write `${{ matrix.NAME }}`, or `$${{` for a literal `${{`".to_owned()),
            });
        };
        let end = inner_start + close + CLOSE.len();
        let inner = &text[inner_start..inner_start + close];
        let reference = reference(inner.trim()).map_err(|(message, hint)| ExprError {
            range: start..end,
            message,
            hint,
        })?;
        pieces.push(Piece::Expression(Expression {
            reference,
            range: start..end,
        }));
        rest = end;
    }
    pieces.push(Piece::Text(&text[rest..]));
    Ok(pieces)
}

type Problem = (String, Option<String>);

fn reference(inner: &str) -> Result<Ref, Problem> {
    const KNOWN: &str = "hm evaluates `matrix.NAME`, `env.NAME` and `steps.STEP.outputs.KEY`, \
                         nothing else; write `$${{` for a literal `${{`";
    if inner.is_empty() {
        return Err((
            "empty expression `${{ }}`".to_owned(),
            Some(KNOWN.to_owned()),
        ));
    }
    let unknown = || {
        let context = inner.split('.').next().unwrap_or(inner);
        let hint = match did_you_mean(context, CONTEXTS.iter().copied()) {
            Some(known) => format!("did you mean `{known}.`...?"),
            None => KNOWN.to_owned(),
        };
        (format!("unknown expression `{inner}`"), Some(hint))
    };
    let Some((context, path)) = inner.split_once('.') else {
        return Err(unknown());
    };
    match context {
        "matrix" if is_identifier(path, true) => Ok(Ref::Matrix(path.to_owned())),
        "env" if is_identifier(path, false) => Ok(Ref::Env(path.to_owned())),
        "steps" => {
            // Step names may hold dots: the key and `outputs` are taken from the end.
            let shape = || {
                (
                    format!("`{inner}` is not a step output"),
                    Some("write `steps.STEP.outputs.KEY`".to_owned()),
                )
            };
            let (rest, key) = path.rsplit_once('.').ok_or_else(shape)?;
            let (step, outputs) = rest.rsplit_once('.').ok_or_else(shape)?;
            if outputs != "outputs" || step.is_empty() || !is_identifier(key, true) {
                return Err(shape());
            }
            Ok(Ref::Output {
                step: step.to_owned(),
                key: key.to_owned(),
            })
        }
        "matrix" | "env" => Err((
            format!("`{inner}` is not a valid name after `{context}.`"),
            Some(
                if context == "env" {
                    "variable names use ASCII letters, digits and `_`, and do not start with a digit"
                } else {
                    "matrix keys use ASCII letters, digits, `_` and `-`, and do not start with a digit"
                }
                .to_owned(),
            ),
        )),
        _ => Err(unknown()),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, with `-` after the first character when `dash`.
pub(crate) fn is_identifier(text: &str, dash: bool) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (dash && c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(text: &str) -> Vec<String> {
        expressions(text)
            .map(|e| e.into_iter().map(|e| e.reference.to_string()).collect())
            .unwrap_or_else(|e| vec![format!("error at {:?}: {}", e.range, e.message)])
    }

    #[test]
    fn expressions_are_found_with_their_positions() {
        let text = "cargo +${{ matrix.rust }} test ${{env.FLAGS}} ${{ steps.gen.v1.outputs.dir }}";
        let found = expressions(text).expect("valid");
        let sources: Vec<&str> = found.iter().map(|e| &text[e.range.clone()]).collect();
        assert_eq!(
            sources,
            [
                "${{ matrix.rust }}",
                "${{env.FLAGS}}",
                "${{ steps.gen.v1.outputs.dir }}"
            ]
        );
        assert_eq!(
            found[2].reference,
            Ref::Output {
                step: "gen.v1".into(),
                key: "dir".into()
            }
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let cases = [
            (
                "a ${{ matrix.rust",
                "error at 2..17: `${{` is not closed with `}}`",
            ),
            ("${{ }}", "error at 0..6: empty expression `${{ }}`"),
            (
                "x${{ matix.rust }}",
                "error at 1..18: unknown expression `matix.rust`",
            ),
            (
                "${{ github.sha }}",
                "error at 0..17: unknown expression `github.sha`",
            ),
            (
                "${{ toJSON(matrix) }}",
                "error at 0..21: unknown expression `toJSON(matrix)`",
            ),
            (
                "${{ env.A-B }}",
                "error at 0..14: `env.A-B` is not a valid name after `env.`",
            ),
            (
                "${{ matrix.1x }}",
                "error at 0..16: `matrix.1x` is not a valid name after `matrix.`",
            ),
            (
                "${{ steps.a.out.k }}",
                "error at 0..20: `steps.a.out.k` is not a step output",
            ),
            (
                "${{ steps.outputs.k }}",
                "error at 0..22: `steps.outputs.k` is not a step output",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(refs(text), [want], "{text}");
        }
    }

    #[test]
    fn rendering_replaces_expressions_and_unescapes_and_never_reads_a_value_again() {
        let value = |r: &Ref| match r {
            Ref::Matrix(name) if name == "v" => "$${{ env.X }}$".to_owned(),
            Ref::Env(name) => format!("<{name}>"),
            other => format!("[{other}]"),
        };
        let cases = [
            (
                "plain text, $HOME and ${VAR}",
                "plain text, $HOME and ${VAR}",
            ),
            (
                "${{ env.A }}-${{ matrix.v }}${{ env.B }}",
                "<A>-$${{ env.X }}$<B>",
            ),
            (
                "$${{ env.A }} and $$${{ env.A }}",
                "${{ env.A }} and $${{ env.A }}",
            ),
            ("${{ steps.s.outputs.k }}", "[steps.s.outputs.k]"),
        ];
        for (text, want) in cases {
            assert_eq!(render(text, value), want, "{text}");
        }
    }
}
