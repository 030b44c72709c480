//! The usage record: one completed (or failed) request, as a gateway reports it. It is both the
//! settlement of a lease and the billing ledger entry.

use crate::amount::{MicroUnits, Tokens};
use crate::ids::{KeyId, ModelName, OrgId, ProjectId, RequestId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    Completed,
    ClientAborted,
    UpstreamFailed,
    /// The gateway stopped between the reservation and the settlement (found when it replayed
    /// its journal): charged by policy, flagged `estimated`.
    InDoubt,
}

/// A usage record as shipped by a gateway. `request_id` is its identity (LG-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    pub request_id: RequestId,
    pub org: OrgId,
    pub project: ProjectId,
    pub key: KeyId,
    pub model: ModelName,
    /// The gateway that served the request (inline up to 24 bytes: no allocation per record).
    pub gateway: compact_str::CompactString,
    pub prompt_tokens: Tokens,
    pub completion_tokens: Tokens,
    pub cost_micros: MicroUnits,
    pub price_version: u64,
    pub status: UsageStatus,
    /// Gateway wall-clock times, informational only (never used by `apply`).
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    /// Token counts were estimated by the gateway rather than reported by the upstream.
    #[serde(default)]
    pub estimated: bool,
    /// Admitted without a lease (fail policy `open` while the store was unreachable).
    #[serde(default)]
    pub unbacked: bool,
}

/// Per usage record result, stable per request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageAck {
    /// Appended to the ledger at this sequence number.
    Accepted { seq: u64 },
    /// Already in the ledger with the same body; nothing changed.
    Duplicate { seq: u64 },
    /// The id is already in the ledger with a different body; nothing changed. Reported.
    Conflict { seq: u64 },
    /// Rejected for good (e.g. unknown org); a retry gets the same rejection.
    Rejected { reason: String },
    /// Too old: the request id's own time is before the dedup horizon (`closed_before_ms`,
    /// store time minus the retention), so the store can no longer tell whether it was already
    /// counted. Nothing changed; the gateway sets the record aside for backfill.
    Late { closed_before_ms: u64 },
}

impl UsageRecord {
    pub fn total_tokens(&self) -> Tokens {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}
