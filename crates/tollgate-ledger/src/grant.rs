//! The grant rule (docs/design/quotas.md §3): a want is met up to the holder's water-filling
//! fair share of what the bucket has left, never beyond `S + H + g <= L` (volume) or the
//! tokens in the bucket (rate). A live lease never shrinks; less is granted at the next refresh.

use crate::lease::{
    Bucket, BucketId, Kind, RATE_SCALE, bucket_limit, bucket_period, kind, release_at,
};
use crate::state::{State, Touched};
use tollgate_types::error::ApiError;
use tollgate_types::lease::{Grant, LEASE_TTL_MS, LeaseMode, Want};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, period_end_ms};

/// Below this many typical reservations per active gateway, a volume bucket is handed out in
/// pass-through mode: each grant covers exactly what a gateway is waiting on.
pub const LEASE_UNITS_MIN: u64 = 4;

/// Max-min fair share of `avail` for `holder` among the active wants (ceil division, so a
/// nearly empty bucket still serves someone). Ties break by holder name: deterministic.
pub fn fair_share(avail: u64, wants: &[(&str, u64)], holder: &str) -> u64 {
    let mut sorted: Vec<(u64, &str)> = wants.iter().map(|(h, w)| (*w, *h)).collect();
    sorted.sort_unstable();
    let mut left = avail;
    let n = sorted.len() as u64;
    for (i, (want, h)) in sorted.into_iter().enumerate() {
        let fair = left.div_ceil(n - i as u64);
        let give = want.min(fair);
        if h == holder {
            return give;
        }
        left -= give;
    }
    0
}

impl State {
    pub(crate) fn grant(
        &mut self,
        holder: &str,
        w: &Want,
        touched: &mut Touched,
    ) -> Result<Grant, ApiError> {
        let limit = self
            .limits
            .get(&w.limit)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such limit").with_param("wants.limit"))?;
        let now = self.clock_ms;
        let bucket_id: BucketId = (w.limit.clone(), bucket_period(limit.dimension, now));
        let depth = bucket_limit(&limit);
        self.buckets
            .entry(bucket_id.clone())
            .or_insert_with(|| Bucket {
                limit: depth,
                // a new rate bucket starts full
                level: u128::from(depth) * RATE_SCALE,
                level_at_ms: now,
                ..Default::default()
            });
        touched.buckets.push(bucket_id.clone());
        let grant = match kind(limit.dimension) {
            Kind::Rate => self.grant_rate(holder, w, &limit, &bucket_id),
            Kind::Volume | Kind::Concurrency => self.grant_volume(holder, w, &limit, &bucket_id),
        };
        Ok(grant)
    }

    fn grant_rate(&mut self, holder: &str, w: &Want, limit: &Limit, id: &BucketId) -> Grant {
        let now = self.clock_ms;
        let reserve = self.grant_reserve(holder, limit, id);
        let Some(b) = self.buckets.get_mut(id) else {
            return empty_grant(w, id.1);
        };
        b.refill(limit.limit, now);
        b.debt = b.debt.saturating_add(w.overrun);
        let avail = b.tokens();
        let share = note_want(b, holder, w, now, avail);
        let g = w.want.min(share).min(avail);
        b.level -= u128::from(g) * RATE_SCALE;
        b.wants.insert(holder.to_owned(), (w.want - g, w.unit, now));
        let missing = u128::from(b.limit) * RATE_SCALE - b.level;
        let reset_ms = match limit.limit {
            0 => 0,
            r => missing.div_ceil(u128::from(r)) as u64,
        };
        Grant {
            limit: w.limit.clone(),
            lease_id: reserve.0,
            granted: g,
            ttl_ms: LEASE_TTL_MS,
            mode: LeaseMode::Lease,
            available: b.tokens(),
            reset_ms,
            reserve: reserve.1,
            period: id.1,
        }
    }

