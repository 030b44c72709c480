//! The gateway's usage journal (docs/design/ledger.md): segment files under
//! `<data-dir>/journal`, CRC-framed versioned entries. `Reserved` is written before a request goes
//! upstream; `Settled` — the usage record — before the client sees the end of the response. The
//! live segment is preallocated and memory-mapped ([`segment`]): an append is a copy into the
//! kernel's page cache, so a killed process loses nothing. A syncer thread `fdatasync`s the
//! current segment every `SYNC_EVERY` when something was written: that interval bounds what a
//! power loss can take. The shipper acknowledges settled entries by sequence number (`cursor`
//! file); segments wholly acknowledged and without open reservations are deleted. On start the
//! journal is replayed: settled entries not yet acknowledged are shipped again with their
//! original request ids, reservations without a settlement are settled as `InDoubt`.

pub mod frame;
pub mod record;
mod segment;

use frame::EntryRef;
use record::{Entry, Reserved};
use segment::Segment;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_types::RequestId;
use tollgate_types::usage::UsageRecord;

/// Group-commit interval of the syncer: the power-loss window.
pub const SYNC_EVERY: Duration = Duration::from_millis(2);
/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES: usize = 16 << 20;
const CURSOR: &str = "cursor";
/// How often at most the acknowledged position is written to the `cursor` file (by `ack` and
/// the syncer; on drop always). It may lag: a restart then ships some acknowledged records
/// again, which the store answers as duplicates (LG-1). Written per acknowledgement, its file
/// create + rename cost ~1.5 % of the gateway's CPU at 50 connections.
const CURSOR_EVERY: Duration = Duration::from_millis(100);

/// What the `cursor` file holds and when it was written.
struct CursorFile {
    on_disk: u64,
    written_at: Instant,
    /// `CURSOR_EVERY` (tests change it)
    every: Duration,
}

struct Writer {
    /// The live segment (`None` only after a failed rollover; the next append retries).
    seg: Option<Segment>,
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
    /// Bytes of damaged frames skipped, with valid frames after them (`frame::decode_all`):
    /// their entries are lost.
    pub damaged_bytes: u64,
}

#[derive(Debug, Default)]
pub struct JournalStats {
    pub appended: AtomicU64,
    pub syncs: AtomicU64,
    pub errors: AtomicU64,
    /// `Replay::damaged_bytes` of this process's start.
    pub damaged_bytes: AtomicU64,
}

