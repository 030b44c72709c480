//! The Raft log's entries in files of their own: `<data-dir>/raft-log/<first index>.log`
//! segments, each a header (`header.rs`: the synced-to mark) and a run of frames `[record length
//! u32 LE][codec record of one Entry]` (the record carries its own CRC), indices consecutive from
//! the segment's name. An append is one
//! `pwrite` of all its frames into the last segment; a group-commit thread `fdatasync`s that
//! segment and reports the append durable (DU-1). Once a segment passes `SEGMENT_BYTES` it is
//! synced and the next one starts. Purged entries stay in their segment until no entry of the
//! log is left in it; then the file is deleted.
//!
//! Why not sled (where the log lived before): every sled flush writes its buffer through a pool
//! of I/O threads it wakes all at once (~10 context switches per commit per node, measured on
//! the 2-core benchmark machine, where the store is bound by switches, not by the disk), and
//! values above a quarter segment would go to blob files sled never fsyncs. See
//! docs/design/raft-log.md.
//!
//! DU-4: the files hold the log's entries after `last_purged` contiguously and exactly as
//! acknowledged; only the last segment may end in a torn frame (cut at open), and only past its
//! header's synced-to mark.

mod active;
mod header;
mod scan;

pub use active::ActiveFile;

use super::group_commit::count_sync;
use crate::codec::decode;
use crate::types::{Entry, LogId};
use header::HEADER_BYTES;
use openraft::entry::RaftEntry;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A segment grows to about this size before the next one starts.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The frame header: the record's length.
const FRAME_HEADER: u64 = 4;
/// Largest encoded entry this log takes: bounds a replication message (`node.rs`) and what a
/// reader allocates for a frame it has not checked yet.
pub const ENTRY_BYTES_MAX: usize = 144 << 10;
const RECORD_BYTES_MAX: u32 = ENTRY_BYTES_MAX as u32;

/// One segment file, opened for reading and writing; `len` = bytes up to the end of its last
/// whole frame, `start` = where its first frame goes (after the header; 0 in a legacy segment).
struct Segment {
    file: Arc<File>,
    len: u64,
    start: u64,
}

impl Segment {
    fn marked(&self) -> bool {
        self.start > 0
    }

    fn is_empty(&self) -> bool {
        self.len == self.start
    }
}

/// Where one entry's frame is.
#[derive(Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

pub struct LogFiles {
    dir: PathBuf,
    /// first index → segment; the last one takes appends
    segments: BTreeMap<u64, Segment>,
    /// where each entry of the log is, from index `first` on
    locs: VecDeque<Loc>,
    first: u64,
    last_log_id: Option<LogId>,
    active: ActiveFile,
    segment_bytes: u64,
}

/// The log's directory in a node's data dir.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("raft-log")
}

