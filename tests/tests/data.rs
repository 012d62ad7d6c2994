//! Data between steps through the binary: outputs written to `$HM_OUTPUT` reach the `run` and
//! `env` of dependents, artifacts are listed with their digest and limited, and a secret's
//! value never shows up in anything hm writes, in any format.

use std::path::Path;
use std::process::Command;

use hm_tests::{Hm, Project, RUN_DEADLINE, Run};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn outputs_reach_the_run_and_env_of_dependents_and_a_bad_line_fails_with_setup() {
    let project = Project::new(
        r#"
[steps.version]
run = '''
echo "version=1.2.3" >> "$HM_OUTPUT"
cat >> "$HM_OUTPUT" <<'EOF'
notes<<END
line one
line two
END
EOF
'''

[steps.use]
needs = ["version"]
env = { VERSION = "v${{ steps.version.outputs.version }}" }
run = '''
echo "run sees ${{ steps.version.outputs.version }}"
echo "env sees $VERSION"
echo "${{ steps.version.outputs.notes }}"
'''

[steps.bad]
run = "echo 'version=1'; echo 'not a key value' >> \"$HM_OUTPUT\""

[steps.after-bad]
needs = ["bad"]
run = "echo never"
"#,
    );
    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("version"), "passed", "{run}");
    let outputs = &run.step_end("version")["outputs"];
    assert_eq!(outputs["version"], "1.2.3", "{run}");
    assert_eq!(outputs["notes"], "line one\nline two", "{run}");
    assert_eq!(run.status("use"), "passed", "{run}");
    assert_eq!(
        run.lines("use"),
        ["run sees 1.2.3", "env sees v1.2.3", "line one", "line two"],
        "{run}"
    );
    let bad = run.step_end("bad");
    assert_eq!(bad["status"], "failed", "{run}");
    assert_eq!(bad["cause"], "setup", "{run}");
    let message = bad["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("line 1 of $HM_OUTPUT, `not a key value`"),
        "{run}"
    );
    assert_eq!(bad["outputs"], serde_json::json!({}), "{run}");
    assert_eq!(
        run.step_end("after-bad")["cause"],
        "dependency_failed",
        "{run}"
    );
}

