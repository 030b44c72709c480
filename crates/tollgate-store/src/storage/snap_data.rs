//! A snapshot's data as openraft carries it (`RaftStateMachine::SnapshotData`): this node's own
//! snapshot is the state record from the snapshot file plus the archive it refers to; a snapshot
//! received from the leader is a file of transfer bytes. Neither side holds the ledger in
//! memory: the sender streams the archive's frames (`write_transfer`), the receiver writes the
//! chunks to disk as they arrive, checks the file whole (`verify`) and then copies its frames into
//! the archive (`each_chunk`), so a ledger of any size can reach a new or lagging node.
//!
//! Transfer layout: `[state length u64 LE][state: codec record of SmData]` followed by the
//! ledger's entries `1..=state.ledger.len()` as `[record length u32 LE][codec record of
//! Vec<LedgerEntry>]`, each record exactly as an archive frame stores it. The receiver checks
//! that the entries are consecutive and chain to the state's ledger head before it changes
//! anything.

use super::ledger_archive::LedgerArchive;
use super::sm_store::SmData;
use crate::codec::decode;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_ledger::ledger::chain_over;
use tollgate_ledger::usage::LedgerEntry;

/// Largest state record accepted in a transfer (the state is held in memory anyway).
const STATE_BYTES_MAX: u64 = 16 << 30;
/// Largest ledger chunk accepted (one archive frame: one apply's entries, far below).
const CHUNK_BYTES_MAX: u32 = 64 << 20;

pub enum SnapData {
    /// This node's current snapshot: the file's state record; the entries are in `archive`.
    Local {
        state: Vec<u8>,
        archive: LedgerArchive,
    },
    /// A snapshot as received from the leader: its transfer bytes, on disk.
    Received(TransferFile),
    /// What `build_snapshot` hands openraft, which keeps only the meta: the data of this node's
    /// snapshot is read back through `get_current_snapshot` when a follower needs it.
    Built,
}

impl fmt::Debug for SnapData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapData::Local { state, .. } => write!(f, "Local({} state bytes)", state.len()),
            SnapData::Received(t) => write!(f, "Received({})", t.path.display()),
            SnapData::Built => f.write_str("Built"),
        }
    }
}

/// A file of transfer bytes under a node's incoming directory, removed when dropped.
pub struct TransferFile {
    path: PathBuf,
}

static TRANSFER_SEQ: AtomicU64 = AtomicU64::new(0);

impl TransferFile {
    /// Creates a new, empty transfer file in `dir` and opens it for writing.
    pub fn create(dir: &Path) -> io::Result<(TransferFile, File)> {
        fs::create_dir_all(dir)?;
        let n = TRANSFER_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.transfer", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((TransferFile { path }, file))
    }

