//! The segment appends go to, shared by the log (which writes it) and the group-commit thread
//! (which syncs it), and the durable watermark: the position in the log below which every frame
//! is known to be on disk. It moves when a sync of the active segment returns (to what was
//! written before the sync started) and when the log switches segments (a segment is synced
//! before the next one starts; a truncated one is synced at its new end; at open the last
//! segment is synced). Tests cut the files at the watermark to simulate a power loss.
//!
//! A marked segment's header (`header.rs`) carries the watermark to disk: each sync writes the
//! watermark as it stands into the header before the `fdatasync` (so the header never claims
//! more than was durable when it was written), and a truncation lowers it before it cuts.

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
        let Some(covers) = self.begin()? else {
            return Ok(());
        };
        covers.file.sync_data()?;
        count_sync();
        self.finish(&covers);
        Ok(())
    }

    /// What a sync starting now covers; `None` when nothing was written since the watermark.
    /// A marked segment's header is set to the watermark first, under the lock (so a
    /// truncation's lowering is never overwritten by an older claim), and the sync makes it
    /// durable along with the frames.
    pub(super) fn begin(&self) -> io::Result<Option<Covers>> {
        let s = self.lock();
        let covers = match &s.file {
            Some((name, f)) if s.durable < (*name, s.written) => Covers {
                name: *name,
                file: f.clone(),
                written: s.written,
                switches: s.switches,
            },
            _ => return Ok(None),
        };
        if s.marked {
            header::write(&covers.file, s.durable.1)?;
        }
        Ok(Some(covers))
    }

    /// Segment `name` (`file`) is about to be cut at `offset`: its header must not claim
    /// anything past the cut, else a frame appended after the cut and torn by a crash would read
    /// as damage below the claim. The claim is lowered now (the truncation's own sync makes it
    /// durable) and the watermark with it; counted as a switch, so a sync in flight cannot
    /// raise the watermark past the cut again before the truncation's `switch`.
    pub(super) fn before_cut(
        &self,
        name: u64,
        file: &File,
        marked: bool,
        offset: u64,
    ) -> io::Result<()> {
        let mut s = self.lock();
        s.switches += 1;
        let active = matches!(&s.file, Some((n, _)) if *n == name);
        // an earlier segment was synced whole when the next one started
        let claim = if active {
            s.durable.1.min(offset)
        } else {
            offset
        };
        if active {
            s.durable = (name, claim);
        }
        if marked {
            header::write(file, claim)?;
        }
        Ok(())
    }

    /// The sync that `covers` describes returned: the watermark moves to what was written when
    /// it began — unless the log switched segments or truncated meanwhile (the switch set the
    /// watermark, and a truncation may have cut below `written`: frames written after it, at
    /// lower offsets, were not covered).
    pub(super) fn finish(&self, covers: &Covers) {
        let mut s = self.lock();
        if s.switches == covers.switches && s.durable.1 < covers.written {
            s.durable = (covers.name, covers.written);
        }
    }

    /// The durable watermark.
    #[cfg(test)]
    pub fn durable(&self) -> Pos {
        self.lock().durable
    }
}
