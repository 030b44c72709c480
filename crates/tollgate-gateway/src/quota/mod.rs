//! Admission against leased budgets (docs/design/quotas.md). Each limit that applies to a
//! request has a [`bucket::LocalBucket`]; a request reserves `input_estimate + max_output` (and
//! the matching money, one request, one slot) in all of them at once or in none, without a
//! network round trip. When a lease runs short the request waits, bounded, for the refresher's
//! next `Acquire` (which it triggers); once leases lapse with the store unreachable, each
//! limit's fail policy decides. Settlement replaces each reservation by the actual usage.

pub mod bucket;
pub mod headers;
pub mod plan;
pub mod refresh;
pub mod rpc;
pub mod ship;
pub mod status;

use crate::error::GwError;
use crate::phases::admit::{AdmitRequest, Ticket, Usage};
use arc_swap::ArcSwap;
use bucket::{Kind, LocalBucket, Short, Source};
use plan::{Applies, Plan};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tollgate_types::ErrorCode;
use tollgate_types::config::GatewayConfig;
use tollgate_types::faults::mono_now;
use tollgate_types::limits::{Dimension, LimitKey};

/// Tuning of admission and lease refresh.
#[derive(Debug, Clone)]
pub struct QuotaSettings {
    /// Longest a request waits for a refresh when its lease runs short.
    pub admit_wait: Duration,
    /// Regular refresh interval (a refresh also runs whenever a request waits).
    pub refresh: Duration,
    /// Leases are sized for the demand over this horizon.
    pub horizon: Duration,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings {
            admit_wait: Duration::from_millis(500),
            refresh: Duration::from_millis(2_500),
            horizon: Duration::from_millis(6_000),
        }
    }
}

#[derive(Debug, Default)]
pub struct QuotaStats {
    pub admitted: AtomicU64,
    pub admitted_unbacked: AtomicU64,
    pub admitted_reserve: AtomicU64,
    pub denied_rate: AtomicU64,
    pub denied_quota: AtomicU64,
    pub denied_store: AtomicU64,
    pub waited: AtomicU64,
    pub refresh_ok: AtomicU64,
    pub refresh_failed: AtomicU64,
    pub last_refresh_ms: AtomicU64,
}

/// Limits per request handled without a heap allocation.
const INLINE: usize = 4;

/// A request's reservations.
pub type Holds = SmallVec<[Hold; INLINE]>;

/// The limits that apply to one request.
pub type AppliesList = SmallVec<[Applies; INLINE]>;

/// One reservation: in the bucket at `idx` of the ticket's `applies`.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub idx: usize,
    pub src: Source,
    pub amount: u64,
    pub dim: Dimension,
}

/// Why a request was not admitted: the first bucket that refused.
#[derive(Debug, Clone, Copy)]
pub struct Denial {
    pub idx: usize,
    pub short: Short,
}

pub struct Quota {
    pub buckets: Mutex<BTreeMap<LimitKey, Arc<LocalBucket>>>,
    plan: ArcSwap<Plan>,
    pub shipper: Arc<ship::Shipper>,
    pub(crate) kick: Arc<Notify>,
    /// The start number of the last refresh that completed (see `refreshes_started`).
    refreshed: watch::Sender<u64>,
    /// Refreshes started so far: a waiter knows its want was seen once a refresh numbered
    /// above the count at its registration has completed.
    refreshes_started: AtomicU64,
    /// Bumped by every config install: a grant asked for under older limits is not trusted
    /// to say a bucket is empty.
    pub(crate) config_gen: AtomicU64,
    pub store_ok: AtomicBool,
    pub settings: QuotaSettings,
    pub stats: QuotaStats,
    pub started: Instant,
    /// Most usage records per `Acquire` (halved when the store refuses one, regrown after).
    pub(crate) batch_limit: std::sync::atomic::AtomicUsize,
    /// An `Acquire` whose fate is unknown (no answer: it may have committed), sent again as is
    /// — same request id, same body — before anything else (`refresh::Call`).
    pub(crate) pending: Mutex<Option<refresh::Call>>,
}

impl Quota {
    /// `journal`: where usage records are written before they are queued for shipping.
    pub fn new(settings: QuotaSettings, journal: Option<Arc<crate::journal::Journal>>) -> Quota {
        let kick = Arc::new(Notify::new());
        Quota {
            buckets: Mutex::new(BTreeMap::new()),
            plan: ArcSwap::from_pointee(Plan::new()),
            shipper: Arc::new(ship::Shipper::new(kick.clone(), journal)),
            kick,
            refreshed: watch::channel(0).0,
            refreshes_started: AtomicU64::new(0),
            config_gen: AtomicU64::new(0),
            // optimistic until a refresh fails: a fresh gateway asks before it applies policies
            store_ok: AtomicBool::new(true),
            settings,
            stats: QuotaStats::default(),
            started: mono_now(),
            batch_limit: std::sync::atomic::AtomicUsize::new(ship::BATCH_MAX),
            pending: Mutex::new(None),
        }
    }

