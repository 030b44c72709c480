//! The node's gRPC services and what they share: the Raft handle, read access to the state
//! machine, leader lookup, request stamping and error mapping.

pub mod admin_svc;
pub mod auth;
pub mod errors;
pub mod proposer;
pub mod queries;
pub mod quota_svc;
pub mod raft_svc;

use crate::storage::SmHandle;
use crate::types::{NodeId, Raft};
use errors::{api_status, not_leader};
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use proposer::{ProposeError, Proposer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tollgate_ledger::{Actor, Command, Outcome, Request};
use tollgate_types::error::{ApiError, ErrorCode};
use tonic::Status;

/// How long a client write or linearizable read may wait for Raft.
pub const RAFT_OP_TIMEOUT_MS: u64 = 5_000;

/// What every service of one node shares.
#[derive(Clone)]
pub struct NodeCtx {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: SmHandle,
    last_ts: Arc<AtomicU64>,
    proposer: Proposer,
    /// The listener runs mutual TLS: callers' certificates decide which services they may use.
    pub mtls: bool,
}

impl NodeCtx {
    /// Starts the node's proposer task: call on the node's tokio runtime.
    pub fn new(id: NodeId, raft: Raft, sm: SmHandle) -> NodeCtx {
        NodeCtx {
            id,
            proposer: Proposer::start(raft.clone()),
            raft,
            sm,
            last_ts: Arc::new(AtomicU64::new(0)),
            mtls: false,
        }
    }

    /// Callers' certificate roles are checked (the listener runs mutual TLS).
    pub fn with_mtls(mut self, on: bool) -> NodeCtx {
        self.mtls = on;
        self
    }

    /// The leader's store timestamp: wall clock, but never behind the state machine's clock or
    /// the last stamp this node gave (so it never runs early after a leader change, SM-1).
    pub fn stamp(&self) -> u64 {
        let wall = tollgate_types::faults::wall_ms();
        let applied = self.sm.read(|d| d.state.clock_ms);
        let floor = wall.max(applied);
        self.last_ts.fetch_max(floor, Ordering::AcqRel).max(floor)
    }

    /// The leader's id and gRPC address, as this node currently knows them.
    pub fn leader(&self) -> (Option<NodeId>, Option<String>) {
        let m = self.raft.metrics().borrow_watched().clone();
        let addr = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        (m.current_leader, addr)
    }

    fn not_leader_status(&self) -> Status {
        not_leader(self.leader().1)
    }

    /// Proposes a command through Raft (batched with concurrent writes, `proposer.rs`) and waits
    /// until it is applied here.
    pub async fn write(
        &self,
        id: String,
        actor: Actor,
        command: Command,
    ) -> Result<(Outcome, u64), Status> {
        self.write_stamped(id, actor, command)
            .await
            .map(|(o, index, _)| (o, index))
    }

    /// `write`, also returning the store time the entry was stamped with.
    pub async fn write_stamped(
        &self,
        id: String,
        actor: Actor,
        command: Command,
    ) -> Result<(Outcome, u64, u64), Status> {
        let ts_ms = self.stamp();
        let req = Request {
            id,
            ts_ms,
            actor,
            command,
        };
        let fut = self.proposer.propose(req);
        let res = tokio::time::timeout(Duration::from_millis(RAFT_OP_TIMEOUT_MS), fut)
            .await
            .map_err(|_| {
                api_status(ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the write did not commit in time; retry with the same request id",
                ))
            })?;
        match res {
            Ok((outcome, index)) => Ok((outcome, index, ts_ms)),
            Err(ProposeError::NotLeader) => Err(self.not_leader_status()),
            Err(ProposeError::Raft(e)) => Err(api_status(ApiError::new(
                ErrorCode::StoreUnavailable,
                format!("raft: {e}"),
            ))),
        }
    }

    /// Waits until this node (the leader) may serve a linearizable read (ReadIndex).
    pub async fn linearizable(&self) -> Result<(), Status> {
        let fut = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        let res = tokio::time::timeout(Duration::from_millis(RAFT_OP_TIMEOUT_MS), fut)
            .await
            .map_err(|_| {
                api_status(ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "no quorum confirmed the read in time",
                ))
            })?;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.forward_to_leader().is_some() => Err(self.not_leader_status()),
            Err(e) => Err(api_status(ApiError::new(
                ErrorCode::StoreUnavailable,
                format!("raft: {e}"),
            ))),
        }
    }
}
