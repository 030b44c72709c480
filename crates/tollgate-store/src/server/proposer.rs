//! Proposal batching. Every write of this node goes through one queue; a task takes whatever is
//! queued when it looks — up to `BATCH_REQUESTS_MAX` requests and `BATCH_BYTES_MAX` encoded
//! bytes — and proposes it as one Raft entry (`Command::Batch`; a lone request as itself). At
//! most `IN_FLIGHT_MAX` proposals await their commit at a time; while they do, new writes
//! queue up and leave together in the next one. Under concurrency many small writes so share
//! one log entry, one replication round and one fsync; a single client sees no wait, since
//! with nothing in flight and nothing queued its write is proposed from its own task at once
//! (no hand-off to the proposing task, which on a multi-threaded runtime costs wake-ups).
//! Requests too large to share an entry (big usage batches) skip the queue and its limit.
//! Each request inside a batch is admitted, deduplicated and applied on its own, exactly as
//! with an entry of its own (`State::apply_batch`), and its caller gets its own outcome.

use crate::codec::encoded_len;
use crate::types::Raft;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tollgate_ledger::{Actor, Command, Outcome, Request};

/// Most requests in one entry.
const BATCH_REQUESTS_MAX: usize = 256;
/// Most encoded request bytes in one entry (well under the log's `ENTRY_BYTES_MAX`); a request
/// larger than this goes alone.
const BATCH_BYTES_MAX: usize = 64 << 10;
/// Proposals awaiting their commit at once (each carrying a batch), besides the one a lone
/// write may make from its own task. Fewer in flight means bigger batches: 2 against 4 gave
/// +18 % unbatched writes/s at 16 clients and +16 % at 256 (3 interleaved rounds, session 9);
/// 1 measured the same as 2 here, and 2 keeps a pipeline for networks with longer round trips.
const IN_FLIGHT_MAX: usize = 2;
/// A usage batch with more records than this is a log entry's worth on its own.
const ALONE_RECORDS: usize = 16;
/// Writes waiting for the proposer; a full queue makes writers wait (back-pressure).
const QUEUE_MAX: usize = 4096;

static WRITES: AtomicU64 = AtomicU64::new(0);
static ENTRIES: AtomicU64 = AtomicU64::new(0);

/// Writes this process proposed, and the log entries that carried them (their ratio is the
/// batching the proposer achieved; shown by `tollgate cluster status`).
pub fn proposed() -> (u64, u64) {
    (
        WRITES.load(Ordering::Relaxed),
        ENTRIES.load(Ordering::Relaxed),
    )
}

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This node is not the leader (or stopped being it).
    NotLeader,
    /// Raft refused or failed the write.
    Raft(String),
}

/// The outcome and the log index of the entry that carried it.
pub type Proposed = Result<(Outcome, u64), ProposeError>;

struct Pending {
    req: Request,
    bytes: usize,
    reply: oneshot::Sender<Proposed>,
}

#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    raft: Raft,
    /// Proposals of small writes awaiting their commit (batches and the direct path).
    in_flight: Arc<AtomicUsize>,
}

/// Counts one proposal in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proposer {
    /// Starts the proposing task (on the current tokio runtime).
    pub fn start(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let in_flight = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(raft.clone(), rx, in_flight.clone()));
        Proposer {
            tx,
            raft,
            in_flight,
        }
    }

    /// Proposes `req` (alone or with others) and waits until it is applied here.
    pub async fn propose(&self, req: Request) -> Proposed {
        let bytes = encoded_size(&req);
        if bytes > BATCH_BYTES_MAX {
            // a log entry's worth on its own: proposed at once, outside the in-flight limit,
            // so large usage batches pipeline as deep as openraft lets them
            return write_alone(&self.raft, req).await;
        }
        // idle (nothing in flight, nothing queued): propose it from here, alone
        if self.tx.capacity() == self.tx.max_capacity()
            && self
                .in_flight
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let _counted = InFlight(self.in_flight.clone());
            return write_alone(&self.raft, req).await;
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending { req, bytes, reply };
        if self.tx.send(pending).await.is_err() {
            return Err(ProposeError::Raft("the proposer stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(ProposeError::Raft("the proposal was dropped".into())))
    }
}

/// A request's encoded size; requests with many records go alone without being measured.
fn encoded_size(req: &Request) -> usize {
    let records = match &req.command {
        Command::RecordUsage { records } => records.len(),
        Command::Acquire { usage, .. } => usage.len(),
        _ => 0,
    };
    if records > ALONE_RECORDS {
        return usize::MAX;
    }
    encoded_len(req).unwrap_or(usize::MAX)
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, in_flight: Arc<AtomicUsize>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut carry: Option<Pending> = None;
    loop {
        // wait for a free slot before looking: writes arriving meanwhile join the next batch
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < BATCH_REQUESTS_MAX && bytes < BATCH_BYTES_MAX {
            let Ok(next) = rx.try_recv() else { break };
            if bytes.saturating_add(next.bytes) > BATCH_BYTES_MAX {
                carry = Some(next);
                break;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        let raft = raft.clone();
        in_flight.fetch_add(1, Ordering::AcqRel);
        let counted = InFlight(in_flight.clone());
        tokio::spawn(async move {
            // a proposal that cannot commit (no quorum) gives its slot back when its callers
            // give up; they were told to retry with the same request ids (dedup, RQ-1)
            let limit = Duration::from_millis(super::RAFT_OP_TIMEOUT_MS);
            let _ = tokio::time::timeout(limit, propose_batch(raft, batch)).await;
            drop(slot);
            drop(counted);
        });
    }
}

async fn propose_batch(raft: Raft, mut batch: Vec<Pending>) {
    WRITES.fetch_add(batch.len() as u64, Ordering::Relaxed);
    ENTRIES.fetch_add(1, Ordering::Relaxed);
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let _ = p.reply.send(write(&raft, p.req).await);
        }
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<oneshot::Sender<Proposed>>) =
        batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let container = Request {
        id: format!("batch-{}", uuid::Uuid::new_v4().simple()),
        ts_ms: requests.iter().map(|r| r.ts_ms).max().unwrap_or(0),
        actor: Actor::System,
        command: Command::Batch(requests),
    };
    match write(&raft, container).await {
        Ok((Outcome::Batch(outcomes), index)) if outcomes.len() == replies.len() => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok((outcome, index)));
            }
        }
        Ok((other, _)) => {
            let why = format!("a batch was answered with {other:?}");
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Raft(why.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// One request as a log entry of its own (counted in the batching statistics).
async fn write_alone(raft: &Raft, req: Request) -> Proposed {
    WRITES.fetch_add(1, Ordering::Relaxed);
    ENTRIES.fetch_add(1, Ordering::Relaxed);
    write(raft, req).await
}

async fn write(raft: &Raft, req: Request) -> Proposed {
    match raft.client_write(req).await {
        Ok(resp) => Ok((resp.data, resp.log_id.index)),
        Err(e) if e.forward_to_leader().is_some() => Err(ProposeError::NotLeader),
        Err(e) => Err(ProposeError::Raft(e.to_string())),
    }
}
