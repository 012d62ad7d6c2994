//! The plugin registry through the `hm` binary: `hm plugin list|info|install|remove`, the
//! discovery layers (project, user, built-in) with shadowing, loose files, bad manifests and
//! conflicts, the resolution of bare names (cargo build outputs, then the plugin index), and
//! installs that are staged, checked, locked and atomic. Every test has its own project and
//! `XDG_DATA_HOME`/`XDG_CONFIG_HOME`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hm_tests::{Bundle, Hm, Output, Project, RUN_DEADLINE, Value, link_executable};
use sha2::{Digest, Sha256};

const ECHO: &str = env!("CARGO_BIN_EXE_hm-fixture-echo");
const ECHO_V2: &str = env!("CARGO_BIN_EXE_hm-fixture-echo-v2");
const FIXTURE_V1: &str = env!("CARGO_BIN_EXE_hm-fixture-v1");

const PIPELINE: &str = r#"
[steps.greet]
executor = "echo"
run = "echo hello from the step"
"#;

// ---- helpers ----

/// A bundle directory `<parent>/echo/` holding a build of the echo fixture and the manifest
/// that build prints for `--hm-manifest`, edited by `edit`.
fn echo_bundle_with(parent: &Path, binary: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let out = std::process::Command::new(binary)
        .arg("--hm-manifest")
        .output()
        .expect("run the fixture with --hm-manifest");
    assert!(out.status.success(), "{binary} --hm-manifest failed");
    let manifest = String::from_utf8(out.stdout).expect("a UTF-8 manifest");
    let dir = parent.join("echo");
    std::fs::create_dir_all(&dir).expect("create the bundle directory");
    std::fs::write(dir.join("plugin.toml"), edit(manifest)).expect("write plugin.toml");
    let exe = Path::new(binary).file_name().expect("a file name");
    link_executable(Path::new(binary), &dir.join(exe));
    dir
}

fn echo_bundle(parent: &Path, binary: &str) -> PathBuf {
    echo_bundle_with(parent, binary, |m| m)
}

/// The sha256 of a file, as `sha256sum` prints it.
fn sha256(path: impl AsRef<Path>) -> String {
    let bytes = std::fs::read(path.as_ref()).expect("read the file to hash");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything in a directory tree, for byte-for-byte comparisons: each relative path with its
/// kind, mode and the sha256 of its contents. A missing directory is `{"": "absent"}`.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("read a directory") {
            let path = entry.expect("a directory entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("below the root")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                out.insert(rel, format!("link -> {}", target.display()));
            } else {
                out.insert(rel, format!("file {mode:o} {}", sha256(&path)));
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    } else {
        out.insert(String::new(), "absent".to_owned());
    }
    out
}

/// The names in a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the plugins directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn hm_env(project: &Project, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = project.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Hm::spawn(cmd).finish(RUN_DEADLINE)
}

fn hm_in(project: &Project, dir: &Path, args: &[&str]) -> Output {
    Hm::spawn(project.command_in(dir, args)).finish(RUN_DEADLINE)
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        out.stdout,
        out.stderr
    )
}

#[track_caller]
fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", show(out));
}

/// `hm plugin list --json`, parsed.
fn list_json(project: &Project) -> Value {
    let out = project.hm(&["plugin", "list", "--json"]);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
}

/// The plugins of `hm plugin list --json` called `name`, in the order listed.
fn listed<'a>(list: &'a Value, name: &str) -> Vec<&'a Value> {
    list["plugins"]
        .as_array()
        .expect("plugins is an array")
        .iter()
        .filter(|p| p["name"] == name)
        .collect()
}

// ---- install, list, run, remove ----

