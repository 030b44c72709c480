//! Phase 8, log: one access line per request (target `tollgate::access`), with the phase timings
//! that also go out as `Server-Timing`.

use std::time::{Duration, Instant};
// the quota clock: admission reuses the last mark (drifts only under fault injection)
use tollgate_types::faults::mono_now;

/// Per-phase durations of one request.
#[derive(Debug, Default, Clone)]
pub struct Timing {
    marks: Vec<(&'static str, Duration)>,
    last: Option<Instant>,
}

impl Timing {
    pub fn start() -> Timing {
        Timing {
            marks: Vec::with_capacity(6),
            last: Some(mono_now()),
        }
    }

    /// Ends the phase `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = mono_now();
        if let Some(last) = self.last {
            self.marks.push((name, now - last));
        }
        self.last = Some(now);
    }

    /// `Server-Timing` value: `auth;dur=0.012, validate;dur=0.030, …` (milliseconds).
    /// When the last phase ended (the clock read the next phase can reuse).
    pub fn last(&self) -> Instant {
        self.last.unwrap_or_else(mono_now)
    }

    pub fn header(&self) -> String {
        self.marks
            .iter()
            .map(|(n, d)| format!("{n};dur={:.3}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub struct Access<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub org: Option<&'a str>,
    pub model: Option<&'a str>,
    pub elapsed: Duration,
}

pub fn access(a: &Access<'_>) {
    tracing::info!(
        target: "tollgate::access",
        request_id = a.request_id,
        method = a.method,
        path = a.path,
        status = a.status,
        code = a.code,
        org = a.org.unwrap_or("-"),
        model = a.model.unwrap_or("-"),
        ms = a.elapsed.as_secs_f64() * 1e3,
    );
}
