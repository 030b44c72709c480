//! The state machine store: the pure `tollgate_ledger::State` in memory, made durable by the
//! Raft log plus snapshots, and the usage ledger's entries in the archive (`ledger_archive.rs`),
//! moved there after every apply. On restart openraft reinstalls the current snapshot (the
//! archive is cut back to the snapshot's ledger) and re-applies the log up to the saved commit
//! index, so the state and the archive come back exactly.

use super::durable::LogMeter;
use super::ledger_archive::LedgerArchive;
use super::snap_data::{self, SnapData};
use super::snapshot_file::SnapshotFile;
use crate::codec::decode;
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use tokio::sync::watch;
use tollgate_ledger::usage::LedgerEntry;
use tollgate_ledger::{Outcome, State};

/// Everything a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmData {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Shared read access to the state machine (admin reads, watch streams, status).
#[derive(Clone)]
pub struct SmHandle {
    data: Arc<RwLock<SmData>>,
    config_version: watch::Sender<u64>,
    archive: LedgerArchive,
    /// `<data-dir>/snapshot-incoming`: snapshots from the leader are written here as they
    /// arrive (emptied at open: a transfer cut by a crash is useless).
    incoming: PathBuf,
}

impl SmHandle {
    /// Where snapshots received from the leader are written as they arrive.
    pub fn incoming_dir(&self) -> &Path {
        &self.incoming
    }

    /// Runs `f` on the current state under the read lock (keep `f` short, no awaits inside).
    pub fn read<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        let guard = self
            .data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// Up to `limit` ledger entries after `since`, as of the state `upto` (its `ledger.len()`):
    /// every entry up to there is in the archive, since apply moves them under the write lock.
    pub fn ledger_page(&self, since: u64, limit: usize, upto: u64) -> io::Result<Vec<LedgerEntry>> {
        self.archive.read(since, limit, upto)
    }

    /// Notified with the config version after every apply that changed it.
    pub fn subscribe_config(&self) -> watch::Receiver<u64> {
        self.config_version.subscribe()
    }
}

/// The log may grow by `1 / SNAPSHOT_LOG_SHARE` of the last snapshot's size before openraft's
/// policy (every `snapshot_logs` entries) may build the next one. A snapshot encodes the whole
/// state (the ledger's entries are in the archive, but the dedup index is here); with a fixed
/// entry count its cost per entry would grow with the state, so under sustained ingestion
/// snapshots came to take most of the CPU. Tied to the log's
/// growth, a snapshot (the last one's size plus what the state grew, which is at most about what
/// was logged) costs about `SNAPSHOT_LOG_SHARE + 1` encoded bytes per byte logged, however large
/// the state; and the log between snapshots stays near half the state's encoded size.
pub const SNAPSHOT_LOG_SHARE: u64 = 2;

/// Whether the log written since the last snapshot (`LogMeter`) is large enough to build the
/// next one (see `SNAPSHOT_LOG_SHARE`).
pub fn snapshot_worth_it(log_bytes_since: u64, last_snapshot_bytes: u64) -> bool {
    log_bytes_since.saturating_mul(SNAPSHOT_LOG_SHARE) >= last_snapshot_bytes
}

#[derive(Clone)]
pub struct StateMachineStore {
    /// Also holds the ledger archive (`archive()`).
    handle: SmHandle,
    /// Held while a snapshot is built or installed: an install replaces the archive, which a
    /// build checks against the state it copied.
    snapshot_lock: Arc<Mutex<()>>,
    snapshots: SnapshotFile,
    /// The log written since the last snapshot, for the snapshot policy.
    log: LogMeter,
}