#[test]
fn an_installed_bundle_is_listed_runs_steps_and_is_removed() {
    let project = Project::new(PIPELINE);
    let bundle = echo_bundle(&project.path("bundles"), ECHO);
    let out = project.hm(&["plugin", "install", bundle.to_str().expect("utf-8")]);
    assert_code(&out, 0);
    let installed = project.user_plugins().join("echo");
    assert!(
        out.stderr.contains("installed echo 1.0.0")
            && out.stderr.contains(&installed.display().to_string()),
        "{}",
        show(&out)
    );
    assert_eq!(snapshot(&installed), snapshot(&bundle), "an exact copy");
    assert_eq!(entries(&project.user_plugins()), ["echo"], "no debris");

    let list = list_json(&project);
    let echo = listed(&list, "echo");
    assert_eq!(echo.len(), 1, "{list:#}");
    assert_eq!(echo[0]["layer"], "user", "{list:#}");
    assert_eq!(echo[0]["version"], "1.0.0", "{list:#}");
    assert_eq!(echo[0]["active"], true, "{list:#}");
    assert_eq!(echo[0]["dir"], installed.display().to_string(), "{list:#}");
    assert_eq!(
        echo[0]["capabilities"],
        serde_json::json!(["executor:echo"])
    );
    assert_eq!(listed(&list, "shell")[0]["layer"], "built-in", "{list:#}");

    let info = project.hm(&["plugin", "info", "echo", "--json"]);
    assert_code(&info, 0);
    let info: Value = serde_json::from_str(&info.stdout).expect("info --json is JSON");
    assert_eq!(info["sha256"], sha256(ECHO), "{info:#}");

    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.lines("greet"),
        ["echo plugin 1.0.0", "hello from the step"],
        "{run}"
    );
    assert_eq!(run.of_step("step_start", "greet")[0]["executor"], "echo");

    let out = project.hm(&["plugin", "remove", "echo"]);
    assert_code(&out, 0);
    assert!(
        out.stderr
            .contains("removed echo 1.0.0 from the user layer")
            && out.stderr.contains(&installed.display().to_string()),
        "{}",
        show(&out)
    );
    assert!(entries(&project.user_plugins()).is_empty());
    assert!(listed(&list_json(&project), "echo").is_empty());
    let run = project.run(&[]);
    assert_eq!(run.code(), 7, "no plugin provides `echo` any more; {run}");
}

#[test]
fn project_installs_and_removals_use_the_projects_plugins_directory() {
    let project = Project::new(PIPELINE);
    let bundle = echo_bundle(&project.path("bundles"), ECHO);
    let sub = project.path("sub/dir");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let out = hm_in(
        &project,
        &sub,
        &[
            "plugin",
            "install",
            "--project",
            bundle.to_str().expect("utf-8"),
        ],
    );
    assert_code(&out, 0);
    assert!(
        project.exists(".hm/plugins/echo/plugin.toml"),
        "{}",
        show(&out)
    );
    assert!(
        !project.user_plugins().exists(),
        "the user layer is untouched"
    );
    assert_eq!(listed(&list_json(&project), "echo")[0]["layer"], "project");

    let out = project.hm(&["plugin", "remove", "echo"]);
    assert_code(&out, 5);
    assert!(
        out.stderr
            .contains("no plugin `echo` is installed in the user layer")
            && out.stderr.contains("hm plugin remove --project echo"),
        "{}",
        show(&out)
    );
    let out = project.hm(&["plugin", "remove", "--project", "echo"]);
    assert_code(&out, 0);
    assert!(
        out.stderr.contains("from the project layer"),
        "{}",
        show(&out)
    );
    assert!(!project.exists(".hm/plugins/echo"));

    let outside = tempfile::tempdir().expect("tempdir");
    let out = hm_in(
        &project,
        outside.path(),
        &["plugin", "install", "--project", "x"],
    );
    assert_code(&out, 2);
    assert!(out.stderr.contains("no hm.toml"), "{}", show(&out));
}

#[test]
fn built_in_and_missing_plugins_cannot_be_removed() {
    let project = Project::new(PIPELINE);
    let out = project.hm(&["plugin", "remove", "shell"]);
    assert_code(&out, 5);
    assert!(out.stderr.contains("built into hm"), "{}", show(&out));
    let out = project.hm(&["plugin", "remove", "nothing-here"]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("no plugin `nothing-here` is installed"),
        "{}",
        show(&out)
    );
    let out = project.hm(&["plugin", "info", "shel"]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("did you mean `shell`?"),
        "{}",
        show(&out)
    );
}

// ---- digests, idempotence, upgrades ----

