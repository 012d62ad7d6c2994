//! Step processes through `hm_sdk::process`, driven over the real protocol by
//! `hm_sdk::testing`: output streaming and flow control, exit status, cancel and the kill
//! ladder, leftover background processes, and long or unterminated lines.

mod support;

use std::time::{Duration, Instant};

use hm_sdk::OutputStream;
use hm_sdk::testing::{Harness, HarnessOptions, StepRun, step};
use support::{assert_nothing_left, shell_plugin};

async fn harness_with(options: HarnessOptions) -> Harness {
    Harness::start_with(shell_plugin(), options)
        .await
        .expect("handshake")
}

async fn harness() -> Harness {
    harness_with(HarnessOptions::default()).await
}

/// Runs one step on a fresh plugin, shuts the plugin down cleanly and checks nothing is left.
async fn run_step(options: HarnessOptions, run: &str) -> StepRun {
    let harness = harness_with(options).await;
    let step_run = harness.execute(step(run)).await.expect("step run");
    harness.shutdown().await.expect("clean shutdown");
    assert_nothing_left(&step_run).await;
    step_run
}

fn numbers(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

async fn check_every_line_arrives_in_order(options: HarnessOptions) {
    let run = run_step(options, "seq 1 100000 & seq 1 5000 >&2; wait").await;
    assert_eq!(
        run.result.as_ref().map(|r| r.exit_code),
        Ok(Some(0)),
        "{:?}",
        run.result
    );
    // Compared as whole vectors only after the counts, so a failure message stays readable.
    assert_eq!(run.stdout().len(), 100_000);
    assert_eq!(run.stderr().len(), 5_000);
    assert!(
        run.stdout()
            .into_iter()
            .eq(numbers(1..=100_000).iter().map(String::as_str))
    );
    assert!(
        run.stderr()
            .into_iter()
            .eq(numbers(1..=5_000).iter().map(String::as_str))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_in_order_with_little_credit() {
    check_every_line_arrives_in_order(HarnessOptions {
        log_credit: 2,
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_in_order_with_one_credit_and_small_batches() {
    // About a thousand batches, each waiting for the credit the previous one returned.
    check_every_line_arrives_in_order(HarnessOptions {
        log_credit: 1,
        max_batch_bytes: 1024,
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_held_while_hm_is_behind_still_arrives_while_the_step_runs() {
    // One small batch in flight at a time: the burst's last lines are read while hm still
    // holds an earlier batch, so they wait for its credit rather than for the step's end.
    let harness = harness_with(HarnessOptions {
        log_credit: 1,
        max_batch_bytes: 1024,
        ..Default::default()
    })
    .await;
    let mut call = harness
        .start_execute(step("seq 1 20000; echo last; exec sleep 100"))
        .unwrap();
    call.wait_for_line(|_, text| text == "last").await.unwrap();
    harness.cancel(&call).unwrap();
    let run = call.finish().await.unwrap();
    let mut expected = numbers(1..=20_000);
    expected.push("last".to_owned());
    assert_eq!(run.stdout().len(), expected.len());
    assert!(
        run.stdout()
            .into_iter()
            .eq(expected.iter().map(String::as_str))
    );
    harness.shutdown().await.unwrap();
    assert_nothing_left(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_steps_keep_their_own_output() {
    let harness = harness_with(HarnessOptions {
        log_credit: 2,
        ..Default::default()
    })
    .await;
    let first = harness.start_execute(step("seq 1 20000")).unwrap();
    let second = harness.start_execute(step("seq 20001 40000")).unwrap();
    let second = second.finish().await.unwrap();
    let first = first.finish().await.unwrap();
    harness.shutdown().await.unwrap();
    assert_eq!(first.stdout(), numbers(1..=20_000));
    assert_eq!(second.stdout(), numbers(20_001..=40_000));
    assert_nothing_left(&first).await;
    assert_nothing_left(&second).await;
}

#[tokio::test]
async fn exit_code_and_signal_are_reported_exactly() {
    let cases: [(&str, Option<i32>, Option<i32>); 5] = [
        ("true", Some(0), None),
        ("exit 3", Some(3), None),
        ("exit 255", Some(255), None),
        ("kill -9 $$", None, Some(9)),
        ("kill -TERM $$", None, Some(15)),
    ];
    let harness = harness().await;
    for (run, exit_code, signal) in cases {
        let step_run = harness.execute(step(run)).await.unwrap();
        let result = step_run
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{run}: failed: {e}"));
        assert_eq!(
            (result.exit_code, result.signal),
            (exit_code, signal),
            "{run}"
        );
        assert!(
            !result.cancelled && !result.core_dumped,
            "{run}: {result:?}"
        );
        assert_nothing_left(&step_run).await;
    }
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_the_step_and_its_whole_process_group() {
    let harness = harness().await;
    let mut call = harness
        .start_execute(step("sleep 100 & sleep 100"))
        .unwrap();
    let pgid = call.process_group().await.unwrap();
    harness.cancel(&call).unwrap();
    let run = call.finish().await.unwrap();
    let result = run.result.as_ref().unwrap();
    assert!(result.cancelled, "{result:?}");
    // The group got SIGTERM, which nothing in it handles.
    assert_eq!(
        (result.exit_code, result.signal),
        (None, Some(15)),
        "{result:?}"
    );
    assert_eq!(run.process_groups, [pgid]);
    harness.shutdown().await.unwrap();
    assert_nothing_left(&run).await;
}

#[tokio::test]
async fn a_step_ignoring_sigterm_is_killed_after_its_grace() {
    let grace = Duration::from_millis(300);
    let harness = harness().await;
    let mut ignoring = step("trap '' TERM; echo ready; sleep 100 & sleep 100");
    ignoring.grace_ms = grace.as_millis() as u64;
    let mut call = harness.start_execute(ignoring).unwrap();
    // Only after this line is the trap in place.
    call.wait_for_line(|_, text| text == "ready").await.unwrap();
    let cancelled_at = Instant::now();
    harness.cancel(&call).unwrap();
    let run = call.finish().await.unwrap();
    let took = cancelled_at.elapsed();
    let result = run.result.as_ref().unwrap();
    assert!(result.cancelled, "{result:?}");
    assert_eq!(
        (result.exit_code, result.signal),
        (None, Some(9)),
        "{result:?}"
    );
    assert!(
        took >= grace,
        "killed after {took:?}, before the grace of {grace:?} was over"
    );
    assert!(
        took < grace + Duration::from_secs(5),
        "killed only after {took:?}"
    );
    harness.shutdown().await.unwrap();
    assert_nothing_left(&run).await;
}

#[tokio::test]
async fn a_background_process_left_behind_is_killed_and_reported() {
    let started = Instant::now();
    let run = run_step(HarnessOptions::default(), "sleep 100 & echo done").await;
    // The background sleep holds the output pipes: the step ends only because it was killed.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let result = run.result.as_ref().unwrap();
    assert_eq!(
        (result.exit_code, result.signal),
        (Some(0), None),
        "{result:?}"
    );
    assert_eq!(result.leaked_processes, 1, "{result:?}");
    assert!(!result.cancelled);
    assert_eq!(run.stdout(), ["done"]);
    // The warning goes into the step's own log, where every renderer and hook sees it.
    let stderr = run.stderr();
    assert!(
        stderr.len() == 1 && stderr[0].contains("killed 1 process"),
        "no warning about the leftover process: {stderr:?}"
    );
}

#[tokio::test]
async fn a_last_line_without_newline_still_arrives() {
    let run = run_step(
        HarnessOptions::default(),
        "printf 'first\\nlast'; printf 'no newline' >&2",
    )
    .await;
    assert_eq!(run.stdout(), ["first", "last"]);
    assert_eq!(run.stderr(), ["no newline"]);
}

#[tokio::test]
async fn a_200_kib_line_arrives_split_and_whole() {
    let options = HarnessOptions::default();
    let max = options.max_batch_bytes as usize;
    let run = run_step(
        options,
        r"head -c 204800 /dev/zero | tr '\0' x; echo; echo after",
    )
    .await;
    let stdout = run.stdout();
    let (last, pieces) = stdout.split_last().unwrap();
    assert_eq!(*last, "after");
    assert!(
        pieces.len() >= 2,
        "the long line was not split: {} piece(s)",
        pieces.len()
    );
    assert!(
        pieces
            .iter()
            .all(|p| p.len() <= max && p.bytes().all(|b| b == b'x'))
    );
    assert_eq!(pieces.iter().map(|p| p.len()).sum::<usize>(), 204_800);
}

#[tokio::test]
async fn a_long_line_of_multibyte_text_is_split_between_characters() {
    // The leading `x` puts every character boundary at an odd offset, so a split at a fixed
    // byte count would cut a character in two.
    let run = run_step(
        HarnessOptions::default(),
        r"printf x; yes é | head -n 102400 | tr -d '\n'; echo",
    )
    .await;
    let expected = format!("x{}", "é".repeat(102_400));
    assert!(run.stdout().len() >= 2, "the long line was not split");
    assert!(
        run.stdout().concat() == expected,
        "the text changed in the split"
    );
}

#[tokio::test]
async fn lines_around_the_split_size_keep_their_bytes_and_gain_no_empty_lines() {
    // Lines from a little under to a little over what one 4 KiB batch holds, one byte apart.
    let options = HarnessOptions {
        max_batch_bytes: 4096,
        ..Default::default()
    };
    let run = run_step(
        options,
        "awk 'BEGIN { s = \"x\"; while (length(s) < 5000) s = s s; \
         for (n = 3968; n <= 4160; n++) print substr(s, 1, n) }'",
    )
    .await;
    let stdout = run.stdout();
    assert!(!stdout.contains(&""), "an empty line appeared");
    let expected: usize = (3968..=4160).sum();
    assert_eq!(
        stdout.iter().map(|line| line.len()).sum::<usize>(),
        expected
    );
}

#[tokio::test]
async fn output_lines_keep_their_stream() {
    let run = run_step(
        HarnessOptions::default(),
        "echo out; echo err >&2; echo out2",
    )
    .await;
    assert_eq!(run.stdout(), ["out", "out2"]);
    assert_eq!(run.stderr(), ["err"]);
    assert!(
        run.lines
            .contains(&(OutputStream::Stderr, "err".to_owned()))
    );
}

#[tokio::test]
async fn the_step_runs_with_the_shell_hm_sends_and_sh_c_from_an_older_hm() {
    let run = "false; echo after";
    let exit_and_lines = |run: StepRun| {
        let code = run.result.as_ref().map(|r| r.exit_code).unwrap_or(None);
        let lines: Vec<String> = run.stdout().into_iter().map(str::to_owned).collect();
        (code, lines)
    };
    let harness = harness().await;
    assert!(harness.protocol() >= hm_ipc::EXECUTE_SINCE);
    // hm's default, `sh -e -c`: the first failing command ends the step.
    let default = harness.execute(step(run)).await.expect("step run");
    assert_eq!(exit_and_lines(default), (Some(1), vec![]));
    // Any argv: the program gets `run` as its last argument.
    let plain = harness
        .execute_with_shell(step(run), &["sh", "-c"])
        .await
        .expect("step run");
    assert_eq!(exit_and_lines(plain), (Some(0), vec!["after".to_owned()]));
    let argv = harness
        .execute_with_shell(step("ignored"), &["sh", "-c", "echo \"$0 $1\"", "zero"])
        .await
        .expect("step run");
    assert_eq!(
        exit_and_lines(argv),
        (Some(0), vec!["zero ignored".to_owned()])
    );
    harness.shutdown().await.expect("clean shutdown");

    // An hm on protocol 5 sends `ExecuteStep`, which the SDK runs as it always did: `sh -c`.
    let old = harness_with(HarnessOptions {
        protocol_max: hm_ipc::HOOKS_SINCE,
        ..HarnessOptions::default()
    })
    .await;
    assert_eq!(old.protocol(), hm_ipc::HOOKS_SINCE);
    let legacy = old.execute(step(run)).await.expect("step run");
    assert_eq!(exit_and_lines(legacy), (Some(0), vec!["after".to_owned()]));
    old.shutdown().await.expect("clean shutdown");
}
