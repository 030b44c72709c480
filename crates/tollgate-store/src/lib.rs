//! A Tollgate quota-store node: openraft over its own log files (and sled for the vote) with explicit fsync, a tonic network with one
//! channel per peer, and the gRPC services for peers (Raft), operators (Admin) and gateways (Quota).

pub mod codec;
pub mod network;
pub mod node;
pub mod server;
pub mod status;
pub mod storage;
pub mod types;