#[test]
fn a_pin_mismatch_exits_5_and_leaves_the_plugins_directory_byte_for_byte() {
    let project = Project::new(PIPELINE);
    let v1 = echo_bundle(&project.path("v1"), ECHO);
    let v2 = echo_bundle(&project.path("v2"), ECHO_V2);
    let wrong = "0".repeat(64);

    // Nothing installed yet: the directory is not even created.
    let before = snapshot(&project.user_plugins());
    let out = project.hm(&[
        "plugin",
        "install",
        v1.to_str().expect("utf-8"),
        "--pin",
        &wrong,
    ]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains(&sha256(ECHO)) && out.stderr.contains(&wrong),
        "both digests are shown; {}",
        show(&out)
    );
    assert_eq!(snapshot(&project.user_plugins()), before);

    // The right pin installs (in any case).
    let pin = sha256(ECHO).to_uppercase();
    let out = project.hm(&[
        "plugin",
        "install",
        v1.to_str().expect("utf-8"),
        "--pin",
        &pin,
    ]);
    assert_code(&out, 0);

    // A wrong pin for an upgrade leaves the installed bundle alone.
    let before = snapshot(&project.user_plugins());
    let out = project.hm(&[
        "plugin",
        "install",
        v2.to_str().expect("utf-8"),
        "--pin",
        &wrong,
    ]);
    assert_code(&out, 5);
    assert_eq!(snapshot(&project.user_plugins()), before, "{}", show(&out));

    let out = project.hm(&[
        "plugin",
        "install",
        v2.to_str().expect("utf-8"),
        "--pin",
        "abc",
    ]);
    assert_code(&out, 2);
    assert!(out.stderr.contains("64 hex digits"), "{}", show(&out));
}

#[test]
fn reinstalling_the_same_bundle_is_a_no_op() {
    let project = Project::new(PIPELINE);
    let bundle = echo_bundle(&project.path("bundles"), ECHO);
    let path = bundle.to_str().expect("utf-8");
    assert_code(&project.hm(&["plugin", "install", path]), 0);
    let before = snapshot(&project.user_plugins());
    let out = project.hm(&["plugin", "install", path]);
    assert_code(&out, 0);
    assert!(
        out.stderr.contains("echo 1.0.0 is already installed"),
        "{}",
        show(&out)
    );
    assert_eq!(snapshot(&project.user_plugins()), before);
}

#[test]
fn installing_a_different_build_upgrades_it_in_place() {
    let project = Project::new(PIPELINE);
    let v1 = echo_bundle(&project.path("v1"), ECHO);
    let v2 = echo_bundle(&project.path("v2"), ECHO_V2);
    assert_code(
        &project.hm(&["plugin", "install", v1.to_str().expect("utf-8")]),
        0,
    );
    let out = project.hm(&["plugin", "install", v2.to_str().expect("utf-8")]);
    assert_code(&out, 0);
    assert!(
        out.stderr.contains("upgraded echo 1.0.0 with 2.0.0")
            && out.stderr.contains(&sha256(ECHO))
            && out.stderr.contains(&sha256(ECHO_V2)),
        "{}",
        show(&out)
    );
    let installed = project.user_plugins().join("echo");
    assert_eq!(snapshot(&installed), snapshot(&v2), "exactly the new build");
    assert_eq!(entries(&project.user_plugins()), ["echo"], "no debris");
    let run = project.run(&[]);
    assert_eq!(run.lines("greet")[0], "echo plugin 2.0.0", "{run}");

    // Back down again: a different digest always replaces.
    let out = project.hm(&["plugin", "install", v1.to_str().expect("utf-8")]);
    assert_code(&out, 0);
    assert_eq!(snapshot(&installed), snapshot(&v1));
}

#[test]
fn two_simultaneous_installs_leave_one_consistent_bundle() {
    let project = Project::new(PIPELINE);
    let v1 = echo_bundle(&project.path("v1"), ECHO);
    let v2 = echo_bundle(&project.path("v2"), ECHO_V2);
    for round in 0..3 {
        let first = Hm::spawn(project.command(&["plugin", "install", v1.to_str().expect("utf-8")]));
        let second =
            Hm::spawn(project.command(&["plugin", "install", v2.to_str().expect("utf-8")]));
        let outs = [first.finish(RUN_DEADLINE), second.finish(RUN_DEADLINE)];
        for out in &outs {
            let ok = out.status.code() == Some(0)
                || (out.status.code() == Some(5) && out.stderr.contains("lock"));
            assert!(ok, "round {round}: {}", show(out));
        }
        assert_eq!(
            entries(&project.user_plugins()),
            ["echo"],
            "round {round}: one bundle, no staging debris"
        );
        let installed = snapshot(&project.user_plugins().join("echo"));
        assert!(
            installed == snapshot(&v1) || installed == snapshot(&v2),
            "round {round}: the bundle is one of the two, whole: {installed:#?}"
        );
        let run = project.run(&[]);
        assert_eq!(run.code(), 0, "round {round}: {run}");
    }
}

