//! The first-party `junit` hook end to end: built from this workspace, installed into a project
//! with `hm plugin install --project`, configured by `[plugins.junit]`, and the report it writes
//! after real runs of `hm` checked against hm's own events and validated against the JUnit
//! schema (plugins/junit/tests/junit.xsd) with xmllint.

use std::path::PathBuf;
use std::process::Command;

use hm_tests::{Output, Project, Run, Value};

/// The executable cargo builds for `plugins/junit`.
const EXECUTABLE: &str = "hm-plugin-junit";

/// `hm-plugin-junit` as cargo built it for this workspace.
fn junit_executable() -> PathBuf {
    hm_tests::workspace_executable(
        EXECUTABLE,
        "Build it first: `cargo test --workspace` does, or run `cargo build -p hm-kernel -p \
         hm-plugin-junit` before `cargo test -p hm-tests --test junit`.",
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

/// A project with `pipeline` as its hm.toml and `junit` installed in its plugins layer.
fn project(pipeline: &str) -> Project {
    let project = Project::new(pipeline);
    let executable = junit_executable();
    let out = project.hm(&[
        "plugin",
        "install",
        "--project",
        &executable.display().to_string(),
    ]);
    assert_eq!(out.code(), 0, "install failed: {}", show(&out));
    assert!(
        project.exists(".hm/plugins/junit/plugin.toml"),
        "{}",
        show(&out)
    );
    project
}

/// Runs xmllint with `args`; a missing xmllint fails the test with how to install it.
fn xmllint(args: &[&str]) -> std::process::Output {
    match Command::new("xmllint").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "xmllint is not installed, and the junit tests need it: apt-get install libxml2-utils"
        ),
        Err(e) => panic!("cannot run xmllint: {e}"),
    }
}

/// A written report: its path, its text, and XPath questions about it (answered by xmllint, a
/// real XML parser, not by matching text).
struct Report {
    path: PathBuf,
    text: String,
}

