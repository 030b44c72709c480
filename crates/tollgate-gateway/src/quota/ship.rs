//! Usage records on their way to the store: each finished request's record is queued here and
//! travels in the next `Acquire` (one batch per refresh), where the store deduplicates it by
//! request id (LG-1) and settles it into the buckets it falls under. The queue is in memory and
//! bounded; the ledger work puts a durable journal under it.

use crate::phases::settle::Settler;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tollgate_types::usage::{UsageAck, UsageRecord};

/// Records queued at most; beyond, the oldest are dropped and counted.
pub const QUEUE_MAX: usize = 1_000_000;
/// Queue length that triggers a refresh before the regular interval.
const KICK_AT: usize = 256;
/// Most records per `Acquire`.
pub const BATCH_MAX: usize = 1_000;

/// Encoded size of a record in an `Acquire` body.
pub fn json_len(r: &UsageRecord) -> usize {
    serde_json::to_vec(r).map_or(1024, |v| v.len() + 1)
}

pub struct Shipper {
    queue: Mutex<VecDeque<UsageRecord>>,
    kick: Arc<Notify>,
    pub shipped: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
}

impl Shipper {
    pub fn new(kick: Arc<Notify>) -> Shipper {
        Shipper {
            queue: Mutex::new(VecDeque::new()),
            kick,
            shipped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn q(&self) -> std::sync::MutexGuard<'_, VecDeque<UsageRecord>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.q().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next batch to ship, at most `max` records and `bytes` of JSON (taken out of the
    /// queue; `requeue` puts it back on failure).
    pub fn take_batch(&self, max: usize, mut bytes: usize) -> Vec<UsageRecord> {
        let mut q = self.q();
        let mut out = Vec::new();
        while out.len() < max.min(BATCH_MAX) {
            let Some(r) = q.front() else { break };
            let len = json_len(r);
            if len > bytes {
                break;
            }
            bytes -= len;
            out.extend(q.pop_front());
        }
        out
    }

    /// Puts an unshipped batch back at the front, in order.
    pub fn requeue(&self, batch: Vec<UsageRecord>) {
        let mut q = self.q();
        for r in batch.into_iter().rev() {
            q.push_front(r);
        }
    }

    /// Counts the store's answers for a shipped batch.
    pub fn acked(&self, acks: &[UsageAck]) {
        for a in acks {
            match a {
                UsageAck::Accepted { .. } | UsageAck::Duplicate { .. } => {
                    self.shipped.fetch_add(1, Ordering::Relaxed)
                }
                UsageAck::Conflict { .. } | UsageAck::Rejected { .. } => {
                    tracing::warn!(target: "tollgate::usage", ack = ?a, "usage record not accepted");
                    self.rejected.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

impl Settler for Shipper {
    fn settle(&self, r: UsageRecord) {
        tracing::debug!(
            target: "tollgate::usage",
            request_id = %r.request_id,
            org = %r.org,
            model = %r.model,
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            cost_micros = r.cost_micros,
            status = ?r.status,
            unbacked = r.unbacked,
        );
        let len = {
            let mut q = self.q();
            if q.len() >= QUEUE_MAX {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(r);
            q.len()
        };
        if len >= KICK_AT {
            self.kick.notify_one();
        }
    }
}