// ---- sources: executables, cargo build outputs, the index ----

#[test]
fn install_from_an_executable_reads_its_manifest_with_hm_manifest() {
    let project = Project::new(PIPELINE);
    let out = project.hm(&["plugin", "install", ECHO_V2]);
    assert_code(&out, 0);
    let installed = project.user_plugins().join("echo");
    let manifest = std::fs::read_to_string(installed.join("plugin.toml")).expect("a manifest");
    assert!(
        manifest.contains("name = \"echo\"")
            && manifest.contains("version = \"2.0.0\"")
            && manifest.contains("executable = \"hm-fixture-echo-v2\""),
        "{manifest}"
    );
    assert_eq!(
        sha256(installed.join("hm-fixture-echo-v2")),
        sha256(ECHO_V2)
    );
    let run = project.run(&[]);
    assert_eq!(run.lines("greet")[0], "echo plugin 2.0.0", "{run}");

    // A file that does not answer --hm-manifest is refused, and says so.
    let out = project.hm(&["plugin", "install", "/bin/false"]);
    assert_code(&out, 5);
    assert!(out.stderr.contains("--hm-manifest"), "{}", show(&out));
}

#[test]
fn a_bare_name_resolves_to_the_cargo_workspaces_build_outputs() {
    let project = Project::new(PIPELINE);
    project.write("ws/Cargo.toml", "[workspace]\nmembers = []\n");
    project.write("ws/crates/a/Cargo.toml", "[package]\nname = \"a\"\n");
    let release = project.path("ws/target/release");
    let debug = project.path("ws/target/debug");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::create_dir_all(&debug).expect("mkdir");
    // target/release/echo is a plugin, but not one called echo: it is passed over.
    link_executable(Path::new(FIXTURE_V1), &release.join("echo"));
    link_executable(Path::new(ECHO_V2), &debug.join("hm-plugin-echo"));
    let out = hm_in(
        &project,
        &project.path("ws/crates/a"),
        &["plugin", "install", "echo"],
    );
    assert_code(&out, 0);
    assert!(
        out.stderr.contains("installed echo 2.0.0"),
        "{}",
        show(&out)
    );
    let installed = project.user_plugins().join("echo");
    assert_eq!(sha256(installed.join("hm-plugin-echo")), sha256(ECHO_V2));
}

/// `{ name, version, source, sha256 }` as a TOML `[[plugins]]` entry.
fn toml_entry(name: &str, version: &str, source: &str, sha: &str) -> String {
    format!(
        "[[plugins]]\nname = {name:?}\nversion = {version:?}\nsource = {source:?}\nsha256 = {sha:?}\n\n"
    )
}

#[test]
fn a_bare_name_resolves_through_a_toml_or_json_index_case_insensitively() {
    let project = Project::new(PIPELINE);
    echo_bundle(&project.path("bundles"), ECHO);
    let index = project.write(
        "index/plugins.toml",
        &format!(
            "{}{}",
            toml_entry("other", "0.1.0", "../bundles/other", &"1".repeat(64)),
            toml_entry("echo", "1.0.0", "../bundles/echo", &sha256(ECHO)),
        ),
    );
    let index = index.to_str().expect("utf-8");
    let out = hm_env(
        &project,
        &[("HM_PLUGIN_INDEX", index)],
        &["plugin", "install", "ECHO"],
    );
    assert_code(&out, 0);
    assert!(
        out.stderr.contains("installed echo 1.0.0"),
        "{}",
        show(&out)
    );
    assert_code(&project.hm(&["plugin", "remove", "echo"]), 0);

    // JSON, with the executable as the source, named by hm's config.toml.
    let json = serde_json::json!({
        "plugins": [{ "name": "echo", "version": "2.0.0", "source": ECHO_V2, "sha256": sha256(ECHO_V2) }]
    });
    project.write("index.json", &json.to_string());
    std::fs::create_dir_all(project.config_home().join("hm")).expect("mkdir");
    std::fs::write(
        project.config_home().join("hm/config.toml"),
        format!(
            "index = {:?}\n",
            project.path("index.json").display().to_string()
        ),
    )
    .expect("write config.toml");
    let out = project.hm(&["plugin", "install", "echo"]);
    assert_code(&out, 0);
    assert!(
        out.stderr.contains("installed echo 2.0.0"),
        "{}",
        show(&out)
    );
    let run = project.run(&[]);
    assert_eq!(run.lines("greet")[0], "echo plugin 2.0.0", "{run}");
}

