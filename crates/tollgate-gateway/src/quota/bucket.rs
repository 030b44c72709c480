//! One limit as this gateway sees it: its lease (volume and concurrency), its live grants (rate),
//! its emergency reserve, and the demand it saw since the last refresh. All of a bucket's state
//! sits behind one uncontended mutex; a request locks its buckets in a fixed order, checks every
//! one, and only then takes from all of them (all dimensions at once or none).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tollgate_types::lease::{Grant, LeaseMode, RESERVE_TTL_MS, usable_ms};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, LimitKey};

/// How a dimension is counted (mirrors the store's `lease::Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rate,
    Volume,
    Concurrency,
}

pub fn kind(d: Dimension) -> Kind {
    match d {
        Dimension::RequestsPerMinute
        | Dimension::InputTokensPerMinute
        | Dimension::OutputTokensPerMinute => Kind::Rate,
        Dimension::ConcurrentRequests => Kind::Concurrency,
        Dimension::TokenBudget { .. } | Dimension::MoneyBudget { .. } => Kind::Volume,
    }
}

/// Rate grants ending this close after the newest live one are merged into it (see
/// `Inner::add_gen`): at most ~0.5 s of a 10 s grant's life is given up, and admission walks
/// about 20 grants instead of one per refresh (profiles at 50 connections showed the walks at
/// ~4 % of the gateway's CPU).
const GEN_MERGE: Duration = Duration::from_millis(500);

/// Tokens withdrawn by one or more rate grants, usable until `until`.
#[derive(Debug, Clone, Copy)]
pub struct Gen {
    pub left: u64,
    pub until: Instant,
}

/// Where an admitted amount came from, so settlement returns it to the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A volume or concurrency lease (its local generation).
    Lease(u64),
    /// Rate grants; the instant is the end of the oldest grant it drew from (a refund never
    /// outlives it, so refunded tokens are not used later than they could have been).
    Rate(Instant),
    /// The emergency reserve (store unreachable, fail policy `reserve`).
    Reserve(u64),
    /// Admitted without backing (store unreachable, fail policy `open`).
    Unbacked,
    /// A shadow limit that would have denied: measured, nothing taken.
    Shadow,
}

/// Why a bucket cannot admit right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// The lease is short but the store may grant more: wait for a refresh.
    Wait,
    /// The bucket is exhausted (the store said so, or the reserve is spent).
    Exhausted,
    /// No live lease, the store is unreachable, and the fail policy is `strict`.
    StoreDown,
}

#[derive(Debug)]
pub struct Inner {
    pub limit: Limit,
    pub kind: Kind,
    // volume / concurrency lease
    pub lease_id: u64,
    pub period: u64,
    /// Local generation of the lease: a new store lease starts a new one.
    pub lease_gen: u64,
    /// Granted on the lease (without the reserve), minus returns.
    pub granted: u64,
    /// In-flight reservations plus settled actuals on the lease.
    pub used: u64,
    pub until: Option<Instant>,
    pub mode: LeaseMode,
    // rate
    pub gens: VecDeque<Gen>,
    /// Units admitted on rate buckets beyond what grants covered, not yet reported.
    pub overrun: u64,
    // fail policy `reserve`
    pub reserve: u64,
    pub reserve_used: u64,
    pub reserve_until: Option<Instant>,
    // demand since the last refresh and its smoothed rate
    pub demand: u64,
    pub waiting: u64,
    pub peak_used: u64,
    pub rate_per_s: f64,
    pub unit: u64,
    pub sampled_at: Instant,
    /// Deny without waiting until then: the store said the bucket is empty.
    pub exhausted_until: Option<Instant>,
    // for headers and status
    pub store_available: u64,
    pub reset_ms: u64,
    pub refreshed_at: Option<Instant>,
    pub unbacked: u64,
    pub denied: u64,
    pub shadow_exceeded: u64,
}