    /// Takes in the limits of a new config version (buckets of unchanged limits keep their leases).
    pub fn install(&self, cfg: &GatewayConfig) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let plan = plan::build(&cfg.keys, &cfg.limits, &mut buckets, mono_now());
        self.plan.store(Arc::new(plan));
        self.config_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The limits of `key_id` that apply to a request for `model` (`None`: all of them).
    pub fn plan_for(&self, key_id: &str, model: Option<&tollgate_types::ModelName>) -> AppliesList {
        let plan = self.plan.load();
        plan.get(key_id).map_or_else(AppliesList::new, |list| {
            list.iter().filter(|a| a.covers(model)).cloned().collect()
        })
    }

    /// The limits that apply to a request and what it reserves in each.
    pub fn applicable(&self, req: &AdmitRequest<'_>) -> (AppliesList, SmallVec<[u64; INLINE]>) {
        let applies = self.plan_for(req.caller.key.id.as_str(), Some(&req.model.name));
        let amounts = applies
            .iter()
            .map(|a| {
                plan::reservation(
                    a.dimension,
                    req.input_estimate,
                    req.max_output,
                    &req.model.price,
                )
            })
            .collect();
        (applies, amounts)
    }

    /// Admits a request: locally when its leases cover it, else after (at most `admit_wait`
    /// of) waiting for a refresh, else refused with the reason of the first limit that refused.
    /// `now` is a monotonic time read just before (no await in between), reused so the common
    /// path reads no clock of its own.
    pub async fn admit(&self, req: &AdmitRequest<'_>, now: Instant) -> Result<Ticket, GwError> {
        let (applies, amounts) = self.applicable(req);
        let clamp = applies
            .iter()
            .any(|a| plan::counts_output(a.dimension) && !a.shadow);
        let deadline = now + self.settings.admit_wait;
        // a slow store is not a quota decision: past the wait, keep waiting (bounded) until a
        // refresh that saw this request's want has completed
        let hard_deadline = deadline + rpc::CALL_DEADLINE;
        let mut first = true;
        let mut waiting: Option<WaitGuard<'_>> = None;
        // refreshes started before this request waited may not carry its want
        let mut registered = u64::MAX;
        loop {
            let mut rx = self.refreshed.subscribe();
            let at = if first { now } else { mono_now() };
            match self.try_admit(&applies, &amounts, first, at) {
                Ok((holds, headers)) => {
                    self.stats.admitted.fetch_add(1, Ordering::Relaxed);
                    drop(waiting);
                    return Ok(Ticket {
                        unbacked: holds.iter().any(|h| h.src == Source::Unbacked),
                        headers,
                        holds,
                        applies,
                        price: req.model.price,
                        clamp_output: clamp.then_some(req.max_output),
                    });
                }
                Err(d) if d.short == Short::Wait => {
                    // a refresh that began after this want was registered has completed
                    let answered = *rx.borrow() > registered;
                    let now = mono_now();
                    if (answered && now >= deadline) || now >= hard_deadline {
                        return Err(self.deny(d, &applies, &amounts));
                    }
                    if waiting.is_none() {
                        self.stats.waited.fetch_add(1, Ordering::Relaxed);
                        waiting = Some(WaitGuard::new(&applies, &amounts));
                        registered = self.refreshes_started.load(Ordering::Acquire);
                    }
                    self.kick.notify_one();
                    let until = if answered { deadline } else { hard_deadline };
                    let wait = until.saturating_duration_since(mono_now());
                    let _ = tokio::time::timeout(wait, rx.changed()).await;
                }
                Err(d) => return Err(self.deny(d, &applies, &amounts)),
            }
            first = false;
        }
    }

    /// The local decision at monotonic time `now` (which must not be older than the moment of
    /// the call by more than microseconds: a lease is checked against it): locks the request's
    /// org cell once, checks every bucket, then takes from all of them. No I/O, no clock read,
    /// no heap allocation for up to four limits.
    pub fn try_admit(
        &self,
        applies: &[Applies],
        amounts: &[u64],
        count_demand: bool,
        now: Instant,
    ) -> Result<(Holds, headers::Headers), Denial> {
        if applies.is_empty() {
            return Ok((Holds::new(), headers::Headers::default()));
        }
        let store_ok = self.store_ok.load(Ordering::Relaxed);
        // one lock: every limit of a request is in the request's org, so in one cell
        let cell = &applies[0].bucket.cell;
        debug_assert!(applies.iter().all(|a| Arc::ptr_eq(&a.bucket.cell, cell)));
        let mut slots = cell.lock();
        let mut srcs: SmallVec<[Source; INLINE]> = SmallVec::new();
        let mut denial: Option<Denial> = None;
        for (i, a) in applies.iter().enumerate() {
            let g = slots.get_mut(a.bucket.slot);
            if count_demand {
                g.demand += amounts[i];
                g.unit = (g.unit * 7 + amounts[i]).div_ceil(8);
            }
            match g.check(amounts[i], now, store_ok) {
                Ok(s) => srcs.push(s),
                Err(short) => {
                    let better =
                        denial.is_none_or(|d| d.short == Short::Wait && short != Short::Wait);
                    if better {
                        denial = Some(Denial { idx: i, short });
                    }
                }
            }
        }
        if let Some(d) = denial {
            if d.short != Short::Wait {
                slots.get_mut(applies[d.idx].bucket.slot).denied += 1;
            }
            return Err(d);
        }
        let mut holds = Holds::new();
        for (i, a) in applies.iter().enumerate() {
            slots.get_mut(a.bucket.slot).take(srcs[i], amounts[i], now);
            holds.push(Hold {
                idx: i,
                src: srcs[i],
                amount: amounts[i],
                dim: applies[i].dimension,
            });
        }
        let hdrs = headers::Headers::from_buckets(applies, &slots, now);
        Ok((holds, hdrs))
    }

