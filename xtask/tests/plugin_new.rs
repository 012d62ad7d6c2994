//! `cargo xtask plugin new` and `cargo xtask plugin install` on a copy of this workspace: the
//! refusals and `--dry-run` write nothing; a plugin of each kind is generated, passes its own
//! tests, is installed with `cargo xtask plugin install` and works through the real `hm`.
//!
//! The copy holds the sources only (no `target/`, no `.git`). Its builds go to
//! `<target dir>/xtask-plugin-new`, which outlives the test so that later runs do not rebuild
//! every dependency; never to the target dir itself, whose lock the outer cargo holds. File
//! times are copied too, so cargo sees the copied crates as unchanged since the last run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use tempfile::TempDir;

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// The repository this test belongs to.
fn repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where the copy's builds go: `xtask-plugin-new` in the target dir this test was built in
/// (`<target>/<profile>/deps/<test>`).
fn copy_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test executable is in <target>/<profile>/deps");
    target.join("xtask-plugin-new")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Everything a failed assertion needs to say about a command.
fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to the end; fails the test unless it exits with `code`.
fn run(what: &str, cmd: &mut Command, code: i32) -> Output {
    let started = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    eprintln!("{what}: {} in {:.1?}", out.status, started.elapsed());
    assert_eq!(out.status.code(), Some(code), "{}", show(what, &out));
    out
}

/// A copy of the workspace's sources in a temporary directory, removed on drop.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    fn copy() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("xtask-plugin-new-")
            .tempdir()
            .expect("temp dir");
        copy_tree(&repo(), dir.path());
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, rel: &str) -> String {
        let path = self.root().join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The xtask binary under test, working on this copy.
    fn xtask(&self, args: &[&str]) -> Output {
        Command::new(XTASK)
            .args(args)
            .current_dir(self.root())
            .env("HM_XTASK_ROOT", self.root())
            .output()
            .expect("start xtask")
    }

    /// What `plugin new` may change: the root `Cargo.toml` and the entries of `plugins/`.
    fn state(&self) -> (String, Vec<String>) {
        let mut entries: Vec<String> = std::fs::read_dir(self.root().join("plugins"))
            .expect("plugins/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        (self.read("Cargo.toml"), entries)
    }

    /// `cargo ARGS` in `dir` (inside the copy), building into the persistent target dir.
    fn cargo(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = cargo();
        cmd.args(args)
            .current_dir(dir)
            .env("CARGO_TARGET_DIR", copy_target_dir())
            .env_remove("HM_XTASK_ROOT");
        cmd
    }
}

/// Copies the sources under `from` into `to` with their modification times: everything but
/// `.git` and build output.
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let kind = entry.file_type().expect("file type");
        let skipped = [".git", "target", ".hm-tmp"].contains(&name.to_string_lossy().as_ref());
        if skipped && kind.is_dir() {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        if kind.is_symlink() {
            let link = std::fs::read_link(&source).expect("read link");
            std::os::unix::fs::symlink(link, &dest).expect("copy symlink");
        } else if kind.is_dir() {
            std::fs::create_dir(&dest).expect("create dir");
            copy_tree(&source, &dest);
        } else {
            std::fs::copy(&source, &dest).expect("copy file");
            let modified = entry.metadata().and_then(|m| m.modified()).expect("mtime");
            std::fs::File::options()
                .write(true)
                .open(&dest)
                .and_then(|f| f.set_modified(modified))
                .expect("set mtime");
        }
    }
}