/// The buckets of one org, behind one lock. Every limit that applies to a request lies in the
/// request's org (org, project and key scopes never cross orgs), so admission takes exactly one
/// lock however many limits apply. Slots of removed limits are reused.
#[derive(Default)]
pub struct Cell {
    slots: Mutex<Slots>,
}

#[derive(Default)]
pub struct Slots {
    inner: Vec<Inner>,
    free: Vec<usize>,
}

impl Slots {
    pub fn get(&self, slot: usize) -> &Inner {
        &self.inner[slot]
    }

    pub fn get_mut(&mut self, slot: usize) -> &mut Inner {
        &mut self.inner[slot]
    }
}

impl Cell {
    /// Locks every bucket of the org.
    pub fn lock(&self) -> MutexGuard<'_, Slots> {
        // a panic while holding the lock leaves counters, not invariants, behind: keep going
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, inner: Inner) -> usize {
        let mut s = self.lock();
        match s.free.pop() {
            Some(i) => {
                s.inner[i] = inner;
                i
            }
            None => {
                s.inner.push(inner);
                s.inner.len() - 1
            }
        }
    }
}

/// One limit's local state: a slot in its org's `Cell`.
pub struct LocalBucket {
    pub key: LimitKey,
    /// Order of the limits in a request's list (stable across config versions).
    pub order: u32,
    pub cell: Arc<Cell>,
    pub slot: usize,
}

impl Drop for LocalBucket {
    /// Frees the slot. Takes the cell's lock: never drop the last `Arc<LocalBucket>` while
    /// holding that cell's lock (no path does: plans and tickets outlive the guards they take).
    fn drop(&mut self) {
        self.cell.lock().free.push(self.slot);
    }
}

/// One bucket of a locked cell.
pub struct BucketGuard<'a> {
    slots: MutexGuard<'a, Slots>,
    slot: usize,
}

impl std::ops::Deref for BucketGuard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.slots.get(self.slot)
    }
}

impl std::ops::DerefMut for BucketGuard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        self.slots.get_mut(self.slot)
    }
}

impl std::fmt::Debug for LocalBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBucket")
            .field("key", &self.key)
            .finish()
    }
}

impl LocalBucket {
    /// A new bucket for `limit` in the org's `cell`.
    pub fn new(limit: Limit, order: u32, cell: Arc<Cell>, now: Instant) -> LocalBucket {
        let key = limit.key();
        let slot = cell.insert(Inner {
            kind: kind(limit.dimension),
            limit,
            lease_id: 0,
            period: 0,
            lease_gen: 0,
            granted: 0,
            used: 0,
            until: None,
            mode: LeaseMode::Lease,
            gens: VecDeque::new(),
            overrun: 0,
            reserve: 0,
            reserve_used: 0,
            reserve_until: None,
            demand: 0,
            waiting: 0,
            peak_used: 0,
            rate_per_s: 0.0,
            unit: 0,
            sampled_at: now,
            exhausted_until: None,
            store_available: 0,
            reset_ms: 0,
            refreshed_at: None,
            unbacked: 0,
            denied: 0,
            shadow_exceeded: 0,
        });
        LocalBucket {
            key,
            order,
            cell,
            slot,
        }
    }

    /// Locks this bucket (that is, its org's cell: never hold two at once).
    pub fn lock(&self) -> BucketGuard<'_> {
        BucketGuard {
            slots: self.cell.lock(),
            slot: self.slot,
        }
    }
}

