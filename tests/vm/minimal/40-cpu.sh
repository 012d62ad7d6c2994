# hm alone in a cgroup of its own: a busy loop in a step with `cpu = 0.5` gets about half a CPU,
# and the step's cpu_ms says so. TCG timing is loose: the bound is 60% of the step's wall time
# (an unthrottled loop takes 100%), and at least 10% shows that CPU time was accounted at all.
. /usr/local/lib/hm-vm/lib.sh

own=$(new_cgroup test-cpu)
pipeline <<'TOML'
[steps.busy]
run = "timeout 3 sh -c 'while :; do :; done' || true"
limits = { cpu = 0.5 }
env = { HM_VM_MARKER = "@MARKER@" }
TOML

remember_cgroup_tree
hm_run "$own"
expect_event isolation build_start isolation cgroup_v2
expect_event busy-status step_end:busy status passed
end=$(event step_end busy)
cpu=$(echo "$end" | field cpu_ms)
wall=$(echo "$end" | field duration_ms)
echo "cpu_ms=$cpu duration_ms=$wall" | context "busy"
case "$cpu:$wall" in
*[!0-9:]* | :* | *:)
	fail cpu-quota "step_end has cpu_ms '$cpu' and duration_ms '$wall', expected numbers"
	;;
*)
	if [ $((cpu * 100)) -gt $((wall * 60)) ]; then
		fail cpu-quota "cpu_ms $cpu is more than 60% of duration_ms $wall: the quota did not hold"
	elif [ $((cpu * 100)) -lt $((wall * 10)) ]; then
		fail cpu-quota "cpu_ms $cpu is less than 10% of duration_ms $wall: CPU time was not accounted"
	else
		ok cpu-quota
	fi
	;;
esac
expect exit-code "hm's exit code" "$RC" 0
expect_no_process_left
expect_cgroup_tree_unchanged
remove_cgroup "$own"
