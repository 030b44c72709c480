//! The Raft log and vote in sled. Keys: `log` tree = big-endian index → encoded entry;
//! `meta` tree = `vote`, `committed`, `last_purged`. Every write that openraft must be able to
//! rely on (vote, append, truncate, purge) is synced before it is acknowledged: vote, truncate
//! and purge inline, appends through the group-commit callback. The last appended entries are
//! also kept decoded in memory (`Recent`), where apply and replication read them.

use super::durable::{Durable, ENTRY_BYTES_MAX, sled_err};
use super::recent::Recent;
use crate::codec::{decode, encode};
use crate::types::{Entry, LogId, TypeConfig, Vote};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Cloning shares the same trees: a reader sees every entry the writer appended.
#[derive(Clone)]
pub struct LogStore {
    durable: Durable,
    log: sled::Tree,
    meta: sled::Tree,
    recent: Recent,
}

impl LogStore {
    /// Opens the log. A vote persisted as committed is reopened as uncommitted: openraft would
    /// otherwise resume leadership in the same term without an election, and a leader's own log
    /// may lack entries that followers made durable (and committed) while its local append was
    /// still in flight when it crashed. An uncommitted vote keeps the term and the vote, so the
    /// node can never vote twice in a term; it only has to win an election again.
    pub fn open(durable: Durable) -> io::Result<LogStore> {
        let store = LogStore {
            log: durable.tree("raft_log")?,
            meta: durable.tree("raft_meta")?,
            recent: Recent::default(),
            durable,
        };
        let mut in_log = 0;
        for item in store.log.iter() {
            in_log += item.map_err(sled_err)?.1.len() as u64;
        }
        store.durable.log_meter().add(in_log);
        if let Some(mut vote) = store.meta_get::<Vote>(VOTE)?
            && vote.committed
        {
            vote.committed = false;
            store.meta_put(VOTE, &vote)?;
            store.durable.sync_blocking()?;
        }
        Ok(store)
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(sled_err)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn meta_put<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        self.meta.insert(key, encode(value)?).map_err(sled_err)?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        match self.log.last().map_err(sled_err)? {
            Some((_, bytes)) => Ok(Some(decode::<Entry>(&bytes)?.log_id)),
            None => Ok(None),
        }
    }
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        if let Some(entries) = self.recent.get(&range) {
            return Ok(entries);
        }
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for item in self.log.range(range) {
            let (key, bytes) = item.map_err(sled_err)?;
            let entry: Entry = decode(&bytes)?;
            if key.as_ref() != entry.index().to_be_bytes() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "log entry stored under the wrong index",
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.meta_get(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.meta_get(LAST_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.meta_put(VOTE, vote)?;
        self.durable.sync().await
    }

    /// Not synced on its own: a lost `committed` only means fewer entries are re-applied at
    /// startup; the next append's sync covers it.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.meta_put(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.meta_get::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        let mut logged = 0;
        let mut kept = Vec::new();
        for entry in entries {
            let bytes = encode(&entry)?;
            if bytes.len() > ENTRY_BYTES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "log entry {} is {} bytes; the maximum is {ENTRY_BYTES_MAX}",
                        entry.index(),
                        bytes.len()
                    ),
                ));
            }
            logged += bytes.len() as u64;
            let size = bytes.len() as u64;
            encoded.push((entry.index().to_be_bytes(), bytes));
            kept.push((entry, size));
        }
        // One insert per entry, not a `sled::Batch`: sled 0.34 seals and writes its current
        // I/O buffer before and after every batch (two extra `pwrite` + `sync_file_range` per
        // append, on every node, ahead of the group commit's own). Entries are inserted in
        // index order from this one task and sled recovers a prefix of its log, so a crash
        // mid-append leaves a contiguous prefix of entries that were never acknowledged, and
        // a failed insert is a fatal storage error: Raft stops before anything is (DU-1).
        for (key, bytes) in encoded {
            self.log.insert(key, bytes).map_err(sled_err)?;
        }
        self.recent.appended(kept);
        self.durable.log_meter().add(logged);
        // readable now; reported durable by the group-commit thread after its next sync, so
        // Raft keeps replicating while the disk flushes
        self.durable
            .sync_then(Box::new(move |r| callback.io_completed(r)))
            .await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.recent.truncated(from);
        self.remove_range(from..)?;
        self.durable.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.meta_put(LAST_PURGED, &log_id)?;
        self.recent.purged(log_id.index());
        self.remove_range(..=log_id.index())?;
        self.durable.sync().await
    }
}

impl LogStore {
    fn remove_range<R: RangeBounds<u64>>(&self, range: R) -> io::Result<()> {
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for item in self.log.range(range) {
            let (key, value) = item.map_err(sled_err)?;
            removed += value.len() as u64;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(sled_err)?;
        self.durable.log_meter().sub(removed);
        Ok(())
    }
}
