//! The report as JUnit XML, in the structure Jenkins and GitLab read (the one
//! `tests/junit.xsd` describes), and the escaping that keeps any step name or message from
//! breaking it.
//!
//! ```text
//! testsuites name tests failures errors time
//! └ testsuite name tests failures errors skipped time timestamp
//!   ├ properties: hm.run_id, hm.status, hm.exit_code, hm.isolation, hm.parallelism
//!   ├ testcase name classname time status   (one per step, in pipeline order)
//!   │ └ skipped? error? failure? system-err?
//!   └ system-err?                           (steps the hook missed)
//! ```
//!
//! `<testsuites>` carries no `skipped`: the Jenkins schema has none there (a validating reader
//! would refuse the report), and the one `<testsuite>` has it.

use std::fmt::Write as _;

use crate::report::{Attempt, Report, StepRecord, Verdict, seconds};

/// The document for `report`, with its XML declaration and a final newline.
pub fn render(report: &Report) -> String {
    let counts = Counts::of(report);
    let name = escape_attribute(&report.pipeline);
    let time = seconds(report.end.as_ref().map_or(0, |end| end.duration_ms));
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{time}\">",
        counts.tests, counts.failures, counts.errors
    );
    let _ = write!(
        out,
        "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" \
         time=\"{time}\"",
        counts.tests, counts.failures, counts.errors, counts.skipped
    );
    if let Some(ts) = &report.started_at {
        let _ = write!(out, " timestamp=\"{}\"", escape_attribute(ts));
    }
    out.push_str(">\n");
    properties(&mut out, report);
    for step in report.steps() {
        testcase(&mut out, report, step);
    }
    let unknown = report.unknown_steps();
    if unknown > 0 {
        let text = format!(
            "hm ended {unknown} step(s) that this report does not list: the junit hook missed \
             their events (hm warns `hook junit missed N event(s)` when it drops any)."
        );
        let _ = writeln!(out, "    <system-err>{}</system-err>", escape_text(&text));
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The `tests`, `failures`, `errors` and `skipped` attributes: what the testcases say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub tests: usize,
    pub failures: usize,
    pub errors: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn of(report: &Report) -> Self {
        let mut counts = Self::default();
        for step in report.steps() {
            counts.tests += 1;
            match step.verdict() {
                Verdict::Passed => {}
                Verdict::Failure { .. } => counts.failures += 1,
                Verdict::Error { .. } => counts.errors += 1,
                Verdict::Skipped { .. } => counts.skipped += 1,
            }
        }
        counts
    }
}

fn properties(out: &mut String, report: &Report) {
    let mut props: Vec<(&str, String)> = vec![("hm.run_id", report.run_id.clone())];
    if let Some(end) = &report.end {
        props.push(("hm.status", end.status.clone()));
        if let Some(code) = end.exit_code {
            props.push(("hm.exit_code", code.to_string()));
        }
    }
    if let Some(isolation) = &report.isolation {
        props.push(("hm.isolation", isolation.clone()));
    }
    if let Some(parallelism) = report.parallelism {
        props.push(("hm.parallelism", parallelism.to_string()));
    }
    out.push_str("    <properties>\n");
    for (name, value) in props {
        let _ = writeln!(
            out,
            "      <property name=\"{name}\" value=\"{}\"/>",
            escape_attribute(&value)
        );
    }
    out.push_str("    </properties>\n");
}

