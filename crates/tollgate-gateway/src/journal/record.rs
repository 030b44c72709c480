//! What the journal holds: a `Reserved` entry before the upstream call, a `Settled` entry (the
//! usage record the ledger will hold) before the client sees the end of the response.

use serde::{Deserialize, Serialize};
use tollgate_types::amount::Price;
use tollgate_types::usage::{UsageRecord, UsageStatus};
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId, RequestId};

/// A request admitted and about to go upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub request_id: RequestId,
    pub org: OrgId,
    pub project: ProjectId,
    pub key: KeyId,
    pub model: ModelName,
    pub gateway: tollgate_types::CompactString,
    pub input_estimate: u64,
    pub max_output: u64,
    pub price: Price,
    pub price_version: u64,
    pub started_at_ms: u64,
}

impl Reserved {
    /// The policy for a reservation found without a settlement after a restart: the upstream
    /// may have read the prompt, so the input estimate is charged, no output; `InDoubt`,
    /// `estimated` (a reconcile against the provider's counts can correct it).
    pub fn in_doubt(&self, ended_at_ms: u64) -> UsageRecord {
        UsageRecord {
            request_id: self.request_id.clone(),
            org: self.org.clone(),
            project: self.project.clone(),
            key: self.key.clone(),
            model: self.model.clone(),
            gateway: self.gateway.clone(),
            prompt_tokens: self.input_estimate,
            completion_tokens: 0,
            cost_micros: self.price.cost_micros(self.input_estimate, 0),
            price_version: self.price_version,
            status: UsageStatus::InDoubt,
            started_at_ms: self.started_at_ms,
            ended_at_ms,
            estimated: true,
            unbacked: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Reserved { seq: u64, reserved: Reserved },
    Settled { seq: u64, record: UsageRecord },
}

impl Entry {
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Reserved { seq, .. } | Entry::Settled { seq, .. } => *seq,
        }
    }
}
