//! A snapshot's data as openraft carries it (`RaftStateMachine::SnapshotData`): this node's own
//! snapshot is the state record from the snapshot file plus the archive it refers to; a snapshot
//! received from the leader is the transfer bytes.
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
use std::io;
use tollgate_ledger::ledger::chain_over;
use tollgate_ledger::usage::LedgerEntry;

pub enum SnapData {
    /// This node's current snapshot: the file's state record; the entries are in `archive`.
    Local {
        state: Vec<u8>,
        archive: LedgerArchive,
    },
    /// A snapshot as received from the leader (transfer layout).
    Received(Vec<u8>),
}

impl fmt::Debug for SnapData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapData::Local { state, .. } => write!(f, "Local({} state bytes)", state.len()),
            SnapData::Received(b) => write!(f, "Received({} bytes)", b.len()),
        }
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl SnapData {
    /// The transfer bytes (reads the archive: call on a blocking thread).
    pub fn into_transfer(self) -> io::Result<Vec<u8>> {
        let (state, archive) = match self {
            SnapData::Received(bytes) => return Ok(bytes),
            SnapData::Local { state, archive } => (state, archive),
        };
        let data: SmData = decode(&state)?;
        let mut out = Vec::with_capacity(8 + state.len());
        out.extend_from_slice(&(state.len() as u64).to_le_bytes());
        out.extend_from_slice(&state);
        for (_, _, record) in archive.raw_frames(data.state.ledger.len())? {
            let len = u32::try_from(record.len()).map_err(io::Error::other)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&record);
        }
        Ok(out)
    }
}

/// A received snapshot taken apart and checked: the state record and the ledger's records.
pub struct Unpacked<'a> {
    pub state_bytes: &'a [u8],
    pub data: SmData,
    /// `(first seq, count, record)` in order, chaining to `data.state.ledger`'s head.
    pub frames: Vec<(u64, u64, &'a [u8])>,
}

fn take<'a>(bytes: &mut &'a [u8], n: usize, what: &str) -> io::Result<&'a [u8]> {
    if bytes.len() < n {
        return Err(invalid(format!(
            "snapshot transfer cut short in its {what}"
        )));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

/// Parses and verifies transfer bytes: every chunk decodes, sequence numbers run `1..=len`
/// without a gap, and the chain over them ends at the state's ledger head.
pub fn unpack(mut bytes: &[u8]) -> io::Result<Unpacked<'_>> {
    let len_bytes = take(&mut bytes, 8, "state length")?;
    let state_len = u64::from_le_bytes(len_bytes.try_into().map_err(io::Error::other)?);
    let state_len = usize::try_from(state_len).map_err(io::Error::other)?;
    let state_bytes = take(&mut bytes, state_len, "state")?;
    let data: SmData = decode(state_bytes)?;
    let (mut len, mut head) = (0, [0u8; 32]);
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let n = take(&mut bytes, 4, "chunk length")?;
        let n = u32::from_le_bytes(n.try_into().map_err(io::Error::other)?) as usize;
        let chunk = take(&mut bytes, n, "ledger chunk")?;
        let entries: Vec<LedgerEntry> = decode(chunk)?;
        (len, head) = chain_over(len, head, &entries).map_err(|e| invalid(e.to_string()))?;
        if let Some(first) = entries.first() {
            frames.push((first.seq, entries.len() as u64, chunk));
        }
    }
    let ledger = &data.state.ledger;
    if (len, head) != (ledger.len(), ledger.head()) {
        return Err(invalid(format!(
            "snapshot ledger does not match its state: {len} entries sent, {} expected, or their \
             chain differs from the state's head",
            ledger.len()
        )));
    }
    Ok(Unpacked {
        state_bytes,
        data,
        frames,
    })
}
