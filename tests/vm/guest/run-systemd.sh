# vm-scenarios.service: waits for the lingering user's manager, runs the scenarios, powers off.
# `systemctl poweroff --force --force` is immediate: the root file system is a tmpfs, and the
# results have already left through the serial port.
for _ in $(seq 1 120); do
	systemctl is-active --quiet user@1000.service && break
	sleep 0.5
done
echo "hm-vm: user@1000.service is $(systemctl is-active user@1000.service)" >/dev/console
. /usr/local/lib/hm-vm/run-scenarios.sh
systemctl poweroff --force --force
