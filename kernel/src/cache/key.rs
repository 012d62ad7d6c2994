//! A step's cache key: a sha256 over everything that decides what the step does, in a fixed
//! order, each part tagged and length-prefixed so that no two different inputs hash alike.
//!
//! What is in it: hm's cache format, the executor, the rendered `run`, the `shell`, `dir`
//! (relative to the project), `image` and the ID the Docker daemon gives it, the environment (a secret's value only as its hash;
//! hm's per-run variables `HM_RUN_ID`, `HM_ATTEMPT`, `HM_OUTPUT` and the project's absolute
//! path are left out), the matrix values, every file the `inputs` globs match (path and content
//! hash, in path order), and, for each step it needs, that step's key or (a step without one)
//! what it handed on: its outputs and its artifacts' digests.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::FORMAT;

/// What goes into a key besides the input files.
#[derive(Debug, Clone, Default)]
pub struct KeyInputs {
    pub executor: String,
    pub run: String,
    pub shell: Vec<String>,
    /// Relative to the project root, `/`-separated; empty for the root.
    pub dir: String,
    pub image: Option<String>,
    /// The image's ID as the Docker daemon has it now (a re-tagged image is another image);
    /// `None` for a step without an image, or when no daemon said.
    pub image_id: Option<String>,
    /// In order; secret values already replaced by their hash.
    pub env: Vec<(String, String)>,
    pub matrix: Vec<(String, String)>,
    pub inputs: Vec<String>,
    /// Per step it needs: its name and what stands for it (its key, or a digest of what it
    /// handed on).
    pub needs: Vec<(String, String)>,
}

/// The key of a step that would run as `what` in the project at `root`; an error names a file
/// that could not be read.
pub fn compute_key(root: &Path, what: &KeyInputs) -> Result<String, String> {
    let mut hasher = Hasher::default();
    hasher.part("format", FORMAT.to_string().as_bytes());
    hasher.part("executor", what.executor.as_bytes());
    hasher.part("run", what.run.as_bytes());
    for arg in &what.shell {
        hasher.part("shell", arg.as_bytes());
    }
    hasher.part("dir", what.dir.as_bytes());
    hasher.part("image", what.image.as_deref().unwrap_or("").as_bytes());
    hasher.part(
        "image-id",
        what.image_id.as_deref().unwrap_or("").as_bytes(),
    );
    for (name, value) in &what.env {
        hasher.part("env", name.as_bytes());
        hasher.part("=", value.as_bytes());
    }
    for (name, value) in &what.matrix {
        hasher.part("matrix", name.as_bytes());
        hasher.part("=", value.as_bytes());
    }
    for glob in &what.inputs {
        hasher.part("glob", glob.as_bytes());
    }
    let files = crate::artifacts::matching(root, &what.inputs)?;
    for ((relative, _), digest) in files.iter().zip(file_digests(&files)) {
        let digest = digest.map_err(|e| format!("cannot read {relative}: {e}"))?;
        hasher.part("file", relative.as_bytes());
        hasher.part("sha256", digest.as_bytes());
    }
    for (name, stands_for) in &what.needs {
        hasher.part("need", name.as_bytes());
        hasher.part("as", stands_for.as_bytes());
    }
    Ok(hasher.finish())
}

/// The hash a secret's value stands in a key as.
pub fn secret_digest(value: &str) -> String {
    hex(&Sha256::digest(value.as_bytes()))
}

#[derive(Default)]
struct Hasher(Sha256);

impl Hasher {
    fn part(&mut self, tag: &str, bytes: &[u8]) {
        self.0.update((tag.len() as u64).to_le_bytes());
        self.0.update(tag.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Below this many files one thread hashes them all: starting threads costs more.
const FILES_PER_THREAD: usize = 64;

/// The digests of `files`, in their order. A step's inputs are often many small files, whose
/// cost is the opening and reading rather than the hashing: they are shared out in contiguous
/// runs among up to one thread per CPU (at most 4), each with one read buffer.
fn file_digests(files: &[(String, std::path::PathBuf)]) -> Vec<io::Result<String>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (files.len() / FILES_PER_THREAD).clamp(1, cpus.min(4));
    let digest_all = |files: &[(String, std::path::PathBuf)]| {
        let mut buf = vec![0u8; 64 * 1024];
        files
            .iter()
            .map(|(_, path)| file_digest(path, &mut buf))
            .collect::<Vec<_>>()
    };
    if threads == 1 {
        return digest_all(files);
    }
    let run = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = files
            .chunks(run)
            .map(|part| scope.spawn(move || digest_all(part)))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| match part.join() {
                Ok(digests) => digests,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

fn file_digest(path: &Path, buf: &mut [u8]) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_shared_out_among_threads_come_back_in_file_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<(String, std::path::PathBuf)> = (0..FILES_PER_THREAD * 5 + 3)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, format!("file {i}")).expect("write");
                (format!("f{i}"), path)
            })
            .collect();
        let digests = file_digests(&files);
        assert_eq!(digests.len(), files.len());
        for (i, digest) in digests.into_iter().enumerate() {
            let want = hex(&Sha256::digest(format!("file {i}").as_bytes()));
            assert_eq!(digest.expect("read"), want, "file {i}");
        }
        assert_eq!(
            hex(&[0x00, 0x0f, 0xa5, 0xff]),
            "000fa5ff",
            "two lowercase digits a byte"
        );
    }

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/a.rs"), "fn a() {}").expect("write");
        std::fs::write(dir.path().join("README"), "r").expect("write");
        dir
    }

    fn inputs() -> KeyInputs {
        KeyInputs {
            executor: "shell".into(),
            run: "cargo test".into(),
            shell: vec!["sh".into(), "-e".into(), "-c".into()],
            inputs: vec!["src/**".into()],
            ..KeyInputs::default()
        }
    }

    #[test]
    fn the_key_follows_inputs_and_nothing_else() {
        let dir = project();
        let key = compute_key(dir.path(), &inputs()).expect("key");
        assert_eq!(key.len(), 64);
        assert_eq!(compute_key(dir.path(), &inputs()).expect("key"), key);
        // A file outside the inputs changes nothing.
        std::fs::write(dir.path().join("README"), "changed").expect("write");
        assert_eq!(compute_key(dir.path(), &inputs()).expect("key"), key);
        // An input's content does.
        std::fs::write(dir.path().join("src/a.rs"), "fn a() { }").expect("write");
        let changed = compute_key(dir.path(), &inputs()).expect("key");
        assert_ne!(changed, key);
        // So does a new input file, and the command.
        std::fs::write(dir.path().join("src/b.rs"), "").expect("write");
        assert_ne!(compute_key(dir.path(), &inputs()).expect("key"), changed);
        let other_run = KeyInputs {
            run: "cargo test --release".into(),
            ..inputs()
        };
        assert_ne!(compute_key(dir.path(), &other_run).expect("key"), changed);
    }

    #[test]
    fn parts_never_run_into_each_other() {
        let dir = project();
        let a = KeyInputs {
            env: vec![("AB".into(), "C".into())],
            ..inputs()
        };
        let b = KeyInputs {
            env: vec![("A".into(), "BC".into())],
            ..inputs()
        };
        assert_ne!(
            compute_key(dir.path(), &a).expect("key"),
            compute_key(dir.path(), &b).expect("key")
        );
    }
}
