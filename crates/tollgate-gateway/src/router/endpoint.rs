//! One upstream endpoint's live state: in-flight count, peak-EWMA latency, and health (passive
//! failure counting with exponential-backoff ejection = an open circuit, a single trial request
//! when the ejection ends = half-open, `Retry-After` cooldowns).

use crate::settings::Routing;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latency a failed attempt counts as, so load moves away from a failing endpoint at once.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Decay time of the latency average.
const EWMA_TAU: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    /// Ejected (circuit open) until then; once passed, one trial request may go (half-open).
    open_until: Option<Instant>,
    ejections: u32,
    trial_inflight: bool,
    /// No requests until then (upstream `Retry-After`).
    cooldown_until: Option<Instant>,
}

#[derive(Debug)]
struct PeakEwma {
    nanos: f64,
    at: Instant,
}

/// What became of one attempt, for health accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error, timeout, 5xx or 429: counts towards ejection.
    Failure,
}

#[derive(Debug)]
pub struct EndpointState {
    /// Base URL, e.g. `http://10.0.0.7:8000/v1`.
    pub url: String,
    inflight: AtomicU32,
    ewma: Mutex<PeakEwma>,
    health: Mutex<Health>,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub ejections_total: AtomicU64,
}

impl EndpointState {
    pub fn new(url: String) -> EndpointState {
        EndpointState {
            url,
            inflight: AtomicU32::new(0),
            ewma: Mutex::new(PeakEwma {
                nanos: 0.0,
                at: Instant::now(),
            }),
            health: Mutex::new(Health::default()),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn add_inflight(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sub_inflight(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Load-aware cost for power-of-two-choices: peak-EWMA latency × (in-flight + 1).
    pub fn cost(&self) -> f64 {
        let lat = self.ewma.lock().map(|e| e.nanos).unwrap_or(0.0);
        (lat + 1_000.0) * f64::from(self.inflight() + 1)
    }

    /// Whether a request may be sent now (ignoring the concurrency cap).
    pub fn available(&self, now: Instant) -> bool {
        let Ok(h) = self.health.lock() else {
            return false;
        };
        if h.cooldown_until.is_some_and(|t| now < t) {
            return false;
        }
        match h.open_until {
            None => true,
            Some(t) => now >= t && !h.trial_inflight,
        }
    }

    /// Whether the endpoint is ejected (circuit open or half-open) or cooling down.
    pub fn ejected(&self, now: Instant) -> bool {
        self.health.lock().map_or(true, |h| {
            h.open_until.is_some() || h.cooldown_until.is_some_and(|t| now < t)
        })
    }

    /// When the endpoint becomes available again (now if it is).
    pub fn available_at(&self) -> Instant {
        let now = Instant::now();
        self.health.lock().map_or(now, |h| {
            let a = h.open_until.unwrap_or(now);
            let b = h.cooldown_until.unwrap_or(now);
            a.max(b)
        })
    }

    /// Marks the start of a request; a half-open endpoint admits only this one trial.
    pub(crate) fn begin(&self) {
        if let Ok(mut h) = self.health.lock()
            && h.open_until.is_some()
        {
            h.trial_inflight = true;
        }
        self.add_inflight();
    }

    /// Records an attempt's result and, on success, its latency.
    pub fn record(&self, outcome: Outcome, latency: Duration, cfg: &Routing) {
        match outcome {
            Outcome::Success => {
                self.successes.fetch_add(1, Ordering::Relaxed);
                self.observe_latency(latency);
                if let Ok(mut h) = self.health.lock() {
                    h.consecutive_failures = 0;
                    h.open_until = None;
                    h.ejections = 0;
                    h.trial_inflight = false;
                }
            }
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                // a fast failure must not look like a fast endpoint (the p2c black hole)
                self.observe_latency(latency.max(FAILURE_PENALTY));
                self.record_failure(cfg);
            }
        }
    }

    fn record_failure(&self, cfg: &Routing) {
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        let was_trial = h.open_until.is_some();
        h.trial_inflight = false;
        if was_trial || h.consecutive_failures >= cfg.eject_after_failures {
            h.ejections = h.ejections.saturating_add(1);
            let factor = 1u32 << (h.ejections - 1).min(16);
            let backoff = cfg.eject_base.saturating_mul(factor).min(cfg.eject_max);
            h.open_until = Some(Instant::now() + backoff);
            self.ejections_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                endpoint = %self.url,
                failures = h.consecutive_failures,
                backoff_ms = backoff.as_millis() as u64,
                "endpoint ejected"
            );
        }
    }

    /// Honours an upstream `Retry-After`: no requests to this endpoint until it passes.
    pub fn cool_down(&self, d: Duration, cfg: &Routing) {
        if let Ok(mut h) = self.health.lock() {
            h.cooldown_until = Some(Instant::now() + d.min(cfg.retry_after_max));
        }
    }

    /// An active probe succeeded: closes the circuit once its ejection time is over.
    pub fn probe_ok(&self) {
        if let Ok(mut h) = self.health.lock()
            && h.open_until.is_some_and(|t| Instant::now() >= t)
            && !h.trial_inflight
        {
            h.open_until = None;
            h.consecutive_failures = 0;
            h.ejections = 0;
        }
    }

    fn observe_latency(&self, latency: Duration) {
        let Ok(mut e) = self.ewma.lock() else {
            return;
        };
        let now = Instant::now();
        let rtt = latency.as_nanos() as f64;
        if rtt > e.nanos {
            // peak: jump up at once, decay slowly
            e.nanos = rtt;
        } else {
            let dt = now.duration_since(e.at).as_secs_f64();
            let w = (-dt / EWMA_TAU.as_secs_f64()).exp();
            e.nanos = e.nanos * w + rtt * (1.0 - w);
        }
        e.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Routing {
        Routing {
            eject_after_failures: 2,
            eject_base: Duration::from_millis(50),
            ..Routing::default()
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_trial_success_closes() {
        let e = EndpointState::new("http://x/v1".into());
        let c = cfg();
        e.record(Outcome::Failure, Duration::ZERO, &c);
        assert!(e.available(Instant::now()));
        e.record(Outcome::Failure, Duration::ZERO, &c);
        assert!(!e.available(Instant::now()));
        let later = Instant::now() + Duration::from_millis(60);
        assert!(e.available(later), "half-open after the ejection time");
        e.begin();
        assert!(!e.available(later), "only one trial while half-open");
        e.record(Outcome::Success, Duration::from_millis(1), &c);
        e.sub_inflight();
        assert!(e.available(Instant::now()));
        assert!(!e.ejected(Instant::now()));
    }

    #[test]
    fn a_failed_trial_ejects_again_for_longer() {
        let e = EndpointState::new("http://x/v1".into());
        let c = cfg();
        e.record(Outcome::Failure, Duration::ZERO, &c);
        e.record(Outcome::Failure, Duration::ZERO, &c);
        let first = e.available_at();
        e.begin();
        e.record(Outcome::Failure, Duration::ZERO, &c);
        e.sub_inflight();
        assert!(e.available_at() > first);
        assert_eq!(e.ejections_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn cost_grows_with_inflight_and_peaks_at_once() {
        let e = EndpointState::new("http://x/v1".into());
        let base = e.cost();
        e.add_inflight();
        assert!(e.cost() > base);
        e.sub_inflight();
        e.record(
            Outcome::Success,
            Duration::from_millis(100),
            &Routing::default(),
        );
        assert!(e.cost() >= 100_000_000.0);
    }
}