    /// A transfer file holding `bytes` (tests; in-process hand-overs).
    pub fn from_bytes(dir: &Path, bytes: &[u8]) -> io::Result<TransferFile> {
        let (t, mut f) = TransferFile::create(dir)?;
        f.write_all(bytes)?;
        Ok(t)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TransferFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl SnapData {
    /// Writes the transfer bytes to `out`, reading the archive frame by frame (blocking I/O:
    /// call on a blocking thread).
    pub fn write_transfer(&self, out: &mut impl Write) -> io::Result<()> {
        match self {
            SnapData::Received(t) => io::copy(&mut File::open(&t.path)?, out).map(|_| ()),
            SnapData::Built => Err(io::Error::other(
                "a built snapshot carries no data; read it through get_current_snapshot",
            )),
            SnapData::Local { state, archive } => {
                let data: SmData = decode(state)?;
                out.write_all(&(state.len() as u64).to_le_bytes())?;
                out.write_all(state)?;
                archive.each_raw_frame(data.state.ledger.len(), |_, _, record| {
                    let len = u32::try_from(record.len()).map_err(io::Error::other)?;
                    out.write_all(&len.to_le_bytes())?;
                    out.write_all(record)
                })
            }
        }
    }

    /// The transfer as a file in `dir` (a received one as it is; this node's own written out).
    pub fn into_file(self, dir: &Path) -> io::Result<TransferFile> {
        if let SnapData::Received(t) = self {
            return Ok(t);
        }
        let (t, file) = TransferFile::create(dir)?;
        let mut out = BufWriter::new(file);
        self.write_transfer(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(t)
    }
}

/// Reads transfer bytes: the state record, then the ledger chunks.
struct Transfer<R> {
    r: R,
}

impl<R: Read> Transfer<R> {
    fn exact(&mut self, n: u64, buf: &mut Vec<u8>, what: &str) -> io::Result<()> {
        buf.clear();
        (&mut self.r).take(n).read_to_end(buf)?;
        if buf.len() as u64 != n {
            return Err(invalid(format!(
                "snapshot transfer cut short in its {what}"
            )));
        }
        Ok(())
    }

    fn state(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.exact(8, &mut buf, "state length")?;
        let len = u64::from_le_bytes(buf[..8].try_into().map_err(io::Error::other)?);
        if len > STATE_BYTES_MAX {
            return Err(invalid(format!(
                "snapshot state of {len} bytes; at most {STATE_BYTES_MAX} accepted"
            )));
        }
        self.exact(len, &mut buf, "state")?;
        Ok(buf)
    }

    /// The next ledger chunk into `buf`; false at the end of the transfer.
    fn chunk(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.r.read(&mut len[got..])? {
                0 if got == 0 => return Ok(false),
                0 => {
                    return Err(invalid(
                        "snapshot transfer cut short in a chunk length".into(),
                    ));
                }
                n => got += n,
            }
        }
        let n = u32::from_le_bytes(len);
        if n > CHUNK_BYTES_MAX {
            return Err(invalid(format!(
                "snapshot ledger chunk of {n} bytes; at most {CHUNK_BYTES_MAX} accepted"
            )));
        }
        self.exact(u64::from(n), buf, "ledger chunk")?;
        Ok(true)
    }
}

fn open(path: &Path) -> io::Result<Transfer<BufReader<File>>> {
    Ok(Transfer {
        r: BufReader::with_capacity(1 << 20, File::open(path)?),
    })
}

/// A transfer file read through and found sound.
pub struct Checked {
    pub state_bytes: Vec<u8>,
    pub data: SmData,
    /// Per ledger chunk in order: `(first seq, count)`, `None` for an empty one.
    frames: Vec<Option<(u64, u64)>>,
}

/// Reads a transfer file through, holding one chunk at a time: every chunk decodes, sequence
/// numbers run `1..=len` without a gap, and the chain over them ends at the state's ledger head.
pub fn verify(path: &Path) -> io::Result<Checked> {
    let mut t = open(path)?;
    let state_bytes = t.state()?;
    let data: SmData = decode(&state_bytes)?;
    let (mut len, mut head) = (0, [0u8; 32]);
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    while t.chunk(&mut buf)? {
        let entries: Vec<LedgerEntry> = decode(&buf)?;
        (len, head) = chain_over(len, head, &entries).map_err(|e| invalid(e.to_string()))?;
        frames.push(entries.first().map(|e| (e.seq, entries.len() as u64)));
    }
    let ledger = &data.state.ledger;
    if (len, head) != (ledger.len(), ledger.head()) {
        return Err(invalid(format!(
            "snapshot ledger does not match its state: {len} entries sent, {} expected, or their \
             chain differs from the state's head",
            ledger.len()
        )));
    }
    Ok(Checked {
        state_bytes,
        data,
        frames,
    })
}

/// Hands `f` every non-empty ledger chunk of a transfer file `verify` checked, as
/// `(first seq, count, record)`, one at a time.
pub fn each_chunk(
    path: &Path,
    checked: &Checked,
    mut f: impl FnMut(u64, u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut t = open(path)?;
    t.state()?;
    let mut buf = Vec::new();
    for frame in &checked.frames {
        if !t.chunk(&mut buf)? {
            return Err(invalid("snapshot transfer changed while installed".into()));
        }
        if let Some((first, count)) = frame {
            f(*first, *count, &buf)?;
        }
    }
    Ok(())
}
