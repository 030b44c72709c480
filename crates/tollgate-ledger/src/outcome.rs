//! What `apply` returns for a request. Stored in the dedup table, so a retry gets the same answer.

use serde::{Deserialize, Serialize};
use tollgate_types::error::ApiError;

pub use tollgate_types::usage::UsageAck;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// For blank and membership entries, which carry no command.
    None,
    /// The command took effect (or, for an idempotent no-op, there was nothing to do).
    Done {
        config_version: u64,
    },
    /// A key or admin token was created under this id.
    Created {
        id: String,
        config_version: u64,
    },
    /// Config upserted by `ApplyConfig`: how many entities changed.
    Applied {
        config_version: u64,
        changed: u32,
    },
    Leases {
        grants: Vec<tollgate_types::lease::Grant>,
        acks: Vec<UsageAck>,
    },
    Usage {
        acks: Vec<UsageAck>,
    },
    Error(ApiError),
    /// One outcome per request of a `Command::Batch`, in order.
    Batch(Vec<Outcome>),
}

impl Outcome {
    pub fn error(&self) -> Option<&ApiError> {
        match self {
            Outcome::Error(e) => Some(e),
            _ => None,
        }
    }
}
