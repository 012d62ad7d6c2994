# hm in the real root cgroup: no cgroup of its own, and no controller enabled yet in the root's
# cgroup.subtree_control (as the kernel boots). The root is exempt from the no-internal-process
# rule, so hm must accept it (cgroup v2, limits enforced) and leave the root's subtree_control
# as it found it. This runs first, before any other scenario enables controllers in the root.
. /usr/local/lib/hm-vm/lib.sh

echo "-memory -pids -cpu" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
expect setup "the root's cgroup.subtree_control" "$(cat /sys/fs/cgroup/cgroup.subtree_control)" ""

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
doctor doctor '^isolation: cgroup_v2'
hm_run
expect_event isolation build_start isolation cgroup_v2
expect_event oom-status step_end:hog status failed
expect_event oom-cause step_end:hog cause oom
expect_step_message oom-limit-named hog "limit 32 MiB"
expect_event sibling-status step_end:sibling status passed
expect exit-code "hm's exit code" "$RC" 1
expect_no_process_left
expect_cgroup_tree_unchanged
