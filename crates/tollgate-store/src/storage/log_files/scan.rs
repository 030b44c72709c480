//! Reading a log directory back at open: every segment's frames in order, checked (length,
//! checksum, index), with a torn tail cut off the last segment (DU-4) — past its header's
//! synced-to mark only: a frame failing below the mark is media damage, and refused.

use super::header::{self, HEADER_BYTES, Marking};
use super::{FRAME_HEADER, Loc, RECORD_BYTES_MAX, Segment, segment_path};
use crate::codec::decode;
use crate::storage::archive_segment::read_full;
use crate::types::{Entry, LogId};
use openraft::entry::RaftEntry;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

/// What a directory holds after the scan.
pub(super) struct Found {
    pub segments: BTreeMap<u64, Segment>,
    /// Entries after `last_purged`, contiguous.
    pub locs: VecDeque<Loc>,
    pub first: u64,
    pub last_log_id: Option<LogId>,
}

fn damaged(path: &Path, offset: u64, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "raft log segment {} is damaged at byte {offset}: {why}; the data dir is damaged: \
             resync this node (docs/runbook.md)",
            path.display()
        ),
    )
}

/// The segment files' first indices, in order.
fn segment_names(dir: &Path) -> io::Result<Vec<u64>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            names.push(first);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// One frame's record, `None` at the end of the file or at a torn or corrupt frame.
fn next_record(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut h = [0u8; FRAME_HEADER as usize];
    if !read_full(r, &mut h)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(h);
    if len == 0 || len > RECORD_BYTES_MAX {
        return Ok(None);
    }
    let mut record = vec![0u8; len as usize];
    if !read_full(r, &mut record)? {
        return Ok(None);
    }
    Ok(Some(record))
}

pub(super) fn scan(dir: &Path, last_purged: Option<u64>) -> io::Result<Found> {
    let names = segment_names(dir)?;
    let mut found = Found {
        segments: BTreeMap::new(),
        locs: VecDeque::new(),
        first: 0,
        last_log_id: None,
    };
    for (i, &name) in names.iter().enumerate() {
        let path = segment_path(dir, name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let is_last = i + 1 == names.len();
        let (start, len) = scan_segment(&path, &file, name, last_purged, is_last, &mut found)?;
        found.segments.insert(
            name,
            Segment {
                file: Arc::new(file),
                len,
                start,
            },
        );
    }
    Ok(found)
}

/// Reads one segment into `found`; returns where its frames start and its length after a torn
/// tail was cut.
fn scan_segment(
    path: &Path,
    file: &File,
    name: u64,
    last_purged: Option<u64>,
    is_last: bool,
    found: &mut Found,
) -> io::Result<(u64, u64)> {
    let size = file.metadata()?.len();
    let (start, synced_to) = match header::read(file, size)? {
        Marking::Legacy => (0, 0),
        Marking::Marked { synced_to } => (HEADER_BYTES, synced_to),
        Marking::Damaged => return Err(damaged(path, 0, "its header fails its check")),
    };
    let mut reader = BufReader::with_capacity(256 << 10, file);
    reader.seek(SeekFrom::Start(start))?;
    let mut offset = start;
    let mut want = name;
    while offset < size {
        let Some(record) = next_record(&mut reader)? else {
            break;
        };
        let Ok(entry) = decode::<Entry>(&record) else {
            break;
        };
        if entry.index() != want {
            return Err(damaged(path, offset, "entries out of order"));
        }
        let len = FRAME_HEADER + record.len() as u64;
        if last_purged.is_none_or(|p| entry.index() > p) {
            if found.locs.is_empty() {
                if last_purged.is_some_and(|p| entry.index() != p + 1) {
                    return Err(damaged(
                        path,
                        offset,
                        "entries missing after the purged ones",
                    ));
                }
                found.first = entry.index();
            } else if found.first + found.locs.len() as u64 != entry.index() {
                return Err(damaged(path, offset, "a gap in the log"));
            }
            found.locs.push_back(Loc {
                segment: name,
                offset,
                len: len as u32,
            });
            found.last_log_id = Some(entry.log_id);
        }
        offset += len;
        want += 1;
    }
    if offset < size && !is_last {
        return Err(damaged(
            path,
            offset,
            "a torn frame before the last segment",
        ));
    }
    if offset < synced_to {
        // every frame below the mark was synced before the header said so, and a truncation
        // syncs its lowered mark before it shortens the file: no crash can cut anything here,
        // and cutting would drop acknowledged entries
        return Err(damaged(
            path,
            offset,
            if offset < size {
                "a frame below the segment's synced-to mark fails its check (media damage, not \
                 an unfinished write)"
            } else {
                "the segment ends below its synced-to mark: synced entries are missing"
            },
        ));
    }
    if offset < size {
        // a frame cut by a crash: never acknowledged (appends are acknowledged after the sync
        // that covers them, and a segment is synced before the next one starts). Damage to
        // frames synced after the header last reached the disk looks the same: say how much
        // goes, so an operator can tell.
        tracing::warn!(
            segment = %path.display(),
            at = offset,
            bytes = size - offset,
            "cutting an unfinished write off the end of the raft log"
        );
        file.set_len(offset)?;
        file.sync_all()?;
    }
    Ok((start, offset))
}
