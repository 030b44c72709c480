//! Validated identifiers. Every id that reaches the state machine went through `parse`.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; the maximum is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{kind} '{value}' may only contain lowercase letters, digits, '-', '_' and '.', and must start with a letter or digit"
    )]
    BadChars { kind: &'static str, value: String },
}

/// Longest slug id, in bytes.
pub const SLUG_BYTES_MAX: usize = 64;

fn check_slug(kind: &'static str, value: &str, allow_upper_and_slash: bool) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > SLUG_BYTES_MAX {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max: SLUG_BYTES_MAX,
        });
    }
    // bytes, not chars: every allowed character is ASCII, and any byte of a multi-byte
    // character fails these tests as its character would (ids are checked on every decode)
    let ok_byte = |c: u8| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, b'-' | b'_' | b'.')
            || (allow_upper_and_slash && (c.is_ascii_uppercase() || c == b'/' || c == b':'))
    };
    let bytes = value.as_bytes();
    let first_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric);
    if !first_ok || !bytes.iter().all(|&c| ok_byte(c)) {
        return Err(IdError::BadChars {
            kind,
            value: value.chars().take(80).collect(),
        });
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $loose:literal) => {
        $(#[$doc])*
        /// Held inline up to 24 bytes (`CompactString`): decoding or cloning a short id does not
        /// allocate — the store decodes and clones several per usage record.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(CompactString);

        /// Serialized as its string, borrowed (`serde(into)` would clone it on every record).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Deserialized from a borrowed string where the format allows it, validated.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(IdVisitor(|v: &str| $name::parse(v)))
            }
        }

        impl $name {
            pub fn parse(value: &str) -> Result<Self, IdError> {
                check_slug($kind, value, $loose)?;
                Ok(Self(CompactString::new(value)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                check_slug($kind, &value, $loose)?;
                Ok(Self(CompactString::from(value)))
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into_string()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Visits a string (borrowed or not) and validates it with `parse`.
struct IdVisitor<F>(F);

impl<'de, T, F: FnOnce(&str) -> Result<T, IdError>> serde::de::Visitor<'de> for IdVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an identifier string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

slug_id!(
    /// An organization (tenant) id, e.g. `acme`.
    OrgId, "org id", false
);
slug_id!(
    /// A project id, unique within its org.
    ProjectId, "project id", false
);
slug_id!(
    /// A model name as clients send it, e.g. `gpt-4o-mini` or `meta-llama/Llama-3-8B`.
    ModelName, "model name", true
);
slug_id!(
    /// The public identifier of an API key (the start of its random part); never secret.
    KeyId, "key id", true
);
slug_id!(
    /// A request id: the `Idempotency-Key` scoped to the org, or a UUIDv7 the gateway assigned.
    RequestId, "request id", true
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_and_reject() {
        assert!(OrgId::parse("acme-1").is_ok());
        assert_eq!(OrgId::parse(""), Err(IdError::Empty { kind: "org id" }));
        assert!(matches!(
            OrgId::parse("Acme"),
            Err(IdError::BadChars { .. })
        ));
        assert!(matches!(OrgId::parse("-x"), Err(IdError::BadChars { .. })));
        assert!(matches!(
            OrgId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(ModelName::parse("meta-llama/Llama-3-8B").is_ok());
    }

    #[test]
    fn serde_validates() {
        let bad: Result<OrgId, _> = serde_json::from_str("\"Bad Id\"");
        assert!(bad.is_err());
        let good: OrgId = serde_json::from_str("\"acme\"").expect("valid id");
        assert_eq!(good.as_str(), "acme");
        // escaped (not borrowable) and long (not inline) strings go through the same check
        let escaped: OrgId = serde_json::from_str("\"ac\\u006de\"").expect("valid id");
        assert_eq!(escaped.as_str(), "acme");
        let long = "0194f1c2-7a3b-7c4d-8e5f-0123456789ab";
        let rid: RequestId = serde_json::from_value(serde_json::json!(long)).expect("valid id");
        assert_eq!(rid.as_str(), long);
        assert_eq!(
            serde_json::to_value(&rid).ok(),
            Some(serde_json::json!(long))
        );
        let too_long: Result<RequestId, _> =
            serde_json::from_value(serde_json::json!("a".repeat(65)));
        assert!(too_long.is_err());
        let not_a_string: Result<OrgId, _> = serde_json::from_str("42");
        assert!(not_a_string.is_err());
    }
}
