//! Group commit: one thread makes writes durable in batches. Each append queues a callback; the
//! thread takes every callback queued while its previous sync ran, syncs once, then runs them in
//! queue order. So one `fdatasync` covers every append that arrived during the last one, and the
//! writer (a Raft task) never blocks on the disk.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most completion callbacks queued for the thread.
const QUEUE_MAX: usize = 4096;

static SYNCS: AtomicU64 = AtomicU64::new(0);

/// How many durable syncs (of a Raft log segment, or of sled for the vote and purge mark) this process completed, exported
/// as a metric; tests watch it.
pub fn sync_count() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

/// Counts one completed durable sync.
pub(crate) fn count_sync() {
    SYNCS.fetch_add(1, Ordering::Relaxed);
}

/// A callback run once the writes issued before it was queued are durable.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The thread and its queue; dropping this stops and joins the thread (after it ran every
/// callback already queued).
pub struct GroupCommit {
    tx: Option<tokio::sync::mpsc::Sender<Done>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the thread; `sync` must make durable every write issued before it was called.
    pub fn start<S>(name: &str, sync: S) -> io::Result<GroupCommit>
    where
        S: Fn() -> io::Result<()> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&sync, rx))?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// `done` runs once every write issued before this call is durable.
    pub async fn then(&self, done: Done) -> io::Result<()> {
        let stopped = || io::Error::other("the group-commit thread stopped");
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(done).await.map_err(|_| stopped())
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(sync: &dyn Fn() -> io::Result<()>, mut rx: tokio::sync::mpsc::Receiver<Done>) {
    while let Some(first) = rx.blocking_recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        // `sync` counts the syncs it performs (`count_sync`)
        let result = sync();
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
