//! The number of the last change known to be on disk, kept in a small file beside the database.
//!
//! After a crash, fjall replays its journal up to the first entry it cannot read and takes that for
//! where the crash cut it off; it cannot tell a torn last write from damage further back. This file
//! says how far the store must reach: one that comes back shorter lost writes it had confirmed, and
//! the broker refuses it rather than start without them. It is written only after the commit it
//! names is synced, so it can lag behind the store (after a power loss) but never run ahead of it.

use std::path::{Path, PathBuf};

const FILE: &str = "confirmed";

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The number confirmed, if a previous run left one.
pub fn read(dir: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(path(dir)) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a number: {text:?}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the number, whole or not at all (a new file renamed over the old one).
pub fn write(dir: &Path, seq: u64) -> std::io::Result<()> {
    let fresh = dir.join(format!("{FILE}.new"));
    std::fs::write(&fresh, seq.to_string())?;
    std::fs::rename(fresh, path(dir))
}
