//! The segment appends go to, shared by the log (which writes it) and the group-commit thread
//! (which syncs it), and the durable watermark: the position in the log below which every frame
//! is known to be on disk. It moves when a sync of the active segment returns (to what was
//! written before the sync started) and when the log switches segments (a segment is synced
//! before the next one starts; a truncated one is synced at its new end; at open the last
//! segment is synced). Tests cut the files at the watermark to simulate a power loss.

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
    /// Bytes of whole frames written to it.
    written: u64,
    durable: Pos,
}

impl ActiveFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        // plain data, consistent after every statement
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends go to segment `name` from now on; its `len` bytes are durable.
    pub(super) fn switch(&self, name: u64, file: Arc<File>, len: u64) {
        let mut s = self.lock();
        s.file = Some((name, file));
        s.written = len;
        s.durable = (name, len);
    }

    /// Frames up to byte `len` of the active segment are written.
    pub(super) fn wrote(&self, len: u64) {
        self.lock().written = len;
    }

    /// `fdatasync` of the active segment (every earlier segment was synced when the next one
    /// started): every frame written before this call is durable when it returns. Skipped when
    /// nothing was written since the watermark.
    pub fn sync(&self) -> io::Result<()> {
        let active = {
            let s = self.lock();
            match &s.file {
                Some((name, f)) if s.durable < (*name, s.written) => {
                    Some((*name, f.clone(), s.written))
                }
                _ => None,
            }
        };
        let Some((name, file, written)) = active else {
            return Ok(());
        };
        file.sync_data()?;
        count_sync();
        let mut s = self.lock();
        // unless the log switched segments meanwhile: the switch set the watermark
        let same = s
            .file
            .as_ref()
            .is_some_and(|(n, f)| *n == name && Arc::ptr_eq(f, &file));
        if same && s.durable.1 < written {
            s.durable = (name, written);
        }
        Ok(())
    }

    /// The durable watermark.
    #[cfg(test)]
    pub fn durable(&self) -> Pos {
        self.lock().durable
    }
}
