//! The current snapshot as one file, `<data-dir>/snapshot/current`, written as tmp + fsync +
//! rename + fsync(dir), so a crash leaves either the old or the new snapshot, never a torn one.
//! Writers are serialized, and a snapshot never replaces a newer one: openraft may build a
//! snapshot while a newer one from the leader is being installed.
//!
//! Layout (v3): `[3][meta length u32 LE][meta: codec record][data: codec record, to the end]`.
//! Both parts carry their own checksum. The data part is the state (`SmData`), encoded straight
//! into the file (no copy in memory); the ledger's entries live in the archive
//! (`ledger_archive.rs`) and join the data only when a snapshot is sent (`snap_data.rs`).
//! Layouts 1 and 2 held the state from before the ledger archive, whole ledger included; they
//! are refused with an error that says so (pre-release: no upgrade path, see the runbook).

use crate::codec::{decode, encode, encode_to_file, verify};
use crate::types::{LogId, SnapshotMeta};
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

const FILE_V3: u8 = 3;
/// A snapshot being written is synced every this many bytes, so its writeback never piles up
/// into one burst that the Raft log's `fdatasync` has to wait behind (seconds for a large
/// ledger, long enough for replication and heartbeat RPCs to time out).
const SYNC_EVERY_BYTES: u64 = 8 << 20;
const HEADER: usize = 5;

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
        // the new directory's entry must survive a power loss too
        File::open(data_dir)?.sync_all()?;
        let this = SnapshotFile {
            dir,
            current: Arc::new(Mutex::new(None)),
        };
        let last = this.read_meta()?.and_then(|meta| meta.last_log_id);
        *this.current.lock().unwrap_or_else(PoisonError::into_inner) = last;
        Ok(this)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// `last_log_id` of the current snapshot (`None` when there is none).
    pub fn current(&self) -> Option<LogId> {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Size of the current file in bytes (0 when there is none).
    pub fn size(&self) -> u64 {
        fs::metadata(self.path()).map_or(0, |m| m.len())
    }

    /// Replaces the current snapshot with `data`, already encoded (one received from the
    /// leader), unless the current one is newer. Returns whether it is now the current one.
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<bool> {
        self.replace(meta, |f| f.write_all(data))
    }

    /// Replaces the current snapshot with `state`, encoded straight into the file.
    pub fn write_state<T: Serialize>(&self, meta: &SnapshotMeta, state: &T) -> io::Result<bool> {
        self.replace(meta, |f| encode_to_file(state, f).map(|_| ()))
    }

    fn replace(
        &self,
        meta: &SnapshotMeta,
        data: impl FnOnce(&mut SyncingFile) -> io::Result<()>,
    ) -> io::Result<bool> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if *current > meta.last_log_id {
            return Ok(false);
        }
        let meta_bytes = encode(meta)?;
        let meta_len = u32::try_from(meta_bytes.len()).map_err(io::Error::other)?;
        let tmp = self.dir.join("current.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&[FILE_V3])?;
        f.write_all(&meta_len.to_le_bytes())?;
        f.write_all(&meta_bytes)?;
        let mut w = SyncingFile { file: f, since: 0 };
        data(&mut w)?;
        w.file.sync_all()?;
        drop(w);
        fs::rename(&tmp, self.path())?;
        File::open(&self.dir)?.sync_all()?;
        *current = meta.last_log_id;
        Ok(true)
    }

    /// The current snapshot's meta only (reads the file's head).
    fn read_meta(&self) -> io::Result<Option<SnapshotMeta>> {
        let mut f = match File::open(self.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut head = [0u8; HEADER];
        f.read_exact(&mut head)?;
        check_layout(head[0])?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut meta = vec![0u8; len];
        f.read_exact(&mut meta)?;
        decode(&meta).map(Some)
    }

    /// The current snapshot, if any; a corrupt file is an error, never silently ignored.
    pub fn read(&self) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
        let mut bytes = match fs::read(self.path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        check_layout(bytes.first().copied().unwrap_or(0))?;
        let len = bytes
            .get(1..HEADER)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| corrupt("snapshot file shorter than its header"))?;
        let data_at = HEADER + len;
        let meta = bytes
            .get(HEADER..data_at)
            .ok_or_else(|| corrupt("snapshot file shorter than its meta"))
            .and_then(decode)?;
        bytes.drain(..data_at);
        // never hand a corrupt snapshot to a follower: its install would fail fatally
        verify(&bytes)?;
        Ok(Some((meta, bytes)))
    }
}

/// The snapshot file being written, synced every `SYNC_EVERY_BYTES`.
pub struct SyncingFile {
    file: File,
    since: u64,
}

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let chunk = buf.len().min(SYNC_EVERY_BYTES as usize);
        let n = self.file.write(&buf[..chunk])?;
        self.since += n as u64;
        if self.since >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.since = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for SyncingFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

fn check_layout(first: u8) -> io::Result<()> {
    match first {
        FILE_V3 => Ok(()),
        1 | 2 => Err(corrupt(&format!(
            "snapshot file layout {first} was written by a Tollgate version from before the \
             ledger archive and cannot be read by this one; resync this node (remove it, wipe its \
             data dir, add it back: docs/runbook.md)"
        ))),
        _ => Err(corrupt("unknown snapshot file layout")),
    }
}

fn corrupt(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StoredMembership;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<crate::types::TypeConfig>(
                1, 1, index,
            )),
            last_membership: StoredMembership::default(),
        }
    }

    #[test]
    fn a_built_snapshot_reads_back_as_the_bytes_a_follower_installs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFile::new(dir.path()).expect("open");
        let state = ("ledger", vec![42u64; 50_000]);
        assert!(files.write_state(&meta(7), &state).expect("write"));
        let (m, data) = files.read().expect("read").expect("a snapshot");
        assert_eq!(m, meta(7));
        assert_eq!(data, encode(&state).expect("encode"));
        // the same bytes installed on another node give the same file
        let other = tempfile::tempdir().expect("tempdir");
        let theirs = SnapshotFile::new(other.path()).expect("open");
        assert!(theirs.write(&m, &data).expect("install"));
        assert_eq!(
            fs::read(theirs.path()).expect("read"),
            fs::read(files.path()).expect("read")
        );
        // a reopened store knows the current snapshot and refuses an older one
        let reopened = SnapshotFile::new(dir.path()).expect("reopen");
        assert!(!reopened.write_state(&meta(6), &state).expect("older"));
    }

    #[test]
    fn older_layouts_are_refused_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFile::new(dir.path()).expect("open");
        let data = encode(&"state").expect("encode");
        fs::write(files.path(), encode(&(meta(3), &data)).expect("v1")).expect("write");
        let err = files.read().expect_err("layout 1 refused");
        assert!(
            err.to_string().contains("before the ledger archive"),
            "{err}"
        );
        assert!(
            SnapshotFile::new(dir.path()).is_err(),
            "refused at open too"
        );
        let mut v2 = fs::read(files.path()).expect("read");
        v2[0] = 2;
        fs::write(files.path(), &v2).expect("write");
        assert!(files.read().is_err());

        files.write_state(&meta(4), &"state").expect("write");
        let mut bytes = fs::read(files.path()).expect("read");
        bytes[HEADER + 2] ^= 0xff;
        fs::write(files.path(), &bytes).expect("corrupt");
        assert!(files.read().is_err());
        // a flipped byte in the data part is caught on read, not only at install
        files.write_state(&meta(5), &"state").expect("write");
        let mut bytes = fs::read(files.path()).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(files.path(), &bytes).expect("corrupt");
        assert!(files.read().is_err());
    }
}
