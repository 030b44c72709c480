//! The usage ledger's entries on disk: append-only segment files under `<data-dir>/ledger/`,
//! named by the first sequence number they hold (`00000000000000000001.seg`), each a run of
//! frames of consecutive entries (`archive_segment.rs`). The state machine keeps only the
//! ledger's length and chain head (`tollgate_ledger::ledger`); after every apply the store
//! appends the new entries here with one `write(2)` — no page rewrites, no sync — so neither
//! memory nor snapshots grow with the ledger, and the Raft log's fsyncs carry none of it.
//!
//! Durability (DU-2): appends carry no sync of their own. They are derived from committed log
//! entries, so until a snapshot covers them a crash loses nothing — the log replays them, and a
//! replayed frame holds the same entries (apply is deterministic). A snapshot is written only
//! after `sync`; a full segment is synced before the next one starts. At open a torn tail (a
//! frame cut by a crash, or failing its checksum) is cut off, and a node restarting from a
//! snapshot then truncates the archive to the snapshot's ledger length (`truncate`).

use super::archive_segment::{FRAME_HEADER, Frame, Scan, header, read_record};
use crate::codec::{decode, encode};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tollgate_ledger::usage::LedgerEntry;

/// A segment grows to about this size before the next one starts.
const SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Clone)]
pub struct LedgerArchive {
    inner: Arc<Mutex<Inner>>,
    /// Where the last read stopped (segment, frame): an export pages through the ledger in
    /// order, so the next page starts there instead of scanning its segment from the start.
    hint: Arc<Mutex<Option<(u64, Frame)>>>,
}

