# Runs the scenarios of this boot and reports them to the host on /dev/ttyS1 (a file on the
# host): `SCENARIO <name> begin`, the scenario's own lines, `SCENARIO <name> end <status>
# <seconds>`, and `DONE` at the very end. Sourced by the minimal VM's /init and by the systemd
# VM's vm-scenarios.service, as root; the scenarios are /usr/local/lib/hm-vm/scenarios/*.sh in
# the order of their names, all of them or those named by `hm_vm.scenarios=a,b` on the kernel
# command line. A scenario whose first lines hold `# vm-user: NAME` runs as that user, from a
# login shell (`runuser -l`: a logind session where there is one).

LIB=/usr/local/lib/hm-vm
exec 3>/dev/ttyS1

uptime_s() { cut -d' ' -f1 /proc/uptime; }

wanted=$(sed -n 's/.*hm_vm\.scenarios=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
echo "BOOTED $(uptime_s)" >&3
for script in "$LIB"/scenarios/*.sh; do
	name=$(basename "$script" .sh)
	name=${name#[0-9][0-9]-}
	if [ -n "$wanted" ]; then
		case " $wanted " in
		*" $name "*) ;;
		*) continue ;;
		esac
	fi
	user=$(sed -n '1,5s/^# vm-user: *\([a-z0-9_-]*\).*/\1/p' "$script")
	results=/tmp/hm-vm-results.$name
	: >"$results"
	echo "SCENARIO $name begin" >&3
	started=$(uptime_s)
	echo "hm-vm: scenario $name${user:+ as $user}" >/dev/console
	if [ -n "$user" ]; then
		chown "$user" "$results"
		# A login shell clears the environment: the scenario's settings go in the command.
		timeout 200 runuser -l "$user" -c "HM_VM_SCENARIO=$name HM_VM_RESULTS=$results sh $script"
	else
		HM_VM_SCENARIO=$name HM_VM_RESULTS=$results timeout 200 sh "$script"
	fi
	status=$?
	cat "$results" >&3
	echo "SCENARIO $name end $status $(awk -v a="$started" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }')" >&3
done
echo "DONE $(uptime_s)" >&3
# Closing the port waits until the UART has sent everything.
exec 3>&-
