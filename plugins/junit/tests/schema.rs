//! Reports validate against the JUnit schema (`tests/junit.xsd`, checked with xmllint) whatever
//! the step names and messages hold, and the check itself tells a bad document from a good one.

mod support;

use std::path::PathBuf;

use hm_plugin_junit::Report;
use hm_plugin_junit::xml::render;
use serde_json::{Value, json};

fn write(dir: &tempfile::TempDir, name: &str, xml: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, xml).expect("write the document");
    path
}

fn report(events: &[Value]) -> Report {
    let mut report = Report::new("pipeline", "run");
    for event in events {
        report.apply(event);
    }
    report
}

fn end(step: &str, status: &str, cause: Option<&str>, message: &str) -> Value {
    json!({ "kind": "step_end", "step": step, "attempt": 1, "status": status, "cause": cause,
            "exit_code": 1, "signal": null, "duration_ms": 1234, "peak_memory_bytes": 1,
            "cpu_ms": 1, "message": message })
}

/// Every character from U+0000 to U+00FF, a few beyond, and markup look-alikes.
fn hostile(tag: &str) -> String {
    let mut text: String = (0u32..=0xff).filter_map(char::from_u32).collect();
    text.push_str("\u{fffe}\u{ffff}\u{fffd}\u{10ffff}\u{1f600} ]]> <!-- --> <![CDATA[x]]> &amp; ");
    text.push_str(tag);
    text
}

#[test]
fn reports_with_any_characters_in_names_and_messages_validate() {
    let dir = tempfile::tempdir().unwrap();
    let steps = [
        ("passed", None),
        ("failed", Some("exit")),
        ("failed", Some("executor_crash")),
        ("timed_out", Some("timeout")),
        ("skipped", Some("dependency_failed")),
        ("cancelled", Some("cancelled")),
    ];
    let mut events = vec![json!({ "kind": "build_start", "ts": hostile("ts"),
                                  "run_id": hostile("run"), "pipeline": hostile("pipeline"),
                                  "parallelism": 2, "isolation": hostile("isolation") })];
    for (i, (status, cause)) in steps.iter().enumerate() {
        let step = hostile(&format!("step {i}"));
        events.push(json!({ "kind": "step_queued", "step": step }));
        events.push(json!({ "kind": "step_start", "step": step, "attempt": 1,
                            "executor": hostile("executor") }));
        events.push(end(
            &step,
            "failed",
            Some("exit"),
            &hostile("first attempt"),
        ));
        events.push(json!({ "kind": "step_retry", "step": step, "attempt": 2,
                            "cause": hostile("cause") }));
        events.push(end(&step, status, *cause, &hostile("message")));
    }
    let allowed = hostile("allowed");
    let mut allowed_end = end(
        &allowed,
        "failed",
        Some("exit"),
        &hostile("allowed message"),
    );
    allowed_end["allowed_failure"] = json!(true);
    events.push(allowed_end);
    events.push(json!({ "kind": "step_queued", "step": hostile("never ended") }));
    events.push(
        json!({ "kind": "build_end", "status": hostile("status"), "exit_code": 1,
                        "duration_ms": 99, "passed": 1, "failed": 5, "skipped": 1,
                        "cancelled": 3 }),
    );
    let xml = render(&report(&events));
    support::assert_valid(&write(&dir, "hostile.xml", &xml));
    assert!(xml.contains("\\u{0}") && xml.contains("\\u{1b}") && xml.contains("\\u{fffe}"));
}

#[test]
fn an_empty_run_validates() {
    let dir = tempfile::tempdir().unwrap();
    let xml = render(&report(&[
        json!({ "kind": "build_start", "pipeline": "empty" }),
        json!({ "kind": "build_end", "status": "passed", "exit_code": 0, "duration_ms": 0,
                "passed": 0, "failed": 0, "skipped": 0, "cancelled": 0 }),
    ]));
    support::assert_valid(&write(&dir, "empty.xml", &xml));
}

#[test]
fn the_schema_refuses_what_jenkins_and_gitlab_would_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, body: &str| {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n\
             <testsuite name=\"s\" tests=\"1\">\n{body}\n</testsuite>\n</testsuites>\n"
        );
        let path = write(&dir, name, &xml);
        assert!(
            support::validate(&path).is_err(),
            "xmllint accepted {name}:\n{xml}"
        );
    };
    check("no-name.xml", "<testcase classname=\"c\"/>");
    check(
        "failure-before-skipped.xml",
        "<testcase name=\"t\"><failure/><skipped/></testcase>",
    );
    check(
        "two-skipped.xml",
        "<testcase name=\"t\"><skipped/><skipped/></testcase>",
    );
    check(
        "properties-in-a-testcase.xml",
        "<testcase name=\"t\"><properties><property name=\"a\" value=\"b\"/></properties></testcase>",
    );
    check("empty-properties.xml", "<properties/>");
    check(
        "unknown-attribute.xml",
        "<testcase name=\"t\" colour=\"red\"/>",
    );
    check("not-well-formed.xml", "<testcase name=\"t\">&</testcase>");

    let path = write(
        &dir,
        "good.xml",
        "<?xml version=\"1.0\"?>\n<testsuites><testsuite name=\"s\" tests=\"1\">\
         <testcase name=\"t\"><skipped message=\"m\"/></testcase></testsuite></testsuites>\n",
    );
    support::assert_valid(&path);
}
