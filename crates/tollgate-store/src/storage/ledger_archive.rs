//! The usage ledger's entries on disk: the sled tree `ledger`, each value one codec record of
//! consecutive entries (a chunk), keyed by its first sequence number (big-endian). The state
//! machine keeps only the ledger's length and chain head (`tollgate_ledger::ledger`); after every
//! apply the store moves the new entries here, so neither memory nor snapshots grow with the
//! ledger.
//!
//! Durability: chunks are written without a sync of their own. They are derived from committed
//! log entries, so until a snapshot covers them a crash loses nothing — the log replays them, and
//! a replayed chunk is byte-for-byte the one written before (apply is deterministic). A snapshot
//! is written only after the archive is synced (`sm_store`), and a node that restarts from a
//! snapshot first truncates the archive to the snapshot's ledger length (`truncate`). DU-2.

use super::durable::{Durable, ENTRY_BYTES_MAX};
use crate::codec::{decode, encode};
use std::io;
use tollgate_ledger::usage::LedgerEntry;

/// Most entries in one chunk (also bounded by `ENTRY_BYTES_MAX`, see `append`).
const CHUNK_ENTRIES: usize = 256;

#[derive(Clone)]
pub struct LedgerArchive {
    tree: sled::Tree,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> io::Result<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "ledger archive key is not a u64",
            )
        })
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("ledger archive: {e}"))
}

impl LedgerArchive {
    pub fn open(durable: &Durable) -> io::Result<LedgerArchive> {
        Ok(LedgerArchive {
            tree: durable.tree("ledger")?,
        })
    }

    /// Appends consecutive entries (continuing the archive; checked by `last_seq`'s callers).
    pub fn append(&self, entries: &[LedgerEntry]) -> io::Result<()> {
        for chunk in entries.chunks(CHUNK_ENTRIES) {
            self.put(chunk)?;
        }
        Ok(())
    }