struct Inner {
    dir: PathBuf,
    /// First seq → bytes of whole frames in that segment; the last one takes appends.
    segments: BTreeMap<u64, u64>,
    active: Option<File>,
    last_seq: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn corrupt(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl LedgerArchive {
    /// Opens (or creates) `<data_dir>/ledger`, cutting a torn tail off the last segment.
    pub fn open(data_dir: &Path) -> io::Result<LedgerArchive> {
        let dir = data_dir.join("ledger");
        fs::create_dir_all(&dir)?;
        File::open(data_dir)?.sync_all()?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.insert(first, fs::metadata(segment_path(&dir, first))?.len());
            }
        }
        let mut inner = Inner {
            dir,
            segments,
            active: None,
            last_seq: 0,
        };
        inner.recover_tail()?;
        Ok(LedgerArchive {
            inner: Arc::new(Mutex::new(inner)),
            hint: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last sequence number archived (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Appends entries that continue the archive (`first.seq == last_seq + 1`).
    pub fn append(&self, entries: &[LedgerEntry]) -> io::Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let record = encode(&entries)?;
        self.lock()
            .write_frame(first.seq, entries.len() as u64, &record)
    }

    /// Appends one frame received in a snapshot (decoded and checked by the caller).
    pub fn put_raw(&self, first: u64, count: u64, record: &[u8]) -> io::Result<()> {
        self.lock().write_frame(first, count, record)
    }

    /// Makes every append so far durable (before a snapshot that refers to them is written).
    pub fn sync(&self) -> io::Result<()> {
        let inner = self.lock();
        if let Some(f) = &inner.active {
            f.sync_data()?;
        }
        File::open(&inner.dir)?.sync_all()
    }

    /// Drops every entry after `len` (a frame straddling it is rewritten shortened).
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        let mut inner = self.lock();
        *self.hint.lock().unwrap_or_else(PoisonError::into_inner) = None;
        inner.truncate(len)
    }

    /// Empties the archive (before a snapshot from the leader refills it).
    pub fn clear(&self) -> io::Result<()> {
        self.truncate(0)
    }

    /// The segments (first seq, path, valid bytes) in order, for reads without the lock.
    fn segments(&self) -> Vec<(u64, PathBuf, u64)> {
        let inner = self.lock();
        let dir = inner.dir.clone();
        inner
            .segments
            .iter()
            .map(|(&first, &len)| (first, segment_path(&dir, first), len))
            .collect()
    }

    /// Frames in order from the segment holding `from`, each with its segment's path, until `f`
    /// returns false.
    fn each_frame(
        &self,
        from: u64,
        mut f: impl FnMut(&Path, &Frame) -> io::Result<bool>,
    ) -> io::Result<()> {
        let segments = self.segments();
        let start = segments
            .iter()
            .rposition(|(first, ..)| *first <= from)
            .unwrap_or(0);
        let hint = *self.hint.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, (seg, path, len)) in segments.iter().enumerate().skip(start) {
            let at = match hint {
                Some((s, frame)) if i == start && s == *seg && frame.first <= from => frame.offset,
                _ => 0,
            };
            let mut scan = Scan::open_at(path, at, false)?;
            while let Some(frame) = scan.next_frame()? {
                if frame.end() > *len {
                    break;
                }
                if !f(path, &frame)? {
                    *self.hint.lock().unwrap_or_else(PoisonError::into_inner) = Some((*seg, frame));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` entries after `since`, at most up to `upto`, in order.
    pub fn read(&self, since: u64, limit: usize, upto: u64) -> io::Result<Vec<LedgerEntry>> {
        let mut out = Vec::new();
        self.each_frame(since + 1, |path, frame| {
            if frame.last() <= since {
                return Ok(true);
            }
            let entries: Vec<LedgerEntry> = decode(&read_record(path, frame)?)?;
            for e in entries.into_iter().filter(|e| e.seq > since) {
                if e.seq > upto || out.len() >= limit {
                    return Ok(false);
                }
                out.push(e);
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Hands `f` the frames holding entries `1..=upto` in order as `(first seq, count, record)`,
    /// records as stored (the last one cut at `upto`), one at a time: a snapshot sent to a
    /// follower streams them, however large the ledger.
    pub fn each_raw_frame(
        &self,
        upto: u64,
        mut f: impl FnMut(u64, u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.each_frame(1, |path, frame| {
            if frame.first > upto {
                return Ok(false);
            }
            let record = read_record(path, frame)?;
            if frame.last() <= upto {
                f(frame.first, frame.count, &record)?;
            } else {
                let entries: Vec<LedgerEntry> = decode(&record)?;
                let cut: Vec<_> = entries.into_iter().filter(|e| e.seq <= upto).collect();
                f(frame.first, cut.len() as u64, &encode(&cut)?)?;
            }
            Ok(true)
        })
    }
}

impl Inner {
    fn write_frame(&mut self, first: u64, count: u64, record: &[u8]) -> io::Result<()> {
        if first != self.last_seq + 1 || count == 0 {
            return Err(corrupt(format!(
                "DU-2: ledger entries {first}.. do not continue the archive at {}",
                self.last_seq
            )));
        }
        let full = self
            .segments
            .last_key_value()
            .is_none_or(|(_, &len)| len >= SEGMENT_BYTES);
        if full || self.active.is_none() {
            self.start_segment(first)?;
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER as usize + record.len());
        frame.extend_from_slice(&header(first, count, record.len())?);
        frame.extend_from_slice(record);
        let f = self
            .active
            .as_mut()
            .ok_or_else(|| io::Error::other("no active segment"))?;
        f.write_all(&frame)?;
        if let Some((_, len)) = self.segments.iter_mut().next_back() {
            *len += frame.len() as u64;
        }
        self.last_seq = first + count - 1;
        Ok(())
    }

    /// Syncs the full segment, then starts a new one named `first` (its name made durable).
    fn start_segment(&mut self, first: u64) -> io::Result<()> {
        if let Some(f) = self.active.take() {
            f.sync_data()?;
        }
        let path = segment_path(&self.dir, first);
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.active = Some(f);
        self.segments.insert(first, 0);
        Ok(())
    }

    /// Reopens the last segment for appends, after cutting whatever follows its last whole
    /// frame; a segment left with no whole frame is removed and the one before becomes last.
    fn recover_tail(&mut self) -> io::Result<()> {
        self.active = None;
        self.last_seq = 0;
        while let Some((&first, _)) = self.segments.last_key_value() {
            let path = segment_path(&self.dir, first);
            let mut scan = Scan::open(&path, true)?;
            let mut last = None;
            while let Some(frame) = scan.next_frame()? {
                last = Some(frame);
            }
            let Some(frame) = last else {
                fs::remove_file(&path)?;
                self.segments.remove(&first);
                continue;
            };
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(frame.end())?;
            let f = OpenOptions::new().append(true).open(&path)?;
            self.segments.insert(first, frame.end());
            self.active = Some(f);
            self.last_seq = frame.last();
            break;
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        if len >= self.last_seq {
            return Ok(());
        }
        let doomed: Vec<u64> = self.segments.range(len + 1..).map(|(&k, _)| k).collect();
        for first in doomed {
            fs::remove_file(segment_path(&self.dir, first))?;
            self.segments.remove(&first);
        }
        let keep = self.cut_last_segment(len)?;
        self.recover_tail()?;
        if let Some((first, count, record)) = keep {
            self.write_frame(first, count, &record)?;
        }
        if let Some(f) = &self.active {
            f.sync_data()?;
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Cuts the last segment before its first frame past `len`; returns the entries of that
    /// frame up to `len` (to write back) when it straddles `len`.
    fn cut_last_segment(&mut self, len: u64) -> io::Result<Option<(u64, u64, Vec<u8>)>> {
        let Some((&first, _)) = self.segments.last_key_value() else {
            return Ok(None);
        };
        let path = segment_path(&self.dir, first);
        let mut scan = Scan::open(&path, true)?;
        while let Some(frame) = scan.next_frame()? {
            if frame.last() <= len {
                continue;
            }
            let record = read_record(&path, &frame)?;
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(frame.offset)?;
            if frame.first > len {
                return Ok(None);
            }
            let entries: Vec<LedgerEntry> = decode(&record)?;
            let kept: Vec<_> = entries.into_iter().filter(|e| e.seq <= len).collect();
            return Ok(Some((frame.first, kept.len() as u64, encode(&kept)?)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> LedgerEntry {
        LedgerEntry {
            seq,
            ts_ms: 1_000 + seq,
            record: tollgate_ledger::testkit::usage(&format!("r{seq}"), seq, 2 * seq),
        }
    }

    fn entries(from: u64, to: u64) -> Vec<LedgerEntry> {
        (from..=to).map(entry).collect()
    }

    fn seqs(v: &[LedgerEntry]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    fn everything(a: &LedgerArchive) -> Vec<LedgerEntry> {
        a.read(0, usize::MAX, u64::MAX).expect("read")
    }

    #[test]
    fn reads_truncates_and_ships_frames_across_frame_borders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = LedgerArchive::open(dir.path()).expect("archive");
        assert_eq!(a.last_seq(), 0);
        a.append(&entries(1, 3)).expect("append");
        a.append(&entries(4, 600)).expect("append");
        assert!(a.append(&entries(602, 603)).is_err(), "a gap is refused");
        assert_eq!(a.last_seq(), 600);
        assert_eq!(seqs(&a.read(0, 2, 600).expect("read")), [1, 2]);
        assert_eq!(seqs(&a.read(2, 3, 600).expect("read")), [3, 4, 5]);
        assert_eq!(seqs(&a.read(598, 10, 600).expect("read")), [599, 600]);
        assert_eq!(
            seqs(&a.read(5, 10, 7).expect("read")),
            [6, 7],
            "never past upto"
        );
        assert!(a.read(600, 10, 600).expect("read").is_empty());
        // a cut inside a frame keeps its head
        a.truncate(300).expect("truncate");
        assert_eq!(a.last_seq(), 300);
        assert_eq!(everything(&a), entries(1, 300));
        a.append(&entries(301, 310)).expect("append again");
        let mut shipped: Vec<LedgerEntry> = Vec::new();
        a.each_raw_frame(305, |first, count, r| {
            let got: Vec<LedgerEntry> = decode(r)?;
            assert_eq!((got[0].seq, got.len() as u64), (first, count));
            shipped.extend(got);
            Ok(())
        })
        .expect("frames");
        assert_eq!(
            shipped,
            entries(1, 305),
            "every entry up to the snapshot, in order"
        );
        // reopened: the same entries
        drop(a);
        let a = LedgerArchive::open(dir.path()).expect("reopen");
        assert_eq!(a.last_seq(), 310);
        assert_eq!(everything(&a), entries(1, 310));
        a.clear().expect("clear");
        assert_eq!(a.last_seq(), 0);
        assert!(everything(&a).is_empty());
        a.append(&entries(1, 2)).expect("starts over at 1");
    }

    #[test]
    fn a_torn_tail_is_cut_at_open_and_segments_roll_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = LedgerArchive::open(dir.path()).expect("archive");
        a.append(&entries(1, 10)).expect("append");
        a.append(&entries(11, 20)).expect("append");
        drop(a);
        // a crash in the middle of the second frame's write
        let seg = segment_path(&dir.path().join("ledger"), 1);
        let len = fs::metadata(&seg).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(len - 7)
            .expect("tear");
        let a = LedgerArchive::open(dir.path()).expect("reopen");
        assert_eq!(a.last_seq(), 10, "the torn frame is gone");
        a.append(&entries(11, 20)).expect("the log replays it");
        assert_eq!(everything(&a), entries(1, 20));

        // a full segment is closed and the next starts at the next seq
        a.lock().segments.insert(1, SEGMENT_BYTES);
        a.append(&entries(21, 25)).expect("append");
        assert!(segment_path(&dir.path().join("ledger"), 21).exists());
        drop(a);
        let a = LedgerArchive::open(dir.path()).expect("reopen");
        assert_eq!(everything(&a), entries(1, 25));
        assert_eq!(seqs(&a.read(19, 3, 25).expect("read")), [20, 21, 22]);
        a.truncate(22).expect("truncate in the second segment");
        assert_eq!(everything(&a), entries(1, 22));
        a.truncate(15).expect("truncate into the first segment");
        assert!(!segment_path(&dir.path().join("ledger"), 21).exists());
        assert_eq!(everything(&a), entries(1, 15));
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// The entries in `golden_archive_v1.hex`: two frames, entries 1–2 and 3.
    fn golden_entries() -> Vec<LedgerEntry> {
        (1..=3)
            .map(|seq| LedgerEntry {
                seq,
                ts_ms: 1_764_288_000_000 + seq,
                record: tollgate_ledger::testkit::usage(
                    &format!("0192f3a1-0000-7abc-8def-00000000000{seq}"),
                    10 * seq,
                    seq,
                ),
            })
            .collect()
    }

    /// A segment written by this version (frame layout 1, codec record format 1): it must
    /// always read back as the same entries.
    const GOLDEN_HEX: &str = include_str!("golden_archive_v1.hex");

    #[test]
    fn a_segment_captured_from_this_version_reads_back() {
        let expected = golden_entries();
        let other = tempfile::tempdir().expect("tempdir");
        let b = LedgerArchive::open(other.path()).expect("open");
        b.append(&expected[..2]).expect("append");
        b.append(&expected[2..]).expect("append");
        let written = fs::read(segment_path(&other.path().join("ledger"), 1)).expect("read");
        let hex = GOLDEN_HEX.trim();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        // this version still writes exactly those bytes
        assert_eq!(written, bytes);
        // and reads them back as the same entries
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("ledger")).expect("mkdir");
        fs::write(segment_path(&dir.path().join("ledger"), 1), &bytes).expect("write");
        let a = LedgerArchive::open(dir.path()).expect("open");
        assert_eq!(a.last_seq(), 3);
        assert_eq!(a.read(0, 10, 3).expect("read"), expected);
    }
}
