//! The state machine store: the pure `tollgate_ledger::State` in memory, made durable by the
//! Raft log plus snapshots. On restart openraft reinstalls the current snapshot and re-applies
//! the log up to the saved commit index, so the state comes back exactly.

use super::durable::LogMeter;
use super::snapshot_file::SnapshotFile;
use crate::codec::decode;
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
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
}

impl SmHandle {
    /// Runs `f` on the current state under the read lock (keep `f` short, no awaits inside).
    pub fn read<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        let guard = self
            .data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// Notified with the config version after every apply that changed it.
    pub fn subscribe_config(&self) -> watch::Receiver<u64> {
        self.config_version.subscribe()
    }
}

/// The log may grow by `1 / SNAPSHOT_LOG_SHARE` of the last snapshot's size before openraft's
/// policy (every `snapshot_logs` entries) may build the next one. A snapshot encodes the whole
/// state, usage ledger included; with a fixed entry count its cost per entry would grow with the
/// ledger, so under sustained ingestion snapshots came to take most of the CPU. Tied to the log's
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
    handle: SmHandle,
    snapshots: SnapshotFile,
    /// The log written since the last snapshot, for the snapshot policy.
    log: LogMeter,
}

impl StateMachineStore {
    /// `log` measures the Raft log's growth (`Durable::log_meter`) for the snapshot policy.
    pub fn open(data_dir: &Path, log: LogMeter) -> io::Result<StateMachineStore> {
        let (tx, _) = watch::channel(0);
        let handle = SmHandle {
            data: Arc::new(RwLock::new(SmData::default())),
            config_version: tx,
        };
        Ok(StateMachineStore {
            handle,
            snapshots: SnapshotFile::new(data_dir)?,
            log,
        })
    }

    pub fn handle(&self) -> SmHandle {
        self.handle.clone()
    }

    fn apply_entry(data: &mut SmData, entry: Entry) -> io::Result<Outcome> {
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
    fn snapshot_from(&self, data: &SmData) -> io::Result<Snapshot> {
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
        };
        // false when a newer snapshot was installed meanwhile; that one stays current
        self.snapshots.write_state(&meta, data)?;
        Ok(Snapshot {
            meta,
            snapshot: Vec::new(),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;

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
    type SnapshotData = Vec<u8>;
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
                let outcome = Self::apply_entry(&mut data, entry)?;
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
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        // decode and persist on the blocking pool: a snapshot can be large
        let files = self.snapshots.clone();
        let meta_copy = meta.clone();
        let mut new_data: SmData = tokio::task::spawn_blocking(move || -> io::Result<SmData> {
            let data = decode(&snapshot)?;
            files.write(&meta_copy, &snapshot)?;
            Ok(data)
        })
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
        Ok(self
            .snapshots
            .read()?
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
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
