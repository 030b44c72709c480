//! The Raft log (`log_files.rs`: segment files of its own) and, in sled's `raft_meta` tree, the
//! vote, `committed` and `last_purged`. Every write that openraft must be able to rely on (vote,
//! append, truncate, purge) is synced before it is acknowledged: vote, truncate and purge inline,
//! appends through the log's group-commit thread. The last appended entries are also kept
//! decoded in memory (`Recent`), where apply and replication read them.

use super::durable::{Durable, sled_err};
use super::group_commit::GroupCommit;
use super::log_files::{self, ENTRY_BYTES_MAX, LogFiles};
use super::recent::Recent;
use crate::codec::{decode, encode};
use crate::types::{Entry, LogId, TypeConfig, Vote};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
/// Set once the entries of an old data dir's sled log are in the files (`move_out_of_sled`).
const LOG_MOVED: &[u8] = b"log_moved_to_files";
/// The sled tree the log's entries lived in before they moved to their own files.
const SLED_LOG_TREE: &str = "raft_log";

/// Cloning shares the same log: a reader sees every entry the writer appended.
#[derive(Clone)]
pub struct LogStore {
    durable: Durable,
    meta: sled::Tree,
    files: Arc<Mutex<LogFiles>>,
    /// Held shared by a read from the files (which runs outside `files`' lock, so appends go
    /// on) and exclusively by a truncation: a read never sees a segment shortened and rewritten
    /// under the positions it located, which would fail as a damaged frame — and openraft stops
    /// on any storage error.
    cuts: Arc<RwLock<()>>,
    /// Dropped with the last clone: stops the sync thread after its queued callbacks ran.
    group_commit: Arc<GroupCommit>,
    recent: Recent,
}

impl LogStore {
    /// Opens the log. A vote persisted as committed is reopened as uncommitted: openraft would
    /// otherwise resume leadership in the same term without an election, and a leader's own log
    /// may lack entries that followers made durable (and committed) while its local append was
    /// still in flight when it crashed. An uncommitted vote keeps the term and the vote, so the
    /// node can never vote twice in a term; it only has to win an election again.
    pub fn open(durable: Durable) -> io::Result<LogStore> {
        let meta = durable.tree("raft_meta")?;
        let last_purged = meta_get::<LogId>(&meta, LAST_PURGED)?.map(|l| l.index());
        let mut files = LogFiles::open(durable.data_dir(), last_purged)?;
        move_out_of_sled(&durable, &meta, &mut files, last_purged)?;
        let active = files.active();
        let group_commit = GroupCommit::start("tollgate-log-sync", move || active.sync())?;
        durable.log_meter().add(files.bytes());
        let store = LogStore {
            meta,
            files: Arc::new(Mutex::new(files)),
            cuts: Arc::new(RwLock::new(())),
            group_commit: Arc::new(group_commit),
            recent: Recent::default(),
            durable,
        };
        if let Some(mut vote) = store.meta_get::<Vote>(VOTE)?
            && vote.committed
        {
            vote.committed = false;
            store.meta_put(VOTE, &vote)?;
            store.durable.sync_blocking()?;
        }
        Ok(store)
    }

    fn files(&self) -> MutexGuard<'_, LogFiles> {
        // a panic while holding it can only come from a bug; a failed write is returned as an
        // error, which openraft treats as fatal (Raft stops, `StoreNode::fatal` ends the process)
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last purged entry and the log's last one (the last purged when the files hold none).
    fn log_state(&self) -> io::Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = self.meta_get(LAST_PURGED)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: self.files().last_log_id().or(last_purged),
        })
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        meta_get(&self.meta, key)
    }

    fn meta_put<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        self.meta.insert(key, encode(value)?).map_err(sled_err)?;
        Ok(())
    }
}

