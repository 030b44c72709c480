//! The tail of the Raft log kept decoded in memory. Every entry is read back soon after it is
//! appended — by the state machine to apply it, and on a leader once per follower to replicate
//! it — and reading it from the log files means a `pread` and a full decode each time. `Recent`
//! holds the last appended entries (contiguous indices, bounded in count and encoded bytes), so
//! those reads are clones. It mirrors the log files: what it holds for an index is exactly what
//! the log files hold (DU-3), because every change to them — append, truncate, purge — changes
//! it under the same `&mut LogStore` call, and a gap empties it.

use crate::types::Entry;
use openraft::entry::RaftEntry;
use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};

/// Most entries kept.
const ENTRIES_MAX: usize = 4096;
/// Most encoded bytes kept (the sum of the entries' log sizes).
const BYTES_MAX: u64 = 64 << 20;

#[derive(Default)]
struct Tail {
    /// (entry, its encoded size), indices contiguous and increasing
    entries: VecDeque<(Entry, u64)>,
    bytes: u64,
}

/// Shared by the log store and every reader cloned from it.
#[derive(Clone, Default)]
pub struct Recent(Arc<Mutex<Tail>>);

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        // the tail holds no invariant a panic could break half-way that a reader relies on
        // beyond contiguity, which every method restores before it returns
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records entries just written to the log files, in order. A gap before the first one (the
    /// tail was emptied, or entries were appended out of order) starts the tail afresh.
    pub fn appended(&self, entries: Vec<(Entry, u64)>) {
        let mut tail = self.lock();
        for (entry, size) in entries {
            let next = tail.entries.back().map(|(e, _)| e.index() + 1);
            if next.is_some_and(|n| n != entry.index()) {
                tail.entries.clear();
                tail.bytes = 0;
            }
            tail.bytes += size;
            tail.entries.push_back((entry, size));
        }
        while tail.entries.len() > ENTRIES_MAX || tail.bytes > BYTES_MAX {
            let Some((_, size)) = tail.entries.pop_front() else {
                break;
            };
            tail.bytes -= size;
        }
    }

    /// Forgets every entry at index `from` or later (the files' were truncated).
    pub fn truncated(&self, from: u64) {
        let mut tail = self.lock();
        while tail.entries.back().is_some_and(|(e, _)| e.index() >= from) {
            if let Some((_, size)) = tail.entries.pop_back() {
                tail.bytes -= size;
            }
        }
    }

    /// Forgets every entry at index `upto` or earlier (the files' were purged).
    pub fn purged(&self, upto: u64) {
        let mut tail = self.lock();
        while tail.entries.front().is_some_and(|(e, _)| e.index() <= upto) {
            if let Some((_, size)) = tail.entries.pop_front() {
                tail.bytes -= size;
            }
        }
    }

    /// The entries in `range` if the tail holds all of them; `None` sends the caller to the
    /// files (so does an open range: only the files know for sure where the log ends).
    pub fn get<R: RangeBounds<u64>>(&self, range: &R) -> Option<Vec<Entry>> {
        let tail = self.lock();
        let first = tail.entries.front()?.0.index();
        let last = tail.entries.back()?.0.index();
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.checked_sub(1)?,
            Bound::Unbounded => return None,
        };
        if start > end {
            return Some(Vec::new());
        }
        if start < first || end > last {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end - start + 1).ok()?;
        Some(
            tail.entries
                .iter()
                .skip(skip)
                .take(take)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    fn entry(index: u64) -> (Entry, u64) {
        let log_id = LogId::new(
            openraft::vote::leader_id_adv::LeaderId::new(1, 1).to_committed(),
            index,
        );
        (Entry::new_blank(log_id), 10)
    }

    fn indices(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.index()).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let r = Recent::default();
        r.appended((5..=9).map(entry).collect());
        assert_eq!(indices(r.get(&(6..8))), Some(vec![6, 7]));
        assert_eq!(indices(r.get(&(7..))), None, "open ranges go to the files");
        assert_eq!(indices(r.get(&(5..=9))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(
            indices(r.get(&(4..7))),
            None,
            "index 4 is only in the files"
        );
        assert_eq!(
            indices(r.get(&(8..=10))),
            None,
            "index 10 does not exist here"
        );
        assert_eq!(indices(r.get(&(..7))), None);
        assert_eq!(indices(r.get(&(7..7))), Some(vec![]));
    }

    #[test]
    fn follows_truncate_purge_and_gaps() {
        let r = Recent::default();
        r.appended((1..=6).map(entry).collect());
        r.truncated(5);
        assert_eq!(indices(r.get(&(1..=4))), Some(vec![1, 2, 3, 4]));
        assert_eq!(indices(r.get(&(1..=5))), None, "5 was truncated");
        r.purged(2);
        assert_eq!(indices(r.get(&(3..=4))), Some(vec![3, 4]));
        assert_eq!(indices(r.get(&(2..=4))), None);
        r.appended(vec![entry(5)]);
        assert_eq!(indices(r.get(&(3..=5))), Some(vec![3, 4, 5]));
        // a gap: only what follows it is kept
        r.appended(vec![entry(9), entry(10)]);
        assert_eq!(indices(r.get(&(9..=10))), Some(vec![9, 10]));
        assert_eq!(indices(r.get(&(5..=10))), None);
    }

    #[test]
    fn stays_bounded() {
        let r = Recent::default();
        r.appended((1..=(ENTRIES_MAX as u64 + 10)).map(entry).collect());
        let end = ENTRIES_MAX as u64 + 10;
        assert_eq!(indices(r.get(&(1..=end))), None);
        let kept = r.get(&(11..=end)).map(|v| v.len());
        assert_eq!(kept, Some(ENTRIES_MAX));
        let big = Recent::default();
        let huge = |i| (entry(i).0, BYTES_MAX / 2);
        big.appended((1..=3).map(huge).collect());
        assert_eq!(indices(big.get(&(2..=3))), Some(vec![2, 3]));
        assert_eq!(indices(big.get(&(1..=3))), None);
    }
}