impl Report {
    fn read(project: &Project, rel: &str, run: &Run) -> Self {
        let path = project.path(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no report at {}: {e}\n{run}", path.display()));
        Self { path, text }
    }

    fn assert_valid(&self) {
        let schema = hm_tests::repo_root().join("plugins/junit/tests/junit.xsd");
        let out = xmllint(&[
            "--noout",
            "--schema",
            &schema.display().to_string(),
            &self.path.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "the report does not validate against {}:\n{}{}\n{}",
            schema.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.text
        );
    }

    /// The string value of the XPath expression `expr` (`string(...)`, `count(...)`).
    fn xpath(&self, expr: &str) -> String {
        let out = xmllint(&["--xpath", expr, &self.path.display().to_string()]);
        // xmllint exits non-zero for an empty node-set; `string()` of nothing is "" anyway.
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// An attribute of the element `path` (an XPath location such as
    /// `//testcase[@name="unit"]/failure`).
    fn attr(&self, path: &str, name: &str) -> String {
        self.xpath(&format!("string({path}/@{name})"))
    }

    fn count(&self, path: &str) -> usize {
        let text = self.xpath(&format!("count({path})"));
        text.parse()
            .unwrap_or_else(|_| panic!("count({path}) gave {text:?}\n{}", self.text))
    }

    fn testcase_names(&self) -> Vec<String> {
        (1..=self.count("//testcase"))
            .map(|i| self.attr(&format!("(//testcase)[{i}]"), "name"))
            .collect()
    }
}

fn testcase(step: &str) -> String {
    format!("//testcase[@name=\"{step}\"]")
}

/// `duration_ms` as the report writes seconds.
fn seconds(event: &Value) -> String {
    let ms = event["duration_ms"].as_u64().expect("duration_ms");
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

const PIPELINE: &str = r#"
[pipeline]
name = "ci"
keep_going = true

[plugins.junit]
config = { path = "reports/junit.xml" }

[steps.build]
run = "echo built"

[steps.unit]
run = "echo 'unit tests failed' >&2; exit 3"
needs = ["build"]

[steps.package]
run = "echo packaging"
needs = ["unit"]

[steps.lint]
run = "echo 'style <problem> & \"quotes\"' >&2; exit 1"
allow_failure = true

[steps.flaky]
run = "if [ -e attempted ]; then echo recovered; else touch attempted; exit 1; fi"
retry = { attempts = 2, on = ["exit:1"] }

[steps.killed]
run = "kill -9 $$"

[steps.slow]
run = "sleep 30"
timeout = "300ms"
"#;

#[test]
fn a_run_becomes_one_testcase_per_step_with_the_verdicts_hm_reported() {
    let project = project(PIPELINE);
    let run = project.run(&[]);
    // The step timeout decides the exit code (124 over 1).
    assert_eq!(run.code(), 124, "{run}");
    run.assert_one_final_step_end_each();
    let report = Report::read(&project, "reports/junit.xml", &run);
    report.assert_valid();

    // One testcase per step, in the order hm queued them, each named by its pipeline.
    assert_eq!(report.testcase_names(), run.queued(), "{}", report.text);
    assert_eq!(report.count("//testcase[@classname=\"ci\"]"), 7);
    assert_eq!(report.count("/testsuites/testsuite"), 1);
    // Each testcase's time and status are its final attempt's.
    for step in run.queued() {
        let end = run.step_end(step);
        assert_eq!(report.attr(&testcase(step), "time"), seconds(end), "{step}");
        assert_eq!(
            report.attr(&testcase(step), "status"),
            end["status"].as_str().unwrap_or_default(),
            "{step}"
        );
    }

    assert_eq!(report.count(&format!("{}/*", testcase("build"))), 0);
    let unit = format!("{}/failure", testcase("unit"));
    assert_eq!(report.attr(&unit, "type"), "exit");
    assert_eq!(report.attr(&unit, "message"), "exited with code 3");
    assert!(
        report
            .xpath(&format!("string({unit})"))
            .contains("exit code: 3")
    );

    let killed = format!("{}/failure", testcase("killed"));
    assert_eq!(report.attr(&killed, "type"), "signal");
    assert!(
        report.attr(&killed, "message").contains("SIGKILL"),
        "{}",
        report.text
    );

    let slow = format!("{}/failure", testcase("slow"));
    assert_eq!(report.attr(&slow, "type"), "timeout");
    assert_eq!(run.status("slow"), "timed_out");

    let package = format!("{}/skipped", testcase("package"));
    assert_eq!(
        report.attr(&package, "message"),
        "skipped: a step it needs failed"
    );
    assert_eq!(run.cause("package"), Some("dependency_failed"));

    // An allowed failure is reported as skipped (it does not fail the run), saying why.
    assert_eq!(run.step_end("lint")["allowed_failure"], true);
    let lint = format!("{}/skipped", testcase("lint"));
    assert_eq!(
        report.attr(&lint, "message"),
        "failure allowed: exited with code 1"
    );
    assert_eq!(report.count(&format!("{}/failure", testcase("lint"))), 0);

    // The flaky step passed on its second attempt; the first is in its system-err.
    assert_eq!(run.of_step("step_end", "flaky").len(), 2);
    assert_eq!(run.status("flaky"), "passed");
    assert_eq!(report.count(&format!("{}/failure", testcase("flaky"))), 0);
    let history = report.xpath(&format!("string({}/system-err)", testcase("flaky")));
    assert_eq!(
        history,
        format!(
            "attempt 1 failed after {}s: exited with code 1; hm retried it (exit)",
            seconds(run.of_step("step_end", "flaky")[0])
        )
    );

    // The counts say what the testcases say, on the suite and on the root.
    for element in ["/testsuites", "/testsuites/testsuite"] {
        assert_eq!(report.attr(element, "name"), "ci");
        assert_eq!(report.attr(element, "tests"), "7", "{element}");
        assert_eq!(report.attr(element, "failures"), "3", "{element}");
        assert_eq!(report.attr(element, "errors"), "0", "{element}");
        assert_eq!(
            report.attr(element, "time"),
            seconds(run.build_end()),
            "{element}"
        );
    }
    assert_eq!(report.attr("/testsuites/testsuite", "skipped"), "2");
    assert_eq!(report.count("//failure"), 3);
    assert_eq!(report.count("//skipped"), 2);
    assert_eq!(report.count("//error"), 0);
    let property = |name: &str| report.attr(&format!("//property[@name=\"{name}\"]"), "value");
    assert_eq!(property("hm.run_id"), run.build_end()["run_id"]);
    assert_eq!(property("hm.exit_code"), "124");
    assert_eq!(property("hm.status"), "timed_out");

    // Written by rename: nothing but the report in its directory.
    let left: Vec<_> = std::fs::read_dir(project.path("reports"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["junit.xml"]);
}

#[test]
fn without_a_path_the_report_is_hm_junit_xml_at_the_project_root() {
    let project = project(
        r#"
[plugins.junit]

[steps.only]
run = "echo only"
"#,
    );
    std::fs::create_dir_all(project.path("sub/dir")).unwrap();
    let run = project.run_in(&project.path("sub/dir"), &[]);
    assert_eq!(run.code(), 0, "{run}");
    let report = Report::read(&project, "hm-junit.xml", &run);
    report.assert_valid();
    assert_eq!(report.testcase_names(), ["only"]);
    // Named after the project's directory, as hm names the pipeline.
    assert_eq!(report.attr("/testsuites", "name"), "project");
    assert!(!project.exists("sub/dir/hm-junit.xml"));
}

#[test]
fn projects_that_do_not_configure_junit_get_no_report() {
    let project = project("[steps.only]\nrun = \"echo only\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.of_plugin("plugin_start", "junit").is_empty(), "{run}");
    assert!(!project.exists("hm-junit.xml"));
}

#[test]
fn a_bad_configuration_is_refused_with_what_is_wrong() {
    let project = project(
        r#"
[plugins.junit]
required = true
config = { pth = "reports/junit.xml" }

[steps.only]
run = "echo only"
"#,
    );
    let run = project.run(&[]);
    // The step runs; a required hook that refuses its configuration fails the run.
    assert_eq!(run.status("only"), "passed", "{run}");
    assert_eq!(run.code(), 5, "{run}");
    assert!(
        run.stderr().contains(
            "refused its configuration: [plugins.junit] config: unknown key `pth` \
             (the junit plugin knows: path)"
        ),
        "{run}"
    );
    assert!(!project.exists("reports") && !project.exists("hm-junit.xml"));
}

#[test]
fn artifacts_are_attachments_and_secrets_are_masked_in_the_report() {
    const TOKEN: &str = "junit-secret-4d3c2b1a";
    let project = project(
        r#"
[plugins.junit]

[steps.build]
env = { TOKEN = { secret = "HM_TEST_JUNIT_TOKEN" } }
run = "mkdir -p dist && echo x > dist/app.txt && echo \"deploying with $TOKEN\" && exit 3"
artifacts = ["dist/**"]
allow_failure = { exit_codes = [3] }

[steps.package]
run = "mkdir -p dist && echo y > dist/pkg.tar && echo \"token=$TOKEN\" >> $HM_OUTPUT"
env = { TOKEN = { secret = "HM_TEST_JUNIT_TOKEN" } }
artifacts = ["dist/pkg.tar"]
"#,
    );
    let mut cmd = project.command(&["run", "--format", "json"]);
    cmd.env("HM_TEST_JUNIT_TOKEN", TOKEN);
    let run = hm_tests::Hm::spawn(cmd)
        .finish(hm_tests::RUN_DEADLINE)
        .into_run();
    assert_eq!(run.code(), 0, "{run}");
    let report = Report::read(&project, "hm-junit.xml", &run);
    report.assert_valid();
    assert!(!report.text.contains(TOKEN), "{}", report.text);
    // A failed step hands nothing on; a passed one lists its files.
    assert!(!report.text.contains("dist/app.txt"), "{}", report.text);
    assert_eq!(
        report.xpath(&format!("string({}/system-out)", testcase("package"))),
        "[[ATTACHMENT|dist/pkg.tar]]"
    );
    assert!(!run.output.stdout.contains(TOKEN), "{run}");
}
