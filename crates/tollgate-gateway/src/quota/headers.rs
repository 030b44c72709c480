//! OpenAI's `x-ratelimit-*` headers from the request's rate buckets: `limit`, `remaining` (what
//! this gateway holds plus what the store had left at the last refresh, capped at the limit)
//! and `reset` (time until the bucket is full again), for requests and for tokens.

use super::bucket::{Kind, Slots};
use super::plan::Applies;
use hyper::header::{HeaderName, HeaderValue};
use std::time::Instant;
use tollgate_types::limits::Dimension;

/// One header family's numbers; rendered only when a response is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub limit: u64,
    pub remaining: u64,
}

impl View {
    /// Time until the bucket is full again (computed when rendered, off the admission path).
    pub fn reset_ms(&self) -> u64 {
        match self.limit {
            0 => 0,
            l => (l.saturating_sub(self.remaining) * 60_000).div_ceil(l),
        }
    }
}

/// The numbers behind `x-ratelimit-*` (no allocation on the admission path).
#[derive(Debug, Default, Clone, Copy)]
pub struct Headers {
    pub requests: Option<View>,
    pub tokens: Option<View>,
}

fn is_requests(d: Dimension) -> bool {
    d == Dimension::RequestsPerMinute
}

fn is_tokens(d: Dimension) -> bool {
    matches!(
        d,
        Dimension::InputTokensPerMinute | Dimension::OutputTokensPerMinute
    )
}

/// The tightest non-shadow rate bucket of one family.
fn tightest(
    applies: &[Applies],
    slots: &Slots,
    now: Instant,
    family: fn(Dimension) -> bool,
) -> Option<View> {
    applies
        .iter()
        .map(|a| (a, slots.get(a.bucket.slot)))
        .filter(|(a, g)| family(a.dimension) && g.kind == Kind::Rate && !g.limit.shadow)
        .map(|(_, g)| {
            let limit = g.limit.limit;
            let remaining = g
                .local_left(now)
                .saturating_add(g.store_available)
                .min(limit.saturating_add(g.limit.burst));
            View { limit, remaining }
        })
        .min_by_key(|v| v.remaining)
}

/// `6m0s`, `1.5s`, `20ms`, like OpenAI's reset values.
pub fn format_reset(ms: u64) -> String {
    match ms {
        0..1_000 => {
            // the usual value under a roomy limit: no formatter
            let mut out = String::with_capacity(6);
            out.push_str(itoa::Buffer::new().format(ms));
            out.push_str("ms");
            out
        }
        1_000..60_000 if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

impl Headers {
    /// From the request's buckets in their (locked) org cell.
    pub fn from_buckets(applies: &[Applies], slots: &Slots, now: Instant) -> Headers {
        Headers {
            requests: tightest(applies, slots, now, is_requests),
            tokens: tightest(applies, slots, now, is_tokens),
        }
    }

    /// The header lines (names are constants; numbers are formatted straight into values).
    pub fn pairs(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        for (names, view) in [(&REQUESTS, self.requests), (&TOKENS, self.tokens)] {
            let Some(v) = view else { continue };
            let [limit, remaining, reset] = names;
            out.push((limit.clone(), HeaderValue::from(v.limit)));
            out.push((remaining.clone(), HeaderValue::from(v.remaining)));
            if let Ok(r) = HeaderValue::try_from(format_reset(v.reset_ms())) {
                out.push((reset.clone(), r));
            }
        }
        out
    }
}

/// `x-ratelimit-{limit,remaining,reset}-requests`.
const REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
/// `x-ratelimit-{limit,remaining,reset}-tokens`.
const TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

#[cfg(test)]
mod tests {
    use super::format_reset;

    #[test]
    fn resets_read_like_openai() {
        assert_eq!(format_reset(20), "20ms");
        assert_eq!(format_reset(1_000), "1s");
        assert_eq!(format_reset(1_500), "1.5s");
        assert_eq!(format_reset(360_000), "6m0s");
    }
}
