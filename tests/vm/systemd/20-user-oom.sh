# vm-user: hmuser
# An ordinary user from a login shell (a logind session): hm asks the user's manager for a
# delegated hm-<run>.scope (bookworm's systemd delegates cpu, memory and pids to users) and gets
# real limits: a step over its memory limit ends oom, its sibling passes, and afterwards no scope
# and no cgroup of hm remain.
. /usr/local/lib/hm-vm/lib.sh

describe_session
pipeline <<'TOML'
[steps.hog]
run = "head -c 300000000 /dev/zero | tail"
limits = { memory = "32MiB" }
timeout = "60s"
env = { HM_VM_MARKER = "@MARKER@" }

[steps.sibling]
run = "echo sibling"
env = { HM_VM_MARKER = "@MARKER@" }
TOML

doctor doctor '^isolation: cgroup_v2'
hm_run
expect_event isolation build_start isolation cgroup_v2
expect_event oom-status step_end:hog status failed
expect_event oom-cause step_end:hog cause oom
expect_step_message oom-limit-named hog "limit 32 MiB"
expect_event sibling-status step_end:sibling status passed
expect exit-code "hm's exit code" "$RC" 1
expect_no_process_left
expect_no_scope_left
