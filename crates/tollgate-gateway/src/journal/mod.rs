//! The gateway's usage journal (docs/design/ledger.md): segment files under
//! `<data-dir>/journal`, CRC-framed versioned entries. `Reserved` is written (a `write(2)` to the
//! file, so a killed process loses nothing) before a request goes upstream; `Settled` — the usage
//! record — before the client sees the end of the response. A syncer thread `fdatasync`s the
//! current segment every `SYNC_EVERY` when something was written: that interval bounds what a
//! power loss can take. The shipper acknowledges settled entries by sequence number (`cursor`
//! file); segments wholly acknowledged and without open reservations are deleted. On start the
//! journal is replayed: settled entries not yet acknowledged are shipped again with their
//! original request ids, reservations without a settlement are settled as `InDoubt`.

pub mod frame;
pub mod record;

use record::{Entry, Reserved};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_types::RequestId;
use tollgate_types::usage::UsageRecord;

/// Group-commit interval of the syncer: the power-loss window.
pub const SYNC_EVERY: Duration = Duration::from_millis(2);
/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const CURSOR: &str = "cursor";

struct Writer {
    file: File,
    /// A handle on the current segment for the syncer (syncs outside the lock).
    sync_handle: Arc<File>,
    seg_start: u64,
    seg_bytes: u64,
    next_seq: u64,
    /// Open reservations: request id → the segment (start seq) holding its `Reserved`.
    open: HashMap<RequestId, u64>,
    /// Live segments (start seq) → open reservations in it.
    segments: BTreeMap<u64, u64>,
}

/// What a restart found in the journal.
#[derive(Debug, Default)]
pub struct Replay {
    /// Settled entries the store has not acknowledged: ship them again.
    pub unacked: Vec<(u64, UsageRecord)>,
    /// Reservations without a settlement.
    pub in_doubt: Vec<Reserved>,
    /// Bytes of a torn or corrupt tail cut off.
    pub torn_bytes: u64,
}

#[derive(Debug, Default)]
pub struct JournalStats {
    pub appended: AtomicU64,
    pub syncs: AtomicU64,
    pub errors: AtomicU64,
}

pub struct Journal {
    dir: PathBuf,
    /// Held for the journal's lifetime: one gateway process per data dir.
    _lock: File,
    w: Mutex<Writer>,
    dirty: AtomicBool,
    acked: AtomicU64,
    pub stats: JournalStats,
}

/// Records the store refused as late, set aside for backfill (`Journal::set_aside`).
pub const LATE_FILE: &str = "late-usage.jsonl";

fn segment_name(start: u64) -> String {
    format!("{start:020}.journal")
}

