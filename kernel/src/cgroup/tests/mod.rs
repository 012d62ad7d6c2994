//! Tests of the cgroup module: detection and the v2 backend on fake cgroupfs trees in a temp
//! dir, and every backend this machine has on the real cgroupfs.

mod detect;
mod fake_v2;
mod real;

use std::path::{Path, PathBuf};

/// A fake cgroupfs: plain directories and files in a temp dir, with the mountinfo and
/// `/proc/self/cgroup` text that point detection at it.
struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Writes a file, creating its directories: an interface file the kernel would provide.
    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(path, content).expect("write fake file");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// A mountinfo line mounting `fstype` with `super_options` at `<root>/<rel>`.
    fn mount(&self, rel: &str, fstype: &str, super_options: &str) -> String {
        format!(
            "41 31 0:38 / {} rw,relatime shared:9 - {fstype} cgroup {super_options}\n",
            self.path(rel).display()
        )
    }

    /// Every directory and file below the root with its content, one per line, sorted; the
    /// temp dir shows as `<root>` and this process's pid as `<hm>`.
    fn listing(&self) -> String {
        let mut lines = Vec::new();
        let mut stack = vec![self.root().to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let path = entry.expect("entry").path();
                let rel = path
                    .strip_prefix(self.root())
                    .expect("below root")
                    .display()
                    .to_string();
                if path.is_dir() {
                    lines.push(format!("{rel}/"));
                    stack.push(path);
                } else {
                    let content = std::fs::read_to_string(&path).expect("read file");
                    lines.push(format!("{rel}: {}", self.redact(content.trim_end())));
                }
            }
        }
        lines.sort();
        lines.join("\n") + "\n"
    }

    fn redact(&self, text: &str) -> String {
        let text = text.replace(&self.root().display().to_string(), "<root>");
        text.split('\n')
            .map(|line| {
                if line == std::process::id().to_string() {
                    "<hm>".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
