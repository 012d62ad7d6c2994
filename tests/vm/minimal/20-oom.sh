# hm started alone in a cgroup of its own: a step over its memory limit is killed by the OOM
# killer and reported as such, and its sibling passes.
. /usr/local/lib/hm-vm/lib.sh

own=$(new_cgroup test-oom)
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

remember_cgroup_tree
doctor doctor '^isolation: cgroup_v2' "$own"
hm_run "$own"
expect_event isolation build_start isolation cgroup_v2
expect_event oom-status step_end:hog status failed
expect_event oom-cause step_end:hog cause oom
expect_step_message oom-limit-named hog "limit 32 MiB"
expect_event sibling-status step_end:sibling status passed
expect exit-code "hm's exit code" "$RC" 1
expect_no_process_left
expect_cgroup_tree_unchanged
remove_cgroup "$own"
