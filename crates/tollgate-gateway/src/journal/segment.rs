//! The live journal segment: a file of `SEGMENT_BYTES` allocated up front and mapped into
//! memory (`MAP_SHARED`). An append is a copy into the mapping — no system call, no file-size
//! change, no filesystem journal handle on the request path — and it is in the kernel's page
//! cache the moment the copy ends, so a killed process loses nothing (DESIGN.md §6). The syncer
//! `fdatasync`s the file, which writes back the pages dirtied through the mapping. The space is
//! allocated with `fallocate` before anything is written, so a full disk fails the segment's
//! creation (the append returns an error and the request is refused) instead of a write fault
//! killing the process. A segment is sealed — synced, unmapped and cut to its used length — when
//! the next frame does not fit or the journal closes; one a killed process left behind still
//! ends in zeros, which a replay cuts off (`Journal::open`).

use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;

pub struct Segment {
    map: MmapMut,
    /// The file, shared with the syncer (it syncs outside the writer's lock).
    pub file: Arc<File>,
    /// Sequence number of the first entry.
    pub start: u64,
    /// Bytes written.
    pub used: usize,
}

impl Segment {
    /// Creates `path` with `bytes` of allocated space and maps it.
    pub fn create(path: &Path, start: u64, bytes: usize) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let made = allocate(&file, bytes as u64).and_then(|()| map(&file));
        match made {
            Ok(map) => Ok(Segment {
                map,
                file: Arc::new(file),
                start,
                used: 0,
            }),
            Err(e) => {
                // no empty segment is left behind to confuse a replay
                drop(file);
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Room left for frames.
    pub fn room(&self) -> usize {
        self.map.len() - self.used
    }

    /// Appends one frame; the caller checked `room`.
    pub fn append(&mut self, frame: &[u8]) {
        let end = self.used + frame.len();
        self.map[self.used..end].copy_from_slice(frame);
        self.used = end;
    }

    /// Syncs what was written, unmaps, and cuts the file to its used length.
    pub fn seal(self) -> io::Result<()> {
        self.file.sync_data()?;
        drop(self.map);
        self.file.set_len(self.used as u64)?;
        self.file.sync_data()
    }
}

/// Allocates the whole segment on disk (`fallocate`); a filesystem without it gets the file
/// extended instead (its blocks are then allocated when written back).
fn allocate(file: &File, bytes: u64) -> io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    match fallocate(file, FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => file.set_len(bytes),
        Err(e) => Err(e.into()),
    }
}

#[allow(unsafe_code)]
fn map(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the mapping is only ever used as plain bytes, by this process's journal writer
    // (under its lock). The file is this segment's alone: it was created here (`create_new`), in
    // a journal directory the process holds locked (`Journal::open`), and it is never truncated
    // while mapped (`seal` unmaps first). Another process shrinking the file under us would be
    // the only way to fault, and the journal lock rules that out for Tollgate processes.
    unsafe { MmapMut::map_mut(file) }
}
