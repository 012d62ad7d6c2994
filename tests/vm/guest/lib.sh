# Sourced by every scenario script in the guest (POSIX sh: busybox in the minimal VM, dash in
# the systemd VM). The runner sets HM_VM_SCENARIO (the scenario's name) and HM_VM_RESULTS (a
# file it forwards to the host when the scenario ends). A scenario reports one line per check:
#   CHECK <scenario>/<check> ok
#   CHECK <scenario>/<check> FAIL <detail>
# and context the host shows when a check fails:
#   CONTEXT <scenario> <label>: <text>

HM=${HM:-/usr/local/bin/hm}
SCENARIO=${HM_VM_SCENARIO:?the runner sets HM_VM_SCENARIO}
: "${HM_VM_RESULTS:?the runner sets HM_VM_RESULTS}"
# In the environment of every step a scenario runs (never exported in the scenario's own
# shell), so that any process left of a run can be found.
MARKER=hm-vm-$SCENARIO
WORK=$(mktemp -d "/tmp/hm-vm-$SCENARIO.XXXXXX")
PROJECT=$WORK/project
mkdir "$PROJECT"
# How long a check waits for something asynchronous (the guardian's cleanup, systemd removing
# a scope) before it says what is left.
SETTLE=${HM_VM_SETTLE:-15}

# ---- reporting ----

ok() { echo "CHECK $SCENARIO/$1 ok" >>"$HM_VM_RESULTS"; }

# fail CHECK DETAIL...: the detail on one line.
fail() {
	check=$1
	shift
	echo "CHECK $SCENARIO/$check FAIL $(printf '%s' "$*" | tr '\n' ' ')" >>"$HM_VM_RESULTS"
}

# context LABEL < text: each line as context.
context() { sed "s|^|CONTEXT $SCENARIO $1: |" >>"$HM_VM_RESULTS"; }

# expect CHECK WHAT ACTUAL EXPECTED: ok when equal, else a failure naming both.
expect() {
	if [ "$3" = "$4" ]; then
		ok "$1"
	else
		fail "$1" "$2 is '$3', expected '$4'"
	fi
}

# ---- hm's event stream ($WORK/events) ----

# The first event of kind $1 (a line of JSON), optionally of step $2.
event() {
	if [ $# = 2 ]; then
		grep -m1 "\"kind\":\"$1\",\"step\":\"$2\"" "$WORK/events"
	else
		grep -m1 "\"kind\":\"$1\"" "$WORK/events"
	fi
}

# field NAME < event: the value of top-level key NAME of a JSON object on one line (a string
# without its quotes, a number, true, false or null); empty when absent. Enough for hm's flat
# events, whose strings do not contain escaped quotes where the scenarios look.
field() {
	sed -n -e "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" -e "t" \
		-e "s/.*\"$1\":\\([^,}\"]*\\).*/\\1/p"
}

# expect_event CHECK KIND[:STEP] FIELD EXPECTED
expect_event() {
	case $2 in
	*:*) line=$(event "${2%%:*}" "${2#*:}") ;;
	*) line=$(event "$2") ;;
	esac
	if [ -z "$line" ]; then
		fail "$1" "no $2 event in hm's output"
		return
	fi
	expect "$1" "$2 $3" "$(echo "$line" | field "$3")" "$4"
}

# expect_step_message CHECK STEP TEXT: step STEP's step_end message contains TEXT.
expect_step_message() {
	message=$(event step_end "$2" | field message)
	case $message in
	*"$3"*) ok "$1" ;;
	*) fail "$1" "step_end:$2 message is '$message', expected it to contain '$3'" ;;
	esac
}

# ---- running hm ----

# pipeline < hm.toml: the scenario's pipeline. Every step should carry
# `env = { HM_VM_MARKER = "@MARKER@" }`; @MARKER@ and @WORK@ are replaced.
pipeline() { sed -e "s|@MARKER@|$MARKER|g" -e "s|@WORK@|$WORK|g" >"$PROJECT/hm.toml"; }

# in_cgroup DIR CMD...: CMD in cgroup DIR ('' for the caller's own), as a process that joins it
# alone and then becomes CMD (its pid is written to $WORK/pid first), bounded to 120 s by a
# `timeout` that stays outside DIR.
in_cgroup() {
	dir=$1
	shift
	timeout 120 sh -c '
		[ -z "$1" ] || echo $$ >"$1/cgroup.procs" || exit 125
		echo $$ >"$2"
		shift 2
		exec "$@"' in_cgroup "$dir" "$WORK/pid" "$@"
}

# hm_run [DIR]: `hm run --format json` in the project, from cgroup DIR; events in $WORK/events,
# stderr in $WORK/stderr, the exit code in $RC. hm's stderr is context.
hm_run() {
	RC=0
	(cd "$PROJECT" && in_cgroup "${1:-}" "$HM" run --format json >"$WORK/events" 2>"$WORK/stderr") || RC=$?
	context "hm stderr" <"$WORK/stderr"
	grep -v '"kind":"step_log"' "$WORK/events" | context "hm events"
}