fn testcase(out: &mut String, report: &Report, step: &StepRecord) {
    let last = step.final_attempt();
    let _ = write!(
        out,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
        escape_attribute(&step.name),
        escape_attribute(&report.pipeline),
        seconds(last.map_or(0, |a| a.duration_ms)),
    );
    if let Some(last) = last {
        let _ = write!(out, " status=\"{}\"", escape_attribute(&last.status));
    }
    // The schema's order: skipped, error, failure, system-out, system-err.
    let mut children = String::new();
    match step.verdict() {
        Verdict::Passed => {}
        Verdict::Skipped { message } => {
            // An allowed failure ran: say how it went. A skipped or cancelled step did not.
            let body = last.filter(|a| a.allowed_failure).map(|a| details(step, a));
            element(&mut children, "skipped", &message, None, body.as_deref());
        }
        Verdict::Error { kind, message } => {
            let body = last.map(|a| details(step, a));
            element(
                &mut children,
                "error",
                &message,
                Some(&kind),
                body.as_deref(),
            );
        }
        Verdict::Failure { kind, message } => {
            let body = last.map(|a| details(step, a));
            element(
                &mut children,
                "failure",
                &message,
                Some(&kind),
                body.as_deref(),
            );
        }
    }
    // Jenkins' and GitLab's convention: each attachment on a line of its own in system-out;
    // a step replayed from the cache says so first.
    let attachments: String = last
        .map(|a| {
            let replayed = a.saved_ms.map(|ms| {
                format!(
                    "replayed from hm's cache: the step ran in {}s when it was stored\n",
                    seconds(ms)
                )
            });
            replayed
                .into_iter()
                .chain(
                    a.artifacts
                        .iter()
                        .map(|path| format!("[[ATTACHMENT|{path}]]\n")),
                )
                .collect()
        })
        .unwrap_or_default();
    if !attachments.is_empty() {
        let _ = writeln!(
            children,
            "      <system-out>{}</system-out>",
            escape_text(&attachments)
        );
    }
    let history: String = step
        .retried_attempts()
        .map(|a| {
            format!(
                "attempt {} {} after {}s: {}; hm retried it ({})\n",
                a.attempt,
                a.status,
                seconds(a.duration_ms),
                a.describe(),
                a.retried.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if !history.is_empty() {
        let _ = writeln!(
            children,
            "      <system-err>{}</system-err>",
            escape_text(&history)
        );
    }
    if children.is_empty() {
        out.push_str("/>\n");
    } else {
        out.push_str(">\n");
        out.push_str(&children);
        out.push_str("    </testcase>\n");
    }
}

/// `<NAME message="..." type="..."/>`, or with `body` as its text.
fn element(out: &mut String, name: &str, message: &str, kind: Option<&str>, body: Option<&str>) {
    let _ = write!(
        out,
        "      <{name} message=\"{}\"",
        escape_attribute(message)
    );
    if let Some(kind) = kind {
        let _ = write!(out, " type=\"{}\"", escape_attribute(kind));
    }
    match body {
        None => out.push_str("/>\n"),
        Some(body) => {
            let _ = writeln!(out, ">{}</{name}>", escape_text(body));
        }
    }
}

/// The final attempt in full, one `key: value` per line, for the text of a failure. hm's
/// `message` is not repeated: the element's `message` attribute has it.
fn details(step: &StepRecord, attempt: &Attempt) -> String {
    let mut lines = vec![format!("status: {}", attempt.status)];
    if let Some(cause) = &attempt.cause {
        lines.push(format!("cause: {cause}"));
    }
    if let Some(code) = attempt.exit_code {
        lines.push(format!("exit code: {code}"));
    }
    if let Some(signal) = attempt.signal {
        lines.push(format!("signal: {signal}"));
    }
    lines.push(format!("attempt: {}", attempt.attempt));
    if let Some(executor) = &step.executor {
        lines.push(format!("executor: {executor}"));
    }
    lines.push(format!("duration: {}s", seconds(attempt.duration_ms)));
    if let Some(peak) = attempt.peak_memory_bytes {
        lines.push(format!("peak memory: {peak} bytes"));
    }
    if let Some(cpu) = attempt.cpu_ms {
        lines.push(format!("cpu time: {cpu} ms"));
    }
    lines.join("\n")
}

/// `text` for element content: the five special characters as entities, CR as `&#13;` (a
/// parser would turn a literal one into LF), and characters XML 1.0 does not allow at all as
/// text like `\u{1b}`.
pub fn escape_text(text: &str) -> String {
    escape(text, false)
}

/// `text` for an attribute value in double quotes: as [`escape_text`], and tab, LF and CR as
/// character references too, since a parser turns literal ones into spaces.
pub fn escape_attribute(text: &str) -> String {
    escape(text, true)
}

fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\t' | '\n' => out.push(c),
            c if is_xml_char(c) => out.push(c),
            // Not even a character reference may name these; keep them visible.
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    out
}

/// XML 1.0 `Char`, less tab, LF and CR (handled above): `[#x20-#xD7FF] | [#xE000-#xFFFD] |
/// [#x10000-#x10FFFF]`. Surrogates cannot occur in a `char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};
    use serde_json::{Value, json};

    use super::*;

    fn check_text(input: &str, expected: &str) {
        assert_eq!(escape_text(input), expected, "text {input:?}");
    }

    fn check_attribute(input: &str, expected: &str) {
        assert_eq!(escape_attribute(input), expected, "attribute {input:?}");
    }

    #[test]
    fn escapes_the_special_characters() {
        check_text("plain", "plain");
        check_text(
            r#"a & b < c > d "e" 'f'"#,
            "a &amp; b &lt; c &gt; d &quot;e&quot; &apos;f&apos;",
        );
        check_text("]]>", "]]&gt;");
        check_text("&amp;", "&amp;amp;");
        check_attribute(r#"<"x">"#, "&lt;&quot;x&quot;&gt;");
    }

    #[test]
    fn keeps_line_breaks_in_text_and_encodes_them_in_attributes() {
        check_text("one\ntwo\tthree\r\n", "one\ntwo\tthree&#13;\n");
        check_attribute("one\ntwo\tthree\r\n", "one&#10;two&#9;three&#13;&#10;");
    }

    #[test]
    fn replaces_characters_xml_forbids() {
        check_text("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m");
        check_text("nul\0", "nul\\u{0}");
        check_attribute("\u{7}\u{b}\u{c}\u{1f}", "\\u{7}\\u{b}\\u{c}\\u{1f}");
        check_text("\u{fffe}\u{ffff}", "\\u{fffe}\\u{ffff}");
        // Allowed, if unusual: DEL, C1 controls, the last BMP character, astral planes.
        check_text(
            "\u{7f}\u{85}\u{fffd}\u{1f600}\u{10ffff}",
            "\u{7f}\u{85}\u{fffd}\u{1f600}\u{10ffff}",
        );
        check_text("héllo wörld ✓", "héllo wörld ✓");
    }

    fn report(events: &[Value]) -> Report {
        let mut report = Report::new("from-init", "run-1");
        for event in events {
            report.apply(event);
        }
        report
    }

    fn check(events: &[Value], expected: Expect) {
        expected.assert_eq(&render(&report(events)));
    }

    fn build_start() -> Value {
        json!({ "kind": "build_start", "ts": "2026-03-01T12:00:00.000Z", "run_id": "run-1",
                "pipeline": "ci", "steps": 7, "parallelism": 2, "isolation": "cgroup_v2" })
    }

    fn step_end(step: &str, attempt: u32, status: &str, extra: Value) -> Value {
        let mut event = json!({ "kind": "step_end", "ts": "2026-03-01T12:00:01.000Z",
                                "run_id": "run-1", "step": step, "attempt": attempt,
                                "status": status, "cause": null, "exit_code": null,
                                "signal": null, "duration_ms": 12, "peak_memory_bytes": 4096,
                                "cpu_ms": 3 });
        for (key, value) in extra.as_object().unwrap() {
            event[key] = value.clone();
        }
        event
    }

    fn start(step: &str, attempt: u32) -> Value {
        json!({ "kind": "step_start", "step": step, "attempt": attempt, "executor": "shell",
                "plugin_pid": 42 })
    }

    #[test]
    fn renders_every_kind_of_step() {
        let mut events = vec![build_start()];
        for step in ["build", "unit", "package", "lint", "flaky", "slow", "crash"] {
            events.push(json!({ "kind": "step_queued", "step": step }));
        }
        events.extend([
            start("build", 1),
            step_end(
                "build",
                1,
                "passed",
                json!({ "exit_code": 0, "cache": "hit", "saved_ms": 61500, "artifacts": [
                    { "path": "dist/app.txt", "bytes": 4, "sha256": "ab" },
                    { "path": "dist/a&b.whl", "bytes": 9, "sha256": "cd" },
                ] }),
            ),
            start("unit", 1),
            step_end(
                "unit",
                1,
                "failed",
                json!({ "cause": "exit", "exit_code": 3 }),
            ),
            step_end(
                "package",
                1,
                "skipped",
                json!({ "cause": "dependency_failed", "duration_ms": 0,
                        "peak_memory_bytes": null, "cpu_ms": null }),
            ),
            start("lint", 1),
            step_end(
                "lint",
                1,
                "failed",
                json!({ "cause": "exit", "exit_code": 1, "message": "failure allowed",
                        "allowed_failure": true }),
            ),
            start("flaky", 1),
            step_end(
                "flaky",
                1,
                "failed",
                json!({ "cause": "signal", "signal": 9 }),
            ),
            json!({ "kind": "step_retry", "step": "flaky", "attempt": 2, "cause": "signal" }),
            start("flaky", 2),
            step_end("flaky", 2, "passed", json!({ "exit_code": 0 })),
            start("slow", 1),
            step_end(
                "slow",
                1,
                "timed_out",
                json!({ "cause": "timeout", "duration_ms": 1500 }),
            ),
            start("crash", 1),
            step_end(
                "crash",
                1,
                "failed",
                json!({ "cause": "executor_crash",
                        "message": "plugin shell was killed by signal SIGSEGV" }),
            ),
            json!({ "kind": "build_end", "status": "timed_out", "exit_code": 124,
                    "duration_ms": 2345, "passed": 2, "failed": 4, "skipped": 1,
                    "cancelled": 0 }),
        ]);
        check(
            &events,
            expect![[r#"
                <?xml version="1.0" encoding="UTF-8"?>
                <testsuites name="ci" tests="7" failures="2" errors="1" time="2.345">
                  <testsuite name="ci" tests="7" failures="2" errors="1" skipped="2" time="2.345" timestamp="2026-03-01T12:00:00.000Z">
                    <properties>
                      <property name="hm.run_id" value="run-1"/>
                      <property name="hm.status" value="timed_out"/>
                      <property name="hm.exit_code" value="124"/>
                      <property name="hm.isolation" value="cgroup_v2"/>
                      <property name="hm.parallelism" value="2"/>
                    </properties>
                    <testcase name="build" classname="ci" time="0.012" status="passed">
                      <system-out>replayed from hm&apos;s cache: the step ran in 61.500s when it was stored
                [[ATTACHMENT|dist/app.txt]]
                [[ATTACHMENT|dist/a&amp;b.whl]]
                </system-out>
                    </testcase>
                    <testcase name="unit" classname="ci" time="0.012" status="failed">
                      <failure message="exited with code 3" type="exit">status: failed
                cause: exit
                exit code: 3
                attempt: 1
                executor: shell
                duration: 0.012s
                peak memory: 4096 bytes
                cpu time: 3 ms</failure>
                    </testcase>
                    <testcase name="package" classname="ci" time="0.000" status="skipped">
                      <skipped message="skipped: a step it needs failed"/>
                    </testcase>
                    <testcase name="lint" classname="ci" time="0.012" status="failed">
                      <skipped message="failure allowed: exited with code 1">status: failed
                cause: exit
                exit code: 1
                attempt: 1
                executor: shell
                duration: 0.012s
                peak memory: 4096 bytes
                cpu time: 3 ms</skipped>
                    </testcase>
                    <testcase name="flaky" classname="ci" time="0.012" status="passed">
                      <system-err>attempt 1 failed after 0.012s: killed by signal 9 (SIGKILL); hm retried it (signal)
                </system-err>
                    </testcase>
                    <testcase name="slow" classname="ci" time="1.500" status="timed_out">
                      <failure message="timed out after 1.500s" type="timeout">status: timed_out
                cause: timeout
                attempt: 1
                executor: shell
                duration: 1.500s
                peak memory: 4096 bytes
                cpu time: 3 ms</failure>
                    </testcase>
                    <testcase name="crash" classname="ci" time="0.012" status="failed">
                      <error message="plugin shell was killed by signal SIGSEGV" type="executor_crash">status: failed
                cause: executor_crash
                attempt: 1
                executor: shell
                duration: 0.012s
                peak memory: 4096 bytes
                cpu time: 3 ms</error>
                    </testcase>
                  </testsuite>
                </testsuites>
            "#]],
        );
    }

    #[test]
    fn escapes_names_and_messages_everywhere_they_land() {
        check(
            &[
                json!({ "kind": "build_start", "ts": "t", "run_id": "r\"1",
                        "pipeline": "a<b>&\"c\"", "parallelism": 1, "isolation": "rlimit" }),
                json!({ "kind": "step_queued", "step": "it's <odd>\u{1b}" }),
                step_end(
                    "it's <odd>\u{1b}",
                    1,
                    "failed",
                    json!({ "cause": "hook_abort",
                            "message": "aborted by hook gate: no\n\"deploys\" & <friday>",
                            "peak_memory_bytes": null, "cpu_ms": null }),
                ),
                json!({ "kind": "build_end", "status": "failed", "exit_code": 1,
                        "duration_ms": 1, "passed": 0, "failed": 1, "skipped": 0,
                        "cancelled": 0 }),
            ],
            expect![[r#"
                <?xml version="1.0" encoding="UTF-8"?>
                <testsuites name="a&lt;b&gt;&amp;&quot;c&quot;" tests="1" failures="1" errors="0" time="0.001">
                  <testsuite name="a&lt;b&gt;&amp;&quot;c&quot;" tests="1" failures="1" errors="0" skipped="0" time="0.001" timestamp="t">
                    <properties>
                      <property name="hm.run_id" value="r&quot;1"/>
                      <property name="hm.status" value="failed"/>
                      <property name="hm.exit_code" value="1"/>
                      <property name="hm.isolation" value="rlimit"/>
                      <property name="hm.parallelism" value="1"/>
                    </properties>
                    <testcase name="it&apos;s &lt;odd&gt;\u{1b}" classname="a&lt;b&gt;&amp;&quot;c&quot;" time="0.012" status="failed">
                      <failure message="aborted by hook gate: no&#10;&quot;deploys&quot; &amp; &lt;friday&gt;" type="hook_abort">status: failed
                cause: hook_abort
                attempt: 1
                duration: 0.012s</failure>
                    </testcase>
                  </testsuite>
                </testsuites>
            "#]],
        );
    }

    #[test]
    fn lists_steps_without_an_end_and_counts_steps_it_never_saw() {
        check(
            &[
                json!({ "kind": "step_queued", "step": "lost" }),
                start("lost", 1),
                json!({ "kind": "build_end", "status": "passed", "exit_code": 0,
                        "duration_ms": 10, "passed": 3, "failed": 0, "skipped": 0,
                        "cancelled": 0 }),
            ],
            expect![[r#"
                <?xml version="1.0" encoding="UTF-8"?>
                <testsuites name="from-init" tests="1" failures="0" errors="1" time="0.010">
                  <testsuite name="from-init" tests="1" failures="0" errors="1" skipped="0" time="0.010">
                    <properties>
                      <property name="hm.run_id" value="run-1"/>
                      <property name="hm.status" value="passed"/>
                      <property name="hm.exit_code" value="0"/>
                    </properties>
                    <testcase name="lost" classname="from-init" time="0.000">
                      <error message="hm reported no end of this step to the junit hook (attempt 1 started)" type="no_step_end"/>
                    </testcase>
                    <system-err>hm ended 2 step(s) that this report does not list: the junit hook missed their events (hm warns `hook junit missed N event(s)` when it drops any).</system-err>
                  </testsuite>
                </testsuites>
            "#]],
        );
    }
}
