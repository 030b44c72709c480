//! The lease protocol between gateways and the quota store (docs/design/quotas.md): one batched
//! `Acquire` per gateway per refresh carries the usage records since the last call, the returns
//! of unused lease amounts and the wants for every active bucket; the answer carries one grant
//! per want and one ack per record.

use crate::limits::LimitKey;
use crate::usage::{UsageAck, UsageRecord};
use serde::{Deserialize, Serialize};

/// How long a grant lets a gateway admit, measured from the gateway's own monotonic clock taken
/// before it sent the `Acquire`.
pub const LEASE_TTL_MS: u64 = 10_000;
/// How long a gateway may spend its emergency reserve (`reserve` fail policy) after its last
/// successful `Acquire`.
pub const RESERVE_TTL_MS: u64 = 600_000;
/// Longest a request may run on a gateway (its total timeout is clamped to this): after a
/// lease's admission window the store keeps the hold this long for usage still in flight.
pub const REQUEST_DURATION_MAX_MS: u64 = 600_000;
/// Margin on top of `REQUEST_DURATION_MAX_MS` before an unreturned hold is released.
pub const SETTLE_MARGIN_MS: u64 = 60_000;
/// Bound on the clock-rate drift between a gateway and the store leader (ρ in the proof).
pub const DRIFT_PPM: u64 = 1_000;
/// Fixed margin a gateway keeps before a grant's end (δ in the proof).
pub const LEASE_MARGIN_MS: u64 = 50;
/// Most wants, returns or usage records in one `Acquire`.
pub const ACQUIRE_ITEMS_MAX: usize = 4096;

/// How a bucket is handed out right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LeaseMode {
    /// Gateways hold leases and admit locally.
    #[default]
    Lease,
    /// Nearly exhausted: each grant covers exactly the reservations the gateway is waiting on.
    PassThrough,
}

/// A gateway's want for one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub limit: LimitKey,
    /// Units wanted on top of what the gateway holds (its demand over the next refresh).
    pub want: u64,
    /// The typical reservation size (for the pass-through threshold); 0 if unknown.
    #[serde(default)]
    pub unit: u64,
    /// Rate buckets: units admitted beyond what grants covered since the last call (input
    /// estimation error), recorded as debt.
    #[serde(default)]
    pub overrun: u64,
}

/// Unused lease amount a gateway gives back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Return {
    pub lease_id: u64,
    pub unused: u64,
}

/// What the store granted for one want.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub limit: LimitKey,
    /// The gateway's lease on this bucket (volume and concurrency; 0 for rate buckets, whose
    /// grants are withdrawals that simply expire).
    pub lease_id: u64,
    /// Units added by this grant.
    pub granted: u64,
    /// Usable for this long from the gateway's send time (then stop at `ttl·(1−ρ) − δ`).
    pub ttl_ms: u64,
    pub mode: LeaseMode,
    /// What the bucket had left after this grant (for `x-ratelimit-remaining-*`).
    pub available: u64,
    /// Ms until a rate bucket is full again, or until a budget period ends (0: never).
    pub reset_ms: u64,
    /// Emergency reserve this gateway holds for the bucket (fail policy `reserve`), granted once
    /// per lease and counted as held by the store.
    pub reserve: u64,
    /// The bucket period the grant belongs to (a new period starts a new lease).
    pub period: u64,
}

/// The body of an `Acquire`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    #[serde(default)]
    pub usage: Vec<UsageRecord>,
    #[serde(default)]
    pub returns: Vec<Return>,
    #[serde(default)]
    pub wants: Vec<Want>,
}

/// The answer to an `Acquire`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireResult {
    pub store_ts_ms: u64,
    pub grants: Vec<Grant>,
    pub acks: Vec<UsageAck>,
}

/// Until when (in ms after the send time) a grant with `ttl_ms` may be used: `ttl·(1−ρ) − δ`.
pub fn usable_ms(ttl_ms: u64) -> u64 {
    let drift = ttl_ms.saturating_mul(DRIFT_PPM) / 1_000_000;
    ttl_ms.saturating_sub(drift).saturating_sub(LEASE_MARGIN_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_window_is_inside_the_ttl() {
        assert_eq!(usable_ms(10_000), 10_000 - 10 - 50);
        assert_eq!(usable_ms(10), 0);
    }
}
