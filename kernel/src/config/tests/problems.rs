//! What is wrong with a `hm.toml`, each problem at its place, all at once.

use super::*;

#[test]
fn a_toml_syntax_error_is_one_positioned_diagnostic() {
    check(
        "[steps.a]\nrun = \"x\"\ntimeout = = 3\n",
        "hm.toml:3:11: error: invalid TOML: extra `=`, expected nothing
  hint: the file must be valid TOML before the rest of it can be checked
",
    );
    check(
        "[steps.a]\nrun = \"x\"\nrun = \"y\"\n",
        "hm.toml:3:1: error: invalid TOML: duplicate key
  hint: the file must be valid TOML before the rest of it can be checked
",
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_once_in_file_order() {
    check(
        r#"[pipeline]
name = "ci"
paralelism = 4

[steps.build]
run = "make"
tmeout = "10m"
needs = ["tset"]

[steps.test]
run = 42
limits = { memory = "lots", pids = 0 }

[step.deploy]
run = "ship"
"#,
        "hm.toml:3:1: error: unknown key `paralelism` in [pipeline]
  hint: did you mean `parallelism`?
hm.toml:7:1: error: unknown key `tmeout` in [steps.build]
  hint: did you mean `timeout`?
hm.toml:8:10: error: step `build` needs unknown step `tset`
  hint: did you mean `test`?
hm.toml:11:7: error: `run` in [steps.test] must be a string, found an integer `42`
  hint: quote it: `run = \"42\"`
hm.toml:12:21: error: invalid size `lots` for `memory` in [steps.test.limits]: `lots` does not start with a number
  hint: sizes look like \"512MiB\", \"1GiB\", \"1G\" or a number of bytes
hm.toml:12:36: error: `pids` in [steps.test.limits] must be at least 1, found `0`
  hint: leave `pids` out for no limit
hm.toml:14:2: error: unknown table `[step]`
  hint: did you mean `[steps]`?
",
    );
}

#[test]
fn unknown_keys_are_errors_everywhere_with_a_hint() {
    check(
        r#"name = "top"
[pipeline]
nmae = "x"
[defaults]
run = "x"
env = { A = "1" }
excutor = "shell"
colour = "red"
[steps.a]
run = "x"
limits = { memroy = "1G" }
retry = { attempts = 2, onn = ["oom"] }
[plugins.p]
restart = { mx = 1 }
foo = 1
[extra]
"#,
        "hm.toml:1:1: error: unknown key `name` at the top level
  hint: `name` belongs in `[pipeline]`
hm.toml:3:1: error: unknown key `nmae` in [pipeline]
  hint: did you mean `name`?
hm.toml:5:1: error: unknown key `run` in [defaults]
  hint: `run` is set per step, in `[steps.<name>]`
hm.toml:7:1: error: unknown key `excutor` in [defaults]
  hint: did you mean `executor`?
hm.toml:8:1: error: unknown key `colour` in [defaults]
  hint: expected one of `dir`, `env`, `timeout`, `allow_failure`, `shell`, `artifacts`, `inputs`, `cache`, `limits`, `retry`, `executor`, `image`, `with`, `if`, `when` or `services`
hm.toml:11:12: error: unknown key `memroy` in [steps.a.limits]
  hint: did you mean `memory`?
hm.toml:12:25: error: unknown key `onn` in [steps.a.retry]
  hint: did you mean `on`?
hm.toml:14:13: error: unknown key `mx` in [plugins.p.restart]
  hint: did you mean `max`?
hm.toml:15:1: error: unknown key `foo` in [plugins.p]
  hint: expected one of `limits`, `restart`, `config`, `required` or `handshake_timeout`
hm.toml:16:2: error: unknown table `[extra]`
  hint: the file has the tables `[pipeline]`, `[cache]`, `[defaults]`, `[templates.<name>]`, `[steps.<name>]`, `[services.<name>]` and `[plugins.<name>]`, and `include`
",
    );
}

#[test]
fn wrong_types_say_what_was_expected_and_what_was_found() {
    check(
        r#"[pipeline]
name = ""
timeout = 30
parallelism = "4"
keep_going = "true"
env = "CI=true"
[steps.a]
run = ["make", "all"]
needs = "b"
dir = 7
allow_failure = 1
limits = "big"
retry = 3
executor = ""
image = { name = "rust" }
with = "pull"
[steps.b]
run = "x"
timeout = "soon"
limits = { cpu = "2", memory = -1 }
retry = { attempts = 2, on = "oom" }
[steps.c]
run = "   "
limits = { cpu = 0, memory = true }
"#,
        r#"hm.toml:2:8: error: `name` in [pipeline] must not be empty
hm.toml:3:11: error: `timeout` in [pipeline] must be a duration string, found an integer `30`
  hint: durations need a unit: `timeout = "30s"`
hm.toml:4:15: error: `parallelism` in [pipeline] must be an integer, found a string `"4"`
  hint: write it without quotes: `parallelism = 4`
hm.toml:5:14: error: `keep_going` in [pipeline] must be true or false, found a string `"true"`
  hint: write it without quotes: `keep_going = true`
hm.toml:6:7: error: `env` in [pipeline] must be a table of strings, found a string `"CI=true"`
  hint: write `env = { KEY = "value" }`
hm.toml:8:7: error: `run` in [steps.a] must be a string, found an array `["make", "all"]`
hm.toml:9:9: error: `needs` in [steps.a] must be an array of step names, found a string `"b"`
  hint: write `needs = ["b"]`
hm.toml:10:7: error: `dir` in [steps.a] must be a string, found an integer `7`
  hint: quote it: `dir = "7"`
hm.toml:11:17: error: `allow_failure` in [steps.a] must be true, false or a table, found an integer `1`
  hint: write `allow_failure = true`, or `allow_failure = { exit_codes = [77] }` for some codes only
hm.toml:12:10: error: `limits` in [steps.a] must be a table, found a string `"big"`
  hint: write `limits = { memory = "1GiB", pids = 512, cpu = 2.0 }`
hm.toml:13:9: error: `retry` in [steps.a] must be a table, found an integer `3`
  hint: write `retry = { attempts = 3, on = ["failed"] }`
hm.toml:14:12: error: `executor` in [steps.a] must not be empty
hm.toml:15:9: error: `image` in [steps.a] must be a string, found an inline table `{ name = "rust" }`
hm.toml:16:8: error: `with` in [steps.a] must be a table, found a string `"pull"`
  hint: write `with = { key = "value" }`
hm.toml:19:11: error: invalid duration `soon` for `timeout` in [steps.b]: expected a number followed by a unit
  hint: durations look like "90s", "5m" or "1h30m"
hm.toml:20:18: error: `cpu` in [steps.b.limits] must be a number of cores, found a string `"2"`
  hint: write it without quotes: `cpu = 2`
hm.toml:20:32: error: `memory` in [steps.b.limits] must not be negative
  hint: sizes look like "512MiB", "1GiB", "1G" or a number of bytes
hm.toml:21:30: error: `on` in [steps.b.retry] must be an array of retry classes, found a string `"oom"`
  hint: retry classes: failed, exit:N, signal, oom, pids, timeout, crash, image, service, node_lost
hm.toml:23:7: error: `run` in [steps.c] must not be empty
hm.toml:24:18: error: `cpu` in [steps.c.limits] must be a number of cores above 0
  hint: leave `cpu` out for no limit
hm.toml:24:30: error: `memory` in [steps.c.limits] must be a size, found a boolean `true`
  hint: sizes look like "512MiB", "1GiB", "1G" or a number of bytes
"#,
    );
}

#[test]
fn env_values_must_be_strings_or_secret_references() {
    check(
        r#"[pipeline]
env = { N = 1, OK = "yes", F = 1.5, "" = "empty", "A=B" = "x" }
[steps.a]
run = "x"
env = { TOKEN = { secret = "GH_TOKEN" }, DEBUG = true, OTHER = { a = 1 } }
[steps.b]
run = "x"
env = { A = { secret = "" }, B = { secret = "X", from = "vault" }, C = { secret = 1 } }
"#,
        r#"hm.toml:2:13: error: `N` in [pipeline.env] must be a string, found an integer `1`
  hint: quote it: `N = "1"`
hm.toml:2:32: error: `F` in [pipeline.env] must be a string, found a float `1.5`
  hint: quote it: `F = "1.5"`
hm.toml:2:37: error: invalid environment variable name `` in [pipeline.env]
  hint: names must be non-empty and cannot contain `=` or NUL
hm.toml:2:51: error: invalid environment variable name `A=B` in [pipeline.env]
  hint: names must be non-empty and cannot contain `=` or NUL
hm.toml:5:50: error: `DEBUG` in [steps.a.env] must be a string, found a boolean `true`
  hint: quote it: `DEBUG = "true"`
hm.toml:5:64: error: `OTHER` in [steps.a.env] must be a string or a secret (`{ secret = "NAME" }`), found an inline table `{ a = 1 }`
  hint: write `NAME = { secret = "SECRET_NAME" }` for a secret's value
hm.toml:8:24: error: `secret` of `A` in [steps.b.env] must not be empty
hm.toml:8:50: error: `from` has no place in `B` in [steps.b.env], a secret reference
  hint: write `NAME = { secret = "SECRET_NAME" }` for a secret's value
hm.toml:8:83: error: `secret` of `C` in [steps.b.env] must be a string, found an integer `1`
  hint: quote it: `secret = "1"`
"#,
    );
}

#[test]
fn step_and_plugin_names_are_restricted_to_a_safe_alphabet() {
    check(
        r#"[steps."hello world"]
run = "x"
[steps."-v"]
run = "x"
[steps.".."]
run = "x"
[steps."ünï"]
run = "x"
[steps."ok-name_1.2"]
run = "x"
[plugins."a/b"]
"#,
        r#"hm.toml:1:8: error: invalid step name `hello world`
  hint: names use ASCII letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`
hm.toml:3:8: error: invalid step name `-v`
  hint: names use ASCII letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`
hm.toml:5:8: error: invalid step name `..`
  hint: names use ASCII letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`
hm.toml:7:8: error: invalid step name `\u{fc}n\u{ef}`
  hint: names use ASCII letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`
hm.toml:11:10: error: invalid plugin name `a/b`
  hint: names use ASCII letters, digits, `-`, `_` and `.`, and start with a letter, digit or `_`
"#,
    );
}

#[test]
fn needs_must_name_other_existing_steps() {
    check(
        r#"[steps.build]
run = "x"
needs = ["build", "tst", 3, "zzz"]
[steps.test]
run = "y"
needs = ["build", "build"]
"#,
        r#"hm.toml:3:10: error: step `build` needs itself
  hint: remove it from its own `needs`
hm.toml:3:19: error: step `build` needs unknown step `tst`
  hint: did you mean `test`?
hm.toml:3:26: error: `needs` in [steps.build] must list step names as strings, found an integer `3`
  hint: write `"NAME"` or `{ step = "NAME", optional = true }`
hm.toml:3:29: error: step `build` needs unknown step `zzz`
  hint: steps in this file: `build` or `test`
"#,
    );
}

#[test]
fn a_step_that_is_not_a_table_is_still_a_known_name() {
    check(
        r#"[steps]
a = "echo hi"
[[steps.b]]
run = "x"
[steps.c]
run = "y"
needs = ["a", "b"]
"#,
        r#"hm.toml:2:5: error: [steps.a] must be a table, found a string `"echo hi"`
  hint: write `[steps.a]` on its own line, followed by `run = "..."`
hm.toml:3:1: error: [steps.b] must be a table, found an array of tables
  hint: write `[steps.b]` on its own line, followed by `run = "..."`
"#,
    );
}

#[test]
fn a_cycle_is_reported_once_with_its_path_at_its_first_step() {
    check(
        r#"[steps.setup]
run = "x"
[steps.a]
run = "x"
needs = ["setup", "c"]
[steps.b]
run = "x"
needs = ["a"]
[steps.c]
run = "x"
needs = ["b"]
"#,
        "hm.toml:3:1: error: dependency cycle: a -> c -> b -> a
  hint: `a -> b` means `a` needs `b`; remove one of these `needs` entries
",
    );
}

#[test]
fn separate_cycles_are_each_reported() {
    check(
        r#"[steps.x]
run = "x"
needs = ["y"]
[steps.p]
run = "x"
needs = ["q"]
[steps.y]
run = "x"
needs = ["x"]
[steps.q]
run = "x"
needs = ["p", "x"]
"#,
        "hm.toml:1:1: error: dependency cycle: x -> y -> x
  hint: `a -> b` means `a` needs `b`; remove one of these `needs` entries
hm.toml:4:1: error: dependency cycle: p -> q -> p
  hint: `a -> b` means `a` needs `b`; remove one of these `needs` entries
",
    );
}

#[test]
fn dir_must_be_a_relative_path_inside_the_root() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let root = tmp.path().join("proj");
    std::fs::create_dir_all(root.join("crates/core")).expect("create dirs");
    std::fs::write(root.join("README"), "").expect("create file");
    check_in(
        &root,
        r#"[steps.abs]
run = "x"
dir = "/tmp"
[steps.up]
run = "x"
dir = "crates/../.."
[steps.missing]
run = "x"
dir = "crates/nope"
[steps.file]
run = "x"
dir = "README"
[steps.empty]
run = "x"
dir = ""
"#,
        r#"hm.toml:3:7: error: `dir` in [steps.abs] must be a relative path, found `/tmp`
  hint: paths in hm.toml are relative to the directory that holds it
hm.toml:6:7: error: `dir` in [steps.up] leaves the pipeline's directory: `crates/../..`
  hint: paths in hm.toml are relative to the directory that holds it
hm.toml:15:7: error: `dir` in [steps.empty] must not be empty
  hint: leave `dir` out to run in the pipeline's directory
"#,
    );
    check_in(
        &root,
        r#"[steps.a]
run = "x"
dir = "./crates/../crates/core/"
[steps.b]
run = "x"
dir = "."
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
step a at hm.toml:1:1 executor=shell run="x"
  needs=[] dir=crates/core env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
step b at hm.toml:4:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
"#,
    );
}

#[test]
fn a_pipeline_without_steps_is_an_error() {
    check(
        "",
        r#"hm.toml:1:1: error: the pipeline has no steps
  hint: add one: `[steps.build]` with `run = "..."`
"#,
    );
    check(
        "[pipeline]\nname = \"x\"\n[steps]\n",
        r#"hm.toml:3:1: error: the pipeline has no steps
  hint: add one: `[steps.build]` with `run = "..."`
"#,
    );
    check(
        "steps = 3\n",
        r#"hm.toml:1:9: error: [steps] must be a table of steps, found an integer `3`
  hint: write each step as `[steps.<name>]` followed by `run = "..."`
"#,
    );
    check(
        "[steps.a]\ndir = \".\"\n",
        r#"hm.toml:1:1: error: step `a` has no `run`
  hint: add the command to run: `run = "..."`, or extend a template that has one
"#,
    );
}

#[test]
fn retry_policies_are_checked() {
    check(
        r#"[steps.a]
run = "x"
retry = { attempts = 0, on = ["oom"] }
[steps.b]
run = "x"
retry = { attempts = 3, on = [] }
[steps.c]
run = "x"
retry = { on = ["om", "exit:0", "exit", "bogus", 5] }
[steps.d]
run = "x"
retry = { attempts = 1, on = [] }
"#,
        r#"hm.toml:3:22: error: `attempts` in [steps.a.retry] must be at least 1, found `0`
hm.toml:6:30: error: `on` in [steps.b.retry] is empty, so no attempt after the first would ever run
  hint: list the failures to retry on, or leave `on` out to retry on any failure
hm.toml:9:9: error: `retry` in [steps.c] needs `attempts`
  hint: `attempts` counts every try, the first included: `attempts = 2` retries once
hm.toml:9:17: error: unknown retry class `om` in `on` in [steps.c.retry]
  hint: did you mean `oom`?
hm.toml:9:23: error: `exit:0` needs an exit code from 1 to 255 in `on` in [steps.c.retry]
  hint: write `exit:N` with the exit code, e.g. `exit:101`
hm.toml:9:33: error: unknown retry class `exit` in `on` in [steps.c.retry]
  hint: write `exit:N` with the exit code, e.g. `exit:101`
hm.toml:9:41: error: unknown retry class `bogus` in `on` in [steps.c.retry]
  hint: retry classes: failed, exit:N, signal, oom, pids, timeout, crash, image, service, node_lost
hm.toml:9:50: error: `on` in [steps.c.retry] must list retry classes as strings, found an integer `5`
  hint: retry classes: failed, exit:N, signal, oom, pids, timeout, crash, image, service, node_lost
"#,
    );
    check(
        "[steps.a]\nrun = \"x\"\nretry = { attempts = 4, on = [\"oom\", \"exit:2\", \"oom\", \"pids\"] }\n",
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
step a at hm.toml:1:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=4x[Oom, Exit(2), Pids] image=- with={}
"#,
    );
}

#[test]
fn sizes_and_durations_in_context() {
    check(
        r#"[pipeline]
timeout = "0s"
[defaults]
timeout = "1 fortnight"
[steps.a]
run = "x"
timeout = 90
limits = { memory = 0, pids = "12" }
[steps.b]
run = "x"
limits = { memory = "12XB", cpu = nan }
[steps.c]
run = "x"
timeout = "1h30m"
limits = { memory = 1048576, cpu = 0.25 }
"#,
        r#"hm.toml:2:11: error: `timeout` in [pipeline] must be longer than zero
  hint: leave `timeout` out for no deadline
hm.toml:4:11: error: invalid duration `1 fortnight` for `timeout` in [defaults]: unknown unit `fortnight` (units: ms, s, m, h, d, w and their long forms)
  hint: durations look like "90s", "5m" or "1h30m"
hm.toml:7:11: error: `timeout` in [steps.a] must be a duration string, found an integer `90`
  hint: durations need a unit: `timeout = "90s"`
hm.toml:8:21: error: `memory` in [steps.a.limits] must be more than 0 bytes
  hint: leave `memory` out for no limit
hm.toml:8:31: error: `pids` in [steps.a.limits] must be an integer, found a string `"12"`
  hint: write it without quotes: `pids = 12`
hm.toml:11:21: error: invalid size `12XB` for `memory` in [steps.b.limits]: unknown unit `XB` (units: B, K, M, G, T, KiB, MiB, GiB, TiB)
  hint: sizes look like "512MiB", "1GiB", "1G" or a number of bytes
hm.toml:11:35: error: `cpu` in [steps.b.limits] must be a number of cores above 0
  hint: leave `cpu` out for no limit
"#,
    );
    check(
        r#"[steps.c]
run = "x"
timeout = "1h30m"
limits = { memory = 1048576, cpu = 0.25, pids = 9 }
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
step c at hm.toml:1:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=1h 30m allow_failure=false limits=memory:1048576,pids:9,cpu:0.25 retry=1x[] image=- with={}
"#,
    );
}

#[test]
fn plugin_settings_have_defaults_and_are_checked() {
    check(
        r#"[steps.a]
run = "x"
with = { list = [1, 2], nested = { deep = true } }
[plugins.bare]
[plugins.tuned]
limits = { pids = 64 }
restart = { max = 0 }
config = { retries = 2 }
required = true
handshake_timeout = "30s"
"#,
        r#"pipeline proj timeout=- parallelism=- keep_going=false env={}
plugin bare limits=- restart=3/1m required=false handshake=10s config={}
plugin tuned limits=pids:64 restart=0/1m required=true handshake=30s config={"retries":2}
step a at hm.toml:1:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={"list":[1,2],"nested":{"deep":true}}
"#,
    );
    check(
        r#"[steps.a]
run = "x"
with = { ratio = inf }
[plugins]
p = "docker"
[plugins.q]
restart = { max = -1, within = "0s" }
config = "host=x"
required = "yes"
handshake_timeout = 10
"#,
        r#"hm.toml:3:18: error: `inf` in `with` in [steps.a] cannot be passed on: JSON has no such number
  hint: use a finite number or a string
hm.toml:5:5: error: [plugins.p] must be a table, found a string `"docker"`
  hint: write `[plugins.p]` followed by its settings
hm.toml:7:19: error: `max` in [plugins.q.restart] must be at least 0, found `-1`
hm.toml:7:32: error: `within` in [plugins.q.restart] must be longer than zero
  hint: use a window such as "60s"
hm.toml:8:10: error: `config` in [plugins.q] must be a table, found a string `"host=x"`
  hint: write `config = { key = "value" }`
hm.toml:9:12: error: `required` in [plugins.q] must be true or false, found a string `"yes"`
hm.toml:10:21: error: `handshake_timeout` in [plugins.q] must be a duration string, found an integer `10`
  hint: durations need a unit: `handshake_timeout = "10s"`
"#,
    );
}

#[test]
fn pipeline_settings_are_read_and_checked() {
    check(
        "[pipeline]\nname = \"nightly\"\nparallelism = 2\nkeep_going = true\n[steps.a]\nrun = \"x\"\n",
        r#"pipeline nightly timeout=- parallelism=2 keep_going=true env={}
step a at hm.toml:5:1 executor=shell run="x"
  needs=[] dir=. env={} timeout=- allow_failure=false limits=- retry=1x[] image=- with={}
"#,
    );
    check(
        "[pipeline]\nparallelism = 0\n[steps.a]\nrun = \"x\"\n",
        r#"hm.toml:2:15: error: `parallelism` in [pipeline] must be at least 1, found `0`
  hint: leave `parallelism` out to use the number of CPUs
"#,
    );
    check(
        "pipeline = \"ci\"\n[steps.a]\nrun = \"x\"\n",
        r#"hm.toml:1:12: error: [pipeline] must be a table, found a string `"ci"`
  hint: write `[pipeline]` on its own line, then its keys
"#,
    );
}

#[test]
fn long_values_are_shortened_in_messages() {
    check(
        "[steps.a]\nrun = \"x\"\nneeds = { a = \"0123456789012345678901234567890123456789\" }\n",
        r#"hm.toml:3:9: error: `needs` in [steps.a] must be an array of step names, found an inline table `{ a = "012345678901234567890123456789012…`
  hint: write `needs = ["step", ...]`
"#,
    );
}

#[test]
fn services_and_the_steps_that_list_them_are_checked() {
    check(
        r#"[services.db]
env = { PASSWORD = 1 }
ports = [5432, 70000]
health = { interval = "1s" }
command = "postgres"

[services.cache]
image = "redis:7"
colour = "red"

[steps.test]
run = "make test"
services = ["cahce", "db"]
"#,
        "hm.toml:1:1: error: [services.db] has no `image`
  hint: add the image it runs: `image = \"postgres:16\"` in [services.db]
hm.toml:2:20: error: `PASSWORD` in [services.db.env] must be a string, found an integer `1`
  hint: quote it: `PASSWORD = \"1\"`
hm.toml:3:16: error: `ports` in [services.db] must hold port numbers from 1 to 65535, found an integer `70000`
  hint: write `ports = [5432]`: the ports the service listens on
hm.toml:4:10: error: `health` in [services.db] has no `run`
  hint: write `health = { run = \"pg_isready -U postgres\", interval = \"1s\", retries = 30 }`
hm.toml:5:11: error: `command` in [services.db] must be an array of strings, found a string `\"postgres\"`
  hint: write `command = [\"program\", \"arg\"]`
hm.toml:9:1: error: unknown key `colour` in [services.cache]
  hint: expected one of `image`, `executor`, `env`, `entrypoint`, `command`, `ports`, `health`, `with` or `limits`
hm.toml:13:13: error: step `test` lists service `cahce`, which is not defined
  hint: did you mean `cache`?
",
    );
}

#[test]
fn a_step_cannot_list_a_service_out_of_its_executors_reach() {
    check(
        r#"[services.db]
image = "postgres:16"

[services.remote]
image = "redis:7"
executor = "swarm"

[steps.local]
run = "make test"
services = ["db", "remote"]

[steps.cluster]
executor = "swarm"
image = "rust:1"
run = "make test"
services = ["remote", "db"]
"#,
        "hm.toml:10:19: error: step `local` runs on executor `shell` and lists service `remote`, which runs on executor `swarm`, out of its reach
  hint: a step on this machine reaches the services docker runs: `executor = \"docker\"` in [services.remote]
hm.toml:16:23: error: step `cluster` runs on executor `swarm` and lists service `db`, which runs on executor `docker`, out of its reach
  hint: run the service where the step runs: `executor = \"swarm\"` in [services.db] (or `[defaults] executor = \"swarm\"` for every step and service)
",
    );
}
