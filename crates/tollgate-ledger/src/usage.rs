//! The usage ledger: one apply per batch checks the dedup index, appends each new record with the
//! next sequence number and settles it into every bucket it falls under (LG-1, QL-1).

use crate::lease::{Kind, bucket_period, kind};
use crate::ledger::{RecordDigest, record_digest};
use crate::outcome::{Outcome, UsageAck};
use crate::state::{State, Touched};
use serde::{Deserialize, Serialize};
use tollgate_types::RequestId;
use tollgate_types::error::ApiError;
use tollgate_types::limits::{Dimension, Limit, covering};
use tollgate_types::usage::UsageRecord;

/// Most records in one `RecordUsage`.
pub const USAGE_BATCH_MAX: usize = 1_000;

/// How long the dedup index remembers a request id, counted from the time inside the id (the
/// gateway's UUIDv7, taken when the request arrived). A record older than that is refused as
/// `Late` — never appended, so never counted twice — and its id is dropped from the index.
/// Seven days: far longer than a gateway keeps an unacknowledged record while its store is
/// reachable; a gateway cut off longer sets its late records aside for backfill.
pub const USAGE_DEDUP_RETENTION_MS: u64 = 7 * 24 * 3_600_000;

/// The time (ms since the Unix epoch) inside a UUIDv7 request id — every id a gateway assigns —
/// and `None` for any other id (those are remembered forever and never late).
pub fn id_time_ms(id: &str) -> Option<u64> {
    IdKey::parse_v7(id).map(v7_time_ms)
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn v7_time_ms(bits: u128) -> u64 {
    (bits >> 80) as u64
}

/// A request id as the dedup index keys it: a UUIDv7 in the canonical lowercase form gateways
/// mint as its 128 bits — no allocation, and the first 48 bits are its time, so the index's
/// order is time order and pruning walks it from the front — and any other id as itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IdKey {
    V7(u128),
    Other(RequestId),
}

impl IdKey {
    pub fn of(id: &RequestId) -> IdKey {
        match IdKey::parse_v7(id.as_str()) {
            Some(bits) => IdKey::V7(bits),
            None => IdKey::Other(id.clone()),
        }
    }

    /// The 128 bits of `xxxxxxxx-xxxx-7xxx-xxxx-xxxxxxxxxxxx` in lowercase hex; `None` for any
    /// other text (so the mapping is one-to-one: no two ids share a key). Runs at least twice
    /// per record an apply appends (the record, then the LG-1 check): table lookups, no
    /// branch per digit.
    fn parse_v7(id: &str) -> Option<u128> {
        let b: &[u8; 36] = id.as_bytes().try_into().ok()?;
        if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' || b[14] != b'7' {
            return None;
        }
        let (mut bits, mut bad) = (0u128, 0u8);
        for group in [0..8, 9..13, 14..18, 19..23, 24..36] {
            for &c in &b[group] {
                let digit = HEX_DIGIT[usize::from(c)];
                bad |= digit;
                bits = (bits << 4) | u128::from(digit & 0x0f);
            }
        }
        (bad & 0xf0 == 0).then_some(bits)
    }

    /// The time inside a UUIDv7 key.
    pub fn time_ms(&self) -> Option<u64> {
        match self {
            IdKey::V7(bits) => Some(v7_time_ms(*bits)),
            IdKey::Other(_) => None,
        }
    }
}

/// A ledger entry: the record, its sequence number and the store time it was applied at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: u64,
    pub ts_ms: u64,
    pub record: UsageRecord,
}

/// What the dedup index knows about a request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageIndex {
    InLedger {
        seq: u64,
        /// The first half of the record's digest (`ledger::record_digest`): a repeat with
        /// another body is a conflict, told apart without the entry itself (which the store
        /// has moved to its archive).
        body: [u8; 16],
    },
    /// Rejected for good: a retry gets the same answer.
    Failed { reason: String },
}

/// How much of a limit's dimension a record uses.
fn usage_amount(dim: Dimension, r: &UsageRecord) -> Option<u64> {
    match dim {
        Dimension::RequestsPerMinute => Some(1),
        Dimension::InputTokensPerMinute => Some(r.prompt_tokens),
        Dimension::OutputTokensPerMinute => Some(r.completion_tokens),
        Dimension::ConcurrentRequests => None,
        Dimension::TokenBudget { .. } => Some(r.total_tokens()),
        Dimension::MoneyBudget { .. } => Some(r.cost_micros),
    }
}

fn applies_to(limit: &Limit, r: &UsageRecord) -> bool {
    limit.scope.covers(&r.org, &r.project, &r.key)
        && limit.model.as_ref().is_none_or(|m| m == &r.model)
}

impl State {
    pub(crate) fn record_usage(
        &mut self,
        records: &[UsageRecord],
        touched: &mut Touched,
    ) -> Result<Outcome, ApiError> {
        check_batch(records)?;
        self.release_expired(touched);
        let acks = records
            .iter()
            .map(|r| self.record_one(r, &[r.gateway.as_str()], touched))
            .collect();
        Ok(Outcome::Usage { acks })
    }

