//! Step outputs: what a step appends to the file named by `$HM_OUTPUT`, in either of GitHub's
//! forms, `key=value` and
//!
//! ```text
//! key<<DELIMITER
//! line one
//! line two
//! DELIMITER
//! ```
//!
//! read once the step has passed. The files live in a directory of the run's own, removed
//! when the run ends.

use std::path::{Path, PathBuf};

/// The most a step may write to `$HM_OUTPUT`.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// A step's outputs, in the order it wrote them (a key written twice keeps its last value,
/// in its first place).
pub type Outputs = Vec<(String, String)>;

/// The directory of a run's output files: `$XDG_RUNTIME_DIR/hm-RUN`, else `/dev/shm/hm-RUN`,
/// else in the temp directory; private to the user, removed with everything in it when
/// dropped. Memory rather than disk where there is a choice: every step attempt makes, reads
/// and removes a file here, which costs several times more on a disk's file system (ext4's
/// inode allocation) than on tmpfs.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn create(run_id: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir());
        let shm = Some(PathBuf::from("/dev/shm")).filter(|dir| dir.is_dir());
        let name = format!("hm-{run_id}");
        // A base that refuses (read-only, full) is passed over for the next.
        for base in runtime.into_iter().chain(shm) {
            let path = base.join(&name);
            if std::fs::DirBuilder::new().mode(0o700).create(&path).is_ok() {
                return Ok(Self { path });
            }
        }
        let path = std::env::temp_dir().join(&name);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty output file for one attempt of a step (`name` is safe as a file name).
    pub fn output_file(&self, name: &str, attempt: u32) -> std::io::Result<PathBuf> {
        let path = self.path.join(format!("output-{name}-{attempt}"));
        std::fs::write(&path, "")?;
        Ok(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Reads and parses an output file; the error (cause `setup`) names the line.
pub fn read(path: &Path) -> Result<Outputs, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that a FIFO or a device the step put in the file's place is refused
    // below instead of holding the step's collection forever.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        // The step removed it: it wrote nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read its $HM_OUTPUT file: {e}")),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(
                "its $HM_OUTPUT is no longer a regular file (the step replaced it): append \
                 `key=value` lines to the file instead"
                    .to_owned(),
            );
        }
        Err(e) => return Err(format!("cannot read its $HM_OUTPUT file: {e}")),
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read its $HM_OUTPUT file: {e}"))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!(
            "it wrote more than {} MiB to $HM_OUTPUT, the limit for a step's outputs",
            MAX_BYTES >> 20
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| "what it wrote to $HM_OUTPUT is not UTF-8 text".to_owned())?;
    parse(&text)
}

/// Whether the output file at `path` surely holds no outputs: it is gone (the step removed it)
/// or is still an empty regular file, as it is after most steps. One `statx`, no `open`, so the
/// run loop can ask it: anything else (a file with text, or something the step put in its
/// place, like a FIFO whose `open` would block) is for [`read`], off the run loop.
pub fn surely_empty(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type().is_file() && meta.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Parses the text of an output file.
pub fn parse(text: &str) -> Result<Outputs, String> {
    let mut outputs: Outputs = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            format!(
                "line {} of $HM_OUTPUT, `{}`, {why}; write `key=value`, or `key<<EOF`, the \
                 lines of the value, then `EOF`",
                n + 1,
                shorten(line)
            )
        };
        let (key, value) = match (line.find('='), line.find("<<")) {
            (Some(eq), None) => (&line[..eq], line[eq + 1..].to_owned()),
            (Some(eq), Some(at)) if eq < at => (&line[..eq], line[eq + 1..].to_owned()),
            (_, Some(at)) => {
                let delimiter = &line[at + 2..];
                if delimiter.is_empty() {
                    return Err(bad("has no delimiter after `<<`"));
                }
                let mut value: Vec<&str> = Vec::new();
                let mut closed = false;
                for (_, body) in lines.by_ref() {
                    let body = body.strip_suffix('\r').unwrap_or(body);
                    if body == delimiter {
                        closed = true;
                        break;
                    }
                    value.push(body);
                }
                if !closed {
                    return Err(bad(&format!(
                        "opens a value that no `{delimiter}` line ends"
                    )));
                }
                (&line[..at], value.join("\n"))
            }
            (None, None) => return Err(bad("has neither `=` nor `<<`")),
        };
        if !is_key(key) {
            return Err(bad(&format!(
                "has the key `{}`, but keys are letters, digits, `_` and `-`, not starting \
                 with a digit or `-`",
                shorten(key)
            )));
        }
        match outputs.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = value,
            None => outputs.push((key.to_owned(), value)),
        }
    }
    Ok(outputs)
}

/// `[A-Za-z_][A-Za-z0-9_-]*`.
fn is_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_a_later_value_wins() {
        let text = "version=1.2.3\nnotes<<EOF\nfirst\n\nthird=x\nEOF\n\nempty=\nversion=2\nwin<<X\r\na\r\nX\r\n";
        let got = parse(text).expect("parses");
        assert_eq!(
            got,
            [
                ("version".to_owned(), "2".to_owned()),
                ("notes".to_owned(), "first\n\nthird=x".to_owned()),
                ("empty".to_owned(), String::new()),
                ("win".to_owned(), "a".to_owned()),
            ]
        );
    }

    #[test]
    fn a_value_may_hold_equals_and_angle_brackets() {
        let got = parse("url=https://x/?a=b<<c\n").expect("parses");
        assert_eq!(got, [("url".to_owned(), "https://x/?a=b<<c".to_owned())]);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, says) in [
            (
                "ok=1\njust text\n",
                "line 2 of $HM_OUTPUT, `just text`, has neither",
            ),
            ("1abc=x\n", "has the key `1abc`"),
            ("a b=x\n", "has the key `a b`"),
            ("=x\n", "has the key ``"),
            ("k<<EOF\nnever closed\n", "no `EOF` line ends"),
            ("k<<\n", "has no delimiter"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn reading_refuses_more_than_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        std::fs::write(&path, "k=".to_owned() + &"x".repeat(MAX_BYTES as usize)).expect("write");
        let err = read(&path).expect_err("too big");
        assert!(err.contains("more than 1 MiB"), "{err}");
        assert_eq!(read(&dir.path().join("gone")).expect("absent"), []);
    }

    #[test]
    fn only_a_missing_or_empty_regular_file_is_surely_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("empty"), "").expect("write");
        std::fs::write(path("text"), "k=v\n").expect("write");
        std::fs::create_dir(path("dir")).expect("mkdir");
        nix::unistd::mkfifo(&path("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        std::os::unix::fs::symlink(path("empty"), path("link")).expect("symlink");
        assert!(surely_empty(&path("gone")));
        assert!(surely_empty(&path("empty")));
        for other in ["text", "dir", "fifo", "link"] {
            assert!(!surely_empty(&path(other)), "{other}");
        }
        // What is not surely empty is read off the run loop, and what is no file is refused
        // there without waiting for a writer that never comes.
        let err = read(&path("fifo")).expect_err("a FIFO is no output file");
        assert!(err.contains("no longer a regular file"), "{err}");
        assert!(read(&path("dir")).is_err());
        assert_eq!(read(&path("link")).expect("a link to an empty file"), []);
    }

    #[test]
    fn a_run_dir_goes_away_with_its_files() {
        let run = RunDir::create(&format!("test-{}", std::process::id())).expect("created");
        let file = run.output_file("step", 1).expect("file");
        assert!(file.exists());
        let path = run.path().to_owned();
        drop(run);
        assert!(!path.exists());
    }
}
