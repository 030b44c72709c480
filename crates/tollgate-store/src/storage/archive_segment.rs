//! One segment file of the ledger archive: frames appended back to back, each
//! `[record length u32 LE][first seq u64 LE][count u32 LE][codec record of Vec<LedgerEntry>]`
//! (the record carries its own CRC). A frame holds `count` consecutive entries from `first seq`.

use crate::codec::verify;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

pub const FRAME_HEADER: u64 = 16;
/// Largest frame record accepted when reading (a frame is one apply's entries, far below).
const RECORD_BYTES_MAX: u32 = 64 << 20;

/// Where a frame is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub offset: u64,
    pub first: u64,
    pub count: u64,
    pub record_len: u64,
}

impl Frame {
    pub fn last(&self) -> u64 {
        self.first + self.count - 1
    }

    pub fn end(&self) -> u64 {
        self.offset + FRAME_HEADER + self.record_len
    }
}

pub fn header(first: u64, count: u64, record_len: usize) -> io::Result<[u8; 16]> {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(
        &u32::try_from(record_len)
            .map_err(io::Error::other)?
            .to_le_bytes(),
    );
    h[4..12].copy_from_slice(&first.to_le_bytes());
    h[12..].copy_from_slice(
        &u32::try_from(count)
            .map_err(io::Error::other)?
            .to_le_bytes(),
    );
    Ok(h)
}

/// Reads frames from the start of a segment. `checked` verifies each record's checksum (the
/// scan at open, which cuts a torn tail); otherwise records are skipped unread.
pub struct Scan {
    reader: BufReader<File>,
    offset: u64,
    checked: bool,
}

impl Scan {
    pub fn open(path: &Path, checked: bool) -> io::Result<Scan> {
        Scan::open_at(path, 0, checked)
    }

    /// A scan starting at `offset`, which must be a frame's start.
    pub fn open_at(path: &Path, offset: u64, checked: bool) -> io::Result<Scan> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Scan {
            reader: BufReader::with_capacity(64 << 10, f),
            offset,
            checked,
        })
    }

    /// The next whole frame, `None` at the end or at a torn or corrupt frame.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut h = [0u8; FRAME_HEADER as usize];
        if !read_full(&mut self.reader, &mut h)? {
            return Ok(None);
        }
        let record_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let first = u64::from_le_bytes(h[4..12].try_into().map_err(io::Error::other)?);
        let count = u64::from(u32::from_le_bytes([h[12], h[13], h[14], h[15]]));
        if record_len > RECORD_BYTES_MAX || count == 0 || first == 0 {
            return Ok(None);
        }
        if self.checked {
            let mut record = vec![0u8; record_len as usize];
            if !read_full(&mut self.reader, &mut record)? || verify(&record).is_err() {
                return Ok(None);
            }
        } else {
            self.reader.seek_relative(i64::from(record_len))?;
        }
        let frame = Frame {
            offset: self.offset,
            first,
            count,
            record_len: u64::from(record_len),
        };
        self.offset = frame.end();
        Ok(Some(frame))
    }
}

/// Fills `buf`; `false` if the file ended first (a torn tail).
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(true)
}

/// The record bytes of `frame`.
pub fn read_record(path: &Path, frame: &Frame) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(frame.offset + FRAME_HEADER))?;
    let mut record = vec![0u8; frame.record_len as usize];
    f.read_exact(&mut record)?;
    Ok(record)
}
