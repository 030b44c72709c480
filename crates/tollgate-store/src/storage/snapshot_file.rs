//! The current snapshot as one file, `<data-dir>/snapshot/current`, written as tmp + fsync +
//! rename + fsync(dir), so a crash leaves either the old or the new snapshot, never a torn one.
//! Writers are serialized, and a snapshot never replaces a newer one: openraft may build a
//! snapshot while a newer one from the leader is being installed.

use crate::codec::{decode, encode};
use crate::types::{LogId, SnapshotMeta};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
    /// `last_log_id` of the current file; the lock also serializes writers.
    current: Arc<Mutex<Option<LogId>>>,
}

impl SnapshotFile {
    pub fn new(data_dir: &Path) -> io::Result<SnapshotFile> {
        let dir = data_dir.join("snapshot");
        fs::create_dir_all(&dir)?;
        let this = SnapshotFile {
            dir,
            current: Arc::new(Mutex::new(None)),
        };
        let last = this.read()?.and_then(|(meta, _)| meta.last_log_id);
        *this.current.lock().unwrap_or_else(PoisonError::into_inner) = last;
        Ok(this)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Replaces the current snapshot durably, unless the current one is newer. Returns whether
    /// this snapshot is now the current one.
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<bool> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if *current > meta.last_log_id {
            return Ok(false);
        }
        let bytes = encode(&(meta, data))?;
        let tmp = self.dir.join("current.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path())?;
        File::open(&self.dir)?.sync_all()?;
        *current = meta.last_log_id;
        Ok(true)
    }

    /// The current snapshot, if any; a corrupt file is an error, never silently ignored.
    pub fn read(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        match fs::read(self.path()) {
            Ok(bytes) => decode(&bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
