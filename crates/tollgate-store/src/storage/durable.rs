//! One sled database per node and the one place that makes its writes durable. sled 0.34's
//! `flush()` only issues `sync_file_range` on Linux (no fsync, no disk-cache flush), so a sync is
//! sled flush followed by `fdatasync` on sled's data file. Values stay below sled's blob threshold
//! (blobs are written to separate files that sled never fsyncs): see `ENTRY_BYTES_MAX`.
//!
//! Appends are group-committed: a dedicated thread syncs once for every callback queued while
//! the previous sync ran, then runs those callbacks in queue order.
//! A leader's own append may so still be in flight when followers have made the entry durable
//! and it commits; a crash then leaves the leader's log shorter than what was committed, which is
//! safe only because `LogStore::open` makes a restarted node win an election again (DU-1).

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
/// Most completion callbacks queued for the group-commit thread.
const FLUSH_QUEUE_MAX: usize = 4096;

static SYNCS: AtomicU64 = AtomicU64::new(0);

/// How many durable syncs this process has completed (exported as a metric; tests watch it).
pub fn sync_count() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

/// A callback run once the writes issued before it was queued are durable.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

#[derive(Clone)]
pub struct Durable {
    inner: Arc<Inner>,
    flusher: Arc<Flusher>,
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

/// The group-commit thread's queue; dropping the last handle stops and joins the thread, so
/// the database is closed when the last `Durable` is gone.
struct Flusher {
    tx: Option<tokio::sync::mpsc::Sender<Done>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Inner {
    db: sled::Db,
    data_file: File,
    dir: PathBuf,
}

impl Durable {
    /// Opens (or creates) the sled database under `<data_dir>/sled` and starts its
    /// group-commit thread (which ends when the last `Durable` clone is dropped).
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
        let (tx, rx) = tokio::sync::mpsc::channel(FLUSH_QUEUE_MAX);
        let for_thread = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("tollgate-group-commit".into())
            .spawn(move || group_commit(&for_thread, rx))?;
        let flusher = Arc::new(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        });
        Ok(Durable {
            inner,
            flusher,
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

    /// Group commit: `done` runs once every write issued before this call is durable.
    pub async fn sync_then(&self, done: Done) -> io::Result<()> {
        let stopped = || io::Error::other("the group-commit thread stopped");
        let tx = self.flusher.tx.as_ref().ok_or_else(stopped)?;
        tx.send(done).await.map_err(|_| stopped())
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

fn group_commit(inner: &Inner, mut rx: tokio::sync::mpsc::Receiver<Done>) {
    while let Some(first) = rx.blocking_recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = inner.sync();
        for done in waiting {
            done(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| io::Error::new(e.kind(), e.to_string())),
            );
        }
    }
}

pub(crate) fn sled_err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(io) => io,
        other => io::Error::other(other.to_string()),
    }
}
