//! What a swarm task runs around the step: a POSIX shell script that fetches the workspace
//! (and the artifacts of the steps it needs) from the plugin's file server ([`crate::files`])
//! into `/workspace`, runs the step there as its child (passing on SIGTERM, so a removal still
//! stops the step with the grace it has), and once the step has passed sends back its outputs
//! and the roots of its artifact globs as a tar. The step's exit code is the task's.
//!
//! It needs `sh`, `tar`, and `curl` (or `wget` and `base64`) in the image, which busybox,
//! Alpine and most build images have; one without says so in the step's log and exits 125
//! before the step runs. Its own problems are lines starting `hm: ` on stderr. With `wget`,
//! files are sent base64-encoded: busybox's `wget --post-file` sends a file as a C string,
//! cut at its first NUL byte.

use hm_plugin_docker::workspace;
use hm_sdk::StepRequest;

use crate::files::Registered;

/// `$0` of the script, which `ps` on the node shows.
const NAME: &str = "hm-swarm-task";

/// The exit code of a task whose step never started.
pub const NOT_STARTED: i64 = 125;

/// The script. Its settings come in the environment (and are taken out of it before the step
/// runs): `HM_SWARM_URL` (the attempt's base URL), `HM_SWARM_NEEDS` (non-empty: fetch the
/// artifacts of the steps it needs), `HM_SWARM_ARTIFACTS` (the roots to send, a line each, `.`
/// for the whole workspace; unset: none), `HM_SWARM_DIR` (the step's directory). The step's
/// command line follows as `"$@"`.
const SCRIPT: &str = r#"url=$HM_SWARM_URL needs=${HM_SWARM_NEEDS:-} dir=$HM_SWARM_DIR
roots=${HM_SWARM_ARTIFACTS-} has_roots=${HM_SWARM_ARTIFACTS+1} output=${HM_OUTPUT:-}
unset HM_SWARM_URL HM_SWARM_NEEDS HM_SWARM_ARTIFACTS HM_SWARM_DIR
fail() { echo "hm: $*" >&2; exit 125; }
if command -v curl >/dev/null 2>&1; then
  get() { curl -fsS -o "$2" "$url/$1"; }
  send() { curl -fsS -o /dev/null -H 'Content-Type: application/octet-stream' --data-binary "@$2" "$url/$1"; }
elif command -v wget >/dev/null 2>&1; then
  command -v base64 >/dev/null 2>&1 || fail "the image has wget but no base64, which a swarm step needs with wget to send its files to hm (or give the image curl)"
  get() { wget -q -O "$2" "$url/$1"; }
  send() {
    base64 "$2" > /hm/send.b64 || return 1
    wget -q -O /dev/null --header 'X-Hm-Encoding: base64' --post-file=/hm/send.b64 "$url/$1"
    sent=$?
    rm -f /hm/send.b64
    return "$sent"
  }
else
  fail "the image has neither curl nor wget, one of which a swarm step needs to fetch its workspace from hm"
fi
command -v tar >/dev/null 2>&1 || fail "the image has no tar, which a swarm step needs to unpack its workspace"
mkdir -p /workspace /hm || fail "cannot create /workspace and /hm: the image's user must be able to"
get workspace /hm/workspace.tar || fail "cannot fetch the workspace from hm at ${url%/*/*}"
tar -xf /hm/workspace.tar -C /workspace || fail "cannot unpack the workspace into /workspace"
rm -f /hm/workspace.tar
if [ -n "$needs" ]; then
  get artifacts /hm/needs.tar || fail "cannot fetch the artifacts of the steps it needs from hm"
  tar -xf /hm/needs.tar -C /workspace || fail "cannot unpack the artifacts of the steps it needs"
  rm -f /hm/needs.tar
fi
if [ -n "$output" ]; then
  : > "$output" && chmod 666 "$output" || fail "cannot create the output file $output"
fi
cd "$dir" || fail "the step's directory $dir is not in the workspace"
send started /dev/null || fail "cannot reach hm at ${url%/*/*}"
"$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM
trap 'kill -INT "$pid" 2>/dev/null' INT
while :; do
  wait "$pid"
  code=$?
  kill -0 "$pid" 2>/dev/null || break
done
trap - TERM INT
[ "$code" -eq 0 ] || exit "$code"
if [ -n "$output" ]; then
  [ -f "$output" ] || output=/dev/null
  send outputs "$output" || echo "hm: cannot send the step's outputs to hm" >&2
fi
if [ -n "$has_roots" ]; then
  cd /workspace || exit 0
  set --
  while IFS= read -r root; do
    [ -n "$root" ] && { [ -e "$root" ] || [ -L "$root" ]; } && set -- "$@" "$root"
  done <<EOF
$roots
EOF
  if [ "$#" -gt 0 ]; then
    tar -cf /hm/artifacts.tar -- "$@" || echo "hm: cannot pack the step's artifacts" >&2
  else
    : > /hm/artifacts.tar
  fi
  send artifacts /hm/artifacts.tar || echo "hm: cannot send the step's artifacts to hm" >&2
  rm -f /hm/artifacts.tar
fi
exit 0
"#;

/// The task's command: the script, then the step's command line as its arguments.
pub fn command(step: &StepRequest) -> Vec<String> {
    let mut command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        SCRIPT.to_owned(),
        NAME.to_owned(),
    ];
    command.extend(step.command_line());
    command
}

/// The task's environment: the step's, with `/workspace` as the project directory and
/// `/hm/output` as the output file, and the script's settings.
pub fn env(step: &StepRequest, files: &Registered) -> Vec<String> {
    let mut env = workspace::container_env(step);
    env.push(format!("HM_SWARM_URL={}", files.url));
    env.push(format!("HM_SWARM_DIR={}", workspace::working_dir(step)));
    if files.has_needs() {
        env.push("HM_SWARM_NEEDS=1".into());
    }
    if let Some(roots) = &files.roots {
        let lines: Vec<&str> = roots
            .iter()
            .map(|root| if root.is_empty() { "." } else { root.as_str() })
            .collect();
        env.push(format!("HM_SWARM_ARTIFACTS={}", lines.join("\n")));
    }
    env
}
