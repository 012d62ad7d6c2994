//! A step's outputs (`$HM_OUTPUT`): hm names a file on the host, which the container cannot
//! see. The step gets `/hm/output` instead, created empty and writable by any user before the
//! start, and what it holds once the step has passed is written into hm's file.

use std::io::{self, Read};
use std::path::Path;

use bollard::Docker;
use hm_sdk::StepError;
use tar::EntryType;

use crate::download::{header, read_archive};

/// `$HM_OUTPUT` inside the container.
pub const OUTPUT_FILE: &str = "/hm/output";
/// hm reads at most 1 MiB of outputs and reports a step that wrote more; one byte more than
/// that is enough for it to tell, and all this plugin ever reads.
pub const READ_CAP: u64 = 1024 * 1024 + 1;

/// The tar that makes [`OUTPUT_FILE`] when unpacked at `/`: directory `hm/` (0777) holding an
/// empty `hm/output` (0666), so that whatever user the image runs as can append to it.
pub fn output_tar() -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = header(EntryType::Directory, 0, 0o777, 0);
    tar.append_data(&mut dir, "hm/", io::empty())?;
    let mut file = header(EntryType::Regular, 0, 0o666, 0);
    tar.append_data(&mut file, "hm/output", io::empty())?;
    tar.into_inner()
}

/// Writes what the step left in [`OUTPUT_FILE`] into `host_file` (hm created it), replacing
/// its content. A step that removed its file has no outputs: `host_file` is left as it is.
pub async fn copy_back(docker: &Docker, id: &str, host_file: &Path) -> Result<(), StepError> {
    let failed = |e: String| {
        StepError::Message(format!(
            "cannot read the step's outputs ({OUTPUT_FILE} in the container): {e}"
        ))
    };
    let (_, read) = read_archive(docker, id, OUTPUT_FILE, (), |(), archive| {
        read_output(archive)
    })
    .await
    .map_err(failed)?;
    let Some(outputs) = read.transpose().map_err(failed)? else {
        return Ok(());
    };
    tokio::fs::write(host_file, outputs).await.map_err(|e| {
        StepError::Message(format!(
            "cannot write the step's outputs to {}: {e}",
            host_file.display()
        ))
    })
}

/// The content of the one file in Docker's archive of [`OUTPUT_FILE`], at most [`READ_CAP`]
/// bytes of it.
fn read_output(archive: &mut dyn Read) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(archive);
    let mut entries = archive.entries().map_err(|e| e.to_string())?;
    let mut entry = match entries.next() {
        Some(entry) => entry.map_err(|e| e.to_string())?,
        None => return Ok(Vec::new()),
    };
    if !entry.header().entry_type().is_file() {
        return Err("the step replaced it with something other than a file".into());
    }
    let mut content = Vec::new();
    (&mut entry)
        .take(READ_CAP)
        .read_to_end(&mut content)
        .map_err(|e| e.to_string())?;
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_tar_holds_a_world_writable_dir_and_empty_file() {
        let tar = output_tar().expect("tar");
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<_> = archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let entry = entry.expect("entry");
                let header = entry.header();
                (
                    entry.path().expect("path").display().to_string(),
                    header.entry_type(),
                    header.mode().expect("mode"),
                    header.size().expect("size"),
                    header.uid().expect("uid"),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("hm/".to_owned(), EntryType::Directory, 0o777, 0, 0),
                ("hm/output".to_owned(), EntryType::Regular, 0o666, 0, 0),
            ]
        );
        assert_eq!(OUTPUT_FILE, "/hm/output");
    }

    fn archive_of(kind: EntryType, content: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = header(kind, content.len() as u64, 0o644, 0);
        tar.append_data(&mut header, "output", content)
            .expect("append");
        tar.into_inner().expect("tar")
    }

    #[test]
    fn the_output_is_read_up_to_one_byte_past_hms_limit() {
        let small = archive_of(EntryType::Regular, b"version=1\n");
        assert_eq!(read_output(&mut &small[..]), Ok(b"version=1\n".to_vec()));
        let big = archive_of(EntryType::Regular, &vec![b'x'; 3 << 20]);
        assert_eq!(
            read_output(&mut &big[..]).map(|c| c.len() as u64),
            Ok(READ_CAP)
        );
        let dir = archive_of(EntryType::Directory, b"");
        assert!(read_output(&mut &dir[..]).is_err());
    }
}
