//! One sled database per node — the Raft vote and log metadata (`committed`, `last_purged`) —
//! and the one place that makes its writes durable. sled 0.34's `flush()` only issues
//! `sync_file_range` on Linux (no fsync, no disk-cache flush), so a sync is sled flush followed
//! by `fdatasync` on sled's data file. The log's entries are not here: they are in their own
//! files (`log_files.rs`), synced by their own group-commit thread.

use super::group_commit::count_sync;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// sled segment size (sled's values here are a few hundred bytes: far below its blob threshold
/// of a quarter segment, so nothing lands in a blob file, which sled never fsyncs).
const SEGMENT_BYTES: usize = 16 << 20;
/// sled's background flusher interval: a backstop, never relied on for acknowledgements.
const BACKGROUND_FLUSH_MS: u64 = 500;

#[derive(Clone)]
pub struct Durable {
    inner: Arc<Inner>,
    log_meter: LogMeter,
}

/// Bytes of the Raft entries in the log now (appended, not yet purged or truncated), counted from
/// the log itself at open: the state machine compares them with the size of its snapshot to
/// decide when the next snapshot is worth building. Since openraft purges the log behind each
/// snapshot, this is the log written since the last snapshot (plus the few entries openraft keeps
/// behind it), and it survives restarts.
#[derive(Clone, Default)]
pub struct LogMeter(Arc<AtomicU64>);

impl LogMeter {
    pub fn add(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Inner {
    db: sled::Db,
    data_file: File,
    dir: PathBuf,
}

impl Durable {
    /// Opens (or creates) the sled database under `<data_dir>/sled`.
    pub fn open(data_dir: &Path) -> io::Result<Durable> {
        let dir = data_dir.join("sled");
        let db = sled::Config::new()
            .path(&dir)
            .segment_size(SEGMENT_BYTES)
            .flush_every_ms(Some(BACKGROUND_FLUSH_MS))
            .open()
            .map_err(sled_err)?;
        let data_file = File::open(dir.join("db"))?;
        // a new node's first vote must not vanish with the directory entries of sled's files
        File::open(&dir)?.sync_all()?;
        File::open(data_dir)?.sync_all()?;
        let inner = Arc::new(Inner {
            db,
            data_file,
            dir: data_dir.to_path_buf(),
        });
        Ok(Durable {
            inner,
            log_meter: LogMeter::default(),
        })
    }

    pub fn tree(&self, name: &str) -> io::Result<sled::Tree> {
        self.inner.db.open_tree(name).map_err(sled_err)
    }

    pub fn log_meter(&self) -> LogMeter {
        self.log_meter.clone()
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes every write issued so far durable: sled flush, then fdatasync of the data file.
    pub fn sync_blocking(&self) -> io::Result<()> {
        self.inner.sync()
    }

    /// `sync_blocking` on the blocking pool.
    pub async fn sync(&self) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.sync_blocking())
            .await
            .map_err(io::Error::other)?
    }

    /// Bytes of sled's files.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }
}

impl Inner {
    fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(sled_err)?;
        self.data_file.sync_data()?;
        count_sync();
        Ok(())
    }
}

pub(crate) fn sled_err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(io) => io,
        other => io::Error::other(other.to_string()),
    }
}
