//! `ClusterStatus`: what `tollgate cluster status` shows, from one node's Raft metrics (the
//! leader also knows every follower's matched index, hence its lag).

use crate::storage::{Durable, SmHandle, log_disk_bytes, sync_count};
use crate::types::Raft;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// Highest log index known replicated to this member (leader's view; `None` elsewhere).
    pub matched_index: Option<u64>,
    /// `last_log_index - matched_index` on the leader.
    pub lag: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub config_version: u64,
    pub ledger_len: u64,
    /// SHA-256 of this replica's state at `applied_index` (equal on replicas at equal index).
    pub state_digest: Option<String>,
    /// Durable syncs (flush + fdatasync) this node's process completed.
    pub fsyncs: u64,
    pub disk_bytes: u64,
    /// Writes this node's process proposed as leader, and the log entries that carried them
    /// (proposal batching, `server/proposer.rs`).
    pub writes_proposed: u64,
    pub entries_proposed: u64,
}

/// `with_digest` also hashes the whole state, from a clone (O(1) for the ledger, usage index,
/// dedup table and audit log; config maps are copied) taken under the lock and hashed outside it.
pub fn cluster_status(
    id: u64,
    raft: &Raft,
    sm: &SmHandle,
    durable: &Durable,
    with_digest: bool,
) -> ClusterStatus {
    let m = raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(nid, node)| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(nid).cloned().flatten())
                .map(|l| l.index);
            let matched = if *nid == id {
                m.last_log_index
            } else {
                matched
            };
            MemberStatus {
                id: *nid,
                addr: node.addr.clone(),
                voter: voters.contains(nid),
                matched_index: matched,
                lag: matched
                    .zip(m.last_log_index)
                    .map(|(mi, last)| last.saturating_sub(mi)),
            }
        })
        .collect();
    // read together under one lock, so the digest is the state at exactly `applied_index`
    let (applied_index, config_version, ledger_len, state) = sm.read(|d| {
        let state = with_digest.then(|| d.state.clone());
        (
            d.last_applied.map(|l| l.index),
            d.state.config_version,
            d.state.ledger.len(),
            state,
        )
    });
    let state_digest = state.map(|s| crate::server::queries::state_digest(&s));
    let (writes_proposed, entries_proposed) = crate::server::proposer::proposed();
    ClusterStatus {
        node_id: id,
        state: format!("{:?}", m.state),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        committed_index: m.local_committed.map(|l| l.index),
        applied_index,
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        members,
        config_version,
        ledger_len,
        state_digest,
        fsyncs: sync_count(),
        // sled (vote) + the Raft log's segment files
        disk_bytes: durable.size_on_disk() + log_disk_bytes(durable.data_dir()),
        writes_proposed,
        entries_proposed,
    }
}
