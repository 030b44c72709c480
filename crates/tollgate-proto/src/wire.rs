//! Binary bodies of the quota RPCs (`Acquire`, `RecordUsage`): bincode (standard config,
//! little-endian varints, as the store's codec) of the same `tollgate-types` values the JSON
//! fields carry. Gateways send binary; a store reads either (JSON from older gateways and from
//! tools) and answers in the encoding it was asked in. A decode is bounded: no claimed length
//! can make it allocate more than `DECODE_BYTES_MAX`, and trailing bytes are an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Most memory one decode may claim (above any message the store accepts).
pub const DECODE_BYTES_MAX: usize = 64 << 20;

/// The bincode format every Tollgate binary encoding shares (these bodies, the store's codec,
/// the gateway's journal frames): standard config, little-endian, variable-length integers.
pub fn format() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::NoLimit,
> {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
}

fn config() -> impl bincode::config::Config {
    format().with_limit::<DECODE_BYTES_MAX>()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, n) = bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if n != bytes.len() {
        return Err(format!("{} bytes after the value", bytes.len() - n));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_an_error_not_an_allocation() {
        let v: Vec<(String, u64)> = vec![("a".into(), 1), ("b".into(), u64::MAX)];
        let bytes = encode(&v).expect("encode");
        assert_eq!(decode::<Vec<(String, u64)>>(&bytes), Ok(v));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            decode::<Vec<(String, u64)>>(&longer).is_err(),
            "trailing bytes"
        );
        // a claimed length of 2^62 elements is refused before anything is allocated
        let bomb = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(decode::<Vec<u64>>(&bomb).is_err());
    }
}