#[test]
fn an_index_entry_whose_name_or_digest_does_not_match_is_refused() {
    let project = Project::new(PIPELINE);
    echo_bundle(&project.path("bundles"), ECHO);
    let index = project.write(
        "index.toml",
        &format!(
            "{}{}",
            toml_entry("echo-fork", "1.0.0", "bundles/echo", &sha256(ECHO)),
            toml_entry("echo", "1.0.0", "bundles/echo", &"0".repeat(64)),
        ),
    );
    let index = index.to_str().expect("utf-8");
    let env = [("HM_PLUGIN_INDEX", index)];

    let out = hm_env(&project, &env, &["plugin", "install", "echo-fork"]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("`echo-fork`") && out.stderr.contains("its name is `echo`"),
        "{}",
        show(&out)
    );
    let out = hm_env(&project, &env, &["plugin", "install", "echo"]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains(&sha256(ECHO)) && out.stderr.contains(&"0".repeat(64)),
        "{}",
        show(&out)
    );
    assert_eq!(
        snapshot(&project.user_plugins()),
        snapshot(Path::new("/nonexistent/hm-test")),
        "nothing was installed or created"
    );
}

#[test]
fn an_unreadable_index_is_a_warning_and_not_found_says_where_it_looked() {
    let project = Project::new(PIPELINE);
    let missing = project.path("no-such-index.toml");
    let out = hm_env(
        &project,
        &[("HM_PLUGIN_INDEX", missing.to_str().expect("utf-8"))],
        &["plugin", "install", "echo"],
    );
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("warning: cannot use the plugin index")
            && out.stderr.contains(&missing.display().to_string()),
        "{}",
        show(&out)
    );
    assert!(
        out.stderr.contains("no plugin called `echo` was found")
            && out.stderr.contains("no cargo workspace")
            && out.stderr.contains("hm plugin install ./path/to/bundle"),
        "{}",
        show(&out)
    );

    project.write("broken.json", "{ not json");
    let out = hm_env(
        &project,
        &[(
            "HM_PLUGIN_INDEX",
            project.path("broken.json").to_str().expect("utf-8"),
        )],
        &["plugin", "install", "echo"],
    );
    assert_code(&out, 5);
    assert!(out.stderr.contains("invalid JSON"), "{}", show(&out));

    // Without any index configured, the message says so.
    let out = project.hm(&["plugin", "install", "echo"]);
    assert_code(&out, 5);
    assert!(out.stderr.contains("no plugin index"), "{}", show(&out));
}

#[test]
fn several_index_matches_are_an_error_listing_at_most_five_with_index_text_cut() {
    let project = Project::new(PIPELINE);
    let long = "x".repeat(1000);
    let variants = ["dup", "Dup", "dUp", "duP", "DUp", "DuP", "dUP"];
    let index: String = variants
        .iter()
        .map(|name| toml_entry(name, "1.0.0", &long, &"0".repeat(64)))
        .collect();
    project.write("index.toml", &index);
    let out = hm_env(
        &project,
        &[(
            "HM_PLUGIN_INDEX",
            project.path("index.toml").to_str().expect("utf-8"),
        )],
        &["plugin", "install", "DUP"],
    );
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("matches 7 entries") && out.stderr.contains("... and 2 more"),
        "{}",
        show(&out)
    );
    let listed = out.stderr.lines().filter(|l| l.starts_with("  - ")).count();
    assert_eq!(listed, 5, "{}", show(&out));
    assert!(
        out.stderr.contains(&format!("{}…", "x".repeat(256))),
        "cut to 256 characters; {}",
        show(&out)
    );
    assert!(!out.stderr.contains(&"x".repeat(257)), "{}", show(&out));
}

// ---- discovery: layers, shadowing, loose files, bad manifests, conflicts ----

