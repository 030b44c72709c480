//! Journal framing: `[len: u32 LE][crc32 of body: u32 LE][body]`, body = `[version][entry]`.
//! Version 2 (written): `[2][kind: 1 reserved | 2 settled][seq: u64 LE][bincode of the
//! reservation or the usage record]` (standard config, little-endian varints, as the store's
//! codec). Version 1 (read only): `[1][JSON entry]`. A torn or corrupt tail (a crash in the
//! middle of a write) ends the readable part; bytes that are no frame with valid frames after
//! them are skipped and the frames after them read (`decode_all`).

use super::record::{Entry, Reserved};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use tollgate_types::usage::UsageRecord;

/// The format this version writes.
pub const VERSION: u8 = 2;
/// JSON entries, written before version 2; still read.
pub const VERSION_JSON: u8 = 1;
/// Largest body accepted when reading (a length beyond it means corruption).
pub const BODY_BYTES_MAX: usize = 1 << 20;
const HEADER: usize = 8;
const KIND_RESERVED: u8 = 1;
const KIND_SETTLED: u8 = 2;

fn config() -> impl bincode::config::Config {
    tollgate_proto::wire::format()
}

/// An entry to write, borrowed: a settled record is encoded without being copied.
#[derive(Clone, Copy)]
pub enum EntryRef<'a> {
    Reserved(&'a Reserved),
    Settled(&'a UsageRecord),
}

/// The frame of `entry` under sequence number `seq`.
pub fn encode(seq: u64, entry: EntryRef<'_>) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(&[0; HEADER]);
    out.push(VERSION);
    match entry {
        EntryRef::Reserved(r) => put(&mut out, KIND_RESERVED, seq, r)?,
        EntryRef::Settled(r) => put(&mut out, KIND_SETTLED, seq, r)?,
    }
    let body_len = out.len() - HEADER;
    if body_len > BODY_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "journal entry larger than a frame may be",
        ));
    }
    let crc = crc32fast::hash(&out[HEADER..]);
    out[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Gives an encoded frame its sequence number (and the checksum that goes with it).
pub fn set_seq(frame: &mut [u8], seq: u64) {
    const AT: usize = HEADER + 2;
    if frame.len() < AT + 8 {
        return;
    }
    frame[AT..AT + 8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&frame[HEADER..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn put<T: Serialize>(out: &mut Vec<u8>, kind: u8, seq: u64, value: &T) -> io::Result<()> {
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    bincode::serde::encode_into_std_write(value, out, config()).map_err(io::Error::other)?;
    Ok(())
}

/// What a segment's bytes hold.
#[derive(Debug, Default)]
pub struct Decoded {
    pub entries: Vec<Entry>,
    /// The end of the last valid frame: after it, the segment's unused room or a torn write.
    pub end: usize,
    /// Bytes between valid frames that are no valid frame: damage, skipped.
    pub damaged: usize,
}

/// Decodes every whole, valid frame of `buf`. Bytes that are no frame but have a valid frame
/// after them — damage to the medium, or a page of the mapped live segment that a power loss
/// did not write while it wrote a later one — are skipped and counted, and the frames after
/// them kept: each holds a record the store has not seen, or a reservation to settle as in
/// doubt, and a record read twice is deduplicated by the store.
pub fn decode_all(buf: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    let mut at = 0;
    while at < buf.len() {
        if let Some((e, len)) = decode_one(&buf[at..]) {
            d.entries.push(e);
            at += len;
            d.end = at;
            continue;
        }
        let Some(next) = next_frame(buf, at + 1) else {
            break;
        };
        d.damaged += next - at;
        at = next;
    }
    d
}

/// Where the next valid frame at or after `from` starts. A frame carries its length and the
/// CRC-32 of its body, so a position that decodes is a frame but by a one-in-2^32 chance; the
/// cheap checks first (zeros, the unused room of a live segment, fail the first).
fn next_frame(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(HEADER)).find(|&p| {
        let rest = &buf[p..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        // a body holds a version and at least a kind or an opening brace
        (2..=BODY_BYTES_MAX).contains(&len)
            && rest.len() >= HEADER + len
            && match rest[HEADER] {
                VERSION => matches!(rest[HEADER + 1], KIND_RESERVED | KIND_SETTLED),
                VERSION_JSON => rest[HEADER + 1] == b'{',
                _ => false,
            }
            && decode_one(rest).is_some()
    })
}

fn decode_one(buf: &[u8]) -> Option<(Entry, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if len == 0 || len > BODY_BYTES_MAX {
        return None;
    }
    let body = buf.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let e = match body[0] {
        VERSION => decode_binary(&body[1..])?,
        VERSION_JSON => serde_json::from_slice(&body[1..]).ok()?,
        _ => return None,
    };
    Some((e, HEADER + len))
}

fn decode_binary(body: &[u8]) -> Option<Entry> {
    let (&kind, rest) = body.split_first()?;
    let seq = u64::from_le_bytes(rest.get(0..8)?.try_into().ok()?);
    let value = &rest[8..];
    match kind {
        KIND_RESERVED => Some(Entry::Reserved {
            seq,
            reserved: whole(value)?,
        }),
        KIND_SETTLED => Some(Entry::Settled {
            seq,
            record: whole(value)?,
        }),
        _ => None,
    }
}

/// Decodes a value that must fill `bytes` exactly.
fn whole<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let (v, n) = bincode::serde::decode_from_slice(bytes, config()).ok()?;
    (n == bytes.len()).then_some(v)
}
