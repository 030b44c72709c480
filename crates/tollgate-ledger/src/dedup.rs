//! Request dedup: the outcome of every request id applied within the window, so a retried write
//! (after a timeout or a leader change) applies once and returns its original outcome. Bounded by
//! store time, pruned deterministically in `(ts, id)` order.

use crate::outcome::Outcome;
use serde::{Deserialize, Serialize};

/// How long a request id is remembered, in store time. Clients retry within seconds; a retry
/// older than this is treated as a new request (documented in docs/invariants.md).
pub const DEDUP_WINDOW_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    outcomes: imbl::OrdMap<String, (u64, Outcome)>,
    by_time: imbl::OrdSet<(u64, String)>,
}

impl Dedup {
    pub fn get(&self, id: &str) -> Option<&Outcome> {
        self.outcomes.get(id).map(|(_, o)| o)
    }

    pub fn insert(&mut self, id: &str, ts_ms: u64, outcome: Outcome) {
        if let Some((old_ts, _)) = self.outcomes.insert(id.to_owned(), (ts_ms, outcome)) {
            self.by_time.remove(&(old_ts, id.to_owned()));
        }
        self.by_time.insert((ts_ms, id.to_owned()));
    }

    /// Forgets ids recorded before `now_ms - DEDUP_WINDOW_MS`.
    pub fn prune(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(DEDUP_WINDOW_MS);
        while let Some((ts, id)) = self.by_time.get_min().cloned() {
            if ts >= cutoff {
                break;
            }
            self.by_time.remove(&(ts, id.clone()));
            self.outcomes.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_window_and_forgets_after() {
        let mut d = Dedup::default();
        d.insert("a", 1_000, Outcome::None);
        d.insert("b", 2_000 + DEDUP_WINDOW_MS, Outcome::None);
        d.prune(1_000 + DEDUP_WINDOW_MS);
        assert!(d.get("a").is_some());
        d.prune(1_001 + DEDUP_WINDOW_MS);
        assert!(d.get("a").is_none());
        assert!(d.get("b").is_some());
        assert_eq!(d.len(), 1);
    }
}