#[test]
fn a_project_bundle_shadows_a_user_bundle_with_a_warning_naming_both_versions() {
    let project = Project::new(PIPELINE);
    let user = echo_bundle(&project.user_plugins(), ECHO);
    let proj = echo_bundle(&project.path(".hm/plugins"), ECHO_V2);
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.lines("greet")[0],
        "echo plugin 2.0.0",
        "the project's wins; {run}"
    );
    let warning = run
        .stderr()
        .lines()
        .find(|l| l.starts_with("warning:") && l.contains("shadows"))
        .unwrap_or_else(|| panic!("no shadowing warning; {run}"));
    assert!(
        warning.contains("`echo` 2.0.0")
            && warning.contains("`echo` 1.0.0")
            && warning.contains(&proj.display().to_string())
            && warning.contains(&user.display().to_string()),
        "{warning}"
    );

    let list = list_json(&project);
    let echo = listed(&list, "echo");
    assert_eq!(echo.len(), 2, "both are listed; {list:#}");
    assert_eq!(
        (&echo[0]["layer"], &echo[0]["active"], &echo[0]["version"]),
        (
            &Value::from("project"),
            &Value::from(true),
            &Value::from("2.0.0")
        )
    );
    assert_eq!(
        (
            &echo[1]["layer"],
            &echo[1]["shadowed_by"],
            &echo[1]["version"]
        ),
        (
            &Value::from("user"),
            &Value::from("project"),
            &Value::from("1.0.0")
        )
    );
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "deterministic order: by name, then layer");
    assert_eq!(list, list_json(&project), "the same every time");

    let table = project.hm(&["plugin", "list"]);
    assert_code(&table, 0);
    assert!(
        table.stdout.contains("shadowed by project"),
        "{}",
        show(&table)
    );
}

#[test]
fn loose_files_in_a_plugins_directory_are_warned_about_and_skipped() {
    let project = Project::new(PIPELINE);
    echo_bundle(&project.path(".hm/plugins"), ECHO);
    project.write(".hm/plugins/notes.txt", "not a plugin");
    std::fs::create_dir_all(project.user_plugins()).expect("mkdir");
    std::fs::write(project.user_plugins().join("stray"), "").expect("write");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    for file in ["notes.txt", "stray"] {
        assert!(
            run.stderr()
                .lines()
                .any(|l| l.starts_with("warning:") && l.contains(file) && l.contains("skipped")),
            "no warning about {file}; {run}"
        );
    }
}

#[test]
fn a_bad_manifest_is_an_error_naming_the_file_with_line_and_column() {
    let project = Project::new(PIPELINE);
    echo_bundle(&project.path(".hm/plugins"), ECHO);
    project.write(
        ".hm/plugins/broken/plugin.toml",
        "name = \"broken\"\nversion = 1.0.0\n",
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{run}");
    assert!(
        run.stderr()
            .contains(".hm/plugins/broken/plugin.toml:2:14: error: invalid TOML"),
        "{run}"
    );
    assert!(run.events.is_empty(), "nothing ran; {run}");
    let out = project.hm(&["validate"]);
    assert_code(&out, 5);

    project.write(
        ".hm/plugins/broken/plugin.toml",
        "name = \"broken\"\nversion = \"1\"\nprotocol = { min = 1, max = 1 }\n\
         capabilities = [\"executer:x\"]\n",
    );
    let out = project.hm(&["plugin", "list"]);
    assert_code(&out, 5);
    for expected in [
        ".hm/plugins/broken/plugin.toml:1:1: error: `executable` is missing",
        ".hm/plugins/broken/plugin.toml:4:17: error: unknown capability kind `executer`",
        "did you mean `executor`?",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?}; {}",
            show(&out)
        );
    }
    assert!(
        out.stdout.contains("echo"),
        "the good ones are still listed"
    );

    // Installing a bundle with a bad manifest names its file too.
    project.write("bad/broken/plugin.toml", "name = [\n");
    let out = project.hm(&["plugin", "install", "./bad/broken"]);
    assert_code(&out, 5);
    assert!(
        out.stderr
            .contains("bad/broken/plugin.toml:1:9: error: invalid TOML"),
        "{}",
        show(&out)
    );
    assert!(!project.user_plugins().exists());
}

