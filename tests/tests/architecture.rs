//! ARCHITECTURE.md's invariants that a test can check, checked: the crate dependency rules
//! (from `cargo metadata`), where `unsafe` may live, and that the code map names every module
//! and nothing that does not exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hm_tests::{Value, repo_root};

/// The product crates' source directories: what the code map must describe.
const PRODUCT_SRC: &[&str] = &[
    "ipc/src",
    "sdk/src",
    "kernel/src",
    "plugins/shell/src",
    "plugins/docker/src",
    "plugins/swarm/src",
    "plugins/graph/src",
    "plugins/junit/src",
];

/// The only product files with `unsafe` (system calls no safe crate wraps well): each
/// `unsafe` there carries a `// SAFETY:` comment.
const UNSAFE_ALLOWED: &[&str] = &[
    "ipc/src/host.rs",
    "ipc/src/shm.rs",
    "ipc/src/socket.rs",
    "ipc/src/transport.rs",
    "kernel/src/guardian.rs",
    "kernel/src/registry/bundle_fs.rs",
    "kernel/src/render/json.rs",
    "kernel/src/supervisor/attach.rs",
    "kernel/src/supervisor/process.rs",
    "kernel/src/supervisor/spawn.rs",
    "sdk/src/spawn.rs",
    "sdk/src/testing.rs",
];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// A dependency: its name, its kind (`normal`, `dev`, `build`), whether it is optional.
type Dependency = (String, String, bool);

/// Each workspace package's name and manifest, with its dependencies.
fn packages() -> Vec<(String, PathBuf, Vec<Dependency>)> {
    let metadata = metadata();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|d| {
                    (
                        d["name"].as_str().unwrap_or_default().to_owned(),
                        d["kind"].as_str().unwrap_or("normal").to_owned(),
                        d["optional"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default());
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                manifest,
                deps,
            )
        })
        .collect()
}

#[test]
fn crates_depend_only_on_what_the_architecture_allows() {
    let packages = packages();
    let workspace: BTreeSet<&str> = packages.iter().map(|(n, _, _)| n.as_str()).collect();
    for name in ["hm-ipc", "hm-sdk", "hm-kernel", "xtask", "hm-plugin-shell"] {
        assert!(workspace.contains(name), "{name} is a workspace package");
    }
    let mut problems = Vec::new();
    for (name, manifest, deps) in &packages {
        // What it needs to build and run, not its tests.
        let normal: Vec<(&str, bool)> = deps
            .iter()
            .filter(|(_, kind, _)| kind == "normal")
            .map(|(d, _, optional)| (d.as_str(), *optional))
            .collect();
        let ours = |allowed: &[&str]| {
            normal
                .iter()
                .filter(|(d, _)| workspace.contains(d) && !allowed.contains(d))
                .map(|(d, _)| d.to_string())
                .collect::<Vec<_>>()
        };
        let is_plugin = manifest
            .parent()
            .and_then(Path::parent)
            .is_some_and(|dir| dir.ends_with("plugins"));
        let wrong = match name.as_str() {
            "hm-ipc" => ours(&[]),
            "hm-sdk" => ours(&["hm-ipc"]),
            "xtask" => normal.iter().map(|(d, _)| d.to_string()).collect(),
            "hm-kernel" => normal
                .iter()
                .filter(|(d, optional)| {
                    !optional && (d.starts_with("hm-plugin-") || ["hm-sdk", "clap"].contains(d))
                })
                .map(|(d, _)| d.to_string())
                .collect(),
            // The swarm executor reads its config, reaches its manager and labels its services
            // with the docker plugin's `config`, `daemon` and `owner` modules.
            "hm-plugin-swarm" => ours(&["hm-sdk", "hm-ipc", "hm-plugin-docker"]),
            _ if is_plugin => ours(&["hm-sdk", "hm-ipc"]),
            _ => Vec::new(),
        };
        if !wrong.is_empty() {
            problems.push(format!("{name} depends on {wrong:?}"));
        }
        if name != "hm-ipc" && normal.iter().any(|(d, _)| *d == "rkyv") {
            problems.push(format!("{name} depends on rkyv: only hm-ipc derives it"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read a source directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn unsafe_lives_only_in_the_named_modules_each_with_a_safety_comment() {
    let root = repo_root();
    let mut problems = Vec::new();
    for src in PRODUCT_SRC {
        for file in rust_files(&root.join(src)) {
            let rel = file
                .strip_prefix(&root)
                .expect("below the root")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file).expect("read a source file");
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let is_unsafe = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                    .iter()
                    .any(|needle| code.contains(needle));
                if !is_unsafe {
                    continue;
                }
                if !UNSAFE_ALLOWED.contains(&rel.as_str()) {
                    problems.push(format!("{rel}:{}: unsafe outside the named modules", n + 1));
                    continue;
                }
                let commented = lines[n.saturating_sub(8)..=n]
                    .iter()
                    .any(|l| l.contains("// SAFETY:") || l.contains("# Safety"));
                if !commented {
                    problems.push(format!(
                        "{rel}:{}: unsafe without a `// SAFETY:` comment",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The `.rs` paths ARCHITECTURE.md names (`scheduler/run_loop.rs`, `plan.rs`).
fn named_files(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (start, _) in text.match_indices(".rs") {
        let after = text[start + 3..].chars().next();
        if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let before = &text[..start];
        let begin = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let name = &text[begin..start + 3];
        if name.len() > 3 {
            named.insert(name.to_owned());
        }
    }
    named
}

#[test]
fn the_code_map_names_every_module_and_only_modules_that_exist() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let named = named_files(&text);
    let mut problems = Vec::new();
    // Every product module is on the map (tests and `lib.rs` are not modules of their own;
    // a `mod.rs` is its directory, named as `dir/`).
    for src in PRODUCT_SRC {
        let src_dir = root.join(src);
        for file in rust_files(&src_dir) {
            let rel = file
                .strip_prefix(&src_dir)
                .expect("below src")
                .to_string_lossy()
                .into_owned();
            if rel == "lib.rs"
                || rel
                    .split('/')
                    .any(|part| part == "tests" || part == "tests.rs")
            {
                continue;
            }
            // `scheduler/attempts.rs` is on the map as `attempts.rs` in the text about
            // `scheduler/` (or as the whole path); `manifest/mod.rs` as `manifest/`.
            let parts: Vec<&str> = rel.split('/').collect();
            let (file, dirs) = parts.split_last().expect("a file name");
            let dirs_named = dirs.iter().all(|d| text.contains(&format!("{d}/")));
            let mentioned = dirs_named
                && (*file == "mod.rs"
                    || named
                        .iter()
                        .any(|n| n == file || n == &rel || n.ends_with(&format!("/{file}"))));
            if !mentioned {
                problems.push(format!("{src}/{rel} is not on the code map"));
            }
        }
    }
    // Everything the map names exists.
    let all: Vec<String> = rust_files(&root)
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == "target"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    for name in &named {
        if !all.iter().any(|p| p.ends_with(&format!("/{name}"))) {
            problems.push(format!(
                "ARCHITECTURE.md names {name}, which does not exist"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
