//! Phase 8, log: one access line per request (target `tollgate::access`), with the phase timings
//! that also go out as `Server-Timing`.

use std::time::{Duration, Instant};
// the quota clock: admission reuses the last mark (drifts only under fault injection)
use tollgate_types::faults::mono_now;

/// Phases timed per request at most (more are not recorded).
const MARKS_MAX: usize = 8;

/// Per-phase durations of one request (no allocation until the header is rendered).
#[derive(Debug, Clone)]
pub struct Timing {
    marks: [(&'static str, Duration); MARKS_MAX],
    len: usize,
    last: Instant,
}

impl Timing {
    pub fn start() -> Timing {
        Timing {
            marks: [("", Duration::ZERO); MARKS_MAX],
            len: 0,
            last: mono_now(),
        }
    }

    /// Ends the phase `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = mono_now();
        if let Some(slot) = self.marks.get_mut(self.len) {
            *slot = (name, now - self.last);
            self.len += 1;
        }
        self.last = now;
    }

    /// When the last phase ended (the clock read the next phase can reuse).
    pub fn last(&self) -> Instant {
        self.last
    }

    /// `Server-Timing` value: `auth;dur=0.012, validate;dur=0.030, …` (milliseconds, to the
    /// microsecond).
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(24 * self.len);
        let mut digits = itoa::Buffer::new();
        for (i, (name, d)) in self.marks[..self.len].iter().enumerate() {
            let us = d.as_micros();
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(name);
            out.push_str(";dur=");
            out.push_str(digits.format(us / 1000));
            out.push('.');
            let frac = (us % 1000) as u32;
            for div in [100, 10, 1] {
                out.push(char::from_digit(frac / div % 10, 10).unwrap_or('0'));
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_lists_phases_in_milliseconds_and_keeps_the_first_eight() {
        let mut t = Timing::start();
        assert_eq!(t.header(), "");
        t.marks[0] = ("auth", Duration::from_micros(12));
        t.marks[1] = ("upstream", Duration::from_micros(61_234));
        t.len = 2;
        assert_eq!(t.header(), "auth;dur=0.012, upstream;dur=61.234");
        for _ in 0..10 {
            t.mark("more");
        }
        assert_eq!(t.len, MARKS_MAX);
        assert_eq!(t.header().matches(';').count(), MARKS_MAX);
    }
}
