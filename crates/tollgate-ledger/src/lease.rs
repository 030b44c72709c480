//! Buckets and leases. A bucket is one limit in one period with settled usage `S`, holds `H`
//! (live leases) and recorded debt `D`; a grant needs `S + H + g <= L`, so QL-1
//! (`S + H <= L + D`) holds after every apply. Gateways hold leases per bucket and return what
//! they did not use; a lease not renewed is released after its TTL plus a settlement grace.

use crate::outcome::Outcome;
use crate::state::{InvariantViolation, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_types::error::ApiError;
use tollgate_types::limits::{Dimension, LimitKey, period_index};

/// How long a lease lets a gateway admit, from the gateway's own send time.
pub const LEASE_TTL_MS: u64 = 10_000;
/// After the TTL, how long the store keeps the hold for usage still in flight.
pub const LEASE_SETTLE_GRACE_MS: u64 = 30_000;
/// Most wants or returns in one `Acquire`.
pub const ACQUIRE_ITEMS_MAX: usize = 4096;

/// A limit in one period (a minute for rates, a calendar period for budgets, 0 for concurrency).
pub type BucketId = (LimitKey, u64);

/// Period index of the bucket a dimension uses at store time `ts_ms`.
pub fn bucket_period(dim: Dimension, ts_ms: u64) -> u64 {
    match dim {
        Dimension::RequestsPerMinute
        | Dimension::InputTokensPerMinute
        | Dimension::OutputTokensPerMinute => ts_ms / 60_000,
        Dimension::ConcurrentRequests => 0,
        Dimension::TokenBudget { period } | Dimension::MoneyBudget { period } => {
            period_index(period, ts_ms)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The limit QL-1 is checked against: the configured limit, or what was already committed
    /// when an operator lowered it (grants always use the configured limit).
    pub limit: u64,
    pub settled: u64,
    pub held: u64,
    pub debt: u64,
}

impl Bucket {
    pub fn check_ql1(&self, id: &BucketId) -> Result<(), InvariantViolation> {
        if self.settled.saturating_add(self.held) > self.limit.saturating_add(self.debt) {
            return Err(InvariantViolation::Ql1 {
                bucket: format!("{:?}/{}", id.0, id.1),
                settled: self.settled,
                held: self.held,
                limit: self.limit,
                debt: self.debt,
            });
        }
        Ok(())
    }

    /// Adds settled usage; anything beyond `limit + debt` is recorded as debt.
    pub fn settle(&mut self, amount: u64) {
        self.settled = self.settled.saturating_add(amount);
        let used = self.settled.saturating_add(self.held);
        let cap = self.limit.saturating_add(self.debt);
        if used > cap {
            self.debt += used - cap;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    pub gateway: String,
    pub bucket: BucketId,
    pub amount: u64,
    pub settled: u64,
    pub returned: u64,
    /// Store time after which the hold is released (TTL + settlement grace).
    pub release_at_ms: u64,
}

impl Lease {
    pub fn remaining(&self) -> u64 {
        self.amount
            .saturating_sub(self.settled)
            .saturating_sub(self.returned)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leases {
    pub next_id: u64,
    pub by_id: BTreeMap<u64, Lease>,
    /// (gateway, bucket) → live lease id.
    pub by_holder: BTreeMap<(String, BucketId), u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub limit: LimitKey,
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Return {
    pub lease_id: u64,
    pub unused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub limit: LimitKey,
    pub lease_id: u64,
    /// Total amount of the lease after this grant (a lease never shrinks).
    pub amount: u64,
    pub ttl_ms: u64,
}

impl State {
    pub(crate) fn acquire(
        &mut self,
        gateway: &str,
        wants: &[Want],
        returns: &[Return],
        touched: &mut Touched,
    ) -> Result<Outcome, ApiError> {
        if wants.len() > ACQUIRE_ITEMS_MAX || returns.len() > ACQUIRE_ITEMS_MAX {
            return Err(ApiError::invalid(
                "wants",
                format!("at most {ACQUIRE_ITEMS_MAX} wants and returns per acquire"),
            ));
        }
        // validate every want before changing anything: an acquire applies whole or not at all
        if let Some(i) = wants
            .iter()
            .position(|w| !self.limits.contains_key(&w.limit))
        {
            return Err(
                ApiError::not_found("no such limit").with_param(format!("wants[{i}].limit"))
            );
        }
        for r in returns {
            self.return_unused(gateway, r, touched);
        }
        self.release_expired(touched);
        let mut grants = Vec::with_capacity(wants.len());
        for w in wants {
            grants.push(self.grant(gateway, w, touched)?);
        }
        Ok(Outcome::Leases { grants })
    }

    fn return_unused(&mut self, gateway: &str, r: &Return, touched: &mut Touched) {
        let Some(lease) = self.leases.by_id.get_mut(&r.lease_id) else {
            return;
        };
        if lease.gateway != gateway {
            return;
        }
        let give_back = r.unused.min(lease.remaining());
        lease.returned += give_back;
        if let Some(b) = self.buckets.get_mut(&lease.bucket) {
            b.held = b.held.saturating_sub(give_back);
            touched.buckets.push(lease.bucket.clone());
        }
    }

    /// Drops buckets of past periods that hold nothing, once per store minute. Usage always
    /// settles into the current period, so a past bucket without holds never changes again;
    /// the ledger keeps the history.
    pub(crate) fn prune_buckets(&mut self) {
        let minute = self.clock_ms / 60_000;
        if minute <= self.pruned_minute {
            return;
        }
        self.pruned_minute = minute;
        let now = self.clock_ms;
        self.buckets
            .retain(|(key, period), b| b.held > 0 || *period >= bucket_period(key.dimension, now));
    }

    /// Releases the holds of leases past their release time, in lease id order.
    pub(crate) fn release_expired(&mut self, touched: &mut Touched) {
        let now = self.clock_ms;
        let expired: Vec<u64> = self
            .leases
            .by_id
            .values()
            .filter(|l| l.release_at_ms <= now)
            .map(|l| l.id)
            .collect();
        for id in expired {
            let Some(lease) = self.leases.by_id.remove(&id) else {
                continue;
            };
            self.leases
                .by_holder
                .remove(&(lease.gateway.clone(), lease.bucket.clone()));
            if let Some(b) = self.buckets.get_mut(&lease.bucket) {
                b.held = b.held.saturating_sub(lease.remaining());
                touched.buckets.push(lease.bucket);
            }
        }
        self.prune_buckets();
    }

    fn grant(&mut self, gateway: &str, w: &Want, touched: &mut Touched) -> Result<Grant, ApiError> {
        let limit = self
            .limits
            .get(&w.limit)
            .ok_or_else(|| ApiError::not_found("no such limit").with_param("wants.limit"))?
            .limit;
        let bucket_id = (
            w.limit.clone(),
            bucket_period(w.limit.dimension, self.clock_ms),
        );
        let bucket = self
            .buckets
            .entry(bucket_id.clone())
            .or_insert_with(|| Bucket {
                limit,
                ..Default::default()
            });
        let committed = bucket.settled.saturating_add(bucket.held);
        let avail = limit.saturating_sub(committed);
        let g = w.amount.min(avail);
        bucket.held += g;
        touched.buckets.push(bucket_id.clone());
        let release_at_ms = self.clock_ms + LEASE_TTL_MS + LEASE_SETTLE_GRACE_MS;
        let key = (gateway.to_owned(), bucket_id.clone());
        let lease_id = match self.leases.by_holder.get(&key) {
            Some(id) => *id,
            None => {
                self.leases.next_id += 1;
                let id = self.leases.next_id;
                let lease = Lease {
                    id,
                    gateway: gateway.to_owned(),
                    bucket: bucket_id,
                    amount: 0,
                    settled: 0,
                    returned: 0,
                    release_at_ms,
                };
                self.leases.by_id.insert(id, lease);
                self.leases.by_holder.insert(key, id);
                id
            }
        };
        let lease = self
            .leases
            .by_id
            .get_mut(&lease_id)
            .expect("by_holder points at a live lease");
        lease.amount += g;
        lease.release_at_ms = release_at_ms;
        Ok(Grant {
            limit: w.limit.clone(),
            lease_id,
            amount: lease.remaining(),
            ttl_ms: LEASE_TTL_MS,
        })
    }
}