pub struct Journal {
    dir: PathBuf,
    /// Held for the journal's lifetime: one gateway process per data dir.
    _lock: File,
    w: Mutex<Writer>,
    /// Size of a new segment (`SEGMENT_BYTES`; smaller in tests).
    segment_bytes: usize,
    dirty: AtomicBool,
    acked: AtomicU64,
    cursor: Mutex<CursorFile>,
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

/// Bytes of a segment's tail past its valid frames that hold anything: a torn write. The
/// zeroed, never-written end of a preallocated segment is not torn.
fn torn_len(tail: &[u8]) -> usize {
    tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// The first `len` bytes of a file (of the live segment: what was written of it).
fn read_prefix(path: &Path, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(len).read_to_end(&mut buf)?;
    Ok(buf)
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
            (
                "tollgate_gateway_journal_damaged_bytes_total",
                &self.damaged_bytes,
            ),
        ] {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(o, "# TYPE {name} counter\n{name} {v}");
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and replays it.
    pub fn open(dir: &Path) -> io::Result<(Journal, Replay)> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: usize) -> io::Result<(Journal, Replay)> {
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
            let decoded = frame::decode_all(&buf);
            if decoded.damaged > 0 {
                tracing::error!(
                    segment = %path.display(),
                    bytes = decoded.damaged,
                    "journal: bytes that are no frame skipped, the entries after them kept \
                     (disk damage, or pages a power loss wrote out of order)"
                );
                replay.damaged_bytes += decoded.damaged as u64;
            }
            let valid = decoded.end;
            if valid < buf.len() {
                // the unused, zeroed end of a segment whose process was killed, or a write a
                // crash tore: cut after the last valid frame
                replay.torn_bytes += torn_len(&buf[valid..]) as u64;
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(valid as u64)?;
            }
            segments.insert(start, 0u64);
            for e in decoded.entries {
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
        let next_seq = max_seq.saturating_add(1);
        // a segment already named for the next entry holds no entry (a run that wrote nothing)
        match std::fs::remove_file(dir.join(segment_name(next_seq))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let seg = Self::create_segment(dir, next_seq, segment_bytes)?;
        segments.insert(next_seq, 0);
        let j = Journal {
            dir: dir.to_owned(),
            _lock: lock,
            w: Mutex::new(Writer {
                seg: Some(seg),
                next_seq,
                open,
                segments,
            }),
            segment_bytes,
            dirty: AtomicBool::new(false),
            acked: AtomicU64::new(acked),
            cursor: Mutex::new(CursorFile {
                on_disk: acked,
                written_at: Instant::now(),
                every: CURSOR_EVERY,
            }),
            stats: JournalStats {
                damaged_bytes: AtomicU64::new(replay.damaged_bytes),
                ..JournalStats::default()
            },
        };
        Ok((j, replay))
    }

    fn create_segment(dir: &Path, start: u64, bytes: usize) -> io::Result<Segment> {
        let seg = Segment::create(&dir.join(segment_name(start)), start, bytes)?;
        // the new file's directory entry must survive a power loss too
        File::open(dir)?.sync_all()?;
        Ok(seg)
    }

    /// The live segment, with room for `need` bytes: a full one is sealed and a new one
    /// started at the next sequence number.
    fn segment_for<'w>(&self, w: &'w mut Writer, need: usize) -> io::Result<&'w mut Segment> {
        if w.seg.as_ref().is_none_or(|s| s.room() < need) {
            let start = w.next_seq;
            let fresh = Self::create_segment(&self.dir, start, self.segment_bytes)?;
            w.segments.insert(start, 0);
            if let Some(full) = w.seg.replace(fresh) {
                full.seal()?;
            }
        }
        w.seg
            .as_mut()
            .ok_or_else(|| io::Error::other("journal segment missing"))
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entry`: encoded before the lock is taken, numbered (its frame's sequence
    /// number and checksum patched) and copied into the live segment under it.
    fn append(&self, entry: EntryRef<'_>) -> io::Result<u64> {
        let fail = |e: io::Error| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            e
        };
        let mut bytes = frame::encode(0, entry).map_err(fail)?;
        if bytes.len() > self.segment_bytes {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "journal entry larger than a segment",
            )));
        }
        let mut w = self.writer();
        let seq = w.next_seq;
        frame::set_seq(&mut bytes, seq);
        let seg = self.segment_for(&mut w, bytes.len()).map_err(fail)?;
        seg.append(&bytes);
        let seg = seg.start;
        w.next_seq += 1;
        match entry {
            EntryRef::Reserved(r) => {
                w.open.insert(r.request_id.clone(), seg);
                *w.segments.entry(seg).or_insert(0) += 1;
            }
            EntryRef::Settled(record) => {
                if let Some(s) = w.open.remove(&record.request_id)
                    && let Some(n) = w.segments.get_mut(&s)
                {
                    *n = n.saturating_sub(1);
                }
            }
        }
        drop(w);
        self.dirty.store(true, Ordering::Release);
        self.stats.appended.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Journals a reservation (before the upstream call).
    pub fn reserved(&self, r: &Reserved) -> io::Result<u64> {
        self.append(EntryRef::Reserved(r))
    }

    /// Journals a usage record (before the client sees the end of the response).
    pub fn settled(&self, record: &UsageRecord) -> io::Result<u64> {
        self.append(EntryRef::Settled(record))
    }

    /// `fdatasync`s the current segment if anything was written since the last sync.
    pub fn sync(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(handle) = self.writer().seg.as_ref().map(|s| s.file.clone()) else {
            return Ok(());
        };
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
        self.acked.store(seq, Ordering::Release);
        self.persist_cursor(false)?;
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

    /// Writes the acknowledged position to the `cursor` file if it moved and, unless `now`,
    /// `CURSOR_EVERY` passed since the last write.
    fn persist_cursor(&self, now: bool) -> io::Result<()> {
        let acked = self.acked.load(Ordering::Acquire);
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        if acked <= c.on_disk || (!now && c.written_at.elapsed() < c.every) {
            return Ok(());
        }
        write_atomic(&self.dir.join(CURSOR), acked.to_string().as_bytes())?;
        c.on_disk = acked;
        c.written_at = Instant::now();
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
        // the live segment is read only as far as it was written (the rest is zeros)
        let live = self.writer().seg.as_ref().map(|s| (s.start, s.used));
        let segments = segments_in(&self.dir)?;
        let mut out = Vec::new();
        for (i, (start, path)) in segments.iter().enumerate() {
            if segments.get(i + 1).is_some_and(|(next, _)| *next <= from) {
                continue; // holds only entries before `from`
            }
            let buf = match live.filter(|(s, _)| s == start) {
                Some((_, used)) => read_prefix(path, used as u64)?,
                None => read_file(path)?,
            };
            for e in frame::decode_all(&buf).entries {
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
    pub fn start_syncer(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
        every: Duration,
    ) -> std::thread::JoinHandle<()> {
        let j = self.clone();
        std::thread::spawn(move || {
            loop {
                let last = stop.load(Ordering::Acquire);
                if let Err(e) = j.sync() {
                    j.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "journal fsync failed");
                }
                if let Err(e) = j.persist_cursor(last) {
                    tracing::warn!(error = %e, "writing the journal cursor");
                }
                if last {
                    return;
                }
                std::thread::sleep(every);
            }
        })
    }
}

#[cfg(test)]
impl Journal {
    fn set_cursor_every(&self, every: Duration) {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner()).every = every;
    }

    /// What a killed process leaves: the live segment neither synced nor cut (its mapping's
    /// pages stay in the page cache); the lock is released as the kernel would.
    fn abandon(mut self) {
        // nor does it write the cursor again
        self.cursor
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .on_disk = u64::MAX;
        if let Some(seg) = self.w.get_mut().ok().and_then(|w| w.seg.take()) {
            std::mem::forget(seg);
        }
    }
}

impl Drop for Journal {
    /// Seals the live segment: synced and cut to the bytes written; writes the cursor.
    fn drop(&mut self) {
        if let Err(e) = self.persist_cursor(true) {
            tracing::warn!(error = %e, "writing the journal cursor");
        }
        let seg = self
            .w
            .get_mut()
            .map_or_else(|p| p.into_inner().seg.take(), |w| w.seg.take());
        if let Some(Err(e)) = seg.map(Segment::seal) {
            tracing::error!(error = %e, "sealing the journal's last segment");
        }
    }
}

#[cfg(test)]
mod tests;