#[test]
fn two_bundles_claiming_one_executor_exit_5_naming_both() {
    let project = Project::new(PIPELINE);
    let echo = echo_bundle(&project.path(".hm/plugins"), ECHO);
    let fork = Bundle {
        name: "echo-fork".to_owned(),
        capabilities: vec!["executor:echo".to_owned()],
        ..Bundle::executor("echo-fork", "echo", "/nonexistent/echo-fork").without_binary()
    }
    .write_into(&project.user_plugins());
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{run}");
    let stderr = run.stderr();
    for expected in [
        "executor `echo` is claimed by",
        "`echo` 1.0.0",
        "`echo-fork` 0.1.0",
        &echo.display().to_string(),
        &fork.display().to_string(),
    ] {
        assert!(stderr.contains(expected), "{expected:?}; {run}");
    }
    assert_code(&project.hm(&["plugin", "list"]), 5);
    let doctor = project.hm(&["doctor"]);
    assert!(
        doctor
            .stdout
            .contains("error: executor `echo` is claimed by"),
        "{}",
        show(&doctor)
    );
    // 4 wins when the machine has no cgroups.
    assert!(
        matches!(doctor.status.code(), Some(4 | 5)),
        "{}",
        show(&doctor)
    );

    // An install that would create such a conflict is refused, and changes nothing.
    let v1_squatter = Bundle::executor("squatter", "v1exec", "/nonexistent/squatter")
        .without_binary()
        .write_into(&project.path(".hm/plugins"));
    let before = snapshot(&project.user_plugins());
    let out = project.hm(&["plugin", "install", FIXTURE_V1]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("executor `v1exec` is claimed by")
            && out.stderr.contains("`fixture-v1`")
            && out.stderr.contains(&v1_squatter.display().to_string()),
        "{}",
        show(&out)
    );
    assert_eq!(snapshot(&project.user_plugins()), before);
}

// ---- manifest against the plugin itself ----

#[test]
fn a_manifest_that_disagrees_with_the_plugins_hello_is_refused_showing_both() {
    let project = Project::new(PIPELINE);
    let liar = |m: String| {
        m.replace(
            "[\"executor:echo\"]",
            "[\"executor:echo\", \"executor:more\"]",
        )
    };
    let bundle = echo_bundle_with(&project.path("bundles"), ECHO, liar);
    let out = project.hm(&["plugin", "install", bundle.to_str().expect("utf-8")]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("declares capabilities [executor:echo]")
            && out
                .stderr
                .contains("its manifest says [executor:echo, executor:more]"),
        "{}",
        show(&out)
    );
    assert!(
        !project.data_home().join("hm").exists(),
        "a failed first install leaves no directory behind"
    );

    // The same bundle put in place by hand: the handshake refuses it when a run needs it.
    echo_bundle_with(&project.path(".hm/plugins"), ECHO, liar);
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{run}");
    assert!(
        run.stderr().contains("[executor:echo]")
            && run.stderr().contains("[executor:echo, executor:more]"),
        "{run}"
    );
}

#[test]
fn a_plugin_whose_protocol_range_hm_does_not_speak_is_refused_with_the_fix() {
    let project = Project::new(PIPELINE);
    let future = |m: String| {
        let start = m.find("protocol = ").expect("a protocol line");
        let end = start + m[start..].find('\n').expect("end of line");
        format!(
            "{}protocol = {{ min = 70, max = 90 }}{}",
            &m[..start],
            &m[end..]
        )
    };
    let bundle = echo_bundle_with(&project.path("bundles"), ECHO, future);
    let out = project.hm(&["plugin", "install", bundle.to_str().expect("utf-8")]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("speaks protocol 70..=90") && out.stderr.contains("upgrade hm"),
        "{}",
        show(&out)
    );

    echo_bundle_with(&project.path(".hm/plugins"), ECHO, future);
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{run}");
    assert!(
        run.stderr().contains("70..=90") && run.stderr().contains("upgrade hm"),
        "{run}"
    );
    assert!(
        run.events.is_empty(),
        "refused before anything started; {run}"
    );
    let list = list_json(&project);
    assert_eq!(listed(&list, "echo")[0]["compatible"], false, "{list:#}");
}

