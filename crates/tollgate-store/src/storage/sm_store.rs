//! The state machine store: the pure `tollgate_ledger::State` in memory, made durable by the
//! Raft log plus snapshots. On restart openraft reinstalls the current snapshot and re-applies
//! the log up to the saved commit index, so the state comes back exactly.

use super::snapshot_file::SnapshotFile;
use crate::codec::{decode, encode};
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

#[derive(Clone)]
pub struct StateMachineStore {
    handle: SmHandle,
    snapshots: SnapshotFile,
}

impl StateMachineStore {
    pub fn open(data_dir: &Path) -> io::Result<StateMachineStore> {
        let (tx, _) = watch::channel(0);
        let handle = SmHandle {
            data: Arc::new(RwLock::new(SmData::default())),
            config_version: tx,
        };
        Ok(StateMachineStore {
            handle,
            snapshots: SnapshotFile::new(data_dir)?,
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

    fn snapshot_from(&self, data: &SmData) -> io::Result<Snapshot> {
        let bytes = encode(data)?;
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
        };
        // false when a newer snapshot was installed meanwhile; that one stays current
        self.snapshots.write(&meta, &bytes)?;
        Ok(Snapshot {
            meta,
            snapshot: bytes,
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