impl Inner {
    pub fn lease_live(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// End of the oldest live rate grant with tokens left (the one an admission draws from).
    fn oldest_live(&self, now: Instant) -> Option<Instant> {
        self.gens
            .iter()
            .find(|g| now < g.until && g.left > 0)
            .map(|g| g.until)
    }

    /// Units usable from live rate grants.
    pub fn rate_left(&self, now: Instant) -> u64 {
        self.gens
            .iter()
            .filter(|g| now < g.until)
            .map(|g| g.left)
            .sum()
    }

    /// What this gateway can admit right now without asking the store.
    pub fn local_left(&self, now: Instant) -> u64 {
        match self.kind {
            Kind::Rate => self.rate_left(now),
            _ if self.lease_live(now) => self.granted.saturating_sub(self.used),
            _ => 0,
        }
    }

    fn reserve_left(&self, now: Instant) -> u64 {
        if self.reserve_until.is_some_and(|u| now < u) {
            self.reserve.saturating_sub(self.reserve_used)
        } else {
            0
        }
    }

    /// Where `amount` would come from, or why it cannot be admitted.
    pub fn check(&self, amount: u64, now: Instant, store_ok: bool) -> Result<Source, Short> {
        let r = self.check_enforced(amount, now, store_ok);
        match r {
            Err(_) if self.limit.shadow => Ok(Source::Shadow),
            r => r,
        }
    }

    fn check_enforced(&self, amount: u64, now: Instant, store_ok: bool) -> Result<Source, Short> {
        if self.local_left(now) >= amount {
            return Ok(match self.kind {
                Kind::Rate => Source::Rate(self.oldest_live(now).unwrap_or(now)),
                _ => Source::Lease(self.lease_gen),
            });
        }
        let live = match self.kind {
            Kind::Rate => self.gens.iter().any(|g| now < g.until),
            _ => self.lease_live(now),
        };
        if store_ok || live {
            if self.exhausted_until.is_some_and(|u| now < u) {
                return Err(Short::Exhausted);
            }
            return Err(Short::Wait);
        }
        match self.limit.fail_policy {
            FailPolicy::Strict => Err(Short::StoreDown),
            FailPolicy::Reserve { .. } if self.reserve_left(now) >= amount => {
                Ok(Source::Reserve(self.lease_gen))
            }
            FailPolicy::Reserve { .. } => Err(Short::Exhausted),
            FailPolicy::Open => Ok(Source::Unbacked),
        }
    }

    /// Takes `amount` from `src` (after a successful `check` under the same lock).
    pub fn take(&mut self, src: Source, amount: u64, now: Instant) {
        match src {
            Source::Lease(_) => {
                self.used += amount;
                self.peak_used = self.peak_used.max(self.used);
            }
            Source::Rate(_) => self.take_rate(amount, now),
            Source::Reserve(_) => self.reserve_used += amount,
            Source::Unbacked => {
                self.unbacked += amount;
                if self.kind == Kind::Rate {
                    self.overrun += amount;
                }
            }
            Source::Shadow => self.shadow_exceeded += 1,
        }
    }

    /// Consumes from the oldest live grants first; what they cannot cover is overrun.
    fn take_rate(&mut self, mut amount: u64, now: Instant) {
        // grants expire in the order they came: drop spent and expired ones from the front
        while self
            .gens
            .front()
            .is_some_and(|g| now >= g.until || g.left == 0)
        {
            self.gens.pop_front();
        }
        for g in self.gens.iter_mut().filter(|g| now < g.until) {
            let t = amount.min(g.left);
            g.left -= t;
            amount -= t;
            if amount == 0 {
                return;
            }
        }
        self.overrun += amount;
    }

    /// Replaces a reservation by the actual usage.
    pub fn settle(&mut self, src: Source, reserved: u64, actual: u64, now: Instant) {
        match src {
            Source::Lease(g) if g == self.lease_gen => {
                self.used = self.used.saturating_sub(reserved).saturating_add(actual);
            }
            Source::Reserve(g) if g == self.lease_gen => {
                self.reserve_used = self
                    .reserve_used
                    .saturating_sub(reserved)
                    .saturating_add(actual);
            }
            Source::Rate(_) if actual > reserved => self.take_rate(actual - reserved, now),
            Source::Rate(bound) => {
                // refund into the newest live grant that ends no later than the grant the
                // tokens came from (none live: they would have expired anyway)
                if let Some(g) = self
                    .gens
                    .iter_mut()
                    .rev()
                    .find(|g| now < g.until && g.until <= bound)
                {
                    g.left += reserved - actual;
                }
            }
            Source::Unbacked if actual > reserved => {
                self.unbacked += actual - reserved;
                if self.kind == Kind::Rate {
                    self.overrun += actual - reserved;
                }
            }
            // an old lease generation, an unbacked or shadow admission: nothing to give back
            _ => {}
        }
    }

    /// Folds the demand since the last sample into the smoothed rate.
    pub fn sample(&mut self, now: Instant) {
        let dt = now.duration_since(self.sampled_at).as_secs_f64();
        // windows of at least half a second: a burst of queued requests is not a rate
        if dt < 0.5 {
            return;
        }
        let rate = self.demand as f64 / dt;
        let w = (dt / 5.0).min(1.0);
        self.rate_per_s = if self.rate_per_s == 0.0 {
            rate
        } else {
            self.rate_per_s * (1.0 - w) + rate * w
        };
        self.demand = 0;
        self.sampled_at = now;
    }

    /// Units this gateway expects to need over `horizon`, beyond what is in use now.
    pub fn need(&self, horizon: Duration) -> u64 {
        match (self.kind, self.mode) {
            (_, LeaseMode::PassThrough) => self.waiting,
            (Kind::Concurrency, _) => {
                // slots: the recent peak above what is in use, what waits, a little headroom
                let burst = self.peak_used.saturating_sub(self.used);
                burst + self.waiting + 1 + self.used / 4
            }
            (Kind::Rate, _) => {
                // never more than the limit itself refills over the horizon: more would expire
                let cap = self.limit.limit as f64 / 60.0;
                (self.rate_per_s.min(cap) * horizon.as_secs_f64()).ceil() as u64 + self.waiting
            }
            _ => (self.rate_per_s * horizon.as_secs_f64()).ceil() as u64 + self.waiting,
        }
    }

    /// Units to ask for on top of what this gateway holds.
    pub fn want(&self, now: Instant, horizon: Duration) -> u64 {
        self.need(horizon).saturating_sub(self.local_left(now))
    }

    /// Unused lease amount to give back now (volume and concurrency): all of it once the lease
    /// lapsed, the excess over `keep` otherwise.
    pub fn take_return(&mut self, now: Instant, keep: u64) -> u64 {
        if self.kind == Kind::Rate || self.lease_id == 0 {
            return 0;
        }
        let unused = self.granted.saturating_sub(self.used);
        let give = if self.lease_live(now) {
            unused.saturating_sub(keep)
        } else {
            unused
        };
        self.granted -= give;
        give
    }

    /// Adds a rate grant usable until `until`. A grant ending within [`GEN_MERGE`] after the
    /// newest one joins it and takes its earlier end (QL-3 still holds: units only lose
    /// lifetime, never gain it), so the list a request walks stays short — one entry per
    /// `GEN_MERGE` of the grant TTL — however often the bucket refreshes.
    fn add_gen(&mut self, granted: u64, until: Instant) {
        match self.gens.back_mut() {
            Some(last) if last.until <= until && until - last.until < GEN_MERGE => {
                last.left += granted;
            }
            _ => self.gens.push_back(Gen {
                left: granted,
                until,
            }),
        }
    }

    /// Installs a grant received for an `Acquire` sent at `t0`.
    /// `may_pause`: the grant reflects the current limits (no config change since it was asked
    /// for), so "empty" may be trusted for a short pause of instant refusals.
    pub fn apply_grant(
        &mut self,
        g: &Grant,
        t0: Instant,
        wanted: u64,
        now: Instant,
        may_pause: bool,
    ) {
        let until = t0 + Duration::from_millis(usable_ms(g.ttl_ms));
        match self.kind {
            Kind::Rate => {
                self.gens.retain(|x| now < x.until && x.left > 0);
                if g.granted > 0 {
                    self.add_gen(g.granted, until);
                }
                self.until = Some(until);
            }
            _ => {
                if g.lease_id != self.lease_id || g.period != self.period {
                    self.lease_id = g.lease_id;
                    self.period = g.period;
                    self.lease_gen += 1;
                    self.granted = 0;
                    self.used = 0;
                    self.reserve_used = 0;
                }
                self.granted += g.granted;
                self.until = Some(until);
            }
        }
        if g.reserve > 0 {
            self.reserve = g.reserve;
            self.reserve_until = Some(t0 + Duration::from_millis(usable_ms(RESERVE_TTL_MS)));
        }
        self.mode = g.mode;
        self.store_available = g.available;
        self.reset_ms = g.reset_ms;
        self.refreshed_at = Some(now);
        self.peak_used = self.used;
        self.exhausted_until = (may_pause && g.granted < wanted && g.available == 0).then(|| {
            let pause = match self.kind {
                // about the time one typical reservation takes to refill
                Kind::Rate if self.limit.limit > 0 => Duration::from_millis(
                    (60_000 * self.unit.max(1) / self.limit.limit).clamp(10, 1_000),
                ),
                _ => Duration::from_millis(250),
            };
            now + pause
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_types::limits::Scope;

    fn rate_bucket(now: Instant) -> LocalBucket {
        let limit = Limit {
            scope: Scope::Org {
                org: tollgate_types::OrgId::parse("acme").expect("org id"),
            },
            model: None,
            dimension: Dimension::RequestsPerMinute,
            limit: 1_000_000,
            burst: 0,
            fail_policy: FailPolicy::default(),
            shadow: false,
        };
        LocalBucket::new(limit, 0, Arc::new(Cell::default()), now)
    }

    fn grant(b: &LocalBucket, granted: u64) -> Grant {
        Grant {
            limit: b.key.clone(),
            lease_id: 0,
            granted,
            ttl_ms: tollgate_types::lease::LEASE_TTL_MS,
            mode: LeaseMode::Lease,
            available: 1_000_000,
            reset_ms: 0,
            reserve: 0,
            period: 0,
        }
    }

    #[test]
    fn frequent_rate_grants_merge_into_few_and_never_outlive_their_own_end() {
        let t = Instant::now();
        let b = rate_bucket(t);
        // a refresh every 10 ms for 5 s, nothing spent
        for i in 0..500u64 {
            let t0 = t + Duration::from_millis(10 * i);
            let g = grant(&b, 3);
            b.lock().apply_grant(&g, t0, 3, t0, true);
        }
        let end = t + Duration::from_millis(10 * 499);
        let inner = b.lock();
        let n = inner.gens.len();
        assert!((10..=11).contains(&n), "{n} grants kept");
        assert_eq!(inner.rate_left(end), 1500, "no unit lost by merging");
        for (i, g) in inner.gens.iter().enumerate() {
            // each entry ends when the first grant merged into it ends: the earliest end
            let first = t
                + Duration::from_millis(500 * i as u64)
                + Duration::from_millis(usable_ms(tollgate_types::lease::LEASE_TTL_MS));
            assert_eq!(g.until, first, "grant {i}");
        }
    }

    #[test]
    fn a_grant_ending_before_the_newest_is_not_merged_into_it() {
        let t = Instant::now();
        let b = rate_bucket(t);
        let later = t + Duration::from_millis(100);
        b.lock().apply_grant(&grant(&b, 5), later, 5, later, true);
        // an answer to an older call (earlier send time) arrives second
        b.lock().apply_grant(&grant(&b, 7), t, 7, later, true);
        let inner = b.lock();
        assert_eq!(
            inner.gens.len(),
            2,
            "merging would extend the older grant's life"
        );
        assert_eq!(inner.rate_left(later), 12);
    }
}