impl StateMachineStore {
    /// The archive lives under `data_dir`; `log` measures the Raft log's size
    /// (`Durable::log_meter`) for the snapshot policy.
    pub fn open(data_dir: &Path, log: LogMeter) -> io::Result<StateMachineStore> {
        let (tx, _) = watch::channel(0);
        let archive = LedgerArchive::open(data_dir)?;
        let snapshots = SnapshotFile::new(data_dir)?;
        if snapshots.current().is_none() {
            // no snapshot: the state starts empty and the log is re-applied from its first
            // entry, so the archive starts empty too (DU-2)
            archive.clear()?;
        }
        let incoming = data_dir.join("snapshot-incoming");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)?;
        }
        std::fs::create_dir_all(&incoming)?;
        let handle = SmHandle {
            data: Arc::new(RwLock::new(SmData::default())),
            config_version: tx,
            archive,
            incoming,
        };
        Ok(StateMachineStore {
            handle,
            snapshot_lock: Arc::default(),
            snapshots,
            log,
        })
    }

    pub fn handle(&self) -> SmHandle {
        self.handle.clone()
    }

    fn archive(&self) -> &LedgerArchive {
        &self.handle.archive
    }

    /// Applies one entry and moves the ledger entries it appended into the archive, under the
    /// same write lock, so a reader sees every entry up to `ledger.len()` there.
    fn apply_entry(&self, data: &mut SmData, entry: Entry) -> io::Result<Outcome> {
        let outcome = Self::apply_to_state(data, entry)?;
        let fresh = data.state.ledger.take_recent();
        if !fresh.is_empty() {
            self.archive().append(&fresh)?;
        }
        Ok(outcome)
    }

    fn apply_to_state(data: &mut SmData, entry: Entry) -> io::Result<Outcome> {
        data.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Ok(Outcome::None),
            EntryPayload::Membership(m) => {
                data.membership = StoredMembership::new(Some(entry.log_id), m);
                Ok(Outcome::None)
            }
            EntryPayload::Normal(req) => data.state.apply(&req).map_err(|violation| {
                io::Error::other(format!("state machine invariant violated: {violation}"))
            }),
        }
    }

    /// Encodes `data` straight into the snapshot file. The returned snapshot carries no bytes:
    /// openraft 0.10 uses only the meta of a snapshot it had built (`BuildSnapshotDone(meta)`)
    /// and reads the data through `get_current_snapshot` when a follower needs it.
    /// The archive is synced first: the snapshot refers to its entries `1..=ledger.len()`, and
    /// once the snapshot is durable openraft purges the log they were applied from (DU-2).
    fn snapshot_from(&self, data: &SmData) -> io::Result<Snapshot> {
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
        };
        let _building = self
            .snapshot_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.archive().sync()?;
        let archived = self.archive().last_seq();
        if archived < data.state.ledger.len() {
            return Err(io::Error::other(format!(
                "DU-2: the ledger archive holds {archived} entries, the state {}",
                data.state.ledger.len()
            )));
        }
        // false when a newer snapshot was installed meanwhile; that one stays current
        self.snapshots.write_state(&meta, data)?;
        Ok(Snapshot {
            meta,
            snapshot: SnapData::Built,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapData;

    /// Encodes a consistent copy under the read lock, then writes the file outside it.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let copy = self.handle.read(SmData::clone);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.snapshot_from(&copy))
            .await
            .map_err(io::Error::other)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapData;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.handle.read(|d| (d.last_applied, d.membership.clone())))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut version = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let outcome = {
                let mut data = self
                    .handle
                    .data
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let outcome = self.apply_entry(&mut data, entry)?;
                version = Some(data.state.config_version);
                outcome
            };
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        if let Some(v) = version {
            self.handle
                .config_version
                .send_if_modified(|cur| std::mem::replace(cur, v) != v);
        }
        Ok(())
    }

    /// Refuses an unforced build while the log grew less than `snapshot_worth_it` asks;
    /// openraft then tries again after another `snapshot_logs` entries.
    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        (force || snapshot_worth_it(self.log.total(), self.snapshots.size())).then(|| self.clone())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapData,
    ) -> Result<(), io::Error> {
        // decode and persist on the blocking pool: a snapshot can be large
        let this = self.clone();
        let meta_copy = meta.clone();
        let mut new_data = tokio::task::spawn_blocking(move || this.install(&meta_copy, snapshot))
            .await
            .map_err(io::Error::other)??;
        new_data.last_applied = meta.last_log_id;
        new_data.membership = meta.last_membership.clone();
        let version = new_data.state.config_version;
        *self
            .handle
            .data
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new_data;
        self.handle.config_version.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.snapshots.read()?.map(|(meta, state)| Snapshot {
            meta,
            snapshot: SnapData::Local {
                state,
                archive: self.archive().clone(),
            },
        }))
    }
}

impl StateMachineStore {
    /// Installs a snapshot: this node's own (at restart: the archive is cut back to the
    /// snapshot's ledger and must hold all of it) or one from the leader (checked whole, then
    /// the archive is replaced and synced before the snapshot file is, DU-2).
    fn install(&self, meta: &SnapshotMeta, snapshot: SnapData) -> io::Result<SmData> {
        let _installing = self
            .snapshot_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let SnapData::Local { state, .. } = &snapshot
            && self.snapshots.current() == meta.last_log_id
        {
            return self.reopen(decode(state)?);
        }
        // from the leader, or another store's handed over in process (openraft's storage suite)
        let file = snapshot.into_file(&self.handle.incoming)?;
        let sent = snap_data::verify(file.path())?;
        self.archive().clear()?;
        snap_data::each_chunk(file.path(), &sent, |first, count, record| {
            self.archive().put_raw(first, count, record)
        })?;
        self.archive().sync()?;
        self.snapshots.write(meta, &sent.state_bytes)?;
        Ok(sent.data)
    }

    fn reopen(&self, data: SmData) -> io::Result<SmData> {
        let len = data.state.ledger.len();
        self.archive().truncate(len)?;
        let archived = self.archive().last_seq();
        if archived != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "DU-2: the snapshot's ledger has {len} entries but the archive holds \
                     {archived}: the data dir is damaged; resync this node (docs/runbook.md)"
                ),
            ));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_until_the_log_grew_by_half_the_last_one() {
        assert!(
            snapshot_worth_it(0, 0),
            "no snapshot yet: openraft's policy decides"
        );
        assert!(snapshot_worth_it(1_000, 100));
        assert!(!snapshot_worth_it(49 << 20, 100 << 20));
        assert!(snapshot_worth_it(50 << 20, 100 << 20));
        assert!(snapshot_worth_it(u64::MAX, u64::MAX));
    }
}
