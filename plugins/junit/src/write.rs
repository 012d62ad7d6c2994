//! Putting the report in place atomically: a reader (a CI job collecting artifacts, a report
//! of the previous run still open) sees the old file or the new one, never half of one.

use std::fs::Permissions;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why the report could not be written, with the path concerned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("cannot create the directory {dir} for the JUnit report: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the JUnit report {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `contents` to a temporary file in `path`'s directory (created if missing), flushes it
/// to disk, and renames it onto `path`. On failure the temporary file is removed and `path` is
/// left as it was.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|source| WriteError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let failed = |source| WriteError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map_or_else(|| "junit".into(), |n| n.to_string_lossy().into_owned());
    // 0666 less the umask, as for any file a tool creates: the temporary file's private 0600
    // would survive the rename and hide the report from a CI agent running as another user.
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(failed)?;
    temp.write_all(contents).map_err(failed)?;
    temp.as_file().sync_all().map_err(failed)?;
    temp.persist(path).map_err(|e| failed(e.error))?;
    // The rename is durable once the directory is; a failure here loses nothing now.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_directories_and_replaces_the_old_report() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("reports/nested/junit.xml");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        // No temporary file is left beside it.
        assert_eq!(entries(path.parent().unwrap()), ["junit.xml"]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_ne!(mode & 0o044, 0, "readable beyond its owner: {mode:o}");
    }

    #[test]
    fn a_failure_names_the_path_and_leaves_nothing_behind() {
        let temp = tempfile::tempdir().unwrap();
        // A directory where the report should go: the rename fails.
        let path = temp.path().join("junit.xml");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), "x").unwrap();
        let error = write_atomically(&path, b"report").unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot write the JUnit report {}", path.display())),
            "{error}"
        );
        assert_eq!(entries(temp.path()), ["junit.xml"]);

        let blocked = temp.path().join("junit.xml/keep/junit.xml");
        let error = write_atomically(&blocked, b"report")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("cannot create the directory"), "{error}");
    }
}