fn segments_in(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let start = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(s) = start {
            out.push((s, path));
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Replaces `path`'s content atomically (tmp + rename; the cursor may lag, never lead).
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

impl JournalStats {
    /// Prometheus text for `/metrics`.
    pub fn render(&self, o: &mut String) {
        use std::fmt::Write as _;
        for (name, v) in [
            ("tollgate_gateway_journal_appends_total", &self.appended),
            ("tollgate_gateway_journal_syncs_total", &self.syncs),
            ("tollgate_gateway_journal_errors_total", &self.errors),
        ] {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(o, "# TYPE {name} counter\n{name} {v}");
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and replays it.
    pub fn open(dir: &Path) -> io::Result<(Journal, Replay)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "another gateway process uses this data dir (its journal is locked); give each gateway its own --data-dir",
            )
        })?;
        let acked = std::fs::read_to_string(dir.join(CURSOR))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut replay = Replay::default();
        let mut reserved: BTreeMap<u64, (u64, Reserved)> = BTreeMap::new();
        let mut by_id: HashMap<RequestId, u64> = HashMap::new();
        let mut segments = BTreeMap::new();
        let mut max_seq = acked;
        for (start, path) in segments_in(dir)? {
            let buf = read_file(&path)?;
            let (entries, valid) = frame::decode_all(&buf);
            if valid < buf.len() {
                // a crash mid-write: keep the valid prefix only
                replay.torn_bytes += (buf.len() - valid) as u64;
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(valid as u64)?;
            }
            segments.insert(start, 0u64);
            for e in entries {
                max_seq = max_seq.max(e.seq());
                match e {
                    Entry::Reserved { seq, reserved: r } => {
                        by_id.insert(r.request_id.clone(), seq);
                        reserved.insert(seq, (start, r));
                    }
                    Entry::Settled { seq, record } => {
                        if let Some(rseq) = by_id.remove(&record.request_id) {
                            reserved.remove(&rseq);
                        }
                        if seq > acked {
                            replay.unacked.push((seq, record));
                        }
                    }
                }
            }
        }
        let mut open = HashMap::new();
        for (start, r) in reserved.into_values() {
            *segments.entry(start).or_insert(0) += 1;
            open.insert(r.request_id.clone(), start);
            replay.in_doubt.push(r);
        }
        let next_seq = max_seq + 1;
        let (file, sync_handle) = Self::create_segment(dir, next_seq)?;
        segments.insert(next_seq, 0);
        let j = Journal {
            dir: dir.to_owned(),
            _lock: lock,
            w: Mutex::new(Writer {
                file,
                sync_handle,
                seg_start: next_seq,
                seg_bytes: 0,
                next_seq,
                open,
                segments,
            }),
            dirty: AtomicBool::new(false),
            acked: AtomicU64::new(acked),
            stats: JournalStats::default(),
        };
        Ok((j, replay))
    }

    fn create_segment(dir: &Path, start: u64) -> io::Result<(File, Arc<File>)> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(segment_name(start)))?;
        // the new file's directory entry must survive a power loss too
        File::open(dir)?.sync_all()?;
        let handle = Arc::new(file.try_clone()?);
        Ok((file, handle))
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, make: impl FnOnce(u64) -> Entry) -> io::Result<u64> {
        let mut w = self.writer();
        if w.seg_bytes >= SEGMENT_BYTES {
            w.file.sync_data()?;
            let start = w.next_seq;
            let (file, handle) = Self::create_segment(&self.dir, start)?;
            w.file = file;
            w.sync_handle = handle;
            w.seg_start = start;
            w.seg_bytes = 0;
            w.segments.insert(start, 0);
        }
        let seq = w.next_seq;
        let entry = make(seq);
        let bytes = frame::encode(&entry);
        if let Err(e) = w.file.write_all(&bytes) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            // never leave a partial frame: a replay stops at the first broken one
            let _ = w.file.set_len(w.seg_bytes);
            return Err(e);
        }
        w.next_seq += 1;
        w.seg_bytes += bytes.len() as u64;
        let seg = w.seg_start;
        match entry {
            Entry::Reserved { reserved, .. } => {
                w.open.insert(reserved.request_id, seg);
                *w.segments.entry(seg).or_insert(0) += 1;
            }
            Entry::Settled { record, .. } => {
                if let Some(s) = w.open.remove(&record.request_id)
                    && let Some(n) = w.segments.get_mut(&s)
                {
                    *n = n.saturating_sub(1);
                }
            }
        }
        self.dirty.store(true, Ordering::Release);
        self.stats.appended.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Journals a reservation (before the upstream call).
    pub fn reserved(&self, r: Reserved) -> io::Result<u64> {
        self.append(|seq| Entry::Reserved { seq, reserved: r })
    }

    /// Journals a usage record (before the client sees the end of the response).
    pub fn settled(&self, record: &UsageRecord) -> io::Result<u64> {
        let record = record.clone();
        self.append(|seq| Entry::Settled { seq, record })
    }

    /// `fdatasync`s the current segment if anything was written since the last sync.
    pub fn sync(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let handle = self.writer().sync_handle.clone();
        handle.sync_data()?;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The store acknowledged every settled entry up to `seq`: move the cursor and delete
    /// segments that hold nothing unacknowledged or open.
    /// Sets aside a record the store refused as late (older than its dedup horizon): appended
    /// and synced to `late-usage.jsonl` in the journal dir, one JSON object per line. This is
    /// the backfill path — an operator bills or credits these by hand; they are never shipped
    /// again (the store could not tell whether they were already counted).
    pub fn set_aside(&self, r: &UsageRecord, closed_before_ms: u64) -> io::Result<()> {
        let line = serde_json::json!({"closed_before_ms": closed_before_ms, "record": r});
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LATE_FILE))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    pub fn ack(&self, seq: u64) -> io::Result<()> {
        if seq <= self.acked.load(Ordering::Acquire) {
            return Ok(());
        }
        write_atomic(&self.dir.join(CURSOR), seq.to_string().as_bytes())?;
        self.acked.store(seq, Ordering::Release);
        let mut w = self.writer();
        // from the front only: a kept segment may hold reservations whose settlements are in
        // later segments, which a replay must still see
        let starts: Vec<u64> = w.segments.keys().copied().collect();
        for pair in starts.windows(2) {
            let (start, next) = (pair[0], pair[1]);
            if next - 1 > seq || w.segments.get(&start) != Some(&0) {
                break;
            }
            w.segments.remove(&start);
            let _ = std::fs::remove_file(self.dir.join(segment_name(start)));
        }
        Ok(())
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Settled entries with `seq >= from`, at most `max` (for a shipper that fell behind and
    /// keeps its backlog on disk). Returns them and whether the end of the journal was reached.
    pub fn settled_from(
        &self,
        from: u64,
        max: usize,
    ) -> io::Result<(Vec<(u64, UsageRecord)>, bool)> {
        let mut out = Vec::new();
        for (_, path) in segments_in(&self.dir)? {
            let (entries, _) = frame::decode_all(&read_file(&path)?);
            for e in entries {
                if let Entry::Settled { seq, record } = e
                    && seq >= from
                {
                    if out.len() >= max {
                        return Ok((out, false));
                    }
                    out.push((seq, record));
                }
            }
        }
        Ok((out, true))
    }

    /// Starts the syncer thread; it stops (after a last sync) when `stop` is set.
    pub fn start_syncer(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let j = self.clone();
        std::thread::spawn(move || {
            loop {
                let last = stop.load(Ordering::Acquire);
                if let Err(e) = j.sync() {
                    j.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "journal fsync failed");
                }
                if last {
                    return;
                }
                std::thread::sleep(SYNC_EVERY);
            }
        })
    }
}

#[cfg(test)]
mod tests;
