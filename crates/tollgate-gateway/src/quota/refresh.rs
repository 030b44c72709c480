//! The lease refresher: one task per gateway that sends one batched `Acquire` per refresh —
//! the usage records since the last call, the returns of unused lease amounts, and a want for
//! every active bucket — every `refresh` interval, and at once (micro-batched) when a request
//! waits on a short lease or many records are queued. `t0` is taken before the call, so the
//! gateway stops admitting on a grant before the store can consider it expired.

use super::rpc::{AcquireError, StoreRpc};
use super::{Quota, ship};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tollgate_types::faults::mono_now;
use tollgate_types::lease::{AcquireBody, AcquireResult, LeaseMode, Return, Want};
use tollgate_types::limits::LimitKey;

/// Least time between two `Acquire`s of one gateway.
const MIN_GAP: Duration = Duration::from_millis(10);
/// Largest `Acquire` body the gateway builds (the store accepts 128 KiB messages).
const ACQUIRE_BODY_BYTES: usize = 96 << 10;
/// First retry after a failed refresh.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// How long a kick waits for more waiters before sending (micro-batching).
const BATCH_DELAY: Duration = Duration::from_millis(1);

pub async fn run(q: Arc<Quota>, rpc: StoreRpc, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = mono_now() - q.settings.refresh;
    // after a failed refresh, try again sooner (doubling up to the regular interval)
    let mut interval = q.settings.refresh;
    loop {
        let next = last + interval;
        tokio::select! {
            _ = tokio::time::sleep(next.saturating_duration_since(mono_now())) => {}
            _ = q.kick.notified() => tokio::time::sleep(BATCH_DELAY).await,
            _ = stop.changed() => {
                // last call: ship what is queued and give back what this gateway holds
                q.refresh_once(&rpc, true).await;
                return;
            }
        }
        let since = mono_now().saturating_duration_since(last);
        if since < MIN_GAP {
            tokio::time::sleep(MIN_GAP - since).await;
        }
        last = mono_now();
        q.refresh_once(&rpc, false).await;
        interval = match (
            q.store_ok.load(Ordering::Relaxed),
            interval == q.settings.refresh,
        ) {
            (true, _) => q.settings.refresh,
            (false, true) => RETRY_MIN.min(q.settings.refresh),
            (false, false) => (interval * 2).min(q.settings.refresh),
        };
    }
}

/// What one `Acquire` carried, to undo on failure.
struct Sent {
    wanted: HashMap<LimitKey, u64>,
    overruns: Vec<(LimitKey, u64)>,
    /// Bytes left in the body for usage records.
    budget: usize,
    /// Returns sent: (bucket, lease id, units), to take back if the store refused the call.
    returned: Vec<(LimitKey, u64, u64)>,
}

/// One `Acquire` as sent: kept whole while its fate is unknown, so that it can be sent again
/// identically. A call that got no answer may have committed — its grants held, its returns and
/// overruns applied — so sending a *new* body instead would report the overruns twice (double
/// debt) and leave the unseen grants held until their leases lapse. The same request id makes
/// the store answer a repeat with the first outcome (RQ-1) or apply it now, once.
pub(crate) struct Call {
    id: String,
    body: AcquireBody,
    sent: Sent,
    /// Journal sequence numbers of the usage records in `body`.
    seqs: Vec<u64>,
    /// Taken before the first send: a grant's lifetime counts from here (conservative).
    t0: Instant,
    config_gen: u64,
}

/// How long an unanswered call is kept to be sent again: well inside the store's 15-minute
/// dedup window (past it, a repeat would apply as new), and longer than any lease it touched.
const PENDING_MAX: Duration = Duration::from_secs(300);

impl Quota {
    /// One refresh: first settles an unanswered call by sending it again; then builds, sends
    /// and applies a new `Acquire`. `closing`: return everything, want nothing.
    pub async fn refresh_once(&self, rpc: &StoreRpc, closing: bool) {
        let n = self.refresh_starting();
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(call) = pending
            && !self.send(rpc, call).await
        {
            // still no answer: nothing new goes out before that call is settled
            self.refreshed(n);
            return;
        }
        let (mut body, sent) = self.build_acquire(closing);
        let limit = self.batch_limit.load(Ordering::Relaxed);
        let batch = self.shipper.take_batch(limit, sent.budget);
        body.usage = batch.records;
        if body.wants.is_empty() && body.returns.is_empty() && body.usage.is_empty() {
            self.refreshed(n);
            return;
        }
        let call = Call {
            id: uuid::Uuid::now_v7().to_string(),
            body,
            sent,
            seqs: batch.seqs,
            t0: mono_now(),
            config_gen: self.config_gen.load(Ordering::Acquire),
        };
        self.send(rpc, call).await;
        self.refreshed(n);
    }

