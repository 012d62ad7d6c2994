//! The docker executor's outputs and artifacts against the real daemon, driven through
//! `hm_sdk::testing` as hm drives it on protocol 7: a passed step's `$HM_OUTPUT` lands in hm's
//! file and the files its globs match come back as a tar of regular files (symlinks and other
//! files left out), with the artifacts of the steps it needs unpacked into its workspace first;
//! a step past its limits reports a problem, a failed step hands over nothing, and globs that
//! match nothing give an empty tar.
//!
//! Images cannot be pulled here: each test imports its own from a static busybox (Debian's
//! `busybox-static`, with `hm_tests::docker`), and removes it and its containers when done.
//! Without a daemon or busybox the tests say they were skipped, and fail instead under
//! `HM_REQUIRE_DOCKER=1` (as in CI).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use hm_sdk::testing::{EnvVar, ExecuteStep, Harness, StepOptions, StepRun, step};
use hm_sdk::{ArtifactLimits, SealedBuffer};
use hm_tests::docker::{DockerFixture, docker_quiet};

/// Where the steps pretend the project is; the container sees it at `/workspace`.
const PROJECT: &str = "/hm-test-project";

/// A test's image, and the containers its steps may leave if the test fails midway; dropping
/// it removes both.
struct Fixture {
    /// The image, removed after the containers. It watches no run: the harness gives every
    /// test the same run id, so removing a run's containers would take another test's.
    docker: DockerFixture,
    steps: Vec<String>,
}

impl Fixture {
    /// Imports the test's image, or returns `None` (after saying why) when Docker tests cannot
    /// run here; with `HM_REQUIRE_DOCKER=1` that fails the test instead.
    fn new(test: &str) -> Option<Self> {
        Some(Self {
            docker: DockerFixture::new(test)?,
            steps: Vec::new(),
        })
    }

    /// A step named uniquely for this process (containers are named after the run id, which
    /// is the harness's, and the step), with the project and `outputs` as hm sets them.
    fn step(&mut self, name: &str, run: &str, outputs: Option<&Path>) -> ExecuteStep {
        let name = format!("{name}-{}", std::process::id());
        self.steps.push(name.clone());
        let mut env = vec![EnvVar {
            name: hm_sdk::PROJECT_DIR_ENV.into(),
            value: PROJECT.into(),
        }];
        if let Some(file) = outputs {
            env.push(EnvVar {
                name: hm_sdk::OUTPUT_ENV.into(),
                value: file.display().to_string(),
            });
        }
        ExecuteStep {
            step: name,
            dir: PROJECT.into(),
            env,
            image: Some(self.docker.image().to_owned()),
            with_json: r#"{"pull": "never"}"#.into(),
            ..step(run)
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The plugin removes its containers; these are only what a failing test left.
        for step in &self.steps {
            let name = format!("hm-{}-{step}-1", hm_sdk::testing::RUN_ID);
            let _ = docker_quiet(&["rm", "-f", "-v", &name]);
        }
    }
}

/// A tar of `files` (path, content), as hm's workspace and artifact archives are.
fn tar_of(files: &[(&str, &str)]) -> SealedBuffer {
    let mut tar = tar::Builder::new(Vec::new());
    for &(path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, content.as_bytes())
            .expect("append");
    }
    SealedBuffer::from_bytes("hm-test-tar", &tar.into_inner().expect("tar")).expect("buffer")
}

/// The entries of a tar: path → content (`/` for a directory).
fn entries(tar: &[u8]) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .expect("entries")
        .map(|entry| {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let content = if entry.header().entry_type().is_dir() {
                "/".to_owned()
            } else {
                assert!(entry.header().entry_type().is_file(), "{path} is a file");
                let mut content = String::new();
                entry.read_to_string(&mut content).expect("read");
                content
            };
            (path, content)
        })
        .collect()
}

async fn harness() -> Harness {
    let harness = Harness::start(hm_plugin_docker::plugin()).await.unwrap();
    // Protocol 7: steps go as `Step`, with their artifacts.
    assert!(harness.protocol() >= 7, "{}", harness.protocol());
    harness.init("{}").await.expect("the daemon answers");
    harness.provide_archive(tar_of(&[("src/main.txt", "main\n")]));
    harness
}

fn globs(globs: &[&str]) -> StepOptions {
    StepOptions {
        artifacts: globs.iter().map(|&g| g.to_owned()).collect(),
        ..StepOptions::default()
    }
}

