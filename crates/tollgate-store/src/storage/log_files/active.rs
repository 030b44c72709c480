//! The segment appends go to, shared by the log (which writes it) and the group-commit thread
//! (which syncs it), and the durable watermark: the position in the log below which every frame
//! is known to be on disk. It moves when a sync of the active segment returns (to what was
//! written before the sync started) and when the log switches segments (a segment is synced
//! before the next one starts; a truncated one is synced at its new end; at open the last
//! segment is synced). Tests cut the files at the watermark to simulate a power loss.
//!
//! A marked segment's header (`header.rs`) carries the watermark to disk: when a sync returns
//! and moves the watermark, the new watermark is written into the header (so the header never
//! claims more than is durable when it is written, and the next sync — or the kernel's
//! writeback — puts it on disk), and a truncation lowers it before it cuts.

use super::header;
use crate::storage::group_commit::count_sync;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A position in the log: (segment name, byte offset in it), ordered like the log.
pub type Pos = (u64, u64);

#[derive(Clone, Default)]
pub struct ActiveFile(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// The segment appends go to: its name and file.
    file: Option<(u64, Arc<File>)>,
    /// Whether it has a header to write the watermark into (segments from before headers have
    /// none).
    marked: bool,
    /// Bytes of whole frames written to it.
    written: u64,
    durable: Pos,
    /// Moved by every switch: a sync that began before one (a truncation of the same file
    /// included) must not move the watermark when it returns, since what it covered may be gone
    /// and what is written now may lie below the offset it read.
    switches: u64,
}

/// What a sync of the active segment covers, read when it begins.
pub(super) struct Covers {
    name: u64,
    file: Arc<File>,
    written: u64,
    switches: u64,
}

impl ActiveFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        // plain data, consistent after every statement
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends go to segment `name` from now on; its `len` bytes are durable.
    pub(super) fn switch(&self, name: u64, file: Arc<File>, len: u64, marked: bool) {
        let mut s = self.lock();
        s.file = Some((name, file));
        s.marked = marked;
        s.written = len;
        s.durable = (name, len);
        s.switches += 1;
    }

    /// Frames up to byte `len` of the active segment are written.
    pub(super) fn wrote(&self, len: u64) {
        self.lock().written = len;
    }

    /// `fdatasync` of the active segment (every earlier segment was synced when the next one
    /// started): every frame written before this call is durable when it returns. Skipped when
    /// nothing was written since the watermark.
    pub fn sync(&self) -> io::Result<()> {
        let Some(covers) = self.begin() else {
            return Ok(());
        };
        covers.file.sync_data()?;
        count_sync();
        self.finish(&covers)
    }

    /// What a sync starting now covers; `None` when nothing was written since the watermark.
    pub(super) fn begin(&self) -> Option<Covers> {
        let s = self.lock();
        match &s.file {
            Some((name, f)) if s.durable < (*name, s.written) => Some(Covers {
                name: *name,
                file: f.clone(),
                written: s.written,
                switches: s.switches,
            }),
            _ => None,
        }
    }

    /// Segment `name` (`file`) is about to be cut at `offset`: its header must not claim
    /// anything past the cut, else a frame appended after the cut and torn by a crash would read
    /// as damage below the claim. The claim is lowered now (the caller syncs it before it
    /// shortens the file, so no crash leaves a file ending below its mark) and the watermark
    /// with it; counted as a switch, so a sync in flight cannot raise the watermark past the cut
    /// again before the truncation's `switch`.
    pub(super) fn before_cut(
        &self,
        name: u64,
        file: &File,
        marked: bool,
        offset: u64,
    ) -> io::Result<()> {
        let mut s = self.lock();
        s.switches += 1;
        let claim = if matches!(&s.file, Some((n, _)) if *n == name) {
            s.written = s.written.min(offset);
            let claim = s.durable.1.min(offset);
            s.durable = (name, claim);
            claim
        } else {
            // an earlier segment was synced whole when the next one started
            offset
        };
        if marked {
            header::write(file, claim)?;
        }
        Ok(())
    }

    /// The sync that `covers` describes returned: the watermark moves to what was written when
    /// it began — unless the log switched segments or truncated meanwhile (the switch set the
    /// watermark, and a truncation may have cut below `written`: frames written after it, at
    /// lower offsets, were not covered). A marked segment's header takes the new watermark at
    /// once, under the lock (a truncation's lowering, which bumps `switches`, is never
    /// overwritten by an older claim): the frames this sync acknowledged are below the mark as
    /// soon as the next sync, or the kernel's writeback, puts the header on disk.
    pub(super) fn finish(&self, covers: &Covers) -> io::Result<()> {
        let mut s = self.lock();
        if s.switches == covers.switches && s.durable.1 < covers.written {
            s.durable = (covers.name, covers.written);
            if s.marked {
                header::write(&covers.file, covers.written)?;
            }
        }
        Ok(())
    }

    /// The durable watermark.
    #[cfg(test)]
    pub fn durable(&self) -> Pos {
        self.lock().durable
    }
}
