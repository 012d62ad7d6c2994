#!/bin/sh
# Builds the VM test images from Debian packages, on the host. The harness (tests/src/vm/image.rs)
# calls it, keys its cache by this file's text and by what `inputs` prints, and packs DIR/root
# into an initramfs itself.
#
#   image.sh inputs KIND       what goes into KIND (package versions): one line each
#   image.sh build KIND DIR    build KIND into the empty directory DIR
#
# KIND is one of
#   kernel    DIR/vmlinuz: Debian's linux-image-*-amd64 (memcg, pids, CFS bandwidth and the
#             serial console are built in, so no modules are needed)
#   minimal   DIR/root: a static busybox and a link for each applet; the harness adds /init
#   systemd   DIR/root: a minbase Debian with systemd as PID 1, dbus, logind and a lingering
#             user hmuser (uid 1000), so that user@1000.service runs after boot (needs root)
#
# Packages come from the host's apt sources (kernel, busybox) and from $HM_VM_MIRROR (debootstrap).
set -eu

SUITE=bookworm
MIRROR=${HM_VM_MIRROR:-http://deb.debian.org/debian}
INCLUDE=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,procps,util-linux

die() {
	echo "image.sh: $*" >&2
	exit 1
}

# The version apt would install of package $1, or a failure that says what to do.
candidate() {
	version=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')
	case $version in
	'' | '(none)') die "apt knows no version of $1: run apt-get update" ;;
	esac
	echo "$version"
}

# The kernel package linux-image-amd64 points at (linux-image-6.1.0-NN-amd64 on bookworm).
kernel_package() {
	package=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	[ -n "$package" ] || die "apt knows no linux-image-amd64: run apt-get update"
	echo "$package"
}

inputs() {
	case $1 in
	kernel)
		package=$(kernel_package)
		echo "$package $(candidate "$package")"
		;;
	minimal)
		echo "busybox-static $(candidate busybox-static)"
		;;
	systemd)
		echo "debootstrap $SUITE $MIRROR --variant=minbase --include=$INCLUDE"
		echo "debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo missing)"
		# What debootstrap installs comes from the mirror; the host's view of the same
		# packages changes when they do (after apt-get update).
		for package in $(echo "$INCLUDE" | tr , ' ') libc6 libpam-modules passwd; do
			echo "$package $(candidate "$package")"
		done
		;;
	*) die "unknown image kind: $1" ;;
	esac
}

# Downloads package $1 at version $2 into the current directory.
download() {
	# As root, apt-get drops to the _apt user, which cannot write here; it warns and
	# downloads as root anyway. Say so up front.
	apt-get -q -o APT::Sandbox::User=root download "$1=$2" >/dev/null ||
		die "apt-get download $1=$2 failed"
}

build_kernel() {
	cd "$1"
	package=$(kernel_package)
	download "$package" "$(candidate "$package")"
	dpkg-deb --fsys-tarfile ./"$package"_*.deb | tar -x --wildcards './boot/vmlinuz-*'
	mv boot/vmlinuz-* vmlinuz
	rm -rf boot ./*.deb
}

build_minimal() {
	cd "$1"
	download busybox-static "$(candidate busybox-static)"
	dpkg-deb -x ./busybox-static_*.deb package
	mkdir -p root/bin root/sbin root/usr/bin root/usr/sbin root/usr/local/bin \
		root/dev root/proc root/sys root/tmp root/root root/etc
	cp package/bin/busybox root/bin/busybox
	# Links made here, not by `busybox --install` at boot: /bin/sh must exist before /init runs.
	for applet in $(root/bin/busybox --list-full); do
		[ -e "root/$applet" ] || ln -s /bin/busybox "root/$applet"
	done
	echo "root:x:0:0:root:/root:/bin/sh" >root/etc/passwd
	echo "root:x:0:" >root/etc/group
	rm -rf package ./*.deb
}

build_systemd() {
	[ "$(id -u)" = 0 ] || die "debootstrap needs root"
	command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
	root=$1/root
	debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" ||
		die "debootstrap failed (see its log above)"
	# The ordinary user of the tests, lingering so that its user manager starts at boot.
	chroot "$root" useradd --create-home --uid 1000 --shell /bin/sh hmuser
	mkdir -p "$root/var/lib/systemd/linger"
	: >"$root/var/lib/systemd/linger/hmuser"
	echo hm-vm >"$root/etc/hostname"
	# A fixed machine id: no first boot (systemd-firstboot would prompt on the console).
	echo 5a1e5ca1ab1e4d0fb0a7d5e5c0ffee00 >"$root/etc/machine-id"
	# Nothing but the tests: no timers that start apt or fstrim during a run, no getty on tty1.
	for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		fstrim.timer systemd-firstboot.service getty@tty1.service e2scrub_reap.service; do
		ln -sf /dev/null "$root/etc/systemd/system/$unit"
	done
	rm -f "$root"/etc/systemd/system/timers.target.wants/* \
		"$root/etc/systemd/system/getty.target.wants/getty@tty1.service" \
		"$root/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service"
	# What a booted test never reads; it all costs initramfs size and boot time.
	rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
		"$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
		"$root"/var/log/*.log "$root"/var/cache/debconf/*-old
}

[ $# -ge 2 ] || die "usage: image.sh inputs KIND | image.sh build KIND DIR"
case $1 in
inputs) inputs "$2" ;;
build)
	[ $# = 3 ] || die "usage: image.sh build KIND DIR"
	case $2 in
	kernel) build_kernel "$3" ;;
	minimal) build_minimal "$3" ;;
	systemd) build_systemd "$3" ;;
	*) die "unknown image kind: $2" ;;
	esac
	;;
*) die "unknown command: $1" ;;
esac