    fn grant_volume(&mut self, holder: &str, w: &Want, limit: &Limit, id: &BucketId) -> Grant {
        let now = self.clock_ms;
        let (lease_id, reserve) = self.grant_reserve(holder, limit, id);
        let Some(b) = self.buckets.get_mut(id) else {
            return empty_grant(w, id.1);
        };
        let avail = limit.limit.saturating_sub(b.settled.saturating_add(b.held));
        let share = note_want(b, holder, w, now, avail);
        let g = if pass_through(b, avail) {
            // end game: first come, first served, and never a fragment smaller than a request
            // (fragments stranded on several gateways would add up to requests nobody can run)
            let g = w.want.min(avail);
            match w.unit {
                u if u > 0 && g < w.want => g - g % u,
                _ => g,
            }
        } else {
            w.want.min(share).min(avail)
        };
        b.held += g;
        b.wants.insert(holder.to_owned(), (w.want - g, w.unit, now));
        let available = avail - g;
        let mode = if pass_through(b, available) {
            LeaseMode::PassThrough
        } else {
            LeaseMode::Lease
        };
        let lease_id = match (lease_id, g) {
            // nothing granted: an existing lease is still renewed (and named, so the gateway
            // keeps using it); no lease is created for nothing
            (0, 0) => self
                .leases
                .by_holder
                .get(&(holder.to_owned(), id.clone()))
                .copied()
                .unwrap_or(0),
            (0, _) => self.lease_for(holder, id),
            (l, _) => l,
        };
        if let Some(lease) = self.leases.by_id.get_mut(&lease_id) {
            lease.amount += g;
            let at = release_at(now, lease.reserve);
            self.reschedule_lease(lease_id, at);
        }
        Grant {
            limit: w.limit.clone(),
            lease_id,
            granted: g,
            ttl_ms: LEASE_TTL_MS,
            mode,
            available,
            reset_ms: match limit.dimension {
                Dimension::TokenBudget { period } | Dimension::MoneyBudget { period } => {
                    period_end_ms(period, now).map_or(0, |end| end - now)
                }
                _ => 0,
            },
            reserve,
            period: id.1,
        }
    }

    /// Fail policy `reserve`: once per lease, hold the gateway's emergency reserve in the
    /// bucket. Returns (lease id or 0, the reserve this holder has).
    fn grant_reserve(&mut self, holder: &str, limit: &Limit, id: &BucketId) -> (u64, u64) {
        let FailPolicy::Reserve { per_gateway } = limit.fail_policy else {
            return (0, 0);
        };
        let now = self.clock_ms;
        let lease_id = self.lease_for(holder, id);
        let Some(lease) = self.leases.by_id.get(&lease_id) else {
            return (0, 0);
        };
        if lease.reserve > 0 || per_gateway == 0 {
            let r = lease.reserve;
            self.reschedule_lease(lease_id, release_at(now, r));
            return (lease_id, r);
        }
        let Some(b) = self.buckets.get_mut(id) else {
            return (lease_id, 0);
        };
        let r = match kind(limit.dimension) {
            Kind::Rate => {
                b.refill(limit.limit, now);
                let r = per_gateway.min(b.tokens());
                b.level -= u128::from(r) * RATE_SCALE;
                r
            }
            _ => per_gateway.min(limit.limit.saturating_sub(b.settled.saturating_add(b.held))),
        };
        b.held += r;
        if let Some(lease) = self.leases.by_id.get_mut(&lease_id) {
            lease.amount += r;
            lease.reserve = r;
        }
        self.reschedule_lease(lease_id, release_at(now, r));
        (lease_id, r)
    }
}

/// Whether what is left no longer makes a useful lease per active gateway: then grants are
/// exact (pass-through).
fn pass_through(b: &Bucket, avail: u64) -> bool {
    let active = b.wants.len() as u64;
    let unit = b.wants.values().map(|v| v.1).max().unwrap_or(1).max(1);
    avail < active.max(1) * unit * LEASE_UNITS_MIN
}

/// Records the holder's want, forgets wants older than a TTL, and returns its fair share.
fn note_want(b: &mut Bucket, holder: &str, w: &Want, now: u64, avail: u64) -> u64 {
    b.wants.insert(holder.to_owned(), (w.want, w.unit, now));
    b.wants.retain(|_, v| v.2 + LEASE_TTL_MS > now);
    let active: Vec<(&str, u64)> = b.wants.iter().map(|(h, v)| (h.as_str(), v.0)).collect();
    fair_share(avail, &active, holder)
}

fn empty_grant(w: &Want, period: u64) -> Grant {
    Grant {
        limit: w.limit.clone(),
        lease_id: 0,
        granted: 0,
        ttl_ms: LEASE_TTL_MS,
        mode: LeaseMode::Lease,
        available: 0,
        reset_ms: 0,
        reserve: 0,
        period,
    }
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn water_filling_meets_small_wants_and_splits_the_rest() {
        let wants = [("a", 90), ("b", 5), ("c", 5)];
        assert_eq!(fair_share(30, &wants, "b"), 5);
        assert_eq!(fair_share(30, &wants, "a"), 20);
        assert_eq!(fair_share(9, &wants, "a"), 3);
        // nearly empty: someone is still served
        assert_eq!(fair_share(1, &wants, "b") + fair_share(1, &wants, "c"), 1);
        assert_eq!(fair_share(100, &[("a", 7)], "a"), 7);
        assert_eq!(fair_share(100, &[("a", 7)], "zzz"), 0);
    }
}