#[test]
fn an_sdk_plugin_declares_the_lowest_protocol_its_capabilities_need() {
    // The subcommand fixture needs protocol 4, the hook fixture 5, the echo executor nothing
    // newer than 1: their manifests (from `--hm-manifest`) and their `Hello`s, which the
    // install probe compares, say so.
    let project = Project::new(PIPELINE);
    for (binary, name, min) in [
        (env!("CARGO_BIN_EXE_hm-fixture-greet"), "greeter", 4),
        (env!("CARGO_BIN_EXE_hm-fixture-hook"), "gatekeeper", 5),
        (ECHO, "echo", 1),
    ] {
        let out = project.hm(&["plugin", "install", binary]);
        assert_code(&out, 0);
        let out = project.hm(&["plugin", "info", name, "--json"]);
        assert_code(&out, 0);
        let info: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
        assert_eq!(
            (&info["protocol"]["min"], &info["protocol"]["max"]),
            (&Value::from(min), &Value::from(hm_ipc::PROTOCOL_MAX)),
            "{name}: {info:#}"
        );
    }
}

/// An echo bundle whose manifest claims a protocol range no hm speaks yet, as executor
/// `future` (so a pipeline may use it or not).
fn future_bundle(parent: &Path) -> PathBuf {
    echo_bundle_with(parent, ECHO, |m| {
        let start = m.find("protocol = ").expect("a protocol line");
        let end = start + m[start..].find('\n').expect("end of line");
        format!(
            "{}protocol = {{ min = 70, max = 90 }}{}",
            &m[..start],
            &m[end..]
        )
        .replace("executor:echo", "executor:future")
    })
}

#[test]
fn an_incompatible_plugin_is_reported_everywhere_and_fails_only_the_runs_that_use_it() {
    let project = Project::new(
        r#"
[steps.local]
run = "echo local"

[steps.later]
executor = "future"
run = "unused"
"#,
    );
    future_bundle(&project.path(".hm/plugins"));
    let problem = "plugin `echo` speaks protocol 70..=90";

    // A run that does not use it goes on, and names it.
    let run = project.run(&["local"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.status("local"), "passed", "{run}");
    assert!(
        run.stderr().contains(problem) && run.stderr().contains("upgrade hm"),
        "{run}"
    );
    // One that uses it is refused before anything runs.
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{run}");
    assert!(run.events.is_empty(), "{run}");
    let out = project.hm(&["validate"]);
    assert_code(&out, 5);
    assert!(out.stderr.contains(problem), "{}", show(&out));

    let out = project.hm(&["plugin", "list"]);
    assert_code(&out, 5);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("echo") && l.contains("incompatible")),
        "{}",
        show(&out)
    );
    assert!(out.stderr.contains(problem), "{}", show(&out));

    let out = project.hm(&["plugin", "info", "echo"]);
    assert_code(&out, 5);
    assert!(out.stderr.contains(problem), "{}", show(&out));

    let doctor = project.hm(&["doctor"]);
    assert!(
        doctor.stdout.contains("future (plugin echo: incompatible)")
            && doctor.stdout.contains(&format!("error: {problem}")),
        "{}",
        show(&doctor)
    );
    // 4 wins when the machine has no cgroups.
    assert!(
        matches!(doctor.status.code(), Some(4 | 5)),
        "{}",
        show(&doctor)
    );
}

#[test]
fn plugin_info_on_a_bundle_with_a_bad_manifest_shows_the_manifests_problem() {
    let project = Project::new(PIPELINE);
    project.write(
        ".hm/plugins/broken/plugin.toml",
        "name = \"broken\"\nversion = \"1\"\nprotocol = { min = 1, max = 1 }\n\
         capabilities = [\"executer:x\"]\n",
    );
    let out = project.hm(&["plugin", "info", "broken"]);
    assert_code(&out, 5);
    for expected in [
        ".hm/plugins/broken/plugin.toml:1:1: error: `executable` is missing",
        ".hm/plugins/broken/plugin.toml:4:17: error: unknown capability kind `executer`",
        "plugin `broken` is installed but cannot be used",
    ] {
        assert!(
            out.stderr.contains(expected),
            "{expected:?}; {}",
            show(&out)
        );
    }
    assert!(
        !out.stderr.contains("no plugin called"),
        "it exists: {}",
        show(&out)
    );
    // A name nobody installed is still "no such plugin".
    let out = project.hm(&["plugin", "info", "nobody"]);
    assert_code(&out, 5);
    assert!(
        out.stderr.contains("no plugin called `nobody`"),
        "{}",
        show(&out)
    );
}
