//! The deterministic Tollgate state machine. A plain struct with `apply(request) -> outcome`:
//! configuration, quota buckets and leases, the usage ledger with its dedup index, and the admin
//! audit log chained by hashes. No tokio, no sled, no clock, no `HashMap` iteration: every
//! replica that applies the same requests in the same order ends in the same state.
//!
//! Invariants asserted in `apply` (see `docs/invariants.md`):
//! - **QL-1** for every volume bucket, `settled + held <= limit + debt`.
//! - **RL-1** a rate bucket's level never exceeds its depth (`limit + burst`).
//! - **LG-1** a request id appears in the ledger at most once.
//! - **AU-1** every audit record's `prev_hash` is the hash of the record before it.
//! - **SM-1** the store clock never goes backwards.

pub mod audit;
pub mod command;
pub mod config_ops;
pub mod dedup;
pub mod doc;
pub mod grant;
pub mod lease;
pub mod ledger;
pub mod outcome;
pub mod state;
pub mod testkit;
pub mod usage;

pub use command::{Actor, Command, Request};
pub use outcome::{Outcome, UsageAck};
pub use state::{InvariantViolation, State};
