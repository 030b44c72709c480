//! Usage records on their way to the store. Each finished request's record is written to the
//! journal (when the gateway has one) and queued here; batches travel in the next `Acquire`,
//! where the store deduplicates them by request id (LG-1) and settles them. An acknowledged
//! batch moves the journal's cursor. Memory is bounded: past `QUEUE_MAX` queued records the
//! backlog stays on disk only and is read back from the journal as the queue drains.

use crate::journal::Journal;
use crate::phases::settle::Settler;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tollgate_types::usage::{UsageAck, UsageRecord};

/// Records queued in memory at most.
pub const QUEUE_MAX: usize = 100_000;
/// Queue length that triggers a refresh before the regular interval.
const KICK_AT: usize = 256;
/// Most records per `Acquire`.
pub const BATCH_MAX: usize = 1_000;

/// Encoded size of a record (or any part) in an `Acquire` body (counted, not built).
pub fn json_len<T: serde::Serialize>(r: &T) -> usize {
    /// Counts what would be written.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, r).map_or(1024, |()| n.0 + 1)
}

#[derive(Default)]
struct Queue {
    /// (journal sequence number, or 0 without a journal; record)
    q: VecDeque<(u64, UsageRecord)>,
    /// Records from this journal sequence number on are on disk only.
    spilled_from: Option<u64>,
}

/// A batch taken for shipping: the records (moved into the `Acquire` body, not copied) and
/// their journal sequence numbers (kept with the call, to move the cursor once acknowledged).
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<UsageRecord>,
    pub seqs: Vec<u64>,
}

pub struct Shipper {
    queue: Mutex<Queue>,
    kick: Arc<Notify>,
    journal: Option<Arc<Journal>>,
    pub shipped: AtomicU64,
    pub rejected: AtomicU64,
    /// Records the store refused as late, set aside for backfill.
    pub late: AtomicU64,
    pub dropped: AtomicU64,
}

impl Shipper {
    pub fn new(kick: Arc<Notify>, journal: Option<Arc<Journal>>) -> Shipper {
        Shipper {
            queue: Mutex::new(Queue::default()),
            kick,
            journal,
            shipped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            late: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn q(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.q().q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a record already in the journal under `seq` (0: no journal).
    pub fn push(&self, seq: u64, r: UsageRecord) {
        let len = {
            let mut q = self.q();
            self.push_locked(&mut q, seq, r);
            q.q.len()
        };
        if len >= KICK_AT {
            self.kick.notify_one();
        }
    }

    fn push_locked(&self, q: &mut Queue, seq: u64, r: UsageRecord) {
        // seq 0: not in the journal, so it cannot be read back: always kept in memory
        let on_disk = self.journal.is_some() && seq > 0;
        match (on_disk, q.spilled_from, q.q.len() >= QUEUE_MAX) {
            (true, Some(_), _) => return,
            (true, None, true) => {
                q.spilled_from = Some(seq);
                return;
            }
            (false, _, true) => {
                // nowhere to fall back on: the oldest record is lost, and counted
                q.q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        q.q.push_back((seq, r));
    }

    /// Refills an empty queue from the journal when the backlog spilled to disk.
    fn refill(&self) {
        let (Some(j), Some(from)) = (&self.journal, self.q().spilled_from) else {
            return;
        };
        let read = |from: u64, max: usize| match j.settled_from(from, max) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "reading the usage backlog from the journal");
                None
            }
        };
        let Some((records, at_end)) = read(from, QUEUE_MAX / 2) else {
            return;
        };
        let next = records.last().map_or(from, |(s, _)| s + 1);
        let mut q = self.q();
        q.q.extend(records);
        if !at_end {
            q.spilled_from = Some(next);
            return;
        }
        // appends wait for the queue lock: read what came after the first read while holding
        // it, so nothing appended in between is left behind on disk only
        if let Some((tail, _)) = read(next, usize::MAX) {
            q.q.extend(tail);
            q.spilled_from = None;
        }
    }

    /// The next batch to ship, at most `max` records and `bytes` of JSON (taken out of the
    /// queue; `requeue` puts it back on failure).
    pub fn take_batch(&self, max: usize, mut bytes: usize) -> Batch {
        if self.q().q.is_empty() {
            self.refill();
        }
        let mut q = self.q();
        let mut out = Batch::default();
        while out.records.len() < max.min(BATCH_MAX) {
            let Some((_, r)) = q.q.front() else { break };
            let len = json_len(r);
            if len > bytes {
                break;
            }
            bytes -= len;
            if let Some((seq, r)) = q.q.pop_front() {
                out.seqs.push(seq);
                out.records.push(r);
            }
        }
        out
    }

    /// Puts an unshipped batch (its sequence numbers and records) back at the front, in order.
    pub fn requeue(&self, seqs: Vec<u64>, records: Vec<UsageRecord>) {
        let mut q = self.q();
        for pair in seqs.into_iter().zip(records).rev() {
            q.q.push_front(pair);
        }
    }

    /// The store answered for a shipped batch: count, and move the journal's cursor.
    pub fn acked(&self, seqs: &[u64], records: &[UsageRecord], acks: &[UsageAck]) {
        for (r, a) in records.iter().zip(acks) {
            match a {
                UsageAck::Accepted { .. } | UsageAck::Duplicate { .. } => {
                    self.shipped.fetch_add(1, Ordering::Relaxed);
                }
                UsageAck::Conflict { .. } | UsageAck::Rejected { .. } => {
                    tracing::warn!(target: "tollgate::usage", ack = ?a, "usage record not accepted");
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                }
                UsageAck::Late { closed_before_ms } => {
                    self.late.fetch_add(1, Ordering::Relaxed);
                    let kept = self
                        .journal
                        .as_ref()
                        .map(|j| j.set_aside(r, *closed_before_ms));
                    tracing::error!(
                        target: "tollgate::usage",
                        request_id = %r.request_id,
                        closed_before_ms,
                        set_aside = ?kept,
                        "usage record refused as late (older than the store's dedup horizon); set aside in journal/late-usage.jsonl for backfill"
                    );
                }
            }
        }
        if let (Some(j), Some(max)) = (&self.journal, seqs.iter().max())
            && let Err(e) = j.ack(*max)
        {
            tracing::error!(error = %e, "moving the journal cursor");
        }
    }
}

impl Settler for Shipper {
    /// Journals the record (before the client sees the end of the response), then queues it.
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
        // journal and queue under one lock: records enter the queue in journal order, so an
        // acknowledged batch never moves the cursor past a record still waiting
        let len = {
            let mut q = self.q();
            let seq = match &self.journal {
                Some(j) => match j.settled(&r) {
                    Ok(seq) => seq,
                    Err(e) => {
                        tracing::error!(error = %e, request_id = %r.request_id, "journal append failed; the record ships from memory only");
                        0
                    }
                },
                None => 0,
            };
            self.push_locked(&mut q, seq, r);
            q.q.len()
        };
        if len >= KICK_AT {
            self.kick.notify_one();
        }
    }
}
