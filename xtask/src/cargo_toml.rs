//! `Cargo.toml` files read and edited as text: the few values xtask needs (workspace members,
//! the workspace version, a package's name) and the insertion of one member into a
//! `members`-style array that leaves every other byte of the file as it was.
//!
//! A hand-written scanner rather than `toml_edit`: xtask has no dependencies (it must build
//! when the rest of the workspace does not), and it only ever needs string values and arrays of
//! strings at the top of a table. The scanner still knows all of TOML's string and comment
//! forms, so a `]` or a `#` inside a string or comment never confuses it.

use std::ops::Range;

/// A value found in a table: only the forms xtask reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Array(Array),
    /// Anything else (a number, an inline table, ...), by its span.
    Other(Range<usize>),
}

/// An array value: where its brackets are and the string elements it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    /// The byte offset of `[`.
    pub open: usize,
    /// The byte offset of the matching `]`.
    pub close: usize,
    pub elements: Vec<Element>,
}

/// One string element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub value: String,
    /// The element's span in the text, quotes included.
    pub span: Range<usize>,
    /// The offset just past the comma that follows the element, if one does.
    pub comma_end: Option<usize>,
}

impl Array {
    pub fn strings(&self) -> Vec<String> {
        self.elements.iter().map(|e| e.value.clone()).collect()
    }
}

/// The value of `key` in table `[table]` (e.g. `workspace`, `workspace.package`, `package`).
pub fn find(text: &str, table: &str, key: &str) -> Result<Option<Value>, String> {
    let tokens = lex(text)?;
    let mut current = String::new();
    let mut i = 0;
    let mut line_start = true;
    while i < tokens.len() {
        let token = &tokens[i];
        match &token.kind {
            Kind::Newline | Kind::Comment => {
                line_start = matches!(token.kind, Kind::Newline) || line_start;
                i += 1;
                continue;
            }
            Kind::Open if line_start => {
                // `[table]` or `[[array.of.tables]]`.
                let mut j = i + 1;
                if matches!(tokens.get(j).map(|t| &t.kind), Some(Kind::Open)) {
                    j += 1;
                }
                current = match tokens.get(j).map(|t| &t.kind) {
                    Some(Kind::Word(word)) => word.clone(),
                    Some(Kind::Str(quoted)) => quoted.clone(),
                    _ => String::new(),
                };
                i = skip_line(&tokens, i);
            }
            Kind::Word(word) | Kind::Str(word) if line_start => {
                let is_key = word == key
                    && current == table
                    && matches!(tokens.get(i + 1).map(|t| &t.kind), Some(Kind::Equals));
                if is_key {
                    return value_at(text, &tokens, i + 2).map(Some);
                }
                i = skip_value_line(&tokens, i)?;
            }
            _ => i = skip_value_line(&tokens, i)?,
        }
        line_start = true;
    }
    Ok(None)
}

/// `text` with `member` added to the array `[workspace] key` (`members`, `default-members`):
/// after the last element that starts with the same directory (`plugins/...`), or else at the
/// end, in the layout the array already has (one line, or one element per line). `Ok(None)`
/// when the file has no such key.
pub fn add_to_array(text: &str, key: &str, member: &str) -> Result<Option<String>, String> {
    let array = match find(text, "workspace", key)? {
        None => return Ok(None),
        Some(Value::Array(array)) => array,
        Some(_) => return Err(format!("`{key}` in [workspace] is not an array")),
    };
    let literal = format!("{member:?}");
    let mut out = text.to_owned();
    let Some(last) = array.elements.len().checked_sub(1) else {
        out.insert_str(array.open + 1, &literal);
        return Ok(Some(out));
    };
    let directory = member.rsplit_once('/').map(|(dir, _)| format!("{dir}/"));
    let anchor = directory
        .and_then(|dir| {
            array
                .elements
                .iter()
                .rposition(|e| e.value.starts_with(&dir))
        })
        .unwrap_or(last);
    let element = &array.elements[anchor];
    let one_line = !text[array.open..array.close].contains('\n');
    // The end of the anchor's line, if the array goes on past it (else the anchor shares its
    // line with `]` and the new element goes on that line too).
    let after = element.comma_end.unwrap_or(element.span.end);
    let line_end = text[after..array.close].find('\n').map(|n| after + n);
    match line_end {
        Some(eol) if !one_line => {
            let indent = indent_of(text, element.span.start);
            if element.comma_end.is_some() {
                out.insert_str(eol, &format!("\n{indent}{literal},"));
            } else {
                // The last element without a trailing comma: it gets one, the new one does not.
                out.insert_str(eol, &format!("\n{indent}{literal}"));
                out.insert(element.span.end, ',');
            }
        }
        _ => out.insert_str(element.span.end, &format!(", {literal}")),
    }
    Ok(Some(out))
}

