//! `plugin.toml` read and checked: what it means, and every problem in its place.

use std::path::Path;

use super::*;
use crate::config::Limits;

const GOOD: &str = r#"
name = "mine"
version = "0.1.0"
description = "runs steps my way"
executable = "hm-plugin-mine"
protocol = { min = 1, max = 3 }
capabilities = ["executor:mine", "subcommand:graph", "hook:step_start"]
limits = { memory = "256MiB", pids = 64, cpu = 0.5 }
"#;

fn errors(text: &str) -> String {
    match parse(text, Path::new("/b/plugin.toml")) {
        Ok(m) => panic!("expected errors, got {m:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_complete_manifest_reads_into_its_fields() {
    let m = parse(GOOD, Path::new("plugin.toml")).expect("valid");
    assert_eq!(m.name, "mine");
    assert_eq!(m.executable, "hm-plugin-mine");
    assert_eq!(m.protocol, (1, 3));
    assert_eq!(m.limits.memory_bytes, Some(256 << 20));
    assert_eq!(m.limits.pids, Some(64));
    assert_eq!(m.limits.cpu, Some(0.5));
    assert_eq!(m.executors().collect::<Vec<_>>(), ["mine"]);
    assert_eq!(
        m.claims(),
        [Claim::Executor("mine".into()), Claim::Verb("graph".into())]
    );
}

#[test]
fn subcommand_tables_describe_declared_verbs() {
    let text = format!(
        "{GOOD}\n[[subcommand]]\nverb = \"graph\"\nabout = \"Draws the DAG\"\n\
         args = [{{ name = \"out\", takes_value = true, help = \"where\" }}, \
         {{ name = \"dot\", long = \"as-dot\" }}]\n"
    );
    let m = parse(&text, Path::new("plugin.toml")).expect("valid");
    assert_eq!(m.subcommands.len(), 1);
    let graph = &m.subcommands[0];
    assert_eq!(
        (graph.verb.as_str(), graph.about.as_str()),
        ("graph", "Draws the DAG")
    );
    assert_eq!(
        graph.args,
        [
            ArgSpec {
                name: "out".into(),
                long: "out".into(),
                takes_value: true,
                help: "where".into(),
            },
            ArgSpec {
                name: "dot".into(),
                long: "as-dot".into(),
                takes_value: false,
                help: String::new(),
            },
        ]
    );
    let e = errors(&format!(
        "{GOOD}\n[[subcommand]]\nverb = \"other\"\nargs = [{{ nme = \"x\" }}]\n"
    ));
    assert_eq!(
        e,
        "/b/plugin.toml:11:8: error: `[[subcommand]]` describes `other`, which \
         `capabilities` does not declare\n  hint: add \"subcommand:other\" to `capabilities`\n\
         /b/plugin.toml:12:9: error: `name` in [subcommand.args] is missing\n  \
         hint: add `name = \"...\"`\n\
         /b/plugin.toml:12:11: error: unknown key `nme` in [subcommand.args]\n  \
         hint: did you mean `name`?"
    );
}

#[test]
fn hook_tables_set_phase_and_timeout_and_default_to_after() {
    let text = GOOD.replace(
        "\"hook:step_start\"",
        "\"hook:step_start\", \"hook:build_end\", \"hook:*\"",
    ) + "\n[[hook]]\nevent = \"step_start\"\nphase = \"before\"\ntimeout = \"1500ms\"\n";
    let m = parse(&text, Path::new("plugin.toml")).expect("valid");
    let spec = |event, phase, ms| HookSpec {
        event,
        phase,
        timeout: std::time::Duration::from_millis(ms),
    };
    assert_eq!(
        m.hooks,
        [
            spec("step_start", HookPhase::Before, 1500),
            spec("build_end", HookPhase::After, 5000),
            spec("*", HookPhase::After, 5000),
        ]
    );
    // Hooks claim nothing: any number of plugins may observe one event.
    assert_eq!(m.claims().len(), 2);
}

#[test]
fn bad_hooks_are_reported_where_they_are() {
    let e = errors(&GOOD.replace("hook:step_start", "hook:step_stat"));
    assert!(e.contains("unknown event `step_stat`"), "{e}");
    assert!(e.contains("did you mean `hook:step_start`?"), "{e}");
    let text = GOOD.replace(
        "\"hook:step_start\"",
        "\"hook:step_start\", \"hook:step_end\"",
    ) + "\n[[hook]]\nevent = \"step_end\"\nphase = \"before\"\n\
           \n[[hook]]\nevent = \"step_start\"\nphase = \"during\"\ntimeout = \"0s\"\n\
           \n[[hook]]\nevent = \"build_end\"\n\
           \n[[hook]]\nevent = \"step_start\"\nwhen = 1\n";
    let e = errors(&text);
    for expected in [
        "/b/plugin.toml:12:9: error: `phase = \"before\"` is only available for \
         `step_start`, not `step_end`",
        "/b/plugin.toml:16:9: error: unknown phase `during`",
        "/b/plugin.toml:17:11: error: `timeout` in [hook] must be longer than zero",
        "/b/plugin.toml:20:9: error: `[[hook]]` describes `build_end`, which \
         `capabilities` does not declare",
        "/b/plugin.toml:23:9: error: `[[hook]]` for `step_start` appears twice",
        "/b/plugin.toml:24:1: error: unknown key `when` in [hook]",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
    let e = errors(&(GOOD.to_owned() + "\n[[hook]]\nevent = \"step_start\"\ntimeout = \"11m\"\n"));
    assert!(
        e.contains("/b/plugin.toml:12:11: error: `timeout` in [hook] must be at most 10m"),
        "{e}"
    );
}

#[test]
fn description_and_limits_are_optional() {
    let text = "name = \"a\"\nversion = \"1\"\nexecutable = \"a\"\n\
                protocol = { min = 1, max = 1 }\ncapabilities = []\n";
    let m = parse(text, Path::new("plugin.toml")).expect("valid");
    assert_eq!(m.description, "");
    assert_eq!(m.limits, Limits::default());
}

#[test]
fn toml_syntax_errors_carry_line_and_column() {
    let e = errors("name = \"a\"\nversion = 1.0.0\n");
    assert!(e.starts_with("/b/plugin.toml:2:"), "{e}");
    assert!(e.contains("invalid TOML"), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_position() {
    let text = r#"name = "bad name"
version = 3
executable = "../escape"
protocol = { min = 4, max = 2 }
capabilities = ["executor:ok", "exector:x", "executor:"]
limit = {}
"#;
    let e = errors(text);
    for expected in [
        "/b/plugin.toml:1:8: error: invalid plugin name `bad name`",
        "/b/plugin.toml:2:11: error: `version` must be a string, found an integer `3`",
        "hint: quote it: `version = \"3\"`",
        "/b/plugin.toml:3:14: error: `executable` must be a file name",
        "/b/plugin.toml:4:12: error: `protocol` is empty: min 4 is above max 2",
        "/b/plugin.toml:5:32: error: unknown capability kind `exector`",
        "hint: did you mean `executor`?",
        "/b/plugin.toml:5:45: error: invalid executor name ``",
        "/b/plugin.toml:6:1: error: unknown key `limit` at the top level",
        "hint: did you mean `limits`?",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

#[test]
fn missing_keys_are_named() {
    let e = errors("name = \"a\"\n");
    for key in ["version", "executable", "protocol", "capabilities"] {
        assert!(e.contains(&format!("`{key}` is missing")), "{e}");
    }
}

#[test]
fn bad_limits_are_reported() {
    let text = "name = \"a\"\nversion = \"1\"\nexecutable = \"a\"\n\
                protocol = { min = 1, max = 1 }\ncapabilities = []\n\
                limits = { memory = \"lots\", pids = 0, cpu = -1, disk = 1 }\n";
    // The same words, from the same reader, as `limits` in `hm.toml`.
    let e = errors(text);
    for expected in [
        "/b/plugin.toml:6:21: error: invalid size `lots` for `memory` in [limits]",
        "/b/plugin.toml:6:36: error: `pids` in [limits] must be at least 1, found `0`",
        "/b/plugin.toml:6:45: error: `cpu` in [limits] must be a number of cores above 0",
        "/b/plugin.toml:6:49: error: unknown key `disk` in [limits]",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
    }
}

#[test]
fn names_follow_the_safe_alphabet() {
    for good in ["a", "shell", "my-plugin_2.0", "_x"] {
        assert!(valid_name(good), "{good}");
    }
    for bad in ["", "-x", ".x", "a/b", "a b", "ü", &"x".repeat(65)] {
        assert!(!valid_name(bad), "{bad}");
    }
}
