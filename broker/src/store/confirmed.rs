//! The number of the last change known to be on disk, kept in a small file beside the database.
//!
//! After a crash, fjall replays its journal up to the first entry it cannot read and takes that for
//! where the crash cut it off; it cannot tell a torn last write from damage further back. This file
//! says how far the store must reach: one that comes back shorter lost writes it had confirmed, and
//! the broker refuses it rather than start without them. It is written only after the commit it
//! names is synced, so it can lag behind the store (after a power loss) but never run ahead of it.
//!
//! It is written after every synced commit, so it is written in place: one `pwrite` of a fixed-width
//! number on a file kept open. (A new file renamed over the old one each time took a third of a
//! commit's time.) A single write of 21 bytes at the start of the file is never half done when the
//! process dies; it may be after a power loss, which the mark already does not cover.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const FILE: &str = "confirmed";

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The number confirmed, if a previous run left one. (An empty file is one opened by a run that
/// stopped before its first synced commit.)
pub fn read(dir: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(path(dir)) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a number: {text:?}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file, open for the writer.
#[derive(Debug)]
pub struct Mark {
    file: File,
}

impl Mark {
    pub fn open(dir: &Path) -> std::io::Result<Mark> {
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path(dir))?;
        Ok(Mark { file })
    }

    /// Replaces the number. Every number is written 20 digits wide (the most a `u64` takes), so each
    /// write covers the whole of the one before, and the file never needs cutting short.
    pub fn write(&self, seq: u64) -> std::io::Result<()> {
        self.file.write_all_at(format!("{seq:020}\n").as_bytes(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_replaces_the_last_whole() {
        let dir = std::env::temp_dir().join(format!("midge-confirmed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        drop(Mark::open(&dir).unwrap());
        assert_eq!(read(&dir).unwrap(), None, "opened, never written");
        // A file left by an earlier version, which wrote the number as short as it is.
        std::fs::write(path(&dir), "123456789").unwrap();
        assert_eq!(read(&dir).unwrap(), Some(123_456_789));
        let mark = Mark::open(&dir).unwrap();
        for seq in [u64::MAX, 7, 123_456] {
            mark.write(seq).unwrap();
            assert_eq!(read(&dir).unwrap(), Some(seq));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