    /// Sends `call` and applies the answer; false when no answer came (the call is then kept
    /// pending, or given up once too old).
    async fn send(&self, rpc: &StoreRpc, call: Call) -> bool {
        let shipped = call.body.usage.len();
        match rpc.acquire(&call.body, &call.id).await {
            Ok(res) => {
                self.store_ok.store(true, Ordering::Relaxed);
                self.stats.refresh_ok.fetch_add(1, Ordering::Relaxed);
                self.stats.last_refresh_ms.store(
                    mono_now().saturating_duration_since(call.t0).as_millis() as u64,
                    Ordering::Relaxed,
                );
                self.shipper.acked(&call.seqs, &call.body.usage, &res.acks);
                let current = self.config_gen.load(Ordering::Acquire) == call.config_gen;
                self.apply(&res, call.t0, &call.sent, current);
                if shipped > 0 {
                    // grow the batch back after a refusal shrank it
                    let limit = self.batch_limit.load(Ordering::Relaxed);
                    self.batch_limit
                        .store((limit * 2).min(ship::BATCH_MAX), Ordering::Relaxed);
                }
                true
            }
            Err(e @ AcquireError::Unreachable(_)) => {
                self.stats.refresh_failed.fetch_add(1, Ordering::Relaxed);
                if self.store_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "lease refresh failed; admitting on live leases, then by fail policy");
                }
                if mono_now().saturating_duration_since(call.t0) < PENDING_MAX {
                    *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(call);
                } else {
                    // too old to repeat safely: records ship again (deduplicated per record);
                    // the overruns are reported again (at worst counted twice as debt)
                    tracing::error!(request_id = %call.id, "giving up an unanswered lease refresh");
                    self.shipper.requeue(call.seqs, call.body.usage);
                    self.restore_overruns(&call.sent);
                }
                false
            }
            Err(e @ AcquireError::Refused(_)) => {
                self.stats.refresh_failed.fetch_add(1, Ordering::Relaxed);
                // the store applied nothing: everything the call carried is still ours
                self.shipper.requeue(call.seqs, call.body.usage);
                self.restore_overruns(&call.sent);
                self.restore_returns(&call.sent);
                // the store is there but refused this call: ship fewer records next time
                let limit = self.batch_limit.load(Ordering::Relaxed);
                self.batch_limit
                    .store((limit / 2).max(1), Ordering::Relaxed);
                tracing::error!(error = %e, records = shipped, "lease refresh refused");
                true
            }
        }
    }

    fn build_acquire(&self, closing: bool) -> (AcquireBody, Sent) {
        let now = mono_now();
        let buckets: Vec<_> = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut body = AcquireBody::default();
        let mut budget = ACQUIRE_BODY_BYTES;
        let mut sent = Sent {
            wanted: HashMap::new(),
            overruns: Vec::new(),
            budget: 0,
            returned: Vec::new(),
        };
        for b in buckets {
            let mut g = b.lock();
            let active = g.demand > 0
                || g.waiting > 0
                || g.lease_id != 0
                || !g.gens.is_empty()
                || g.overrun > 0;
            g.sample(now);
            if !active && g.rate_per_s < 1e-3 {
                continue;
            }
            // hysteresis: give back only what exceeds twice the need; when the bucket is nearly
            // exhausted give back everything unused (the store regrants exactly what waits, so
            // no fragment stays stranded here). Returns come first: the want is what is missing
            // after them (the store applies returns before grants in the same entry).
            let keep = match (closing, g.mode) {
                (true, _) | (false, LeaseMode::PassThrough) => 0,
                (false, LeaseMode::Lease) => 2 * g.need(self.settings.horizon),
            };
            let unused = g.take_return(now, keep);
            if unused > 0 {
                body.returns.push(Return {
                    lease_id: g.lease_id,
                    unused,
                });
                sent.returned.push((b.key.clone(), g.lease_id, unused));
            }
            let want = if closing {
                0
            } else {
                g.want(now, self.settings.horizon)
            };
            let overrun = std::mem::take(&mut g.overrun);
            if overrun > 0 {
                sent.overruns.push((b.key.clone(), overrun));
            }
            if closing && overrun == 0 {
                continue;
            }
            let w = Want {
                limit: b.key.clone(),
                want,
                unit: g.unit,
                overrun,
            };
            let len = ship::json_len(&w);
            if len > budget {
                // no room this time: the next refresh asks (overruns stay to be reported)
                g.overrun += overrun;
                sent.overruns.retain(|(k, _)| k != &b.key);
                continue;
            }
            budget -= len;
            sent.wanted.insert(b.key.clone(), want);
            body.wants.push(w);
        }
        sent.budget = budget.saturating_sub(64 * body.returns.len());
        (body, sent)
    }

    fn apply(&self, res: &AcquireResult, t0: Instant, sent: &Sent, current: bool) {
        let now = mono_now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for grant in &res.grants {
            if let Some(b) = buckets.get(&grant.limit) {
                let wanted = sent.wanted.get(&grant.limit).copied().unwrap_or(0);
                b.lock().apply_grant(grant, t0, wanted, now, current);
            }
        }
    }

    fn restore_returns(&self, sent: &Sent) {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for (k, lease_id, n) in &sent.returned {
            if let Some(b) = buckets.get(k) {
                let mut g = b.lock();
                if g.lease_id == *lease_id {
                    g.granted += n;
                }
            }
        }
    }

    fn restore_overruns(&self, sent: &Sent) {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for (k, n) in &sent.overruns {
            if let Some(b) = buckets.get(k) {
                b.lock().overrun += n;
            }
        }
    }
}
