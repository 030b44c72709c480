//! The openraft type configuration: application data is a `tollgate_ledger::Request`, the
//! response its `Outcome`; node ids are `u64`, nodes carry their gRPC address.

use tollgate_ledger::{Outcome, Request};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, crate::storage::StateMachineStore>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::storage::SnapData>;
