//! OpenAI's `x-ratelimit-*` headers from the request's rate buckets: `limit`, `remaining` (what
//! this gateway holds plus what the store had left at the last refresh, capped at the limit)
//! and `reset` (time until the bucket is full again), for requests and for tokens.

use super::bucket::{Inner, Kind};
use super::plan::Applies;
use hyper::header::{HeaderName, HeaderValue};
use std::sync::MutexGuard;
use std::time::Instant;
use tollgate_types::limits::Dimension;

/// Which dimensions a header family covers.
type Family = fn(Dimension) -> bool;

#[derive(Debug, Default, Clone)]
pub struct Headers(pub Vec<(HeaderName, HeaderValue)>);

/// The tightest bucket of one header family: (limit, remaining).
fn tightest(
    applies: &[Applies],
    guards: &[MutexGuard<'_, Inner>],
    now: Instant,
    family: impl Fn(Dimension) -> bool,
) -> Option<(u64, u64)> {
    applies
        .iter()
        .zip(guards.iter())
        .filter(|(a, g)| family(a.dimension) && g.kind == Kind::Rate && !g.limit.shadow)
        .map(|(_, g)| {
            let limit = g.limit.limit;
            let remaining = g
                .local_left(now)
                .saturating_add(g.store_available)
                .min(limit.saturating_add(g.limit.burst));
            (limit, remaining)
        })
        .min_by_key(|(_, remaining)| *remaining)
}

/// `6m0s`, `1.5s`, `20ms`, like OpenAI's reset values.
pub fn format_reset(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

impl Headers {
    pub fn from_buckets(
        applies: &[Applies],
        guards: &[MutexGuard<'_, Inner>],
        now: Instant,
    ) -> Headers {
        let mut out = Vec::new();
        let families: [(&str, Family); 2] = [
            ("requests", |d| d == Dimension::RequestsPerMinute),
            ("tokens", |d| {
                matches!(
                    d,
                    Dimension::InputTokensPerMinute | Dimension::OutputTokensPerMinute
                )
            }),
        ];
        for (name, family) in families {
            let Some((limit, remaining)) = tightest(applies, guards, now, family) else {
                continue;
            };
            let reset_ms = match limit {
                0 => 0,
                l => (l.saturating_sub(remaining) * 60_000).div_ceil(l),
            };
            let values = [
                (format!("x-ratelimit-limit-{name}"), limit.to_string()),
                (
                    format!("x-ratelimit-remaining-{name}"),
                    remaining.to_string(),
                ),
                (format!("x-ratelimit-reset-{name}"), format_reset(reset_ms)),
            ];
            for (k, v) in values {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    out.push((k, v));
                }
            }
        }
        Headers(out)
    }
}

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