    /// One chunk, halved until it fits under sled's blob threshold (`ENTRY_BYTES_MAX`).
    fn put(&self, chunk: &[LedgerEntry]) -> io::Result<()> {
        let Some(first) = chunk.first() else {
            return Ok(());
        };
        let bytes = encode(&chunk)?;
        if bytes.len() > ENTRY_BYTES_MAX && chunk.len() > 1 {
            let (a, b) = chunk.split_at(chunk.len() / 2);
            self.put(a)?;
            return self.put(b);
        }
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(io::Error::other(
                "a ledger entry larger than ENTRY_BYTES_MAX",
            ));
        }
        self.tree.insert(key(first.seq), bytes).map_err(sled_err)?;
        Ok(())
    }

    fn chunk_at(value: &[u8]) -> io::Result<Vec<LedgerEntry>> {
        decode(value)
    }

    /// The last sequence number archived (0 when empty).
    pub fn last_seq(&self) -> io::Result<u64> {
        match self.tree.last().map_err(sled_err)? {
            None => Ok(0),
            Some((_, v)) => Ok(Self::chunk_at(&v)?.last().map_or(0, |e| e.seq)),
        }
    }

    /// Drops every entry after `len` (a chunk straddling it is rewritten shortened).
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        let from = self.chunk_start(len + 1)?;
        let doomed: Vec<sled::IVec> = self
            .tree
            .range(key(from)..)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err)?;
        let mut keep = Vec::new();
        for k in doomed {
            if let Some(v) = self.tree.remove(&k).map_err(sled_err)? {
                keep.extend(Self::chunk_at(&v)?.into_iter().filter(|e| e.seq <= len));
            }
        }
        self.append(&keep)
    }

    /// Empties the archive (before a snapshot from the leader refills it).
    pub fn clear(&self) -> io::Result<()> {
        self.tree.clear().map_err(sled_err)
    }

    /// The key of the chunk holding `seq` (or `seq` itself when no chunk holds it).
    fn chunk_start(&self, seq: u64) -> io::Result<u64> {
        match self.tree.range(..=key(seq)).next_back() {
            Some(kv) => seq_of(&kv.map_err(sled_err)?.0),
            None => Ok(seq),
        }
    }

    /// Up to `limit` entries after `since`, at most up to `upto`, in order.
    pub fn read(&self, since: u64, limit: usize, upto: u64) -> io::Result<Vec<LedgerEntry>> {
        let mut out = Vec::new();
        let start = self.chunk_start(since + 1)?;
        for kv in self.tree.range(key(start)..) {
            let (_, v) = kv.map_err(sled_err)?;
            for e in Self::chunk_at(&v)? {
                if e.seq > upto || out.len() >= limit {
                    return Ok(out);
                }
                if e.seq > since {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// The encoded chunks holding entries `1..=upto`, as stored (the last one cut at `upto`),
    /// for a snapshot sent to a follower.
    pub fn raw_chunks(&self, upto: u64) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv.map_err(sled_err)?;
            if seq_of(&k)? > upto {
                break;
            }
            let entries = Self::chunk_at(&v)?;
            if entries.last().is_some_and(|e| e.seq > upto) {
                let cut: Vec<_> = entries.into_iter().filter(|e| e.seq <= upto).collect();
                out.push(encode(&cut)?);
            } else {
                out.push(v.to_vec());
            }
        }
        Ok(out)
    }

    /// Stores one chunk received in a snapshot (already decoded and checked by the caller).
    pub fn put_raw(&self, first_seq: u64, bytes: &[u8]) -> io::Result<()> {
        self.tree.insert(key(first_seq), bytes).map_err(sled_err)?;
        Ok(())
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

    #[test]
    fn reads_truncates_and_ships_chunks_across_chunk_borders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = Durable::open(dir.path()).expect("open");
        let a = LedgerArchive::open(&durable).expect("archive");
        assert_eq!(a.last_seq().expect("len"), 0);
        a.append(&entries(1, 3)).expect("append");
        a.append(&entries(4, 600)).expect("append"); // 256 + 256 + 85
        assert_eq!(a.last_seq().expect("len"), 600);
        assert_eq!(seqs(&a.read(0, 2, 600).expect("read")), [1, 2]);
        assert_eq!(seqs(&a.read(258, 3, 600).expect("read")), [259, 260, 261]);
        assert_eq!(seqs(&a.read(598, 10, 600).expect("read")), [599, 600]);
        assert_eq!(
            seqs(&a.read(5, 10, 7).expect("read")),
            [6, 7],
            "never past upto"
        );
        assert!(a.read(600, 10, 600).expect("read").is_empty());
        // a cut inside a chunk keeps its head
        a.truncate(300).expect("truncate");
        assert_eq!(a.last_seq().expect("len"), 300);
        assert_eq!(
            seqs(&a.read(295, 10, u64::MAX).expect("read")),
            [296, 297, 298, 299, 300]
        );
        a.append(&entries(301, 310)).expect("append again");
        let chunks = a.raw_chunks(305).expect("chunks");
        let shipped: Vec<LedgerEntry> = chunks
            .iter()
            .flat_map(|c| decode::<Vec<LedgerEntry>>(c).expect("chunk decodes"))
            .collect();
        assert_eq!(
            shipped,
            entries(1, 305),
            "every entry up to the snapshot, in order"
        );
        a.clear().expect("clear");
        assert_eq!(a.last_seq().expect("len"), 0);
    }

    #[test]
    fn a_chunk_too_big_for_one_sled_value_is_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = Durable::open(dir.path()).expect("open");
        let a = LedgerArchive::open(&durable).expect("archive");
        let mut big = entries(1, 256);
        for e in &mut big {
            e.record.gateway = "g".repeat(1_000);
        }
        a.append(&big).expect("append");
        assert!(a.tree.len() > 1, "split under ENTRY_BYTES_MAX");
        assert_eq!(a.read(0, 1_000, u64::MAX).expect("read"), big);
    }
}
