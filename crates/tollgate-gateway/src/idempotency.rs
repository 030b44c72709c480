//! `Idempotency-Key`, scoped to the caller's org: a repeat while the first is in flight gets 409
//! `idempotency_conflict`; a repeat after a completed non-streaming request gets the stored
//! response replayed (header `idempotent-replayed: true`); a repeat with a different body is a
//! conflict. Failed requests (5xx, refused) forget their key so the client may retry. Bounded in
//! count and time; oldest entries go first.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tollgate_types::OrgId;

/// Longest accepted key.
pub const KEY_BYTES_MAX: usize = 255;

#[derive(Debug, Clone)]
pub struct Stored {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Option<Stored>),
}

#[derive(Debug)]
struct Entry {
    body_hash: [u8; 32],
    state: State,
    at: Instant,
}

type Key = (OrgId, String);
/// Entries by key, and keys in insertion order (for eviction).
type Table = (HashMap<Key, Entry>, VecDeque<(Key, Instant)>);

/// What a new request with a key should do.
#[derive(Debug)]
pub enum Begin {
    /// First time: run it, then [`Idempotency::complete`] or [`Idempotency::forget`].
    Run,
    Replay(Stored),
    /// Same key in flight, different body, or a completed stream that cannot be replayed.
    Conflict(&'static str),
    /// Every slot holds an in-flight request.
    Full,
}

pub struct Idempotency {
    inner: Mutex<Table>,
    max: usize,
    ttl: Duration,
}

pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

impl Idempotency {
    pub fn new(max: usize, ttl: Duration) -> Idempotency {
        Idempotency {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            max: max.max(1),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn begin(&self, org: &OrgId, key: &str, hash: [u8; 32]) -> Begin {
        let Ok(mut g) = self.inner.lock() else {
            return Begin::Full;
        };
        let (map, order) = &mut *g;
        let now = Instant::now();
        evict(map, order, now, self.ttl, self.max);
        let k = (org.clone(), key.to_owned());
        if let Some(e) = map.get(&k) {
            if e.body_hash != hash {
                return Begin::Conflict(
                    "This Idempotency-Key was already used with a different request body.",
                );
            }
            return match &e.state {
                State::InFlight => Begin::Conflict(
                    "A request with this Idempotency-Key is still in progress; retry when it has finished.",
                ),
                State::Done(Some(s)) => Begin::Replay(s.clone()),
                State::Done(None) => Begin::Conflict(
                    "A request with this Idempotency-Key already completed and cannot be replayed (streamed or too large).",
                ),
            };
        }
        if map.len() >= self.max && !evict_oldest_done(map, order) {
            return Begin::Full;
        }
        map.insert(
            k.clone(),
            Entry {
                body_hash: hash,
                state: State::InFlight,
                at: now,
            },
        );
        order.push_back((k, now));
        Begin::Run
    }

    /// Marks the key completed; `stored` is replayed to repeats (None: repeats conflict).
    pub fn complete(&self, org: &OrgId, key: &str, stored: Option<Stored>) {
        if let Ok(mut g) = self.inner.lock()
            && let Some(e) = g.0.get_mut(&(org.clone(), key.to_owned()))
        {
            e.state = State::Done(stored);
        }
    }

    /// Forgets the key (the request failed before doing anything billable).
    pub fn forget(&self, org: &OrgId, key: &str) {
        if let Ok(mut g) = self.inner.lock() {
            g.0.remove(&(org.clone(), key.to_owned()));
        }
    }
}

/// Whether the slot in `order` still names the live entry for its key.
fn live(map: &HashMap<Key, Entry>, k: &Key, at: Instant) -> bool {
    map.get(k).is_some_and(|e| e.at == at)
}

/// At capacity with an in-flight request at the front: frees the oldest completed entry
/// behind it. Also drops queue slots of forgotten or replaced keys once they outnumber the
/// live ones, so the queue stays bounded by the table.
fn evict_oldest_done(map: &mut HashMap<Key, Entry>, order: &mut VecDeque<(Key, Instant)>) -> bool {
    if order.len() > 2 * map.len() + 16 {
        order.retain(|(k, at)| live(map, k, *at));
    }
    let victim = order
        .iter()
        .find(|(k, at)| {
            live(map, k, *at) && matches!(map.get(k), Some(e) if matches!(e.state, State::Done(_)))
        })
        .map(|(k, _)| k.clone());
    match victim {
        Some(k) => map.remove(&k).is_some(),
        None => false,
    }
}

fn evict(
    map: &mut HashMap<Key, Entry>,
    order: &mut VecDeque<(Key, Instant)>,
    now: Instant,
    ttl: Duration,
    max: usize,
) {
    while let Some((k, at)) = order.front() {
        let stale = match map.get(k) {
            None => true,
            // a re-inserted key has a newer entry: this queue slot is stale
            Some(e) if e.at != *at => true,
            Some(e) => {
                let expired = now.duration_since(e.at) > ttl;
                let over = map.len() >= max && matches!(e.state, State::Done(_));
                if expired || over {
                    map.remove(k);
                }
                expired || over
            }
        };
        if !stale {
            break;
        }
        order.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).expect("org")
    }

    #[test]
    fn in_flight_conflicts_done_replays_and_orgs_are_separate() {
        let i = Idempotency::new(10, Duration::from_secs(60));
        let h = body_hash(b"{}");
        assert!(matches!(i.begin(&org("a"), "k", h), Begin::Run));
        assert!(matches!(i.begin(&org("a"), "k", h), Begin::Conflict(_)));
        assert!(
            matches!(i.begin(&org("b"), "k", h), Begin::Run),
            "scoped per org"
        );
        i.complete(
            &org("a"),
            "k",
            Some(Stored {
                status: 200,
                body: Bytes::from_static(b"ok"),
            }),
        );
        assert!(matches!(i.begin(&org("a"), "k", h), Begin::Replay(s) if s.body == "ok"));
        assert!(matches!(
            i.begin(&org("a"), "k", body_hash(b"other")),
            Begin::Conflict(_)
        ));
        i.forget(&org("b"), "k");
        assert!(matches!(i.begin(&org("b"), "k", h), Begin::Run));
    }

    #[test]
    fn a_completed_entry_behind_an_in_flight_one_makes_room() {
        let i = Idempotency::new(2, Duration::from_secs(60));
        let h = body_hash(b"{}");
        assert!(matches!(i.begin(&org("a"), "1", h), Begin::Run));
        assert!(matches!(i.begin(&org("a"), "2", h), Begin::Run));
        i.complete(&org("a"), "2", None);
        assert!(
            matches!(i.begin(&org("a"), "3", h), Begin::Run),
            "2 evicted"
        );
        assert!(
            matches!(i.begin(&org("a"), "1", h), Begin::Conflict(_)),
            "1 still in flight"
        );
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn bounded_by_count_evicting_completed_first() {
        let i = Idempotency::new(2, Duration::from_secs(60));
        let h = body_hash(b"{}");
        assert!(matches!(i.begin(&org("a"), "1", h), Begin::Run));
        assert!(matches!(i.begin(&org("a"), "2", h), Begin::Run));
        assert!(
            matches!(i.begin(&org("a"), "3", h), Begin::Full),
            "both in flight"
        );
        i.complete(&org("a"), "1", None);
        assert!(
            matches!(i.begin(&org("a"), "3", h), Begin::Run),
            "1 evicted"
        );
        assert_eq!(i.len(), 2);
    }
}
