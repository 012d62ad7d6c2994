//! The built `hm-plugin-graph` executable itself: what it prints for `--hm-manifest` is the
//! bundle's `plugin.toml`, and started without hm it says how it is meant to run. (Being an
//! integration test also makes `cargo test --workspace` build the executable, which the
//! end-to-end tests in `tests/tests/graph.rs` install.)

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_hm-plugin-graph");

#[test]
fn the_executable_prints_the_bundle_manifest() {
    let out = Command::new(EXE)
        .arg("--hm-manifest")
        .output()
        .expect("run hm-plugin-graph");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let bundled = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plugin.toml"))
        .expect("read plugin.toml");
    assert_eq!(printed, bundled);
}

#[test]
fn started_without_hm_it_says_how_to_use_it() {
    let out = Command::new(EXE)
        .env_remove("HM_IPC_FD")
        .env_remove("HM_IPC_SOCKET")
        .output()
        .expect("run hm-plugin-graph");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is an hm plugin"), "{stderr}");
}
