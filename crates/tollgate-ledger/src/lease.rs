//! Buckets and leases (docs/design/quotas.md). A volume bucket (a budget per period, or the
//! slots of a concurrency limit) keeps settled usage `S`, holds `H` (live leases, including
//! emergency reserves and in-flight amounts of expired leases) and recorded debt `D`; a grant
//! needs `S + H + g <= L`, so QL-1 (`S + H <= L + D`) holds after every apply. A rate bucket is
//! a token bucket (depth `limit + burst`, refilled at `limit` per minute of store time); a grant
//! withdraws tokens, which the gateway may use for one TTL and which then expire (RL-1: the
//! level never exceeds the depth). Gateways return unused volume; a lease not renewed is released
//! once no request admitted on it can still be running.

use crate::outcome::Outcome;
use crate::state::{InvariantViolation, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use tollgate_types::error::ApiError;
use tollgate_types::lease::{
    ACQUIRE_ITEMS_MAX, LEASE_TTL_MS, REQUEST_DURATION_MAX_MS, RESERVE_TTL_MS, Return,
    SETTLE_MARGIN_MS, Want,
};
use tollgate_types::limits::{Dimension, Limit, LimitKey, period_index};
use tollgate_types::usage::UsageRecord;

/// A limit in one period (a budget's calendar period; 0 for rates and concurrency).
pub type BucketId = (LimitKey, u64);

/// Rate-bucket levels are kept in units × this (per-minute limits refill exactly per ms).
pub const RATE_SCALE: u128 = 60_000;

/// How a dimension is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rate,
    Volume,
    Concurrency,
}

pub fn kind(dim: Dimension) -> Kind {
    match dim {
        Dimension::RequestsPerMinute
        | Dimension::InputTokensPerMinute
        | Dimension::OutputTokensPerMinute => Kind::Rate,
        Dimension::ConcurrentRequests => Kind::Concurrency,
        Dimension::TokenBudget { .. } | Dimension::MoneyBudget { .. } => Kind::Volume,
    }
}

/// Period index of the bucket a dimension uses at store time `ts_ms`.
pub fn bucket_period(dim: Dimension, ts_ms: u64) -> u64 {
    match dim {
        Dimension::TokenBudget { period } | Dimension::MoneyBudget { period } => {
            period_index(period, ts_ms)
        }
        _ => 0,
    }
}

