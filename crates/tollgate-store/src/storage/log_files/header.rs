//! A segment's header: its first `HEADER_BYTES` bytes, `[magic 8][synced-to u64 LE][crc32 LE of
//! the 16 bytes before][zero 12]`. `synced-to` is a byte offset in the segment below which every
//! frame was on disk when the header was written, so a frame failing its check below it is media
//! damage, not a write a crash cut short (DU-4). The header only ever claims what is already
//! durable when it is written (`ActiveFile::finish` writes the watermark a sync just made true,
//! a truncation lowers it and syncs it before it cuts, the open writes what it synced), so
//! whichever version of it a crash leaves is true.
//!
//! A 32-byte write inside the first sector is assumed atomic, as databases assume for their
//! control blocks; the checksum turns any other outcome into a refusal to start rather than a
//! silent cut.
//!
//! Segments written before headers existed start with their first frame; they are read as before
//! (`Marking::Legacy`) and never written a header. The magic's first four bytes, read as a frame
//! length, are far above `RECORD_BYTES_MAX`, so no such segment is mistaken for a marked one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes before a marked segment's first frame.
pub(super) const HEADER_BYTES: u64 = 32;
const MAGIC: [u8; 8] = *b"TGRLOG\x00\x01";

/// What a segment's first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Marking {
    /// No header: frames from byte 0, nothing known about what was synced.
    Legacy,
    /// Frames from `HEADER_BYTES`; every frame below the offset was synced.
    Marked { synced_to: u64 },
    /// The magic is there but the header is cut short or fails its checksum.
    Damaged,
}

fn encode(synced_to: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&synced_to.to_le_bytes());
    let crc = crc32fast::hash(&h[..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the header claiming frames below `synced_to` are durable (the caller's sync makes the
/// header itself durable).
pub(super) fn write(file: &File, synced_to: u64) -> io::Result<()> {
    file.write_all_at(&encode(synced_to), 0)
}

/// Reads the marking of a segment of `size` bytes.
pub(super) fn read(file: &File, size: u64) -> io::Result<Marking> {
    let mut h = [0u8; HEADER_BYTES as usize];
    let have = size.min(HEADER_BYTES) as usize;
    file.read_exact_at(&mut h[..have], 0)?;
    if have < MAGIC.len() || h[..8] != MAGIC {
        return Ok(Marking::Legacy);
    }
    if have < HEADER_BYTES as usize {
        return Ok(Marking::Damaged);
    }
    let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if crc != crc32fast::hash(&h[..16]) {
        return Ok(Marking::Damaged);
    }
    let mut synced_to = [0u8; 8];
    synced_to.copy_from_slice(&h[8..16]);
    Ok(Marking::Marked {
        synced_to: u64::from_le_bytes(synced_to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let f = tempfile::NamedTempFile::new().expect("temp");
        f.as_file().write_all_at(bytes, 0).expect("write");
        let file = f.reopen().expect("reopen");
        (f, file)
    }

    fn marking(bytes: &[u8]) -> Marking {
        let (_keep, file) = file_with(bytes);
        read(&file, bytes.len() as u64).expect("read")
    }

    #[test]
    fn a_header_reads_back_and_damage_to_it_is_told() {
        let h = encode(4_096);
        assert_eq!(marking(&h), Marking::Marked { synced_to: 4_096 });
        for at in 8..20 {
            let mut bad = h;
            bad[at] ^= 0x10;
            assert_eq!(marking(&bad), Marking::Damaged, "byte {at} flipped");
        }
        assert_eq!(marking(&h[..20]), Marking::Damaged, "cut short");
    }

    #[test]
    fn anything_without_the_magic_is_a_legacy_segment() {
        assert_eq!(marking(&[]), Marking::Legacy);
        assert_eq!(marking(&[0u8; 64]), Marking::Legacy);
        // a legacy segment starts with a frame length, never as large as the magic reads
        assert_eq!(marking(&[12, 0, 0, 0, 1, 2, 3]), Marking::Legacy);
        let as_length = u32::from_le_bytes([MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3]]);
        assert!(as_length > super::super::RECORD_BYTES_MAX);
    }
}
