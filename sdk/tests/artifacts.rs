//! Artifacts through the SDK (`StepContext::open_artifacts`, `put_artifacts`,
//! `artifacts_problem`), driven by `hm_sdk::testing` as hm drives them: a step sent as `Step`
//! (v7) carries its globs and limits; the tar a plugin puts arrives byte-exact ahead of the
//! step's reply and neither side holds its buffer afterwards; a problem arrives instead of a
//! tar; the artifacts of needed steps are handed out mapped; and against an hm on protocol 6
//! every artifact call is a no-op that sends nothing (the harness, judging with hm's policy,
//! would take a v7 call there as a protocol violation).

use std::io::Write;

use hm_sdk::testing::{ExecuteStep, Harness, HarnessOptions, StepOptions, StepRun, step};
use hm_sdk::{
    ArtifactLimits, BufferWriter, Executor, OutputStream, Plugin, SealedBuffer, StepContext,
    StepError, StepRequest, StepResult,
};

/// Says what the step came with (globs, limits, output file, the needed steps' artifacts),
/// then does what `run` says with its artifacts: `put` the bytes of `with.content` (through a
/// memfd named `with.memfd`), report `with.problem`, put `twice`, or `none`.
struct Collector;

impl Executor for Collector {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let say = |text: String| ctx.line(OutputStream::Stdout, text);
        say(format!("globs {}", step.artifacts.join(","))).await?;
        let ArtifactLimits {
            max_files,
            max_bytes,
        } = step.artifact_limits;
        say(format!("limits {max_files} {max_bytes}")).await?;
        say(format!("output {:?}", step.output_file())).await?;
        match ctx.open_artifacts().await? {
            Some(needs) => {
                say(format!("needs {}", String::from_utf8_lossy(&needs))).await?;
            }
            None => say("needs none".into()).await?,
        }
        let with = |key: &str| step.with[key].as_str().unwrap_or_default().to_owned();
        let tar = || -> Result<SealedBuffer, StepError> {
            let fail = |e: &dyn std::fmt::Display| StepError::Message(e.to_string());
            let mut writer = BufferWriter::new(&with("memfd")).map_err(|e| fail(&e))?;
            writer
                .write_all(with("content").as_bytes())
                .map_err(|e| fail(&e))?;
            writer.seal().map_err(|e| fail(&e))
        };
        match step.run.as_str() {
            "put" => ctx.put_artifacts(tar()?).await?,
            "problem" => ctx.artifacts_problem(with("problem")).await?,
            "twice" => {
                ctx.put_artifacts(tar()?).await?;
                let again = ctx.put_artifacts(tar()?).await;
                say(format!("again {again:?}")).await?;
            }
            _ => {}
        }
        Ok(StepResult {
            exit_code: Some(0),
            ..StepResult::default()
        })
    }
}

fn plugin() -> Plugin {
    Plugin::new("test-artifacts", "0.0.0").executor("collect", Collector)
}

fn step_with(run: &str, with: serde_json::Value) -> ExecuteStep {
    ExecuteStep {
        with_json: with.to_string(),
        ..step(run)
    }
}

fn globs(globs: &[&str]) -> StepOptions {
    StepOptions {
        artifacts: globs.iter().map(|&g| g.to_owned()).collect(),
        ..StepOptions::default()
    }
}

/// Descriptors and mappings of memfd `name` in this process (the plugin's and the harness's:
/// both are in it).
fn memfd_traces(name: &str) -> (usize, usize) {
    let needle = format!("memfd:{name}");
    let fds = std::fs::read_dir("/proc/self/fd")
        .expect("fd dir")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy().contains(&needle))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter(|l| l.contains(&needle))
        .count();
    (fds, maps)
}

fn assert_passed(run: &StepRun) {
    assert_eq!(
        run.result.as_ref().map(|r| r.exit_code),
        Ok(Some(0)),
        "{run:?}"
    );
}

