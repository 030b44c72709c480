//! The admin audit log: one record per mutation (actor, action, target, before, after), each
//! carrying the hash of the one before it (AU-1). `verify_chain` recomputes every link.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1-based position in the log.
    pub seq: u64,
    pub ts_ms: u64,
    /// `token:<id>`, `gateway:<id>` or `system`.
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON of the entity before and after (secrets redacted), `None` when absent.
    pub before: Option<String>,
    pub after: Option<String>,
    /// The request id that caused this record.
    pub request_id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields that the hash covers, in a fixed order.
pub struct AuditEntry<'a> {
    pub ts_ms: u64,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
    pub request_id: &'a str,
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn opt_field(h: &mut Sha256, v: Option<&str>) {
    match v {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            field(h, s.as_bytes());
        }
    }
}

/// SHA-256 over the previous hash and every field, each length-prefixed (no ambiguity).
pub fn record_hash(prev_hash: &str, seq: u64, e: &AuditEntry<'_>) -> String {
    let mut h = Sha256::new();
    field(&mut h, prev_hash.as_bytes());
    h.update(seq.to_be_bytes());
    h.update(e.ts_ms.to_be_bytes());
    field(&mut h, e.actor.as_bytes());
    field(&mut h, e.action.as_bytes());
    field(&mut h, e.target.as_bytes());
    opt_field(&mut h, e.before);
    opt_field(&mut h, e.after);
    field(&mut h, e.request_id.as_bytes());
    hex::encode(h.finalize())
}

/// Hex SHA-256 of arbitrary bytes (state digests compared across replicas).
pub fn bytes_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds the next record after `prev` (or the first one).
pub fn next_record(prev: Option<&AuditRecord>, e: AuditEntry<'_>) -> AuditRecord {
    let (seq, prev_hash) = match prev {
        Some(p) => (p.seq + 1, p.hash.clone()),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let hash = record_hash(&prev_hash, seq, &e);
    AuditRecord {
        seq,
        ts_ms: e.ts_ms,
        actor: e.actor.to_owned(),
        action: e.action.to_owned(),
        target: e.target.to_owned(),
        before: e.before.map(str::to_owned),
        after: e.after.map(str::to_owned),
        request_id: e.request_id.to_owned(),
        prev_hash,
        hash,
    }
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit record {seq}: expected sequence number {expected}")]
    Gap { seq: u64, expected: u64 },
    #[error("audit record {seq}: prev_hash does not match the hash of record {prev}")]
    BrokenLink { seq: u64, prev: u64 },
    #[error("audit record {seq}: its hash does not match its contents (tampered)")]
    BadHash { seq: u64 },
}

/// Verifies a contiguous run of records. `anchor` is the record just before `records[0]`
/// (`None` when the run starts at seq 1).
pub fn verify_chain<'a>(
    anchor: Option<&AuditRecord>,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<u64, ChainError> {
    let mut prev_hash = anchor.map_or(GENESIS_HASH.to_owned(), |a| a.hash.clone());
    let first = anchor.map_or(1, |a| a.seq + 1);
    let mut checked = 0u64;
    for (expected, r) in (first..).zip(records) {
        if r.seq != expected {
            return Err(ChainError::Gap {
                seq: r.seq,
                expected,
            });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink {
                seq: r.seq,
                prev: r.seq.saturating_sub(1),
            });
        }
        let e = AuditEntry {
            ts_ms: r.ts_ms,
            actor: &r.actor,
            action: &r.action,
            target: &r.target,
            before: r.before.as_deref(),
            after: r.after.as_deref(),
            request_id: &r.request_id,
        };
        if record_hash(&r.prev_hash, r.seq, &e) != r.hash {
            return Err(ChainError::BadHash { seq: r.seq });
        }
        prev_hash = r.hash.clone();
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry<'_> {
        AuditEntry {
            ts_ms: 1,
            actor: "system",
            action,
            target: "t",
            before: None,
            after: Some("{}"),
            request_id: "r",
        }
    }

    #[test]
    fn chain_verifies_and_detects_tampering() {
        let a = next_record(None, entry("a"));
        let b = next_record(Some(&a), entry("b"));
        let c = next_record(Some(&b), entry("c"));
        let chain = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(verify_chain(None, &chain), Ok(3));
        assert_eq!(verify_chain(Some(&a), &chain[1..]), Ok(2));

        let mut tampered = chain.clone();
        tampered[1].after = Some("{\"evil\":1}".into());
        assert_eq!(
            verify_chain(None, &tampered),
            Err(ChainError::BadHash { seq: 2 })
        );

        let mut dropped = chain.clone();
        dropped.remove(1);
        assert_eq!(
            verify_chain(None, &dropped),
            Err(ChainError::Gap {
                seq: 3,
                expected: 2
            })
        );

        let mut relinked = chain;
        relinked[2].prev_hash = a.hash.clone();
        assert_eq!(
            verify_chain(None, &relinked),
            Err(ChainError::BrokenLink { seq: 3, prev: 2 })
        );
    }
}
