//! The usage ledger as the state machine holds it: its length, the head of a hash chain over
//! every entry, and only the entries appended since the store last took them (`take_recent`).
//! The store moves those into its on-disk archive after every apply, so the replicated state
//! (and every snapshot of it) stays small however long the ledger grows, while the chain head
//! still commits the state digest to every entry: two replicas with equal states have equal
//! ledgers, and an archive can be checked against the head (`chain_over`).
//!
//! Hashes are SHA-256 over a fixed, documented byte layout (`record_digest`, `link`), never over
//! a serializer's output, so they stay stable across versions of serde or bincode.

use crate::usage::LedgerEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_types::usage::{UsageRecord, UsageStatus};

/// SHA-256 of a record's canonical bytes.
pub type RecordDigest = [u8; 32];
/// The chain head over entries `1..=len` (all zero for the empty ledger).
pub type ChainHead = [u8; 32];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    len: u64,
    head: ChainHead,
    /// Entries `len - recent.len() + 1 ..= len`, not yet taken by the store.
    recent: imbl::Vector<LedgerEntry>,
}

impl Ledger {
    /// The sequence number of the last entry (entries are numbered from 1).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Appends a record with the next sequence number; returns that number.
    pub fn push(&mut self, ts_ms: u64, record: UsageRecord, digest: &RecordDigest) -> u64 {
        let entry = LedgerEntry {
            seq: self.len + 1,
            ts_ms,
            record,
        };
        self.head = link(&self.head, entry.seq, entry.ts_ms, digest);
        self.len = entry.seq;
        self.recent.push_back(entry);
        self.len
    }

    /// The entries not yet taken, oldest first (all of them when nobody takes: tests, models).
    pub fn recent(&self) -> &imbl::Vector<LedgerEntry> {
        &self.recent
    }

    /// Hands the entries appended since the last call to the caller (the store's archive).
    pub fn take_recent(&mut self) -> Vec<LedgerEntry> {
        std::mem::take(&mut self.recent).into_iter().collect()
    }
}

/// SHA-256 over a record's fields in declaration order: strings as `u32 LE length ‖ bytes`,
/// numbers as `u64 LE`, the status and flags as one byte each. Equal records, equal digests.
pub fn record_digest(r: &UsageRecord) -> RecordDigest {
    let mut h = Sha256::new();
    for s in [
        r.request_id.as_str(),
        r.org.as_str(),
        r.project.as_str(),
        r.key.as_str(),
        r.model.as_str(),
        r.gateway.as_str(),
    ] {
        h.update((s.len() as u32).to_le_bytes());
        h.update(s.as_bytes());
    }
    for n in [
        r.prompt_tokens,
        r.completion_tokens,
        r.cost_micros,
        r.price_version,
        r.started_at_ms,
        r.ended_at_ms,
    ] {
        h.update(n.to_le_bytes());
    }
    let status = match r.status {
        UsageStatus::Completed => 0u8,
        UsageStatus::ClientAborted => 1,
        UsageStatus::UpstreamFailed => 2,
        UsageStatus::InDoubt => 3,
    };
    h.update([status, u8::from(r.estimated), u8::from(r.unbacked)]);
    h.finalize().into()
}

/// The next chain head: SHA-256 of `prev ‖ seq LE ‖ ts_ms LE ‖ record digest`.
pub fn link(prev: &ChainHead, seq: u64, ts_ms: u64, digest: &RecordDigest) -> ChainHead {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(ts_ms.to_le_bytes());
    h.update(digest);
    h.finalize().into()
}

/// Where a chain check stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("ledger entry {found} follows entry {after}: sequence numbers must be consecutive")]
    Gap { after: u64, found: u64 },
}

/// Extends the chain `(len, head)` over `entries`, which must continue it (seq `len + 1`, ...).
pub fn chain_over<'a>(
    mut len: u64,
    mut head: ChainHead,
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> Result<(u64, ChainHead), ChainError> {
    for e in entries {
        if e.seq != len + 1 {
            return Err(ChainError::Gap {
                after: len,
                found: e.seq,
            });
        }
        head = link(&head, e.seq, e.ts_ms, &record_digest(&e.record));
        len = e.seq;
    }
    Ok((len, head))
}
