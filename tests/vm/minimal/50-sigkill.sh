# hm alone in a cgroup of its own is SIGKILLed while a step runs that left a grandchild in the
# background (re-parented to hm, the subreaper). The guardian must kill it and remove every
# cgroup of the run: nothing of hm remains.
. /usr/local/lib/hm-vm/lib.sh

own=$(new_cgroup test-sigkill)
pipeline <<'TOML'
[steps.grandchild]
run = "sh -c 'sleep 1000 &'; touch @WORK@/started; sleep 1000"
env = { HM_VM_MARKER = "@MARKER@" }
TOML

remember_cgroup_tree
hm_run "$own" &
runner=$!
i=0
while [ ! -e "$WORK/started" ] && [ $i -lt 300 ]; do
	sleep 0.2
	i=$((i + 1))
done
if [ -e "$WORK/started" ]; then
	ok step-started
	kill -9 "$(cat "$WORK/pid")"
else
	fail step-started "the step did not start within 60 s"
	kill -9 "$(cat "$WORK/pid")" 2>/dev/null
fi
wait $runner
sleeping() {
	for proc in /proc/[0-9]*; do
		[ "$(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null)" = "sleep 1000 " ] && echo "${proc#/proc/}"
	done
}
if settle sleeping; then
	ok grandchild-killed
else
	fail grandchild-killed "sleep 1000 still runs ${SETTLE}s after hm was killed: pids $LEFT"
fi
expect_no_process_left
expect_cgroup_tree_unchanged
remove_cgroup "$own"