/// The number QL-1 / RL-1 check a bucket against: the depth for rates, the limit otherwise.
pub fn bucket_limit(l: &Limit) -> u64 {
    match kind(l.dimension) {
        Kind::Rate => l.limit.saturating_add(l.burst),
        _ => l.limit,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The limit QL-1 is checked against: the configured limit (the depth for rates), or what
    /// was already committed when an operator lowered it (grants use the configured limit).
    pub limit: u64,
    pub settled: u64,
    pub held: u64,
    pub debt: u64,
    /// Rate buckets: tokens in the bucket × `RATE_SCALE`, as of `level_at_ms`.
    pub level: u128,
    pub level_at_ms: u64,
    /// Recent unmet wants per holder: holder → (want, unit, store time), for the fair share.
    pub wants: BTreeMap<String, (u64, u64, u64)>,
}

impl Bucket {
    pub fn check(&self, id: &BucketId) -> Result<(), InvariantViolation> {
        let name = || format!("{:?}/{}", id.0, id.1);
        if kind(id.0.dimension) == Kind::Rate {
            // a rate bucket's `held` is the reserves outstanding, withdrawn from a bucket that
            // refills: QL-1 does not apply to it, RL-1 does
            if self.level > u128::from(self.limit) * RATE_SCALE {
                return Err(InvariantViolation::Rl1 {
                    bucket: name(),
                    level: (self.level / RATE_SCALE) as u64,
                    depth: self.limit,
                });
            }
            return Ok(());
        }
        if self.settled.saturating_add(self.held) > self.limit.saturating_add(self.debt) {
            return Err(InvariantViolation::Ql1 {
                bucket: name(),
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

    /// Rate buckets: refills at `per_minute` up to the depth, as of store time `now`.
    pub fn refill(&mut self, per_minute: u64, now: u64) {
        let elapsed = now.saturating_sub(self.level_at_ms);
        let depth = u128::from(self.limit) * RATE_SCALE;
        self.level = (self.level + u128::from(per_minute) * u128::from(elapsed)).min(depth);
        self.level_at_ms = self.level_at_ms.max(now);
    }

    /// Whole tokens in a rate bucket.
    pub fn tokens(&self) -> u64 {
        (self.level / RATE_SCALE) as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    /// `gateway-id:incarnation`.
    pub holder: String,
    pub bucket: BucketId,
    /// Everything granted on this lease (grants plus the reserve).
    pub amount: u64,
    pub settled: u64,
    pub returned: u64,
    /// Emergency reserve included in `amount` (fail policy `reserve`).
    pub reserve: u64,
    /// Store time after which the hold is released: no request admitted on it can still run.
    pub release_at_ms: u64,
}

impl Lease {
    /// The hold this lease still has in its bucket.
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
    /// (holder, bucket) → live lease id.
    pub by_holder: BTreeMap<(String, BucketId), u64>,
    /// (release time, lease id), to release expired leases without a scan.
    pub by_release: BTreeSet<(u64, u64)>,
}

impl Leases {
    fn reschedule(&mut self, id: u64, release_at_ms: u64) {
        if let Some(l) = self.by_id.get_mut(&id) {
            self.by_release.remove(&(l.release_at_ms, id));
            l.release_at_ms = release_at_ms;
            self.by_release.insert((release_at_ms, id));
        }
    }
}

/// When the hold of a lease last renewed at `now` may be released.
pub fn release_at(now: u64, reserve: u64) -> u64 {
    let window = if reserve > 0 {
        RESERVE_TTL_MS
    } else {
        LEASE_TTL_MS
    };
    now + window + REQUEST_DURATION_MAX_MS + SETTLE_MARGIN_MS
}

impl State {
    pub(crate) fn acquire(
        &mut self,
        holder: &str,
        body: (&[Want], &[Return], &[UsageRecord]),
        touched: &mut Touched,
    ) -> Result<Outcome, ApiError> {
        let (wants, returns, usage) = body;
        if wants.len() > ACQUIRE_ITEMS_MAX || returns.len() > ACQUIRE_ITEMS_MAX {
            return Err(ApiError::invalid(
                "wants",
                format!("at most {ACQUIRE_ITEMS_MAX} wants and returns per acquire"),
            ));
        }
        crate::usage::check_batch(usage)?;
        // validate every want before changing anything: an acquire applies whole or not at all
        if let Some(i) = wants
            .iter()
            .position(|w| !self.limits.contains_key(&w.limit))
        {
            return Err(
                ApiError::not_found("no such limit").with_param(format!("wants[{i}].limit"))
            );
        }
        // usage first (it draws on the leases it was admitted on: an earlier incarnation's for
        // what a restarted gateway replays), then returns, then grants
        let earlier = match usage.is_empty() {
            true => Vec::new(),
            false => self.earlier_incarnations(holder),
        };
        let holders: Vec<&str> = earlier.iter().map(String::as_str).chain([holder]).collect();
        let acks = usage
            .iter()
            .map(|r| self.record_one(r, &holders, touched))
            .collect();
        for r in returns {
            self.return_unused(holder, r, touched);
        }
        self.release_expired(touched);
        let mut grants = Vec::with_capacity(wants.len());
        for w in wants {
            grants.push(self.grant(holder, w, touched)?);
        }
        Ok(Outcome::Leases { grants, acks })
    }

    fn return_unused(&mut self, holder: &str, r: &Return, touched: &mut Touched) {
        let Some(lease) = self.leases.by_id.get_mut(&r.lease_id) else {
            return;
        };
        if lease.holder != holder {
            return;
        }
        let give_back = r.unused.min(lease.remaining());
        lease.returned += give_back;
        if let Some(b) = self.buckets.get_mut(&lease.bucket) {
            match kind(lease.bucket.0.dimension) {
                // a returned reserve goes back into the token bucket (capped at the depth)
                Kind::Rate => {
                    b.held = b.held.saturating_sub(give_back);
                    let depth = u128::from(b.limit) * RATE_SCALE;
                    b.level = (b.level + u128::from(give_back) * RATE_SCALE).min(depth);
                }
                _ => b.held = b.held.saturating_sub(give_back),
            }
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

    /// Releases the holds of leases past their release time, in (time, id) order.
    pub(crate) fn release_expired(&mut self, touched: &mut Touched) {
        let now = self.clock_ms;
        while let Some(&(at, id)) = self.leases.by_release.first() {
            if at > now {
                break;
            }
            self.leases.by_release.pop_first();
            let Some(lease) = self.leases.by_id.remove(&id) else {
                continue;
            };
            self.leases
                .by_holder
                .remove(&(lease.holder.clone(), lease.bucket.clone()));
            if let Some(b) = self.buckets.get_mut(&lease.bucket) {
                b.held = b.held.saturating_sub(lease.remaining());
                touched.buckets.push(lease.bucket);
            }
        }
        self.prune_buckets();
    }

    /// The holder's live lease on a bucket, created empty if there is none.
    pub(crate) fn lease_for(&mut self, holder: &str, bucket: &BucketId) -> u64 {
        let key = (holder.to_owned(), bucket.clone());
        if let Some(id) = self.leases.by_holder.get(&key) {
            return *id;
        }
        self.leases.next_id += 1;
        let id = self.leases.next_id;
        let release = release_at(self.clock_ms, 0);
        self.leases.by_id.insert(
            id,
            Lease {
                id,
                holder: holder.to_owned(),
                bucket: bucket.clone(),
                amount: 0,
                settled: 0,
                returned: 0,
                reserve: 0,
                release_at_ms: release,
            },
        );
        self.leases.by_release.insert((release, id));
        self.leases.by_holder.insert(key, id);
        id
    }

    /// Settles `amount` of usage by `holder` into a volume bucket, drawing on its lease first.
    /// Settles `amount` into a bucket, drawing on the leases of `holders` in turn: for an
    /// `Acquire`, the caller's earlier incarnations (`gateway-id:…`, the same gateway restarted),
    /// then the caller. A restarted gateway ships what its previous incarnation admitted
    /// (replayed from its journal) and those holds were taken for exactly that; settled against
    /// the new holder alone, the usage counted twice — still held by the old lease, and settled
    /// — and showed up as debt on a budget its leases nearly filled (found by chaos
    /// `gateway-crash`). Usage of the new incarnation drawn on an old lease leaves its own lease
    /// holding more than its gateway counts: conservative, and the stranded old hold is freed
    /// sooner.
    pub(crate) fn settle_into(
        &mut self,
        holders: &[&str],
        bucket_id: BucketId,
        limit: u64,
        amount: u64,
    ) {
        let leases = &mut self.leases;
        let mut from_leases = 0;
        for holder in holders {
            let key = ((*holder).to_owned(), bucket_id.clone());
            let Some(lease) = leases
                .by_holder
                .get(&key)
                .and_then(|id| leases.by_id.get_mut(id))
            else {
                continue;
            };
            let take = (amount - from_leases).min(lease.remaining());
            lease.settled += take;
            from_leases += take;
        }
        let bucket = self.buckets.entry(bucket_id).or_insert_with(|| Bucket {
            limit,
            ..Default::default()
        });
        bucket.held = bucket.held.saturating_sub(from_leases);
        bucket.settle(amount);
    }

    /// The other incarnations of `holder`'s gateway id that hold leases, in holder order
    /// (deterministic); none for a holder without an incarnation part. Once per `Acquire`, not
    /// per record: a lookup per incarnation, jumping past each one's keys.
    fn earlier_incarnations(&self, holder: &str) -> Vec<String> {
        let mut found = Vec::new();
        let by_holder = &self.leases.by_holder;
        let (Some((gateway, _)), Some(((_, any_bucket), _))) =
            (holder.split_once(':'), by_holder.first_key_value())
        else {
            return found;
        };
        let prefix = format!("{gateway}:");
        // `from` is never a holder itself (a prefix, or a holder followed by NUL), so the bucket
        // half of the bound does not matter: every key of a holder after `from` is in range
        let mut from = prefix.clone();
        while let Some(((h, _), _)) = by_holder
            .range((
                Bound::Included((from, any_bucket.clone())),
                Bound::Unbounded,
            ))
            .next()
        {
            if !h.starts_with(&prefix) {
                break;
            }
            if h != holder {
                found.push(h.clone());
            }
            from = format!("{h}\0");
        }
        found
    }

    pub(crate) fn reschedule_lease(&mut self, id: u64, release_at_ms: u64) {
        self.leases.reschedule(id, release_at_ms);
    }
}
