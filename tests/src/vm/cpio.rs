//! A writer of `newc` cpio archives, the format the Linux kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`): directories, regular files,
//! symlinks and device nodes.
//!
//! Written here rather than by the `cpio` tool because the harness needs it for every boot (the
//! per-run archive of `hm` and the scenarios) and for packing the images, and 100 lines are less
//! than one more package to install. Every entry is written whole with a link count of one: the
//! kernel then never tries to hard-link entries, so two names of one file become two files.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// One archive being written to `out`. [`Cpio::finish`] writes the trailer; an archive that is
/// not finished is not one the kernel accepts.
pub struct Cpio<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
}

/// What an entry's header says besides its name and size.
struct Header {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
    rdev: (u32, u32),
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        Self {
            out,
            written: 0,
            next_ino: 1,
            mtime,
        }
    }

    /// A directory owned by root. An existing directory of an earlier archive keeps its
    /// content; the kernel applies this entry's mode to it.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let header = self.owned_by_root(S_IFDIR | mode);
        self.entry(path.as_bytes(), &header, &[])
    }

    /// A regular file owned by root; it replaces a file of an earlier archive.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let header = self.owned_by_root(S_IFREG | mode);
        self.entry(path.as_bytes(), &header, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let header = self.owned_by_root(S_IFLNK | 0o777);
        self.entry(path.as_bytes(), &header, target.as_bytes())
    }

    /// Everything below `root` (not `root` itself), as it is: owners, modes, times, device
    /// numbers; names relative to `root`, each directory before its content.
    pub fn tree(&mut self, root: &Path) -> io::Result<()> {
        self.tree_below(root, &mut Vec::new())
    }

    fn tree_below(&mut self, dir: &Path, prefix: &mut Vec<u8>) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(entry.file_name().as_bytes());
            let header = Header {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: u32::try_from(meta.mtime()).unwrap_or(0),
                rdev: if kind.is_char_device() || kind.is_block_device() {
                    let rdev = meta.rdev();
                    (
                        u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(0),
                        u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(0),
                    )
                } else {
                    (0, 0)
                },
            };
            if kind.is_dir() {
                self.entry(prefix, &header, &[])?;
                self.tree_below(&path, prefix)?;
            } else if kind.is_file() {
                self.file_entry(prefix, &header, &path, meta.len())?;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path)?;
                self.entry(prefix, &header, target.as_os_str().as_bytes())?;
            } else {
                // Devices, fifos and sockets: a header is all they are.
                self.entry(prefix, &header, &[])?;
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    /// The trailer, padded to a 512-byte block as the cpio tool does; returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let header = Header {
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            rdev: (0, 0),
        };
        self.entry(b"TRAILER!!!", &header, &[])?;
        self.pad_to(512)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn owned_by_root(&self, mode: u32) -> Header {
        Header {
            mode,
            uid: 0,
            gid: 0,
            mtime: self.mtime,
            rdev: (0, 0),
        }
    }

    fn entry(&mut self, name: &[u8], header: &Header, data: &[u8]) -> io::Result<()> {
        self.header(name, header, data.len() as u64)?;
        self.write(data)?;
        self.pad_to(4)
    }

    /// A regular file streamed from `path`, which must still be `len` bytes long.
    fn file_entry(
        &mut self,
        name: &[u8],
        header: &Header,
        path: &Path,
        len: u64,
    ) -> io::Result<()> {
        self.header(name, header, len)?;
        let copied = io::copy(&mut File::open(path)?.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::other(format!(
                "{} shrank from {len} to {copied} bytes while it was archived",
                path.display()
            )));
        }
        self.written += copied;
        self.pad_to(4)
    }

    fn header(&mut self, name: &[u8], header: &Header, size: u64) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::other(format!(
                "{} is larger than the 4 GiB a newc entry can hold",
                String::from_utf8_lossy(name)
            ))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            header.mode,
            header.uid,
            header.gid,
            1, // nlink: see the module's comment
            header.mtime,
            size,
            0, // devmajor, devminor: of the file system the entry came from
            0,
            header.rdev.0,
            header.rdev.1,
            u32::try_from(name.len() + 1).map_err(io::Error::other)?,
            0, // check: only for the crc format
        ];
        let mut text = String::from("070701");
        for field in fields {
            text.push_str(&format!("{field:08x}"));
        }
        self.write(text.as_bytes())?;
        self.write(name)?;
        self.write(&[0])?;
        self.pad_to(4)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, block: u64) -> io::Result<()> {
        let pad = (block - self.written % block) % block;
        self.write(&vec![0; pad as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_a_padded_trailer() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("usr", 0o755).unwrap();
        cpio.file("usr/x", 0o644, b"hello").unwrap();
        cpio.symlink("usr/y", "x").unwrap();
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        // Header (110) + "usr\0" (4) = 114, padded to 116.
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(&bytes[116..122], b"070701");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("usr/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's header: mode 0o100644, size 5.
        let file = text.find("usr/x\0").unwrap() - 110;
        assert_eq!(&text[file + 14..file + 22], "000081a4");
        assert_eq!(&text[file + 54..file + 62], "00000005");
    }
}
