//! One sled database per node and the one place that makes its writes durable. sled 0.34's
//! `flush()` only issues `sync_file_range` on Linux (no fsync, no disk-cache flush), so a sync is
//! sled flush followed by `fdatasync` on sled's data file. Values stay below sled's blob threshold
//! (blobs are written to separate files that sled never fsyncs): see `ENTRY_BYTES_MAX`.
//!
//! Every sync runs inline on the blocking pool before the write is acknowledged. (A
//! group-commit thread that acknowledged appends through openraft's `IOFlushed` callback lost
//! an acknowledged write in 1 of 3 kill-every-node runs; it was removed until that is understood.)

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// sled segment size. sled writes a whole page (a leaf node with all its items) as one log
/// record, and a record over a quarter of the segment goes to a separate blob file that sled
/// never fsyncs. So every page must stay under `SEGMENT_BYTES / 4`.
const SEGMENT_BYTES: usize = 16 << 20;
/// Most items a sled leaf holds when written: it splits above 16 items and consolidates after
/// 10 pending deltas (sled 0.34 `Node::should_split`, `PAGE_CONSOLIDATION_THRESHOLD`).
const LEAF_ITEMS_MAX: usize = 16 + 10;
/// Largest value this store writes into sled (a Raft entry, the vote).
pub const ENTRY_BYTES_MAX: usize = 144 << 10;
const _: () = assert!(ENTRY_BYTES_MAX * LEAF_ITEMS_MAX < SEGMENT_BYTES / 4 - (64 << 10));
/// sled's background flusher interval: a backstop, never relied on for acknowledgements.
const BACKGROUND_FLUSH_MS: u64 = 500;

static SYNCS: AtomicU64 = AtomicU64::new(0);

/// How many durable syncs this process has completed (exported as a metric; tests watch it).
pub fn sync_count() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

#[derive(Clone)]
pub struct Durable {
    inner: Arc<Inner>,
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
        let inner = Arc::new(Inner {
            db,
            data_file,
            dir: data_dir.to_path_buf(),
        });
        Ok(Durable { inner })
    }

    pub fn tree(&self, name: &str) -> io::Result<sled::Tree> {
        self.inner.db.open_tree(name).map_err(sled_err)
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

    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }
}

impl Inner {
    fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(sled_err)?;
        self.data_file.sync_data()?;
        SYNCS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) fn sled_err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(io) => io,
        other => io::Error::other(other.to_string()),
    }
}