#[test]
fn refusals_say_why_and_write_nothing() {
    let ws = Workspace::copy();
    std::fs::create_dir(ws.root().join("plugins/taken")).expect("mkdir");
    let cargo_toml = ws.read("Cargo.toml");
    let with_ghost = cargo_toml.replacen(
        "\"plugins/shell\"",
        "\"plugins/shell\", \"plugins/ghost\"",
        1,
    );
    assert_ne!(
        with_ghost, cargo_toml,
        "the root Cargo.toml lists plugins/shell"
    );
    std::fs::write(ws.root().join("Cargo.toml"), with_ghost).expect("write Cargo.toml");
    let long = "x".repeat(65);
    let rule = "use at most 64 lowercase ASCII letters, digits and `-`, starting with a letter";
    let cases: &[(&[&str], &str)] = &[
        (&["plugin", "new", "Bad"], rule),
        (&["plugin", "new", "1st"], rule),
        (&["plugin", "new", "a_b"], rule),
        (&["plugin", "new", "a.b"], rule),
        (&["plugin", "new", ""], rule),
        (&["plugin", "new", &long], rule),
        (
            &["plugin", "new", "shell"],
            "hm has a built-in plugin of that name",
        ),
        (
            &["plugin", "new", "docker", "--kind", "hook"],
            "built-in plugin",
        ),
        (&["plugin", "new", "taken"], "plugins/taken already exists"),
        (
            &["plugin", "new", "ghost"],
            "already has the member \"plugins/ghost\"",
        ),
        (
            &["plugin", "new", "run", "--kind", "subcommand"],
            "a command of hm itself",
        ),
        (
            &["plugin", "new", "x", "--kind", "daemon"],
            "unknown plugin kind \"daemon\": use one of executor, hook, subcommand",
        ),
        (&["plugin", "new", "x", "--kind"], "--kind needs a value"),
        (
            &["plugin", "new", "x", "--force"],
            "unknown option \"--force\"",
        ),
        (&["plugin", "new"], "NAME is missing"),
        (
            &["plugin", "install", "nope"],
            "has no package hm-plugin-nope",
        ),
        (&["plugin", "install"], "NAME is missing"),
    ];
    let before = ws.state();
    for (args, expected) in cases {
        let out = ws.xtask(args);
        let what = format!("xtask {args:?}");
        assert_eq!(out.status.code(), Some(2), "{}", show(&what, &out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{}", show(&what, &out));
        assert!(out.stdout.is_empty(), "{}", show(&what, &out));
        assert_eq!(ws.state(), before, "{what} changed the workspace");
    }
}

#[test]
fn dry_run_lists_every_file_and_the_cargo_toml_edit_and_writes_nothing() {
    let ws = Workspace::copy();
    let before = ws.state();
    for kind in ["executor", "hook", "subcommand"] {
        let out = ws.xtask(&["plugin", "new", "dry", "--kind", kind, "--dry-run"]);
        let what = format!("xtask plugin new dry --kind {kind} --dry-run");
        assert_eq!(out.status.code(), Some(0), "{}", show(&what, &out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for file in [
            "Cargo.toml",
            "plugin.toml",
            "src/lib.rs",
            "src/main.rs",
            "tests/dry.rs",
        ] {
            assert!(
                stdout.contains(&format!("  plugins/dry/{file}\n")),
                "{file} is not listed\n{}",
                show(&what, &out)
            );
        }
        assert!(
            stdout.contains(&format!("({kind} plugin, package hm-plugin-dry)")),
            "{}",
            show(&what, &out)
        );
        let added = stdout
            .lines()
            .filter(|l| l.starts_with("  + ") && l.contains("\"plugins/dry\""))
            .count();
        let removed = stdout.lines().filter(|l| l.starts_with("  - ")).count();
        // `members`, and `default-members` if the workspace has it.
        assert!(added >= 1 && added == removed, "{}", show(&what, &out));
        assert!(stdout.contains("nothing written"), "{}", show(&what, &out));
        assert_eq!(ws.state(), before, "{what} changed the workspace");
    }
}

#[test]
fn new_writes_the_crate_and_only_adds_its_member() {
    let ws = Workspace::copy();
    let before = ws.read("Cargo.toml");
    let out = ws.xtask(&["plugin", "new", "fresh", "--kind", "hook"]);
    assert_eq!(out.status.code(), Some(0), "{}", show("plugin new", &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for next in [
        "cargo test -p hm-plugin-fresh",
        "cargo xtask plugin install fresh",
        "[plugins.fresh]",
    ] {
        assert!(
            stdout.contains(next),
            "{next:?} is not among the next steps\n{stdout}"
        );
    }

    // The edit inserts `"plugins/fresh"` into the member lists and changes nothing else.
    let after = ws.read("Cargo.toml");
    let without: Vec<&str> = after
        .split_inclusive('\n')
        .filter(|line| line.trim() != "\"plugins/fresh\",")
        .collect();
    assert_eq!(
        without.concat().replace(", \"plugins/fresh\"", ""),
        before,
        "Cargo.toml changed beyond the members"
    );
    assert!(after.contains("\"plugins/fresh\""), "{after}");

    let crate_dir = ws.root().join("plugins/fresh");
    let mut files: Vec<String> = Vec::new();
    for sub in ["", "src", "tests"] {
        for entry in std::fs::read_dir(crate_dir.join(sub)).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let rel = path.strip_prefix(&crate_dir).expect("inside");
                files.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "Cargo.toml",
            "plugin.toml",
            "src/lib.rs",
            "src/main.rs",
            "tests/fresh.rs"
        ]
    );
    for file in &files {
        let text = ws.read(&format!("plugins/fresh/{file}"));
        if file.ends_with(".rs") {
            assert!(
                text.starts_with("//! "),
                "{file} starts with a //! line:\n{text}"
            );
        }
        assert!(
            !text.contains("{{"),
            "{file} has a placeholder left:\n{text}"
        );
    }
    let manifest = ws.read("plugins/fresh/plugin.toml");
    assert!(
        manifest.starts_with("name = \"fresh\"\n")
            && manifest.contains("executable = \"hm-plugin-fresh\"\n")
            && manifest.contains("capabilities = [\"hook:step_end\"]\n")
            && manifest.contains("[[hook]]\nevent = \"step_end\"\nphase = \"after\"\n"),
        "{manifest}"
    );
    let main = ws.read("plugins/fresh/src/main.rs");
    assert!(
        main.contains("hm_sdk::serve(hm_plugin_fresh::plugin())"),
        "{main}"
    );

    // Nothing half-written is left beside it, and the name is now taken.
    let (_, entries) = ws.state();
    assert!(!entries.iter().any(|e| e.starts_with('.')), "{entries:?}");
    let again = ws.xtask(&["plugin", "new", "fresh"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        show("plugin new again", &again)
    );
}

/// `hm run --format json` events of one run.
fn parse_events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn find<'a>(events: &'a [Value], kind: &str, step: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["kind"] == kind && e["step"] == step)
        .unwrap_or_else(|| panic!("no {kind} event for step {step}: {events:#?}"))
}

#[test]
fn generated_plugins_pass_their_tests_install_and_work_in_hm() {
    let started = Instant::now();
    let ws = Workspace::copy();
    let root = ws.root().to_path_buf();
    let plugins = [
        ("e2e-exec", "executor"),
        ("e2e-greet", "subcommand"),
        ("e2e-hook", "hook"),
    ];
    for (name, kind) in plugins {
        let out = ws.xtask(&["plugin", "new", name, "--kind", kind]);
        assert_eq!(out.status.code(), Some(0), "{}", show("plugin new", &out));
    }
    let packages: Vec<String> = plugins
        .iter()
        .flat_map(|(name, _)| ["-p".to_owned(), format!("hm-plugin-{name}")])
        .collect();
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    let fmt = [&["fmt", "--check"][..], &packages].concat();
    run("cargo fmt --check", &mut ws.cargo(&root, &fmt), 0);
    let test = [&["test"][..], &packages].concat();
    run(
        "cargo test (the generated crates)",
        &mut ws.cargo(&root, &test),
        0,
    );

    // Installed for a user whose data directory is empty, and used by the hm that installed them.
    let home = tempfile::tempdir().expect("temp dir");
    let hermetic = |mut cmd: Command| -> Command {
        cmd.env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("NO_COLOR", "1")
            .env_remove("HM_PLUGIN_INDEX")
            .env_remove("HM_LOG")
            .env_remove("GITHUB_ACTIONS");
        cmd
    };
    let install = |dir: &Path, args: &[&str]| {
        let args = [&["xtask", "plugin", "install"][..], args].concat();
        let what = format!("cargo {}", args.join(" "));
        run(&what, &mut hermetic(ws.cargo(dir, &args)), 0)
    };
    let hm_bin = copy_target_dir().join("debug/hm");
    let hm = |dir: &Path, args: &[&str]| -> Command {
        let mut cmd = hermetic(Command::new(&hm_bin));
        cmd.args(args).current_dir(dir);
        cmd
    };

    // The executor: a step with `executor = "e2e-exec"` runs its command.
    let out = install(&root, &["e2e-exec"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("executor:e2e-exec"), "{stderr}");
    let project = root.join("exec-project");
    std::fs::create_dir(&project).expect("mkdir");
    std::fs::write(
        project.join("hm.toml"),
        "[steps.hello]\nexecutor = \"e2e-exec\"\nrun = \"echo hello from e2e-exec\"\n\n\
         [steps.three]\nexecutor = \"e2e-exec\"\nrun = \"exit 3\"\n",
    )
    .expect("write hm.toml");
    let args = ["run", "--format", "json", "-k", "--timeout", "60s"];
    let out = run("hm run (executor)", &mut hm(&project, &args), 1);
    let events = parse_events(&out);
    assert_eq!(find(&events, "step_start", "hello")["executor"], "e2e-exec");
    let log = find(&events, "step_log", "hello");
    assert_eq!(
        (&log["stream"], &log["line"]),
        (&"stdout".into(), &"hello from e2e-exec".into()),
        "{events:#?}"
    );
    let end = find(&events, "step_end", "hello");
    assert_eq!(
        (&end["status"], &end["exit_code"]),
        (&"passed".into(), &0.into())
    );
    let end = find(&events, "step_end", "three");
    assert_eq!(
        (&end["status"], &end["exit_code"]),
        (&"failed".into(), &3.into())
    );

    // The subcommand: `hm e2e-greet` is listed and says hello.
    install(&root, &["e2e-greet"]);
    let out = run("hm --help", &mut hm(&project, &["--help"]), 0);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("e2e-greet") && help.contains("Say hello"),
        "{help}"
    );
    let out = run(
        "hm e2e-greet",
        &mut hm(&project, &["e2e-greet", "--name", "x"]),
        0,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, x!\n");
    let out = run("hm e2e-greet", &mut hm(&project, &["e2e-greet"]), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello, world!\n");

    // The hook, installed into a project (`--project` goes through to hm), which turns it on
    // with its `[plugins.e2e-hook]` table: one line per step in the file the table names.
    let project = root.join("hook-project");
    std::fs::create_dir(&project).expect("mkdir");
    std::fs::write(
        project.join("hm.toml"),
        "[steps.a]\nrun = \"true\"\n\n[steps.b]\nrun = \"true\"\nneeds = [\"a\"]\n\n\
         [plugins.e2e-hook]\nconfig = { path = \"steps.log\" }\n",
    )
    .expect("write hm.toml");
    install(&project, &["e2e-hook", "--project"]);
    assert!(
        project.join(".hm/plugins/e2e-hook/plugin.toml").is_file(),
        "--project installs into the project's .hm/plugins/"
    );
    let args = ["run", "--format", "json", "--timeout", "60s"];
    let out = run("hm run (hook)", &mut hm(&project, &args), 0);
    let events = parse_events(&out);
    assert_eq!(find(&events, "step_end", "b")["status"], "passed");
    let written = std::fs::read_to_string(project.join("steps.log")).unwrap_or_else(|e| {
        panic!(
            "the hook wrote no steps.log ({e})\n{}",
            show("hm run (hook)", &out)
        )
    });
    let mut lines: Vec<&str> = written.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a passed", "b passed"], "{written}");
    eprintln!("end to end in {:.1?}", started.elapsed());
}