/// The whitespace that starts the line holding `offset`.
fn indent_of(text: &str, offset: usize) -> &str {
    let start = text[..offset].rfind('\n').map_or(0, |n| n + 1);
    let line = &text[start..offset];
    let width = line.len() - line.trim_start().len();
    &line[..width]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    OpenBrace,
    CloseBrace,
    Comma,
    Equals,
    Newline,
    Comment,
    /// A bare key or a bare value (`workspace.package`, `true`, `1.5`).
    Word(String),
    Str(String),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    span: Range<usize>,
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let kind = match bytes[i] {
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'\n' => {
                i += 1;
                Kind::Newline
            }
            b'#' => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                Kind::Comment
            }
            b'[' => {
                i += 1;
                Kind::Open
            }
            b']' => {
                i += 1;
                Kind::Close
            }
            b'{' => {
                i += 1;
                Kind::OpenBrace
            }
            b'}' => {
                i += 1;
                Kind::CloseBrace
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b'=' => {
                i += 1;
                Kind::Equals
            }
            b'"' | b'\'' => {
                let (value, end) = string(text, i)?;
                i = end;
                Kind::Str(value)
            }
            _ => {
                let end = text[i..]
                    .find(|c: char| " \t\r\n#[]{},=\"'".contains(c))
                    .map_or(bytes.len(), |n| i + n);
                i = end;
                Kind::Word(text[start..end].to_owned())
            }
        };
        tokens.push(Token {
            kind,
            span: start..i,
        });
    }
    Ok(tokens)
}

/// The string starting at `start` (any of TOML's four forms): its value and the offset past it.
fn string(text: &str, start: usize) -> Result<(String, usize), String> {
    let rest = &text[start..];
    let line = text[..start].matches('\n').count() + 1;
    let unterminated = || format!("Cargo.toml:{line}: unterminated string");
    for delimiter in ["\"\"\"", "'''"] {
        if let Some(body) = rest.strip_prefix(delimiter) {
            let end = body.find(delimiter).ok_or_else(unterminated)?;
            // Up to two more quotes may close the string: `""""` ends with one in the value.
            let mut end = end;
            while body[end + delimiter.len()..].starts_with(&delimiter[..1]) && end < body.len() {
                end += 1;
            }
            let value = body[..end].strip_prefix('\n').unwrap_or(&body[..end]);
            return Ok((value.to_owned(), start + 2 * delimiter.len() + end));
        }
    }
    if let Some(body) = rest.strip_prefix('\'') {
        let end = body.find(['\'', '\n']).ok_or_else(unterminated)?;
        if !body[end..].starts_with('\'') {
            return Err(unterminated());
        }
        return Ok((body[..end].to_owned(), start + end + 2));
    }
    let body = &rest[1..];
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((n, c)) = chars.next() {
        match c {
            '"' => return Ok((value, start + 1 + n + 1)),
            '\n' => break,
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, other)) => value.push(other),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err(unterminated())
}

/// The index of the token after the end of the line holding `i` (a table header).
fn skip_line(tokens: &[Token], mut i: usize) -> usize {
    while i < tokens.len() && tokens[i].kind != Kind::Newline {
        i += 1;
    }
    i
}

/// The index of the newline ending the key/value line at `i`, skipping brackets and braces
/// that span lines.
fn skip_value_line(tokens: &[Token], mut i: usize) -> Result<usize, String> {
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i].kind {
            Kind::Open | Kind::OpenBrace => depth += 1,
            Kind::Close | Kind::CloseBrace => depth = depth.saturating_sub(1),
            Kind::Newline if depth == 0 => return Ok(i),
            _ => {}
        }
        i += 1;
    }
    Ok(i)
}

/// The value whose first token is `tokens[i]`.
fn value_at(text: &str, tokens: &[Token], i: usize) -> Result<Value, String> {
    let Some(first) = tokens.get(i) else {
        return Err("Cargo.toml ends after `=`".into());
    };
    match &first.kind {
        Kind::Str(value) => Ok(Value::Str(value.clone())),
        Kind::Open => array(text, tokens, i).map(Value::Array),
        _ => {
            let end = skip_value_line(tokens, i)?;
            let stop = tokens.get(end).map_or(text.len(), |t| t.span.start);
            Ok(Value::Other(first.span.start..stop))
        }
    }
}

