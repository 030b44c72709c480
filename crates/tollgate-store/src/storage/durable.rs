//! One sled database per node and the one place that makes its writes durable. sled 0.34's
//! `flush()` only issues `sync_file_range` on Linux (no fsync, no disk-cache flush), so `sync`
//! follows it with `fdatasync` on sled's data file. Values stay below sled's blob threshold
//! (blobs are written to separate files that sled never fsyncs): see `ENTRY_BYTES_MAX`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// sled segment size; values above a quarter of it would become unsynced blob files.
const SEGMENT_BYTES: usize = 16 << 20;
/// Largest value this store writes into sled (a Raft entry, the vote).
pub const ENTRY_BYTES_MAX: usize = 3 << 20;
const _: () = assert!(ENTRY_BYTES_MAX < SEGMENT_BYTES / 4 - 64);
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
        Ok(Durable {
            inner: Arc::new(Inner {
                db,
                data_file,
                dir: data_dir.to_path_buf(),
            }),
        })
    }

    pub fn tree(&self, name: &str) -> io::Result<sled::Tree> {
        self.inner.db.open_tree(name).map_err(sled_err)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes every write issued so far durable: sled flush, then fdatasync of the data file.
    pub fn sync_blocking(&self) -> io::Result<()> {
        self.inner.db.flush().map_err(sled_err)?;
        self.inner.data_file.sync_data()?;
        SYNCS.fetch_add(1, Ordering::Relaxed);
        Ok(())
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

pub(crate) fn sled_err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(io) => io,
        other => io::Error::other(other.to_string()),
    }
}
