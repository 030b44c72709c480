//! The oracle: every request the mock answered, by request id, with the tokens it actually sent.
//! A stream cut short (drop, stall, client gone) records what was sent before it ended.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most requests remembered; the oldest are forgotten first (counted in `forgotten`).
pub const SERVED_MAX: usize = 1_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Served {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// HTTP status answered.
    pub status: u16,
    /// The response (or stream, up to `[DONE]`) was sent completely.
    pub complete: bool,
    pub stream: bool,
    /// How many times this id was served (a gateway retry, after a failure, repeats it).
    pub attempts: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub failed: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub complete: u64,
    pub incomplete: u64,
    pub forgotten: u64,
    /// How many times each request id was served (more than once means the caller retried).
    pub repeated_ids: u64,
    /// Most requests in the handler at once (for streams: until the response head is sent).
    pub inflight_max: u64,
}

/// Per request id, beyond the sums: each try as served, and the request's `user` field (a
/// caller's tag, e.g. the chaos workload's idempotency key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Detail {
    /// `[prompt_tokens, completion_tokens, complete (0/1)]` per try, in order (at most
    /// `TRIES_MAX` kept).
    pub tries: Vec<[u64; 3]>,
    pub user: Option<String>,
}

/// Tries remembered per id; longest `user` tag kept.
pub const TRIES_MAX: usize = 16;
pub const USER_CHARS_MAX: usize = 128;

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Served>,
    detail: HashMap<String, Detail>,
    order: VecDeque<String>,
    totals: Totals,
}

#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
    inflight: AtomicU64,
    inflight_max: AtomicU64,
}

/// Counts a request as in flight until dropped.
pub struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stats {
    pub fn enter(&self) -> InFlight<'_> {
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.inflight_max.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    pub fn record(&self, id: &str, s: Served) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let t = &mut g.totals;
        t.requests += 1;
        t.prompt_tokens += s.prompt_tokens;
        t.completion_tokens += s.completion_tokens;
        if s.complete {
            t.complete += 1;
        } else {
            t.incomplete += 1;
        }
        if s.status >= 400 {
            t.failed += 1;
        }
        let d = g.detail.entry(id.to_owned()).or_default();
        if d.tries.len() < TRIES_MAX {
            d.tries
                .push([s.prompt_tokens, s.completion_tokens, s.complete as u64]);
        }
        // a repeated id keeps the sum of what was served under it
        if let Some(prev) = g.by_id.get_mut(id) {
            prev.prompt_tokens += s.prompt_tokens;
            prev.completion_tokens += s.completion_tokens;
            prev.status = s.status;
            prev.complete |= s.complete;
            prev.attempts += 1;
            g.totals.repeated_ids += 1;
            return;
        }
        if g.order.len() >= SERVED_MAX
            && let Some(old) = g.order.pop_front()
        {
            g.by_id.remove(&old);
            g.detail.remove(&old);
            g.totals.forgotten += 1;
        }
        g.order.push_back(id.to_owned());
        g.by_id.insert(id.to_owned(), Served { attempts: 1, ..s });
    }

    /// Remembers the request's `user` field (before it is served).
    pub fn tag(&self, id: &str, user: &str) {
        if user.chars().count() > USER_CHARS_MAX {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            g.detail.entry(id.to_owned()).or_default().user = Some(user.to_owned());
        }
    }

    pub fn detail(&self, id: &str) -> Option<Detail> {
        self.inner.lock().ok()?.detail.get(id).cloned()
    }

    pub fn get(&self, id: &str) -> Option<Served> {
        self.inner.lock().ok()?.by_id.get(id).copied()
    }

    pub fn totals(&self) -> Totals {
        let mut t = self
            .inner
            .lock()
            .map(|g| g.totals.clone())
            .unwrap_or_default();
        t.inflight_max = self.inflight_max.load(Ordering::SeqCst);
        t
    }

    /// Every id served, in first-served order, with its sums and details.
    pub fn all(&self) -> Vec<(String, Served, Detail)> {
        let Ok(g) = self.inner.lock() else {
            return Vec::new();
        };
        g.order
            .iter()
            .filter_map(|id| {
                let s = g.by_id.get(id)?;
                let d = g.detail.get(id).cloned().unwrap_or_default();
                Some((id.clone(), *s, d))
            })
            .collect()
    }

    pub fn reset(&self) {
        if let Ok(mut g) = self.inner.lock() {
            *g = Inner::default();
        }
        self.inflight_max.store(0, Ordering::SeqCst);
    }
}