#[test]
fn artifacts_of_a_shell_step_are_listed_with_their_digest_and_in_the_summary() {
    let project = Project::new(
        r#"
[steps.build]
run = '''
mkdir -p dist/sub
printf 'app 1.0\n' > dist/app.txt
printf 'data' > dist/sub/data.bin
echo ignored > notes.txt
'''
artifacts = ["dist/**", "missing/*.whl"]

[steps.check]
needs = ["build"]
run = "cat dist/app.txt"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let artifacts = run.step_end("build")["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let listed: Vec<(&str, u64, &str)> = artifacts
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap_or_default(),
                a["bytes"].as_u64().unwrap_or_default(),
                a["sha256"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let app = sha256_hex(b"app 1.0\n");
    let data = sha256_hex(b"data");
    assert_eq!(
        listed,
        [
            ("dist/app.txt", 8, app.as_str()),
            ("dist/sub/data.bin", 4, data.as_str())
        ],
        "{run}"
    );
    assert_eq!(
        run.lines("build"),
        ["hm: artifact glob `missing/*.whl` matched no file"],
        "{run}"
    );
    assert_eq!(run.lines("check"), ["app 1.0"], "{run}");

    let human = project.hm(&["run"]);
    assert_eq!(human.code(), 0, "{}", human.stderr);
    assert!(
        human.stderr.contains("artifacts: build 2 files (12 B)"),
        "{}",
        human.stderr
    );
}

#[test]
fn a_step_with_more_artifacts_than_the_limit_fails_with_cause_artifact() {
    let project = Project::new(
        r#"
[pipeline]
artifacts_max = { files = 3 }

[steps.many]
run = "mkdir -p out && for i in 1 2 3 4 5; do echo $i > out/$i.txt; done"
artifacts = ["out/*.txt"]

[steps.big]
run = "mkdir -p big && head -c 5000 /dev/zero > big/blob"
artifacts = ["big/"]

[steps.uses]
needs = ["many"]
run = "echo never"
"#,
    );
    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    let many = run.step_end("many");
    assert_eq!(many["status"], "failed", "{run}");
    assert_eq!(many["cause"], "artifact", "{run}");
    assert_eq!(many["exit_code"], 0, "{run}");
    let message = many["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 3 files, the limit"), "{run}");
    assert!(message.contains("artifacts_max"), "{run}");
    assert_eq!(many["artifacts"], serde_json::json!([]), "{run}");
    assert_eq!(run.status("big"), "passed", "{run}");
    assert_eq!(run.step_end("uses")["cause"], "dependency_failed", "{run}");

    project.write(
        "hm.toml",
        r#"
[pipeline]
artifacts_max = { bytes = "4KiB" }

[steps.big]
run = "mkdir -p big && head -c 5000 /dev/zero > big/blob"
artifacts = ["big/"]
"#,
    );
    let run = project.run(&[]);
    let big = run.step_end("big");
    assert_eq!(big["cause"], "artifact", "{run}");
    let message = big["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 4096 bytes"), "{run}");
}

/// The values the secrets test hides: one plain, one of two lines.
const TOKEN: &str = "tok-9f8e7d6c5b4a";
const MULTI: &str = "first-secret-line\nsecond-secret-line";

/// Every way the step reveals the secrets: plain, line by line, in base64, in an output and
/// in an error message.
const LEAKY: &str = r#"
[steps.leak]
env = { TOKEN = { secret = "HM_TEST_TOKEN" }, MULTI = { secret = "HM_TEST_MULTI" } }
run = '''
echo "plain $TOKEN"
printf '%s\n' "$MULTI"
printf '%s' "$TOKEN" | base64
echo "tok=$TOKEN" >> "$HM_OUTPUT"
'''

[steps.fails]
env = { TOKEN = { secret = "HM_TEST_TOKEN" } }
run = "echo \"bad $TOKEN\" >> \"$HM_OUTPUT\""
"#;

/// Runs `hm run -k --secret-file F ARGS...`: the one-line token comes from the file, the
/// two-line value (which a line of a secret file cannot hold) from hm's environment. Gives
/// the output and everything hm printed.
fn run_with_secrets(project: &Project, args: &[&str]) -> (hm_tests::Output, String) {
    let secrets = project.write("secrets.env", &format!("HM_TEST_TOKEN={TOKEN}\n"));
    let secret_file = secrets.display().to_string();
    let mut all = vec!["run", "-k", "--secret-file", secret_file.as_str()];
    all.extend_from_slice(args);
    let mut cmd: Command = project.command(&all);
    cmd.env("HM_TEST_MULTI", MULTI);
    let out = Hm::spawn(cmd).finish(RUN_DEADLINE);
    let text = format!("{}{}", out.stdout, out.stderr);
    (out, text)
}

fn assert_hidden(text: &str, what: &str) {
    let b64 = base64_of(TOKEN);
    for value in [
        TOKEN,
        "first-secret-line",
        "second-secret-line",
        b64.as_str(),
    ] {
        assert!(!text.contains(value), "{what} shows `{value}`:\n{text}");
    }
}

fn base64_of(text: &str) -> String {
    let out = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run base64");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn a_secret_is_masked_in_every_format_and_in_outputs() {
    let project = Project::new(LEAKY);
    let (out, text) = run_with_secrets(&project, &["--format", "json"]);
    let run: Run = out.into_run();
    assert_eq!(run.code(), 1, "{run}");
    assert_hidden(&text, "json");
    assert_eq!(
        run.lines("leak"),
        ["plain ***", "***", "***", "***"],
        "{run}"
    );
    assert_eq!(run.step_end("leak")["outputs"]["tok"], "***", "{run}");
    // The bad line is named, masked.
    let fails = run.step_end("fails");
    assert_eq!(fails["cause"], "setup", "{run}");
    assert!(
        fails["message"]
            .as_str()
            .is_some_and(|m| m.contains("`bad ***`")),
        "{run}"
    );
    for format in ["human", "github"] {
        let (_, text) = run_with_secrets(&project, &["--format", format, "--logs"]);
        assert!(text.contains("plain ***"), "{format}:\n{text}");
        assert_hidden(&text, format);
    }
    // Nothing hm keeps holds a value: the project (but the secret file the test wrote), hm's
    // state and data, and the run's directory, which is gone.
    assert_no_file_holds_a_secret(project.root(), &project);
    let left: Vec<_> = std::fs::read_dir(project.runtime_dir())
        .expect("runtime dir")
        .collect();
    assert!(left.is_empty(), "the run left {left:?}");
}

pub fn assert_no_file_holds_a_secret(dir: &Path, project: &Project) {
    let secret_file = project.path("secrets.env");
    let mut stack = vec![dir.to_owned(), project.root().join("../xdg")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path != secret_file
                && let Ok(bytes) = std::fs::read(&path)
            {
                let text = String::from_utf8_lossy(&bytes);
                assert_hidden(&text, &path.display().to_string());
            }
        }
    }
}

#[test]
fn a_missing_secret_stops_the_run_before_anything_starts_naming_it() {
    let project = Project::new(
        r#"
[steps.deploy]
env = { TOKEN = { secret = "HM_TEST_ABSENT_TOKEN" } }
run = "touch started"
"#,
    );
    let out = project.hm(&["run"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`HM_TEST_ABSENT_TOKEN` (for `TOKEN` of step deploy)"),
        "{}",
        out.stderr
    );
    assert!(!project.exists("started"));
    let dry = project.hm(&["run", "--dry-run"]);
    assert_eq!(dry.code(), 2, "{}", dry.stderr);
}
