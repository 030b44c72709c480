//! The store's binary format: `[format u8][crc32 u32 LE][bincode payload]`. Used for Raft log
//! entries, votes, snapshots and Raft RPC payloads. Every read verifies the checksum and the
//! format byte and fails loudly; nothing is skipped or repaired silently.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{self, Seek, SeekFrom, Write};

/// The only format this build writes. Readers accept exactly the formats listed in `decode`.
pub const FORMAT_V1: u8 = 1;
const HEADER_BYTES: usize = 5;

fn config() -> impl bincode::config::Config {
    tollgate_proto::wire::format()
}

pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let payload = bincode::serde::encode_to_vec(value, config()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The length of `encode(value)`, counted without building it (no allocation, no checksum).
pub fn encoded_len<T: Serialize>(value: &T) -> io::Result<usize> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config()).map_err(io::Error::other)?;
    Ok(HEADER_BYTES + size.bytes_written)
}

/// `encode` straight into a file (at its current position), without building the record in
/// memory first: for snapshots, whose encoding can be hundreds of megabytes. The checksum is
/// computed while writing and patched into the header afterwards. Returns the bytes written.
pub fn encode_to_file<T: Serialize, F: Write + Seek>(value: &T, f: &mut F) -> io::Result<u64> {
    let start = f.stream_position()?;
    f.write_all(&[FORMAT_V1, 0, 0, 0, 0])?;
    let (n, crc) = {
        let mut w = CrcWriter {
            inner: io::BufWriter::with_capacity(1 << 20, &mut *f),
            crc: crc32fast::Hasher::new(),
        };
        let n = bincode::serde::encode_into_std_write(value, &mut w, config())
            .map_err(io::Error::other)?;
        w.inner.flush()?;
        (n, w.crc.finalize())
    };
    f.seek(SeekFrom::Start(start + 1))?;
    f.write_all(&crc.to_le_bytes())?;
    f.seek(SeekFrom::End(0))?;
    Ok((HEADER_BYTES + n) as u64)
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a record's format byte and checksum without decoding it; returns its payload.
pub fn verify(bytes: &[u8]) -> io::Result<&[u8]> {
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt(format!(
            "record of {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(corrupt(format!("unknown record format {}", bytes[0])));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER_BYTES..];
    if crc32fast::hash(payload) != stored {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    Ok(payload)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let payload = verify(bytes)?;
    let (value, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| corrupt(e.to_string()))?;
    if used != payload.len() {
        return Err(corrupt(format!("{} trailing bytes", payload.len() - used)));
    }
    Ok(value)
}

fn corrupt(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt store record: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_the_length_encode_gives() {
        for v in [
            ("", 0u64),
            ("hello", 42),
            ("x".repeat(300).leak(), u64::MAX),
        ] {
            assert_eq!(
                encoded_len(&v).expect("len"),
                encode(&v).expect("encode").len()
            );
        }
    }

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let bytes = encode(&("hello", 42u64)).expect("encode");
        let back: (String, u64) = decode(&bytes).expect("decode");
        assert_eq!(back, ("hello".to_owned(), 42));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode::<(String, u64)>(&flipped).is_err());
        let mut wrong_format = bytes.clone();
        wrong_format[0] = 9;
        assert!(decode::<(String, u64)>(&wrong_format).is_err());
    }

    #[test]
    fn encoding_into_a_file_gives_the_same_bytes() {
        let value = ("streamed", vec![7u64; 100_000]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(b"head").expect("prefix");
        let n = encode_to_file(&value, &mut f).expect("encode");
        drop(f);
        let on_disk = std::fs::read(&path).expect("read");
        let in_memory = encode(&value).expect("encode");
        assert_eq!(n as usize, in_memory.len());
        assert_eq!(&on_disk[..4], b"head");
        assert_eq!(&on_disk[4..], &in_memory[..]);
    }
}
