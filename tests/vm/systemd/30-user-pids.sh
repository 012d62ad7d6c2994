# vm-user: hmuser
# An ordinary user from a login shell: a fork storm in a step with a pids limit ends
# `pids_limit` through the delegated scope, and nothing of it outlives the run.
. /usr/local/lib/hm-vm/lib.sh

pipeline <<'TOML'
[steps.storm]
run = "i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i + 1)); done; wait"
limits = { pids = 20 }
timeout = "30s"
env = { HM_VM_MARKER = "@MARKER@" }
TOML

hm_run
expect_event isolation build_start isolation cgroup_v2
expect_event storm-status step_end:storm status failed
expect_event storm-cause step_end:storm cause pids_limit
expect exit-code "hm's exit code" "$RC" 1
expect_no_process_left
expect_no_scope_left
