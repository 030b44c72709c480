//! What enforcement runs on, per bucket: the per-gateway status view (`GET /admin/quota`) and
//! the quota metrics. A bucket is in one of these states:
//! `lease` (admitting on a live lease), `pass_through` (nearly exhausted: exact grants),
//! `waiting` (no live lease yet, asking the store), `reserve` / `open` / `strict` (store
//! unreachable and the lease lapsed: spending the reserve, admitting unbacked, denying), `idle`.

use super::Quota;
use super::bucket::{Inner, Kind};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tollgate_types::faults::mono_now;
use tollgate_types::lease::LeaseMode;
use tollgate_types::limits::{Dimension, FailPolicy, LimitKey, Period, Scope};

pub const STATES: [&str; 7] = [
    "lease",
    "pass_through",
    "waiting",
    "reserve",
    "open",
    "strict",
    "idle",
];

pub fn scope_name(k: &LimitKey) -> String {
    let base = match &k.scope {
        Scope::Org { org } => format!("org {org}"),
        Scope::Project { org, project } => format!("project {org}/{project}"),
        Scope::Key { key, .. } => format!("key {key}"),
    };
    match &k.model {
        Some(m) => format!("{base} on model {m}"),
        None => base,
    }
}

pub fn dimension_name(d: Dimension) -> String {
    let period = |p: Period| match p {
        Period::Day => "daily",
        Period::Month => "monthly",
        Period::Total => "total",
    };
    match d {
        Dimension::RequestsPerMinute => "requests per minute".into(),
        Dimension::InputTokensPerMinute => "input tokens per minute".into(),
        Dimension::OutputTokensPerMinute => "output tokens per minute".into(),
        Dimension::ConcurrentRequests => "concurrent requests".into(),
        Dimension::TokenBudget { period: p } => format!("{} token budget", period(p)),
        Dimension::MoneyBudget { period: p } => format!("{} spend budget", period(p)),
    }
}

/// The state a bucket's enforcement runs in.
pub fn state_of(g: &Inner, now: Instant, store_ok: bool) -> &'static str {
    let live = match g.kind {
        Kind::Rate => g.gens.iter().any(|x| now < x.until),
        _ => g.lease_live(now),
    };
    if live {
        return match g.mode {
            LeaseMode::PassThrough => "pass_through",
            LeaseMode::Lease => "lease",
        };
    }
    if store_ok {
        return if g.refreshed_at.is_none() && g.demand == 0 && g.waiting == 0 {
            "idle"
        } else {
            "waiting"
        };
    }
    match g.limit.fail_policy {
        FailPolicy::Strict => "strict",
        FailPolicy::Reserve { .. } => "reserve",
        FailPolicy::Open => "open",
    }
}

impl Quota {
    /// The status view: one entry per bucket, and the refresher's health.
    pub fn status(&self) -> serde_json::Value {
        let now = mono_now();
        let store_ok = self.store_ok.load(Ordering::Relaxed);
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<serde_json::Value> = buckets
            .values()
            .map(|b| {
                let g = b.lock();
                serde_json::json!({
                    "limit": b.key,
                    "state": state_of(&g, now, store_ok),
                    "shadow": g.limit.shadow,
                    "fail_policy": g.limit.fail_policy,
                    "lease_id": g.lease_id,
                    "local_available": g.local_left(now),
                    "in_use": if g.kind == Kind::Rate { 0 } else { g.used },
                    "lease_ms_left": g.until.map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64),
                    "store_available": g.store_available,
                    "reserve": g.reserve.saturating_sub(g.reserve_used),
                    "demand_per_s": (g.rate_per_s * 100.0).round() / 100.0,
                    "waiting": g.waiting,
                    "unbacked_units": g.unbacked,
                    "denied": g.denied,
                    "shadow_exceeded": g.shadow_exceeded,
                })
            })
            .collect();
        serde_json::json!({
            "store_reachable": store_ok,
            "refresh_ok": self.stats.refresh_ok.load(Ordering::Relaxed),
            "refresh_failed": self.stats.refresh_failed.load(Ordering::Relaxed),
            "usage_queued": self.shipper.len(),
            "buckets": list,
        })
    }

    /// Prometheus text for admission (bucket states are counted, never labelled by tenant).
    pub fn render_metrics(&self, o: &mut String) {
        let now = mono_now();
        let store_ok = self.store_ok.load(Ordering::Relaxed);
        let mut counts = [0u64; STATES.len()];
        let mut unbacked = 0u64;
        for b in self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let g = b.lock();
            let s = state_of(&g, now, store_ok);
            if let Some(i) = STATES.iter().position(|x| *x == s) {
                counts[i] += 1;
            }
            unbacked += g.unbacked;
        }
        let _ = writeln!(o, "# TYPE tollgate_gateway_quota_buckets gauge");
        for (s, n) in STATES.iter().zip(counts) {
            let _ = writeln!(o, "tollgate_gateway_quota_buckets{{state=\"{s}\"}} {n}");
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let st = &self.stats;
        let lines = [
            (
                "tollgate_gateway_quota_store_reachable",
                "gauge",
                u64::from(store_ok),
            ),
            (
                "tollgate_gateway_quota_admitted_total",
                "counter",
                load(&st.admitted),
            ),
            (
                "tollgate_gateway_quota_waited_total",
                "counter",
                load(&st.waited),
            ),
            (
                "tollgate_gateway_quota_denied_rate_total",
                "counter",
                load(&st.denied_rate),
            ),
            (
                "tollgate_gateway_quota_denied_quota_total",
                "counter",
                load(&st.denied_quota),
            ),
            (
                "tollgate_gateway_quota_denied_store_total",
                "counter",
                load(&st.denied_store),
            ),
            (
                "tollgate_gateway_quota_unbacked_units_total",
                "counter",
                unbacked,
            ),
            (
                "tollgate_gateway_lease_refresh_total",
                "counter",
                load(&st.refresh_ok),
            ),
            (
                "tollgate_gateway_lease_refresh_failed_total",
                "counter",
                load(&st.refresh_failed),
            ),
            (
                "tollgate_gateway_lease_refresh_last_ms",
                "gauge",
                load(&st.last_refresh_ms),
            ),
            (
                "tollgate_gateway_usage_queued",
                "gauge",
                self.shipper.len() as u64,
            ),
            (
                "tollgate_gateway_usage_shipped_total",
                "counter",
                load(&self.shipper.shipped),
            ),
            (
                "tollgate_gateway_usage_rejected_total",
                "counter",
                load(&self.shipper.rejected),
            ),
            (
                "tollgate_gateway_usage_late_total",
                "counter",
                load(&self.shipper.late),
            ),
            (
                "tollgate_gateway_usage_dropped_total",
                "counter",
                load(&self.shipper.dropped),
            ),
        ];
        for (name, kind, v) in lines {
            let _ = writeln!(o, "# TYPE {name} {kind}\n{name} {v}");
        }
    }
}
