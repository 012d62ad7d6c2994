//! Dependency caches (`cache = [{ key, paths }]`): directories that steps in containers keep
//! across runs, each a Docker volume the executor mounts, named from the key files' contents
//! and the path, so every step and run with the same key shares it and a change of the key
//! files starts an empty one. hm marks each volume it hands out as used (an empty file
//! `volumes/<name>` in the cache directory, its time the last use), for `hm cache prune`.

use std::path::Path;

use hm_ipc::messages::CacheMount;
use sha2::{Digest, Sha256};

use super::key::hex;
use crate::config::DependencyCache;

/// The volumes of `caches` for a step in the project at `root`, in the order written. An
/// error names a key file that could not be read.
pub fn mounts(root: &Path, caches: &[DependencyCache]) -> Result<Vec<CacheMount>, String> {
    let mut mounts = Vec::new();
    for cache in caches {
        let mut key = Sha256::new();
        key.update(format!("hm dependency cache v{}\n", super::FORMAT));
        for (relative, path) in crate::artifacts::matching(root, &cache.key)? {
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {relative}: {e}"))?;
            key.update((relative.len() as u64).to_le_bytes());
            key.update(relative.as_bytes());
            key.update(Sha256::digest(&bytes));
        }
        for path in &cache.paths {
            let mut name = key.clone();
            name.update(path.as_bytes());
            mounts.push(CacheMount {
                volume: format!("hm-cache-{}", &hex(&name.finalize())[..16]),
                path: path.clone(),
            });
        }
    }
    Ok(mounts)
}

impl super::Store {
    /// Marks volume `name` as used now.
    pub fn mark_volume(&self, name: &str) {
        let dir = self.root().join("volumes");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(name), b"");
    }

    /// The volumes hm handed out, with when each was last used.
    pub fn volumes(&self) -> Vec<(String, std::time::SystemTime)> {
        let Ok(dir) = std::fs::read_dir(self.root().join("volumes")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let used = e.metadata().ok()?.modified().ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), used))
            })
            .collect()
    }

    /// Removes the volumes hm handed out that were not used for `unused_for`, from the Docker
    /// daemon and from the marks; returns the names removed, and a problem per volume that
    /// could not be (in use by a container, or no daemon answers).
    pub fn prune_volumes(&self, unused_for: std::time::Duration) -> (Vec<String>, Vec<String>) {
        let now = std::time::SystemTime::now();
        let mut removed = Vec::new();
        let mut problems = Vec::new();
        for (name, used) in self.volumes() {
            if now.duration_since(used).unwrap_or_default() < unused_for {
                continue;
            }
            let Some(daemon) = crate::engine::daemon_of(None) else {
                problems.push(format!(
                    "{name}: DOCKER_HOST is neither a unix socket nor a tcp:// address"
                ));
                continue;
            };
            match crate::engine::request(
                &daemon,
                "DELETE",
                &format!("/volumes/{name}"),
                &["204", "404"],
            ) {
                Ok(_) => {
                    self.forget_volume(&name);
                    removed.push(name);
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        (removed, problems)
    }

    /// Forgets volume `name` (after it was removed).
    pub fn forget_volume(&self, name: &str) {
        let _ = std::fs::remove_file(self.root().join("volumes").join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_follows_its_key_files_and_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Cargo.lock"), "v1").expect("write");
        let cache = DependencyCache {
            key: vec!["Cargo.lock".into()],
            paths: vec!["/registry".into(), "target".into()],
        };
        let first = mounts(dir.path(), std::slice::from_ref(&cache)).expect("mounts");
        assert_eq!(first.len(), 2);
        assert_ne!(first[0].volume, first[1].volume);
        assert!(first[0].volume.starts_with("hm-cache-"), "{first:?}");
        assert_eq!(
            mounts(dir.path(), std::slice::from_ref(&cache)).expect("again"),
            first
        );
        std::fs::write(dir.path().join("Cargo.lock"), "v2").expect("write");
        let changed = mounts(dir.path(), &[cache]).expect("mounts");
        assert_ne!(changed[0].volume, first[0].volume);
    }
}
