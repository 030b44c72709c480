//! Journal framing: `[len: u32 LE][crc32 of body: u32 LE][body]`, body = `[version][JSON]`.
//! A torn or corrupt tail (a crash in the middle of a write) ends the readable prefix.

use super::record::Entry;

/// Current record format.
pub const VERSION: u8 = 1;
/// Largest body accepted when reading (a length beyond it means corruption).
pub const BODY_BYTES_MAX: usize = 1 << 20;
const HEADER: usize = 8;

pub fn encode(e: &Entry) -> Vec<u8> {
    let json = serde_json::to_vec(e).unwrap_or_default();
    let mut body = Vec::with_capacity(json.len() + 1);
    body.push(VERSION);
    body.extend_from_slice(&json);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes every whole, valid frame of `buf`; returns the entries and the length of the valid
/// prefix (where a torn or corrupt tail starts).
pub fn decode_all(buf: &[u8]) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((e, len)) = decode_one(&buf[at..]) {
        out.push(e);
        at += len;
    }
    (out, at)
}

fn decode_one(buf: &[u8]) -> Option<(Entry, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if len == 0 || len > BODY_BYTES_MAX {
        return None;
    }
    let body = buf.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc || body[0] != VERSION {
        return None;
    }
    let e = serde_json::from_slice(&body[1..]).ok()?;
    Some((e, HEADER + len))
}