/// Bytes of the segment files in a node's data dir (purged entries included).
pub fn disk_bytes(data_dir: &Path) -> u64 {
    fs::read_dir(dir_of(data_dir))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub(super) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogFiles {
    /// Opens (or creates) `<data_dir>/raft-log`; entries up to `last_purged` are skipped.
    pub fn open(data_dir: &Path, last_purged: Option<u64>) -> io::Result<LogFiles> {
        LogFiles::open_sized(data_dir, last_purged, SEGMENT_BYTES)
    }

    fn open_sized(
        data_dir: &Path,
        last_purged: Option<u64>,
        segment_bytes: u64,
    ) -> io::Result<LogFiles> {
        let dir = dir_of(data_dir);
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            sync_dir(data_dir)?;
        }
        let found = scan::scan(&dir, last_purged)?;
        let mut log = LogFiles {
            dir,
            segments: found.segments,
            locs: found.locs,
            first: found.first,
            last_log_id: found.last_log_id,
            active: ActiveFile::default(),
            segment_bytes,
        };
        if let Some((&name, seg)) = log.segments.iter_mut().next_back() {
            open_last(name, seg)?;
            log.active
                .switch(name, seg.file.clone(), seg.len, seg.marked());
        }
        Ok(log)
    }

    /// The handle the group-commit thread syncs.
    pub fn active(&self) -> ActiveFile {
        self.active.clone()
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.last_log_id
    }

    /// Bytes of the frames of the entries in the log.
    pub fn bytes(&self) -> u64 {
        self.locs.iter().map(|l| u64::from(l.len)).sum()
    }

    fn last_segment(&self) -> Option<(u64, &Segment)> {
        self.segments.iter().next_back().map(|(k, s)| (*k, s))
    }

    fn next_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64)
    }

    /// Writes `records` (each entry's log id and codec record) after the last entry, with one
    /// `pwrite`; returns the frame bytes written. Not durable until the active segment is
    /// synced. The first entry must follow the last one (any index if the log is empty).
    pub fn append(&mut self, records: &[(LogId, Vec<u8>)]) -> io::Result<u64> {
        let Some((first_id, _)) = records.first() else {
            return Ok(0);
        };
        let start = first_id.index();
        if let Some(next) = self.next_index()
            && next != start
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("append at index {start}, but the log's next index is {next}"),
            ));
        }
        let mut buf = Vec::with_capacity(
            records
                .iter()
                .map(|(_, r)| r.len() + FRAME_HEADER as usize)
                .sum(),
        );
        for (i, (id, record)) in records.iter().enumerate() {
            if id.index() != start + i as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "entries of one append must have consecutive indices",
                ));
            }
            let len = u32::try_from(record.len())
                .ok()
                .filter(|&l| l > 0 && l <= RECORD_BYTES_MAX)
                .ok_or_else(|| io::Error::other("log record size out of range"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(record);
        }
        let name = self.segment_for(start, buf.len() as u64)?;
        let seg = self
            .segments
            .get_mut(&name)
            .ok_or_else(|| io::Error::other("the active log segment is missing"))?;
        seg.file.write_all_at(&buf, seg.len)?;
        let end = seg.len + buf.len() as u64;
        self.active.wrote(end);
        if self.locs.is_empty() {
            self.first = start;
        }
        let mut offset = seg.len;
        for (_, record) in records {
            let len = FRAME_HEADER as u32 + record.len() as u32;
            self.locs.push_back(Loc {
                segment: name,
                offset,
                len,
            });
            offset += u64::from(len);
        }
        debug_assert_eq!(offset, end);
        seg.len = offset;
        self.last_log_id = records.last().map(|(id, _)| *id);
        Ok(buf.len() as u64)
    }

    /// The segment `bytes` starting at index `start` go to: the last one, unless it is full or
    /// holds no entry of the log (then, or when there is none, a new one named `start`).
    fn segment_for(&mut self, start: u64, bytes: u64) -> io::Result<u64> {
        if let Some((name, seg)) = self.last_segment() {
            let in_use = !self.locs.is_empty();
            let fits = seg.is_empty() || seg.len + bytes <= self.segment_bytes;
            if (in_use && fits) || (seg.is_empty() && name == start) {
                return Ok(name);
            }
            if start <= name {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("append at index {start} behind log segment {name}"),
                ));
            }
            // everything in it must be durable before appends move on (DU-4)
            seg.file.sync_data()?;
            count_sync();
        }
        let path = segment_path(&self.dir, start);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        start_marked(&file)?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        let len = HEADER_BYTES;
        self.active.switch(start, file.clone(), len, true);
        self.segments.insert(
            start,
            Segment {
                file,
                len,
                start: len,
            },
        );
        self.drop_dead_segments();
        Ok(start)
    }

    /// Removes every entry from index `from` on; returns the frame bytes removed. Durable when
    /// it returns: later segments are deleted first, the last one first, then the cut segment is
    /// shortened and synced, so a crash half-way leaves a prefix of the log as it was (deleting
    /// the first later segment first could leave a gap, which recovery refuses).
    pub fn truncate(&mut self, from: u64, last_log_id: Option<LogId>) -> io::Result<u64> {
        let Some(next) = self.next_index() else {
            return Ok(0);
        };
        if from >= next {
            return Ok(0);
        }
        let keep = from.saturating_sub(self.first) as usize;
        let cut = self.locs[keep];
        let removed: u64 = self.locs.range(keep..).map(|l| u64::from(l.len)).sum();
        let later: Vec<u64> = self
            .segments
            .range(cut.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for name in later.into_iter().rev() {
            self.segments.remove(&name);
            fs::remove_file(segment_path(&self.dir, name))?;
        }
        sync_dir(&self.dir)?;
        let seg = self
            .segments
            .get_mut(&cut.segment)
            .ok_or_else(|| io::Error::other("a log entry's segment is missing"))?;
        self.active
            .before_cut(cut.segment, &seg.file, seg.marked(), cut.offset)?;
        if seg.marked() {
            // the lowered mark is on disk before the file is shorter than the old one
            seg.file.sync_data()?;
            count_sync();
        }
        seg.file.set_len(cut.offset)?;
        seg.file.sync_all()?;
        count_sync();
        seg.len = cut.offset;
        self.active
            .switch(cut.segment, seg.file.clone(), cut.offset, seg.marked());
        self.locs.truncate(keep);
        self.last_log_id = if self.locs.is_empty() {
            None
        } else {
            last_log_id
        };
        Ok(removed)
    }

    /// Forgets every entry up to `upto` (already recorded durably as purged by the caller) and
    /// deletes the segments left without entries; returns the frame bytes forgotten.
    pub fn purge(&mut self, upto: u64) -> u64 {
        let mut removed = 0;
        while !self.locs.is_empty() && self.first <= upto {
            if let Some(l) = self.locs.pop_front() {
                removed += u64::from(l.len);
            }
            self.first += 1;
        }
        if self.locs.is_empty() {
            self.last_log_id = None;
        }
        self.drop_dead_segments();
        removed
    }

    /// Deletes segments, other than the last, that hold no entry of the log. A failed delete
    /// leaves a file whose entries the next open skips as purged.
    fn drop_dead_segments(&mut self) {
        let Some((last, _)) = self.last_segment() else {
            return;
        };
        let live_from = self.locs.front().map_or(last, |l| l.segment);
        let dead: Vec<u64> = self.segments.range(..live_from).map(|(k, _)| *k).collect();
        for name in dead {
            self.segments.remove(&name);
            if let Err(e) = fs::remove_file(segment_path(&self.dir, name)) {
                tracing::warn!(error = %e, segment = name, "removing a purged log segment");
            }
        }
    }

    /// Where the entries `start..=end` (clipped to the log) are: read them with [`read`]
    /// outside any lock.
    pub fn locate(&self, start: u64, end: u64) -> Vec<(Arc<File>, u64, u32, u64)> {
        let Some(next) = self.next_index() else {
            return Vec::new();
        };
        let (start, end) = (start.max(self.first), end.min(next - 1));
        (start..=end)
            .filter_map(|i| {
                let l = self.locs.get((i - self.first) as usize)?;
                let seg = self.segments.get(&l.segment)?;
                Some((seg.file.clone(), l.offset, l.len, i))
            })
            .collect()
    }
}