fn exit_code(run: &StepRun) -> Option<i32> {
    run.result.as_ref().map_or(None, |r| r.exit_code)
}

#[tokio::test]
async fn a_passed_step_hands_its_outputs_and_artifacts_to_hm() {
    let Some(mut fixture) = Fixture::new("passed") else {
        return;
    };
    // Removed when the test ends, passed or not.
    let dir = tempfile::Builder::new()
        .prefix("hm-docker-outputs-")
        .tempdir()
        .unwrap();
    let outputs = dir.path().join("build");
    // hm creates the file before the step.
    std::fs::write(&outputs, "").unwrap();
    let run = "cat src/main.txt lib/dep.txt; stat -c '%a %u' /hm /hm/output; \
               mkdir -p dist/sub; echo app > dist/app.txt; echo deep > dist/sub/deep.txt; \
               echo other > other.txt; ln -s app.txt dist/link; mkfifo dist/fifo; \
               echo version=1 >> \"$HM_OUTPUT\"; echo \"output in $HM_OUTPUT\"";
    let step = fixture.step("passed", run, Some(&outputs));
    let options = StepOptions {
        needs_artifacts: Some(tar_of(&[("lib/dep.txt", "dep\n")])),
        ..globs(&["dist/**"])
    };
    let harness = harness().await;
    let result = harness.execute_with(step, options).await.unwrap();
    assert_eq!(exit_code(&result), Some(0), "{result:?}");
    assert_eq!(
        result.stdout(),
        ["main", "dep", "777 0", "666 0", "output in /hm/output"],
        "{result:?}"
    );
    let tar = match &result.artifacts {
        Some(Ok(tar)) => tar,
        other => panic!("expected a tar, got {other:?}"),
    };
    let expected = [
        ("dist/", "/"),
        ("dist/app.txt", "app\n"),
        ("dist/sub/", "/"),
        ("dist/sub/deep.txt", "deep\n"),
    ]
    .map(|(p, c)| (p.to_owned(), c.to_owned()));
    assert_eq!(entries(tar), BTreeMap::from(expected));
    assert_eq!(std::fs::read_to_string(&outputs).unwrap(), "version=1\n");
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_failures_and_empty_globs_hand_over_what_hm_expects() {
    let Some(mut fixture) = Fixture::new("limits") else {
        return;
    };
    let harness = harness().await;

    // Past the file limit: a problem instead of a tar.
    let step = fixture.step(
        "over",
        "mkdir dist; for f in a b c; do echo $f > dist/$f; done",
        None,
    );
    let options = StepOptions {
        artifact_limits: ArtifactLimits {
            max_files: 2,
            max_bytes: 1 << 20,
        },
        ..globs(&["dist"])
    };
    let run = harness.execute_with(step, options).await.unwrap();
    assert_eq!(exit_code(&run), Some(0), "{run:?}");
    match &run.artifacts {
        Some(Err(problem)) => assert!(problem.contains("more than 2 files"), "{problem}"),
        other => panic!("expected a problem, got {other:?}"),
    }

    // A failed step hands over neither artifacts nor outputs.
    let dir = std::env::temp_dir().join(format!("hm-docker-failed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let outputs = dir.join("failed");
    std::fs::write(&outputs, "").unwrap();
    let step = fixture.step(
        "failed",
        "mkdir dist; echo x > dist/x; echo k=v >> \"$HM_OUTPUT\"; exit 3",
        Some(&outputs),
    );
    let run = harness.execute_with(step, globs(&["dist"])).await.unwrap();
    assert_eq!(exit_code(&run), Some(3), "{run:?}");
    assert!(run.artifacts.is_none(), "{run:?}");
    assert_eq!(std::fs::read_to_string(&outputs).unwrap(), "");
    let _ = std::fs::remove_dir_all(&dir);

    // Globs whose roots are not there (a 404 from Docker) match nothing: an empty tar.
    let step = fixture.step("nothing", "true", None);
    let run = harness
        .execute_with(step, globs(&["missing/**", "out/*.whl"]))
        .await
        .unwrap();
    assert_eq!(exit_code(&run), Some(0), "{run:?}");
    match &run.artifacts {
        Some(Ok(tar)) => assert_eq!(entries(tar), BTreeMap::new()),
        other => panic!("expected an empty tar, got {other:?}"),
    }
    harness.shutdown().await.unwrap();
}
