//! Generated tonic/prost code for Tollgate's gRPC services: `raft` (store ↔ store), `admin`
//! (operators and billing), `quota` (gateways). Sources in the workspace's `proto/` folder.
//! [`tls`]: the mutual TLS every party of the store's port shares; [`wire`]: the binary bodies of
//! the quota RPCs.

pub mod tls;
pub mod wire;

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod raft {
    tonic::include_proto!("tollgate.raft.v1");
}
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod admin {
    tonic::include_proto!("tollgate.admin.v1");
}
#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod quota {
    tonic::include_proto!("tollgate.quota.v1");
}

/// Metadata key carrying an `ErrorCode` name on error statuses.
pub const ERROR_CODE_METADATA: &str = "x-tollgate-error-code";
/// Metadata key carrying the leader's address on NOT_LEADER errors.
pub const LEADER_METADATA: &str = "x-tollgate-leader";
