//! One boot of a guest: the per-run initramfs (hm, the guest's scripts and scenarios) appended
//! to the cached image, qemu under a deadline, and the report read back from the guest's second
//! serial port. qemu never outlives a boot: it dies with the thread that started it
//! (`setpriv --pdeathsig KILL`), and a guard kills it on every other way out.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::cpio::Cpio;
use super::report::Report;
use super::{Guest, image};

/// How long a boot may take from qemu's start to its exit, unless `HM_VM_TIMEOUT` (seconds)
/// says otherwise. Measured on two cores under TCG: qemu runs about 30 s for the minimal VM's
/// scenarios and 55 s for the systemd VM's, 85 s each when cleanup checks fail and wait (see
/// tests/vm/README.md).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(100);
/// Where the scenarios and their support live in the guest.
const GUEST_LIB: &str = "usr/local/lib/hm-vm";

/// Boots `guest` once and returns what it reported. `only` names the scenarios to run (all when
/// empty). `Err` when it could not be booted at all (no image, no qemu); a VM that did not run
/// to its end is a report with `incomplete` set, holding the scenarios that did end.
pub fn boot(guest: Guest, only: &[String]) -> Result<Report, String> {
    let started = Instant::now();
    let image = image::prepare(guest)?;
    let image_time = started.elapsed();
    let work = tempfile::Builder::new()
        .prefix(&format!("hm-vm-{}-", guest.name()))
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir for the boot: {e}"))?;
    let initrd = work.path().join("initrd.cpio");
    write_initrd(guest, &image.initramfs, &initrd, work.path())?;
    let console = work.path().join("console.log");
    let results = work.path().join("results.txt");
    let mut append = guest.kernel_args().to_owned();
    if !only.is_empty() {
        append.push_str(&format!(" hm_vm.scenarios={}", only.join(",")));
    }
    let accel = std::env::var("HM_VM_ACCEL").unwrap_or_else(|_| "tcg".to_owned());
    let args: Vec<String> = vec![
        "--pdeathsig".into(),
        "KILL".into(),
        "--".into(),
        "qemu-system-x86_64".into(),
        "-accel".into(),
        accel,
        "-smp".into(),
        "2".into(),
        "-m".into(),
        guest.memory_mib().to_string(),
        // No network card (no option ROM to run), no VGA: two serial ports are all it has.
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-serial".into(),
        format!("file:{}", results.display()),
        "-kernel".into(),
        image.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        append,
    ];
    let deadline = std::env::var("HM_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(BOOT_DEADLINE, Duration::from_secs);
    let qemu_log = work.path().join("qemu.log");
    let qemu_started = Instant::now();
    let ended = Qemu::start(&args, &qemu_log)?.wait(deadline);
    let qemu_time = qemu_started.elapsed();
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let mut report = Report::parse(guest, &text);
    report.image_time = image_time;
    report.qemu_time = qemu_time;
    report.built.clone_from(&image.built);
    drop(image);
    if report.done_at.is_none() {
        let how = match ended {
            Ok(status) => format!("qemu exited ({status}) before the guest said DONE"),
            Err(()) => format!(
                "the guest did not finish within {} s (HM_VM_TIMEOUT); qemu was killed",
                deadline.as_secs()
            ),
        };
        let during = report
            .scenarios
            .iter()
            .find(|s| s.ended.is_none())
            .map_or_else(String::new, |s| format!(" during scenario `{}`", s.name));
        let console_text = std::fs::read_to_string(&console).unwrap_or_default();
        let qemu_text = std::fs::read_to_string(&qemu_log).unwrap_or_default();
        let qemu_said = match qemu_text.trim() {
            "" => String::new(),
            said => format!("\nqemu said: {said}"),
        };
        report.incomplete = Some(format!(
            "the {} VM did not run to its end{during}: {how}.{qemu_said}\nthe console's last \
             lines:\n{}",
            guest.name(),
            image::tail(&console_text, 40)
        ));
    }
    if std::env::var_os("HM_VM_KEEP").is_some_and(|v| v == "1") {
        let kept = work.keep();
        eprintln!(
            "HM_VM_KEEP=1: the {} VM's console, results and initramfs are in {}; boot it again \
             with: setpriv {}",
            guest.name(),
            kept.display(),
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(report)
}

/// qemu, killed and reaped when dropped if it is still running.
struct Qemu(Child);

impl Qemu {
    fn start(args: &[String], log: &Path) -> Result<Self, String> {
        let log = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate qemu's log: {e}"))?;
        Command::new("setpriv")
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map(Qemu)
            .map_err(|e| format!("cannot start qemu-system-x86_64 through setpriv: {e}"))
    }

    /// Its exit status, or `Err` when it was still running at the deadline (it is then killed).
    fn wait(mut self, deadline: Duration) -> Result<ExitStatus, ()> {
        let started = Instant::now();
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if started.elapsed() < deadline => std::thread::sleep(POLL),
                // Past the deadline, or it cannot be waited for: the guard kills it.
                _ => return Err(()),
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The cached base image followed by this boot's archive: the kernel unpacks both, the second
/// over the first.
fn write_initrd(guest: Guest, base: &Path, initrd: &Path, work: &Path) -> Result<(), String> {
    std::fs::copy(base, initrd).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            base.display(),
            initrd.display()
        )
    })?;
    let file = File::options()
        .append(true)
        .open(initrd)
        .map_err(|e| format!("cannot open {}: {e}", initrd.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    add_run_files(guest, &mut cpio, work)
        .and_then(|()| cpio.finish().map(drop).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot write {}: {e}", initrd.display()))
}

/// hm, the guest's scripts and scenarios (and, for the minimal VM, its /init and the shared
/// libraries hm links: the busybox image has none).
fn add_run_files<W: Write>(guest: Guest, cpio: &mut Cpio<W>, work: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let guest_dir = super::vm_dir().join("guest");
    let mut dirs = Dirs::default();
    let hm = stripped_hm(work)?;
    dirs.file(cpio, "usr/local/bin/hm", 0o755, &read(&hm)?)
        .map_err(io)?;
    for script in ["lib.sh", "run-scenarios.sh"] {
        let data = read(&guest_dir.join(script))?;
        dirs.file(cpio, &format!("{GUEST_LIB}/{script}"), 0o644, &data)
            .map_err(io)?;
    }
    for (_, script) in guest.scenarios() {
        let file = script
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        dirs.file(
            cpio,
            &format!("{GUEST_LIB}/scenarios/{file}"),
            0o644,
            &read(&script)?,
        )
        .map_err(io)?;
    }
    match guest {
        Guest::Minimal => {
            cpio.file("init", 0o755, &read(&guest_dir.join("init-minimal"))?)
                .map_err(io)?;
            for library in shared_libraries(&crate::hm_bin())? {
                let data = read(&library)?;
                let path = library.to_string_lossy();
                dirs.file(cpio, path.trim_start_matches('/'), 0o755, &data)
                    .map_err(io)?;
            }
        }
        Guest::Systemd => {
            let data = read(&guest_dir.join("run-systemd.sh"))?;
            dirs.file(cpio, &format!("{GUEST_LIB}/run-systemd.sh"), 0o644, &data)
                .map_err(io)?;
            let unit = "etc/systemd/system/vm-scenarios.service";
            dirs.file(
                cpio,
                unit,
                0o644,
                &read(&guest_dir.join("vm-scenarios.service"))?,
            )
            .map_err(io)?;
            dirs.parents(cpio, "etc/systemd/system/multi-user.target.wants/x")
                .map_err(io)?;
            cpio.symlink(
                "etc/systemd/system/multi-user.target.wants/vm-scenarios.service",
                "../vm-scenarios.service",
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// The directories already in the archive, so that each file's parents come first, once.
#[derive(Default)]
struct Dirs(BTreeSet<String>);

impl Dirs {
    fn parents<W: Write>(&mut self, cpio: &mut Cpio<W>, path: &str) -> std::io::Result<()> {
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if self.0.insert(parent.clone()) {
                cpio.dir(&parent, 0o755)?;
            }
        }
        Ok(())
    }

    fn file<W: Write>(
        &mut self,
        cpio: &mut Cpio<W>,
        path: &str,
        mode: u32,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.parents(cpio, path)?;
        cpio.file(path, mode, data)
    }
}

/// A copy of the hm under test without symbols: the debug build is 140 MB, the copy a sixth.
fn stripped_hm(work: &Path) -> Result<PathBuf, String> {
    let hm = crate::hm_bin();
    let stripped = work.join("hm");
    let out = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&hm)
        .output()
        .map_err(|e| format!("cannot run strip (apt-get install binutils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "strip -o {} {} failed: {}",
            stripped.display(),
            hm.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(stripped)
}

/// The shared libraries `binary` loads, the dynamic loader included, as `ldd` resolves them on
/// the host; none for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    if !out.status.success() {
        // "not a dynamic executable"
        return Ok(Vec::new());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vdso has no file.
            let path = line.split_once("=>").map_or(line, |(_, p)| p).trim();
            let path = path.split(' ').next().unwrap_or_default();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn shell_quote(arg: &str) -> String {
    if arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,".contains(&b))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