fn meta_get<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> io::Result<Option<T>> {
    match meta.get(key).map_err(sled_err)? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// A data dir from before the log had files of its own keeps its entries in sled: they are
/// written to the (emptied) files and synced, a mark saying so is synced in `meta`, and only then
/// are they removed from sled. A crash before the mark leaves them in sled and the next open
/// starts over; after it, the next open only finishes the removal (sled removes a tree's keys
/// one by one, so a crash half-way can leave a suffix of them, never to be copied again).
fn move_out_of_sled(
    durable: &Durable,
    meta: &sled::Tree,
    files: &mut LogFiles,
    last_purged: Option<u64>,
) -> io::Result<()> {
    let old = durable.tree(SLED_LOG_TREE)?;
    if old.is_empty() {
        return Ok(());
    }
    if meta.get(LOG_MOVED).map_err(sled_err)?.is_none() {
        files.truncate(0, None)?;
        let mut records = Vec::new();
        for item in old.iter() {
            let (_, bytes) = item.map_err(sled_err)?;
            let entry: Entry = decode(&bytes)?;
            if last_purged.is_none_or(|p| entry.index() > p) {
                records.push((entry.log_id, bytes.to_vec()));
            }
        }
        files.append(&records)?;
        files.active().sync()?;
        meta.insert(LOG_MOVED, &[1u8]).map_err(sled_err)?;
        durable.sync_blocking()?;
        tracing::info!(
            entries = records.len(),
            "moved the raft log out of sled into raft-log/"
        );
    }
    old.clear().map_err(sled_err)?;
    durable.sync_blocking()
}

/// `committed`, or the last entry the log holds when that is further: the log that survived a
/// power loss is a prefix of what was accepted when `committed` was saved (truncations are
/// synced at once, appends in order), so every entry of it up to `committed` is committed.
fn committed_within(committed: Option<LogId>, last: Option<LogId>) -> Option<LogId> {
    match (committed, last) {
        (Some(c), Some(l)) if c.index() > l.index() => Some(l),
        (Some(_), None) => None,
        (c, _) => c,
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
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&i) => i - 1,
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Ok(Vec::new());
        }
        let _no_cut = self.cuts.read().unwrap_or_else(PoisonError::into_inner);
        let found = self.files().locate(start, end);
        // read outside the lock: appends go on meanwhile
        log_files::read(found)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.meta_get(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.log_state()
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.meta_put(VOTE, vote)?;
        self.durable.sync().await
    }

    /// Not synced on its own: a lost `committed` only means fewer entries are re-applied at
    /// startup. It can also reach the disk (with sled's next flush) ahead of the entries it
    /// covers — a follower's committed index follows what it accepted, not what it synced — so
    /// it is read back no further than the log that survived.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.meta_put(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let committed = self.meta_get::<Option<LogId>>(COMMITTED)?.flatten();
        Ok(committed_within(committed, self.log_state()?.last_log_id))
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
        let mut records = Vec::new();
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
            let size = bytes.len() as u64;
            records.push((entry.log_id, bytes));
            kept.push((entry, size));
        }
        // a failed write is a fatal storage error: Raft stops before anything is acknowledged
        let logged = self.files().append(&records)?;
        self.recent.appended(kept);
        self.durable.log_meter().add(logged);
        // readable now; reported durable by the group-commit thread after its next sync, so
        // Raft keeps replicating while the disk flushes
        self.group_commit
            .then(Box::new(move |r| callback.io_completed(r)))
            .await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.recent.truncated(from);
        // synced before it returns; waits for reads of the files in progress
        let _cutting = self.cuts.write().unwrap_or_else(PoisonError::into_inner);
        let removed = self.files().truncate(from, last_log_id)?;
        self.durable.log_meter().sub(removed);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // recorded durably first: the next open skips what the files still hold up to it
        self.meta_put(LAST_PURGED, &log_id)?;
        self.durable.sync().await?;
        self.recent.purged(log_id.index());
        let removed = self.files().purge(log_id.index());
        self.durable.log_meter().sub(removed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::committed_within;
    use crate::types::{LogId, TypeConfig};
    use openraft::testing::log_id;

    fn at(index: u64) -> LogId {
        log_id::<TypeConfig>(1, 1, index)
    }

    #[test]
    fn committed_is_read_back_no_further_than_the_log() {
        assert_eq!(committed_within(Some(at(9)), Some(at(5))), Some(at(5)));
        assert_eq!(committed_within(Some(at(3)), Some(at(5))), Some(at(3)));
        assert_eq!(committed_within(Some(at(3)), None), None);
        assert_eq!(committed_within(None, Some(at(5))), None);
    }
}