# doctor CHECK PATTERN [DIR]: `hm doctor` from cgroup DIR; its output (also in $WORK/doctor) is
# context, and ok when a line matches PATTERN (grep -E).
doctor() {
	status=0
	(cd "$PROJECT" && in_cgroup "${3:-}" "$HM" doctor >"$WORK/doctor" 2>&1) || status=$?
	context "hm doctor (exit $status)" <"$WORK/doctor"
	if grep -qE "$2" "$WORK/doctor"; then
		ok "$1"
	else
		fail "$1" "hm doctor says '$(head -n1 "$WORK/doctor")', expected a line matching /$2/"
	fi
}

# ---- what is left ----

# Processes left of this scenario's runs: any with the marker in its environment, and any hm.
# One line each: pid and command line.
leftovers() {
	for proc in /proc/[0-9]*; do
		pid=${proc#/proc/}
		[ "$pid" = $$ ] && continue
		exe=$(readlink "$proc/exe" 2>/dev/null) || exe=
		if tr '\0' '\n' <"$proc/environ" 2>/dev/null | grep -qx "HM_VM_MARKER=$MARKER" ||
			[ "$exe" = "$HM" ] || [ "$exe" = "$HM (deleted)" ]; then
			echo "$pid $(tr '\0' ' ' <"$proc/cmdline" 2>/dev/null)"
		fi
	done
}

# settle CMD...: runs CMD (which prints what is wrong, nothing when all is well) until it prints
# nothing or $SETTLE seconds have passed; its last output is in $LEFT.
settle() {
	deadline=$(($(date +%s) + SETTLE))
	while :; do
		LEFT=$("$@")
		[ -z "$LEFT" ] && return 0
		[ "$(date +%s)" -ge "$deadline" ] && return 1
		sleep 0.2
	done
}

# expect_no_process_left: nothing of hm or of the scenario's steps runs any more.
expect_no_process_left() {
	if settle leftovers; then
		ok no-process-left
	else
		fail no-process-left "still running ${SETTLE}s after hm ended: $LEFT"
	fi
}

# The cgroup v2 tree as far as it is hm's business: every directory, and every
# cgroup.subtree_control with its content.
cgroup_tree() {
	find /sys/fs/cgroup -type d | sort
	find /sys/fs/cgroup -name cgroup.subtree_control | sort | while read -r file; do
		echo "$file: $(cat "$file")"
	done
}

# remember_cgroup_tree: the tree before a run, for expect_cgroup_tree_unchanged.
remember_cgroup_tree() { cgroup_tree >"$WORK/tree.before"; }

tree_difference() {
	cgroup_tree >"$WORK/tree.after"
	diff "$WORK/tree.before" "$WORK/tree.after" | grep '^[-+][^-+]'
}

# expect_cgroup_tree_unchanged: the tree is byte for byte what remember_cgroup_tree saw.
expect_cgroup_tree_unchanged() {
	if settle tree_difference; then
		ok cgroup-tree-unchanged
	else
		fail cgroup-tree-unchanged "differs from before the run (- before, + after):" \
			"$(echo "$LEFT" | tr '\n' ';')"
		echo "$LEFT" | context "cgroup tree diff"
	fi
}

# ---- setting up cgroups (minimal VM) ----

# Controllers in the root's cgroup.subtree_control, as systemd would have enabled them.
enable_root_controllers() {
	echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
}

# new_cgroup NAME: a fresh, empty cgroup below the root; prints its path.
new_cgroup() {
	enable_root_controllers
	dir=/sys/fs/cgroup/$1
	remove_cgroup "$dir"
	mkdir "$dir"
	echo "$dir"
}

# remove_cgroup DIR: DIR and everything below it, whatever a run left (so that the next scenario
# starts from a clean tree); what cannot be removed is context.
remove_cgroup() {
	[ -d "$1" ] || return 0
	find "$1" -depth -type d | while read -r dir; do
		rmdir "$dir" 2>/dev/null || echo "cannot remove $dir: $(cat "$dir/cgroup.procs" | tr '\n' ' ')"
	done | context cleanup
}

# ---- systemd (systemd VM) ----

# What is left of hm in systemd and cgroupfs: `hm-*` units of the system manager and, for an
# ordinary user, of the user's manager, and cgroups named hm* or below an hm/ directory.
hm_units_and_cgroups() {
	systemctl list-units 'hm-*' --all --no-pager --plain --no-legend 2>&1
	[ "$(id -u)" = 0 ] || systemctl --user list-units 'hm-*' --all --no-pager --plain --no-legend 2>&1
	find /sys/fs/cgroup -name 'hm*' 2>/dev/null
	find /sys/fs/cgroup -path '*/hm/*' 2>/dev/null
}

# expect_no_scope_left: no hm-*.scope and no cgroup of hm remain (systemd removes an empty scope
# on its own, so this waits a moment).
expect_no_scope_left() {
	if settle hm_units_and_cgroups; then
		ok no-scope-left
	else
		fail no-scope-left "left ${SETTLE}s after hm ended: $(echo "$LEFT" | tr '\n' ';')"
	fi
}

# Where this login shell is, and what systemd delegates here: context for every check.
describe_session() {
	{
		echo "user $(id -un) ($(id -u)), cgroup $(cat /proc/self/cgroup)"
		echo "XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-unset}"
		own=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
		echo "controllers here: $(cat "$own/cgroup.controllers")"
		[ "$(id -u)" = 0 ] ||
			echo "user manager delegates: $(cat "/sys/fs/cgroup/user.slice/user-$(id -u).slice/user@$(id -u).service/cgroup.controllers" 2>&1)"
	} | context session
}
