# hm started in a cgroup that also holds another process (as every terminal's cgroup does).
# Without systemd to ask for a delegated scope, hm falls back to rlimits and says why; the run
# still passes, and nothing changes in the cgroup tree.
. /usr/local/lib/hm-vm/lib.sh

shared=$(new_cgroup test-shared)
sh -c 'echo $$ >"$1/cgroup.procs" && exec sleep 999' neighbour "$shared" &
neighbour=$!
pipeline <<'TOML'
[steps.hello]
run = "echo hello"
env = { HM_VM_MARKER = "@MARKER@" }
TOML

settle sh -c 'grep -q . "$1/cgroup.procs" || echo empty' - "$shared"
remember_cgroup_tree
doctor doctor 'cgroup v2: .*other processes' "$shared"
# The scenario runs as root: a fix that says to become root would not help.
if grep -q 'run hm as root' "$WORK/doctor"; then
	fail doctor-fix "hm doctor, run by root, says to run hm as root: $(grep 'run hm as root' "$WORK/doctor")"
else
	ok doctor-fix
fi
hm_run "$shared"
expect_event isolation build_start isolation rlimit
reason=$(event build_start | field isolation_reason)
case $reason in
*"$shared"*"other processes"*) ok isolation-reason ;;
*) fail isolation-reason "isolation_reason is '$reason', expected it to say that $shared holds other processes" ;;
esac
# Only cgroup2 is mounted: what cgroup v1 lacks is noise here.
case $reason in
*"cgroup v1"*) fail isolation-reason-v2-only "isolation_reason speaks of cgroup v1 on a v2-only machine: '$reason'" ;;
*) ok isolation-reason-v2-only ;;
esac
expect_event hello-status step_end:hello status passed
expect exit-code "hm's exit code" "$RC" 0
expect_no_process_left
expect_cgroup_tree_unchanged
kill "$neighbour"
wait "$neighbour"
remove_cgroup "$shared"