    fn deny(&self, d: Denial, applies: &[Applies], amounts: &[u64]) -> GwError {
        let a = &applies[d.idx];
        let g = a.bucket.lock();
        let scope = status::scope_name(&a.bucket.key);
        let what = status::dimension_name(a.dimension);
        let budget = plan::is_budget(a.dimension);
        let (code, stat) = match (d.short, budget) {
            (Short::StoreDown, _) => (ErrorCode::StoreUnavailable, &self.stats.denied_store),
            (_, true) => (ErrorCode::InsufficientQuota, &self.stats.denied_quota),
            _ => (ErrorCode::RateLimitExceeded, &self.stats.denied_rate),
        };
        stat.fetch_add(1, Ordering::Relaxed);
        let msg = match (d.short, budget) {
            (Short::StoreDown, _) => format!(
                "The {what} limit of {scope} cannot be checked right now (quota store unreachable); retry shortly."
            ),
            (_, true) => format!(
                "You exceeded the {what} of {scope} (limit {}). Raise the budget or wait for the next period.",
                g.limit.limit
            ),
            _ => format!(
                "Rate limit reached for {what} of {scope}: limit {}, this request needs {}.",
                g.limit.limit, amounts[d.idx]
            ),
        };
        let retry = match (d.short, g.kind) {
            (Short::StoreDown, _) => Some(Duration::from_secs(1)),
            (_, Kind::Rate) if g.limit.limit > 0 => Some(Duration::from_millis(
                (amounts[d.idx].max(1) * 60_000).div_ceil(g.limit.limit),
            )),
            (_, Kind::Concurrency) => Some(Duration::from_secs(1)),
            _ => None,
        };
        drop(g);
        let now = mono_now();
        let hdrs = headers::Headers::from_buckets(applies, &a.bucket.cell.lock(), now);
        let mut e = GwError::new(code, msg).with_headers(hdrs.pairs());
        if let Some(r) = retry {
            e = e.retry_after(r);
        }
        e
    }

    /// Replaces each reservation by what the request actually used.
    pub fn settle(&self, ticket: &mut Ticket, usage: &Usage) {
        // only rate refunds need the time (to find a live grant)
        let now = match ticket
            .holds
            .iter()
            .any(|h| matches!(h.src, Source::Rate(_)))
        {
            true => mono_now(),
            false => self.started,
        };
        let Some(first) = ticket.applies.first() else {
            return;
        };
        let cell = first.bucket.cell.clone();
        let mut slots = cell.lock();
        for h in std::mem::take(&mut ticket.holds) {
            let actual = match h.dim {
                Dimension::ConcurrentRequests => 0,
                d => plan::reservation(
                    d,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    &ticket.price,
                ),
            };
            if let Some(a) = ticket.applies.get(h.idx) {
                slots
                    .get_mut(a.bucket.slot)
                    .settle(h.src, h.amount, actual, now);
            }
        }
    }

    /// Tells waiters a refresh finished (successfully or not).
    /// Numbers a refresh that is starting (before it reads any bucket).
    pub(crate) fn refresh_starting(&self) -> u64 {
        self.refreshes_started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Tells waiters the refresh numbered `n` finished (successfully or not).
    pub(crate) fn refreshed(&self, n: u64) {
        self.refreshed.send_modify(|g| *g = (*g).max(n));
    }

    /// Name for `/readyz` and metrics.
    pub fn mode(&self) -> &'static str {
        if self.store_ok.load(Ordering::Relaxed) {
            "leased"
        } else {
            "store_unreachable"
        }
    }
}

/// Marks a request's reservations as waiting (so the next refresh asks for them) until dropped.
struct WaitGuard<'a> {
    items: Vec<(&'a Arc<LocalBucket>, u64)>,
}

impl<'a> WaitGuard<'a> {
    fn new(applies: &'a [Applies], amounts: &[u64]) -> WaitGuard<'a> {
        let items: Vec<_> = applies
            .iter()
            .zip(amounts)
            .map(|(a, n)| (&a.bucket, *n))
            .collect();
        for (b, n) in &items {
            b.lock().waiting += n;
        }
        WaitGuard { items }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        for (b, n) in &self.items {
            let mut g = b.lock();
            g.waiting = g.waiting.saturating_sub(*n);
        }
    }
}