fn array(text: &str, tokens: &[Token], open: usize) -> Result<Array, String> {
    let mut elements: Vec<Element> = Vec::new();
    let mut depth = 0usize;
    for token in &tokens[open..] {
        match &token.kind {
            Kind::Open | Kind::OpenBrace => depth += 1,
            Kind::Close | Kind::CloseBrace => {
                depth -= 1;
                if depth == 0 {
                    return Ok(Array {
                        open: tokens[open].span.start,
                        close: token.span.start,
                        elements,
                    });
                }
            }
            Kind::Str(value) if depth == 1 => elements.push(Element {
                value: value.clone(),
                span: token.span.clone(),
                comma_end: None,
            }),
            Kind::Comma if depth == 1 => {
                if let Some(last) = elements.last_mut() {
                    last.comma_end.get_or_insert(token.span.end);
                }
            }
            _ => {}
        }
    }
    let line = text[..tokens[open].span.start].matches('\n').count() + 1;
    Err(format!("Cargo.toml:{line}: the array is not closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_add(before: &str, after: &str) {
        let edited = add_to_array(before, "members", "plugins/new")
            .expect("parses")
            .expect("has members");
        assert_eq!(edited, after, "\n--- edited:\n{edited}");
        let members = match find(&edited, "workspace", "members") {
            Ok(Some(Value::Array(array))) => array.strings(),
            other => panic!("{other:?}"),
        };
        assert!(members.contains(&"plugins/new".to_owned()), "{members:?}");
    }

    #[test]
    fn one_line_arrays_get_the_member_after_the_last_of_its_directory() {
        check_add(
            "[workspace]\nmembers = [\"kernel\", \"plugins/shell\", \"plugins/docker\", \"tests\"]\n",
            "[workspace]\nmembers = [\"kernel\", \"plugins/shell\", \"plugins/docker\", \"plugins/new\", \"tests\"]\n",
        );
    }

    #[test]
    fn without_a_sibling_the_member_goes_last() {
        check_add(
            "[workspace]\nmembers = [\"kernel\", \"tests\"] # the crates\n",
            "[workspace]\nmembers = [\"kernel\", \"tests\", \"plugins/new\"] # the crates\n",
        );
        check_add(
            "[workspace]\nmembers = [\"kernel\", \"tests\",]\n",
            "[workspace]\nmembers = [\"kernel\", \"tests\", \"plugins/new\",]\n",
        );
    }

    #[test]
    fn an_empty_array_gets_its_first_member() {
        check_add(
            "[workspace]\nmembers = []\n",
            "[workspace]\nmembers = [\"plugins/new\"]\n",
        );
    }

    #[test]
    fn one_element_per_line_keeps_its_indent_comments_and_trailing_comma() {
        check_add(
            "[workspace]\nmembers = [\n    \"kernel\",\n    \"plugins/shell\", # built in\n    \
             \"tests\",\n]\n",
            "[workspace]\nmembers = [\n    \"kernel\",\n    \"plugins/shell\", # built in\n    \
             \"plugins/new\",\n    \"tests\",\n]\n",
        );
        check_add(
            "[workspace]\nmembers = [\n  \"kernel\",\n  \"plugins/shell\"\n]\n",
            "[workspace]\nmembers = [\n  \"kernel\",\n  \"plugins/shell\",\n  \"plugins/new\"\n]\n",
        );
        check_add(
            "[workspace]\nmembers = [\n  \"plugins/shell\", # the last one\n]\n",
            "[workspace]\nmembers = [\n  \"plugins/shell\", # the last one\n  \"plugins/new\",\n]\n",
        );
    }

    #[test]
    fn brackets_and_quotes_in_strings_and_comments_are_not_structure() {
        check_add(
            "# [workspace] members = [\"no\"]\n[package]\nname = \"a]b\"\nmembers = ['x']\n\
             [workspace]\nexclude = [\"fuzz\"]\nmembers = [\"k\\\"]\", 'lit]' # ] \"\n]\n",
            "# [workspace] members = [\"no\"]\n[package]\nname = \"a]b\"\nmembers = ['x']\n\
             [workspace]\nexclude = [\"fuzz\"]\nmembers = [\"k\\\"]\", 'lit]', # ] \"\n\
             \"plugins/new\"\n]\n",
        );
    }

    #[test]
    fn a_missing_key_is_no_edit_and_a_broken_file_an_error() {
        assert_eq!(
            add_to_array("[workspace]\nmembers = []\n", "default-members", "x"),
            Ok(None)
        );
        assert!(add_to_array("[workspace]\nmembers = [\"a\"\n", "members", "x").is_err());
        assert!(add_to_array("[workspace]\nmembers = [\"a]\n", "members", "x").is_err());
    }

    #[test]
    fn values_are_found_in_their_own_table_only() {
        let text = "[workspace]\nmembers = [\"a\"]\n\n[workspace.package]\nversion = \"1.2.3\"\n\
                    edition = \"2024\"\n[package]\nname = 'hm-plugin-x' # the package\n\
                    [dependencies]\nname = { path = \"x\" }\n";
        assert_eq!(
            find(text, "workspace.package", "version"),
            Ok(Some(Value::Str("1.2.3".into())))
        );
        assert_eq!(
            find(text, "package", "name"),
            Ok(Some(Value::Str("hm-plugin-x".into())))
        );
        assert_eq!(find(text, "package", "version"), Ok(None));
        assert!(matches!(
            find(text, "dependencies", "name"),
            Ok(Some(Value::Other(_)))
        ));
    }
}
