//! The real-kernel test harness: hm's isolation scenarios (`tests/vm/`) run inside Debian
//! kernels under QEMU, each check reported back to the host and asserted by a test in
//! `tests/vm.rs`. See tests/vm/README.md for how it works, the cache, and running a scenario by
//! hand.
//!
//! Two guests ([`Guest`]): a busybox initramfs with cgroup2 mounted (hm in cgroups set up by
//! hand) and a Debian with systemd as PID 1 and a lingering user (hm from login shells, as root
//! and as that user). Their images are built from Debian packages and cached outside the clone
//! ([`image`]); each boot appends hm and the scenario scripts as a second small initramfs
//! ([`boot`]), so a rebuilt hm rebuilds no image. The guest writes one line per check to its
//! second serial port, a file on the host (`report`).

mod boot;
mod cpio;
mod guest;
pub mod image;
mod report;
mod suite;

use std::path::PathBuf;

pub use boot::{BOOT_DEADLINE, boot};
pub use guest::Guest;
pub use report::{Check, Report, ScenarioReport};
pub use suite::{assert_scenario, selected};

/// `tests/vm/`: the image build script, the guest's scripts and the scenarios.
pub fn vm_dir() -> PathBuf {
    crate::repo_root().join("tests").join("vm")
}
