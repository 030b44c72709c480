//! Tollgate's shared vocabulary: identifiers, amounts, the configuration and limit model, API key
//! and admin token formats, and the one `ErrorCode` every layer maps its failures to, plus the
//! process-wide dial and clock hooks (`faults`). No I/O.
//!
//! Serde rule for every type here: they are encoded with bincode in Raft log entries and snapshots,
//! so no `skip_serializing_if`, `flatten` or internally tagged enums (those need a self-describing
//! format). `#[serde(default)]` is fine.

pub mod admin;
pub mod amount;
pub mod config;
pub mod error;
pub mod faults;
pub mod ids;
pub mod lease;
pub mod limits;
pub mod secret;
pub mod usage;

pub use amount::{MicroUnits, Tokens};
/// Short strings held inline (ids, gateway names); see `ids`.
pub use compact_str::CompactString;
pub use error::{ApiError, ErrorCode, ErrorSource};
pub use ids::{IdError, KeyId, ModelName, OrgId, ProjectId, RequestId};