    /// Appends a record (deduplicated by request id) and settles it, drawing on the leases of
    /// `holders` in turn.
    pub(crate) fn record_one(
        &mut self,
        r: &UsageRecord,
        holders: &[&str],
        touched: &mut Touched,
    ) -> UsageAck {
        self.prune_usage_index();
        let digest = record_digest(r);
        let body = body_of(&digest);
        let key = IdKey::of(&r.request_id);
        match self.usage_index.get(&key) {
            Some(UsageIndex::InLedger { seq, body: known }) => {
                return if *known == body {
                    UsageAck::Duplicate { seq: *seq }
                } else {
                    UsageAck::Conflict { seq: *seq }
                };
            }
            Some(UsageIndex::Failed { reason }) => {
                return UsageAck::Rejected {
                    reason: reason.clone(),
                };
            }
            None => {}
        }
        let closed_before_ms = self.clock_ms.saturating_sub(USAGE_DEDUP_RETENTION_MS);
        if key.time_ms().is_some_and(|t| t < closed_before_ms) {
            return UsageAck::Late { closed_before_ms };
        }
        if let Err(reason) = self.check_record(r) {
            self.usage_index.insert(
                key,
                UsageIndex::Failed {
                    reason: reason.clone(),
                },
            );
            return UsageAck::Rejected { reason };
        }
        let seq = self.ledger.push(self.clock_ms, r.clone(), &digest);
        let admitted_ms = key.time_ms();
        self.usage_index
            .insert(key, UsageIndex::InLedger { seq, body });
        self.settle_record(r, admitted_ms, holders, touched);
        UsageAck::Accepted { seq }
    }

    /// Drops the ids whose time is past the retention: any record with one is refused as late,
    /// so forgetting them cannot let a duplicate in. Time-bearing keys sort first, oldest first.
    fn prune_usage_index(&mut self) {
        let closed_before = self.clock_ms.saturating_sub(USAGE_DEDUP_RETENTION_MS);
        while let Some(key) = self
            .usage_index
            .get_min()
            .map(|(k, _)| k)
            .filter(|k| k.time_ms().is_some_and(|t| t < closed_before))
            .cloned()
        {
            self.usage_index.remove(&key);
        }
    }

    fn check_record(&self, r: &UsageRecord) -> Result<(), String> {
        if !self.orgs.contains_key(&r.org) {
            return Err(format!("unknown org {}", r.org));
        }
        match self.keys.get(&r.key) {
            Some(k) if k.org == r.org && k.project == r.project => Ok(()),
            _ => Err(format!(
                "key {} does not belong to org {} project {}",
                r.key, r.org, r.project
            )),
        }
    }

    /// Settles a record into every budget bucket it falls under, drawing on the leases of
    /// `holders` in turn (`State::settle_into`). Rate tokens were withdrawn when granted and concurrency slots come back by
    /// returns, so neither settles here.
    /// `id_ms` is the time in the record's id (`IdKey::time_ms`, parsed once by the caller).
    fn settle_record(
        &mut self,
        r: &UsageRecord,
        id_ms: Option<u64>,
        holders: &[&str],
        touched: &mut Touched,
    ) {
        // the budget period the request was admitted in (its id's time, never later than the
        // store's clock), not the one it happens to arrive in after a period boundary
        let now = self.clock_ms;
        let admitted = id_ms.map_or(now, |t| t.min(now));
        let applicable: Vec<(tollgate_types::limits::LimitKey, u64, u64)> =
            covering(&self.limits, &r.org, &r.project, &r.key)
                .map(|(_, l)| l)
                .filter(|l| kind(l.dimension) == Kind::Volume && applies_to(l, r))
                .filter_map(|l| usage_amount(l.dimension, r).map(|a| (l.key(), l.limit, a)))
                .collect();
        for (key, limit, amount) in applicable {
            let bucket_id = (key.clone(), bucket_period(key.dimension, admitted));
            self.settle_into(holders, bucket_id.clone(), limit, amount);
            touched.buckets.push(bucket_id);
        }
    }
}

/// The part of a record digest the dedup index keeps.
pub(crate) fn body_of(digest: &RecordDigest) -> [u8; 16] {
    let mut body = [0u8; 16];
    body.copy_from_slice(&digest[..16]);
    body
}

/// Refuses oversized batches.
pub(crate) fn check_batch(records: &[UsageRecord]) -> Result<(), ApiError> {
    if records.len() > USAGE_BATCH_MAX {
        return Err(ApiError::invalid(
            "usage",
            format!("at most {USAGE_BATCH_MAX} usage records per batch"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> RequestId {
        RequestId::try_from(s.to_owned()).expect("valid id")
    }

    #[test]
    fn gateway_ids_key_as_their_bits_in_time_order_and_nothing_else_does() {
        let early = rid("0192f3a1-0000-7abc-8def-0123456789ab");
        let late = rid("0192f3a2-0000-7000-8000-000000000000");
        let (k1, k2) = (IdKey::of(&early), IdKey::of(&late));
        assert_eq!(k1, IdKey::V7(0x0192_f3a1_0000_7abc_8def_0123_4567_89ab));
        assert_eq!(k1.time_ms(), Some(0x0192_f3a1_0000));
        assert_eq!(id_time_ms(early.as_str()), Some(0x0192_f3a1_0000));
        assert!(k1 < k2, "ordered by the time inside");
        assert!(k2 < IdKey::of(&rid("a")), "time-bearing keys come first");
        // one-to-one: any other spelling stays itself (and carries no time)
        for other in [
            "0192F3A1-0000-7ABC-8DEF-0123456789AB",
            "0192f3a1-0000-4abc-8def-0123456789ab",
            "0192f3a1-0000-7abc-8def-0123456789a",
            "0192f3a1x0000-7abc-8def-0123456789ab",
            "0192f3a1-0000-7abc-8def-0123456789ag",
            "0192f3a1-0000-7abc-8def-01234567-9ab",
            "r1",
        ] {
            let id = rid(other);
            assert_eq!(IdKey::of(&id), IdKey::Other(id.clone()), "{other}");
            assert_eq!(id_time_ms(other), None, "{other}");
        }
        // not a request id (ids are ASCII), but `id_time_ms` takes any text
        assert_eq!(id_time_ms("0192f3a1-0000-7abc-8def-0123456789\u{e9}"), None);
    }
}