/// Gives a new segment file its header (claiming nothing yet) and makes it durable, so a
/// segment with frames always starts with a readable header.
fn start_marked(file: &File) -> io::Result<()> {
    header::write(file, HEADER_BYTES)?;
    file.sync_data()?;
    count_sync();
    Ok(())
}

/// The last segment at open: what a crashed process left in the page cache is made durable
/// before anything builds on it, then its header claims every frame found (made durable too,
/// before anything is appended). A last segment without frames and without a header (a legacy
/// one, or one whose creation a crash cut short) starts over as a marked one.
fn open_last(name: u64, seg: &mut Segment) -> io::Result<()> {
    if !seg.marked() && seg.is_empty() {
        tracing::info!(segment = name, "giving an empty raft log segment a header");
        seg.file.set_len(0)?;
        start_marked(&seg.file)?;
        seg.start = HEADER_BYTES;
        seg.len = HEADER_BYTES;
        return Ok(());
    }
    seg.file.sync_data()?;
    count_sync();
    if seg.marked() {
        header::write(&seg.file, seg.len)?;
        seg.file.sync_data()?;
        count_sync();
    }
    Ok(())
}

/// Reads and checks the entries `locate` found.
pub fn read(found: Vec<(Arc<File>, u64, u32, u64)>) -> io::Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(found.len());
    for (file, offset, len, index) in found {
        let mut frame = vec![0u8; len as usize];
        file.read_exact_at(&mut frame, offset)?;
        let entry: Entry = decode(&frame[FRAME_HEADER as usize..])?;
        if entry.index() != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("log entry {index} read back as entry {}", entry.index()),
            ));
        }
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
