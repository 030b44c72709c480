//! The current snapshot as one file, `<data-dir>/snapshot/current`, written as tmp + fsync +
//! rename + fsync(dir), so a crash leaves either the old or the new snapshot, never a torn one.

use crate::codec::{decode, encode};
use crate::types::SnapshotMeta;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    pub fn new(data_dir: &Path) -> io::Result<SnapshotFile> {
        let dir = data_dir.join("snapshot");
        fs::create_dir_all(&dir)?;
        Ok(SnapshotFile { dir })
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Replaces the current snapshot durably.
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let bytes = encode(&(meta, data))?;
        let tmp = self.dir.join("current.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.current())?;
        File::open(&self.dir)?.sync_all()
    }

    /// The current snapshot, if any; a corrupt file is an error, never silently ignored.
    pub fn read(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        match fs::read(self.current()) {
            Ok(bytes) => decode(&bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