#[tokio::test]
async fn the_tar_a_plugin_puts_reaches_hm_byte_exact_and_nobody_keeps_its_buffer() {
    let memfd = "hm-test-put-artifacts";
    // Above the 64 KiB threshold and not a multiple of a page.
    let content = "dist/app.txt ".repeat(10_000);
    let harness = Harness::start(plugin()).await.unwrap();
    assert_eq!(harness.protocol(), hm_ipc::PROTOCOL_MAX);
    let options = StepOptions {
        artifact_limits: ArtifactLimits {
            max_files: 3,
            max_bytes: 1000,
        },
        ..globs(&["dist/**", "*.whl"])
    };
    let with = serde_json::json!({ "memfd": memfd, "content": content });
    let run = harness
        .execute_with(step_with("put", with), options)
        .await
        .unwrap();
    assert_passed(&run);
    assert_eq!(
        run.stdout(),
        [
            "globs dist/**,*.whl",
            "limits 3 1000",
            "output None",
            "needs none"
        ]
    );
    assert_eq!(run.artifacts, Some(Ok(content.into_bytes())));
    assert_eq!(
        memfd_traces(memfd),
        (0, 0),
        "the buffer is gone on both sides"
    );
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_problem_arrives_instead_of_a_tar() {
    let harness = Harness::start(plugin()).await.unwrap();
    let with = serde_json::json!({ "problem": "its artifacts are more than 2 files" });
    let run = harness
        .execute_with(step_with("problem", with), globs(&["dist"]))
        .await
        .unwrap();
    assert_passed(&run);
    assert_eq!(
        run.artifacts,
        Some(Err("its artifacts are more than 2 files".to_owned()))
    );
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_step_that_puts_nothing_has_no_artifacts_and_its_calls_carry_hms_defaults() {
    let harness = Harness::start(plugin()).await.unwrap();
    let run = harness.execute(step("none")).await.unwrap();
    assert_passed(&run);
    let defaults = format!(
        "limits {} {}",
        hm_sdk::artifacts::DEFAULT_MAX_FILES,
        hm_sdk::artifacts::DEFAULT_MAX_BYTES
    );
    assert_eq!(
        run.stdout(),
        ["globs ", defaults.as_str(), "output None", "needs none"]
    );
    assert_eq!(run.artifacts, None);
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_upload_for_the_same_step_is_a_protocol_violation() {
    let harness = Harness::start(plugin()).await.unwrap();
    let with = serde_json::json!({ "memfd": "hm-test-twice", "content": "first" });
    let err = harness
        .execute_with(step_with("twice", with), globs(&["dist"]))
        .await
        .expect_err("hm ends a plugin that sends a step's artifacts twice");
    assert!(
        err.to_string()
            .contains("sent PutArtifacts twice for the step of call"),
        "{err}"
    );
}

#[tokio::test]
async fn the_artifacts_of_needed_steps_are_handed_out_mapped() {
    let memfd = "hm-test-needs";
    let harness = Harness::start(plugin()).await.unwrap();
    let options = StepOptions {
        needs_artifacts: Some(SealedBuffer::from_bytes(memfd, b"a tar of dist/").unwrap()),
        ..StepOptions::default()
    };
    let run = harness.execute_with(step("none"), options).await.unwrap();
    assert_passed(&run);
    assert_eq!(run.stdout()[3], "needs a tar of dist/");
    // The step answered and the harness forgot it: nothing of the buffer is left.
    assert_eq!(memfd_traces(memfd), (0, 0));
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_output_file_is_hm_output_from_the_steps_environment() {
    let harness = Harness::start(plugin()).await.unwrap();
    let mut with_output = step("none");
    with_output.env.push(hm_sdk::testing::EnvVar {
        name: hm_sdk::OUTPUT_ENV.into(),
        value: "/tmp/hm-run/outputs/build".into(),
    });
    let run = harness.execute(with_output).await.unwrap();
    assert_eq!(
        run.stdout()[2],
        r#"output Some("/tmp/hm-run/outputs/build")"#
    );
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn on_protocol_6_artifact_calls_send_nothing_and_succeed() {
    let options = HarnessOptions {
        protocol_max: 6,
        ..HarnessOptions::default()
    };
    let harness = Harness::start_with(plugin(), options).await.unwrap();
    let step_options = StepOptions {
        needs_artifacts: Some(SealedBuffer::from_bytes("hm-test-v6", b"x").unwrap()),
        ..globs(&["dist"])
    };
    for run in ["put", "problem"] {
        let with = serde_json::json!({ "memfd": "hm-test-v6-put", "content": "x", "problem": "p" });
        let step_options = StepOptions {
            needs_artifacts: None,
            ..globs(&["dist"])
        };
        let run = harness
            .execute_with(step_with(run, with), step_options)
            .await
            .unwrap();
        assert_passed(&run);
        assert_eq!(run.artifacts, None, "{run:?}");
        // The globs do not travel on v6: the step came as `Execute`.
        assert_eq!(run.stdout()[0], "globs ");
    }
    let run = harness
        .execute_with(step("none"), step_options)
        .await
        .unwrap();
    assert_eq!(run.stdout()[3], "needs none");
    // No violation: nothing of v7 went over the wire.
    harness.shutdown().await.unwrap();
}
