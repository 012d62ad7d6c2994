//! Data-driven tests of `hm.toml` validation: each case is the file's text and either the
//! pipeline it means (rendered compactly) or every diagnostic it earns, exactly as printed.

use std::fmt::Write as _;
use std::path::Path;

use super::*;

mod meaning;
mod problems;

/// The pipeline in a compact, stable text form: everything the parser decides, nothing
/// machine-specific (paths are shown relative to the root).
fn render(p: &Pipeline) -> String {
    let duration = |d: Option<std::time::Duration>| {
        d.map_or_else(
            || "-".to_owned(),
            |d| humantime::format_duration(d).to_string(),
        )
    };
    let env = |env: &std::collections::BTreeMap<String, String>| {
        let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{{{}}}", pairs.join(","))
    };
    let limits = |l: &Limits| {
        let mut parts = Vec::new();
        if let Some(m) = l.memory_bytes {
            parts.push(format!("memory:{m}"));
        }
        if let Some(n) = l.pids {
            parts.push(format!("pids:{n}"));
        }
        if let Some(c) = l.cpu {
            parts.push(format!("cpu:{c}"));
        }
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(",")
        }
    };
    let mut out = String::new();
    let parallelism = p
        .parallelism
        .map_or_else(|| "-".to_owned(), |n| n.to_string());
    let _ = writeln!(
        out,
        "pipeline {} timeout={} parallelism={parallelism} keep_going={} env={}",
        p.name,
        duration(p.timeout),
        p.keep_going,
        env(&p.env)
    );
    for (name, s) in &p.plugins {
        let _ = writeln!(
            out,
            "plugin {name} limits={} restart={}/{} required={} handshake={} config={}",
            limits(&s.limits),
            s.restart.max,
            humantime::format_duration(s.restart.within),
            s.required,
            humantime::format_duration(s.handshake_timeout),
            s.config_json
        );
    }
    // Locations name the file as the test passed it: a temporary path.
    let file = p.file.display().to_string();
    for s in &p.steps {
        let location = s.location.replace(&file, "hm.toml");
        let needs: Vec<&str> = s.needs.iter().map(|&i| p.steps[i].name.as_str()).collect();
        let dir = s.dir.strip_prefix(&p.root).map_or_else(
            |_| s.dir.display().to_string(),
            |d| {
                if d.as_os_str().is_empty() {
                    ".".to_owned()
                } else {
                    d.display().to_string()
                }
            },
        );
        let _ = writeln!(
            out,
            "step {} at {} executor={} run={:?}\n  needs=[{}] dir={dir} env={} timeout={} \
             allow_failure={} limits={} retry={}x{:?} image={} with={}{}",
            s.name,
            location,
            s.executor,
            s.run,
            needs.join(","),
            env(&s.env),
            duration(s.timeout),
            allow_failure(&s.allow_failure),
            limits(&s.limits),
            s.retry.attempts,
            s.retry.on,
            s.image.as_deref().unwrap_or("-"),
            s.with_json,
            shell(&s.shell),
        );
    }
    out
}

fn allow_failure(allowed: &AllowFailure) -> String {
    match allowed {
        AllowFailure::No => "false".to_owned(),
        AllowFailure::Any => "true".to_owned(),
        AllowFailure::ExitCodes(codes) => format!("exit_codes{codes:?}"),
    }
}

/// Nothing for the default shell, so most expectations need not mention it.
fn shell(shell: &Shell) -> String {
    if *shell == Shell::Sh {
        String::new()
    } else {
        format!(" shell={:?}", shell.argv())
    }
}

/// Parses `text` as `<dir>/hm.toml` and renders the result; messages name the file `hm.toml`.
fn outcome_in(dir: &Path, text: &str) -> String {
    match parse_str(text, &dir.join("hm.toml")) {
        Ok(pipeline) => render(&pipeline),
        Err(diagnostics) => {
            let shown = Diagnostics::new(
                diagnostics
                    .iter()
                    .map(|d| Diagnostic {
                        file: "hm.toml".into(),
                        ..d.clone()
                    })
                    .collect(),
            );
            format!("{shown}\n")
        }
    }
}

#[track_caller]
fn check_in(dir: &Path, text: &str, expected: &str) {
    let actual = outcome_in(dir, text);
    assert!(
        actual == expected,
        "\n--- input ---\n{text}\n--- expected ---\n{expected}--- actual ---\n{actual}-------------"
    );
}

/// Most cases need no files on disk: the root is an empty temporary directory called `proj`.
#[track_caller]
fn check(text: &str, expected: &str) {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let root = tmp.path().join("proj");
    std::fs::create_dir(&root).expect("create root");
    check_in(&root, text, expected);
}
