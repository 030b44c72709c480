//! API keys and admin tokens: the `tg_<env>_<random>_<checksum>` format, HMAC-SHA256 digests under
//! a cluster secret, and constant-time comparison. Plaintext secrets never enter the state machine.

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of randomness in a secret: 32 base62 characters carry 190 bits.
pub const SECRET_RANDOM_CHARS: usize = 32;
/// Characters of checksum (CRC-32 of the rest, base62, zero padded).
pub const SECRET_CHECKSUM_CHARS: usize = 6;
/// Characters of the random part that form the public key id.
pub const KEY_ID_CHARS: usize = 12;
/// The environment tag reserved for admin tokens.
pub const ADMIN_ENV: &str = "admin";
/// Longest environment tag.
pub const ENV_CHARS_MAX: usize = 8;

const _: () = assert!(KEY_ID_CHARS < SECRET_RANDOM_CHARS);

/// Why a presented secret was rejected offline (before any lookup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFormatError {
    #[error("the key does not have the form tg_<env>_<random>_<checksum>")]
    Shape,
    #[error("the key's checksum does not match; it was probably mistyped or truncated")]
    Checksum,
}

/// A parsed secret: API key or admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSecret<'a> {
    pub env: &'a str,
    pub random: &'a str,
    /// `<env>_<first KEY_ID_CHARS of random>`: a slice of the secret itself.
    id: &'a str,
}

impl<'a> ParsedSecret<'a> {
    /// The public id: `<env>_<first KEY_ID_CHARS of random>` (borrowed, no allocation: the
    /// gateway looks it up on every request).
    pub fn key_id(&self) -> &'a str {
        self.id
    }
}

/// `n` in base62, zero padded to fill `out`.
fn base62_into(mut n: u64, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
}

fn base62_fixed(n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    base62_into(n, &mut out);
    String::from_utf8(out).expect("base62 alphabet is ASCII")
}

/// `checksum(body) == sum`, without building the string.
fn checksum_matches(body: &str, sum: &str) -> bool {
    let mut digits = [0u8; SECRET_CHECKSUM_CHARS];
    base62_into(u64::from(crc32fast::hash(body.as_bytes())), &mut digits);
    sum.as_bytes() == digits
}

fn checksum(body: &str) -> String {
    base62_fixed(
        u64::from(crc32fast::hash(body.as_bytes())),
        SECRET_CHECKSUM_CHARS,
    )
}

/// Generates a new secret `tg_<env>_<random>_<checksum>` from the OS-seeded thread RNG.
pub fn generate(env: &str) -> String {
    let mut rng = rand::rng();
    let random: String = (0..SECRET_RANDOM_CHARS)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect();
    let body = format!("tg_{env}_{random}");
    let sum = checksum(&body);
    format!("{body}_{sum}")
}

/// Derives a secret `tg_<env>_<random>_<checksum>` from `key` and `input` (HMAC-SHA256 in
/// counter mode, rejection-sampled to unbiased base62). The store derives API keys and admin
/// tokens from a store-only key and the request id, so a write retried with the same request id
/// can show the same secret again instead of losing it.
pub fn derive(env: &str, key: &ClusterSecret, label: &str, input: &str) -> String {
    let mut random = String::with_capacity(SECRET_RANDOM_CHARS);
    let mut counter = 0u32;
    while random.len() < SECRET_RANDOM_CHARS {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.0.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(input.as_bytes());
        mac.update(&counter.to_be_bytes());
        for b in mac.finalize().into_bytes() {
            // 248 = 4 × 62: bytes above it would bias the alphabet
            if b < 248 && random.len() < SECRET_RANDOM_CHARS {
                random.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
        counter += 1;
    }
    let body = format!("tg_{env}_{random}");
    let sum = checksum(&body);
    format!("{body}_{sum}")
}

/// Checks shape and checksum; no lookup, no secret needed.
pub fn parse(secret: &str) -> Result<ParsedSecret<'_>, SecretFormatError> {
    let rest = secret.strip_prefix("tg_").ok_or(SecretFormatError::Shape)?;
    let mut parts = rest.split('_');
    let (Some(env), Some(random), Some(sum), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SecretFormatError::Shape);
    };
    let env_ok = !env.is_empty()
        && env.len() <= ENV_CHARS_MAX
        && env.bytes().all(|b| b.is_ascii_lowercase());
    let random_ok =
        random.len() == SECRET_RANDOM_CHARS && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if !env_ok || !random_ok || sum.len() != SECRET_CHECKSUM_CHARS {
        return Err(SecretFormatError::Shape);
    }
    let body = &secret[..secret.len() - SECRET_CHECKSUM_CHARS - 1];
    if !checksum_matches(body, sum) {
        return Err(SecretFormatError::Checksum);
    }
    let id = &rest[..env.len() + 1 + KEY_ID_CHARS];
    Ok(ParsedSecret { env, random, id })
}

/// The cluster's HMAC secret for key digests (32 random bytes, hex in config and snapshots).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecret(String);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        Self(hex::encode(bytes))
    }

    /// HMAC-SHA256 of the full secret string, hex-encoded.
    pub fn digest(&self, secret: &str) -> Digest {
        let mut mac = self.keyed().0;
        mac.update(secret.as_bytes());
        Digest(hex::encode(mac.finalize().into_bytes()))
    }

    /// The HMAC keyed once, for checking many presented secrets (the gateway's request path).
    pub fn keyed(&self) -> KeyedDigest {
        KeyedDigest(
            <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_bytes())
                .expect("HMAC accepts keys of any length"),
        )
    }
}

/// A cluster secret's HMAC with the key already absorbed: checking a secret costs its own
/// blocks only, and allocates nothing.
#[derive(Clone)]
pub struct KeyedDigest(Hmac<Sha256>);

impl std::fmt::Debug for KeyedDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedDigest(<redacted>)")
    }
}

impl KeyedDigest {
    /// Whether `secret`'s digest is `expected`, compared in constant time.
    pub fn matches(&self, secret: &str, expected: &Digest) -> bool {
        let mut mac = self.0.clone();
        mac.update(secret.as_bytes());
        let mut hexed = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut hexed).is_ok()
            && expected.ct_eq_hex(&hexed)
    }
}

/// A hex HMAC digest of a secret. Compared in constant time only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Digest(String);

impl Digest {
    pub fn ct_eq(&self, other: &Digest) -> bool {
        self.ct_eq_hex(other.0.as_bytes())
    }

    /// Constant-time comparison with a hex digest's bytes (only the lengths may leak).
    fn ct_eq_hex(&self, hex: &[u8]) -> bool {
        self.0.len() == hex.len() && bool::from(self.0.as_bytes().ct_eq(hex))
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}
impl Eq for Digest {}

/// What an admin token may do. Ordered: each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read configuration, usage, audit and cluster status.
    #[default]
    Viewer,
    /// Plus: manage orgs, projects, keys, models and limits.
    Operator,
    /// Plus: manage admin tokens and cluster membership.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}': use viewer, operator or admin"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_typos_are_caught() {
        let key = generate("live");
        let parsed = parse(&key).expect("fresh key parses");
        assert_eq!(parsed.env, "live");
        assert!(parsed.key_id().starts_with("live_"));
        // flip one character of the random part
        let mut bytes = key.clone().into_bytes();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(bytes).expect("ascii");
        assert_eq!(parse(&typo), Err(SecretFormatError::Checksum));
        assert_eq!(parse("sk-123"), Err(SecretFormatError::Shape));
        assert_eq!(parse("tg_live_abc_123456"), Err(SecretFormatError::Shape));
    }

    #[test]
    fn digests_differ_per_secret_and_compare() {
        let s1 = ClusterSecret::generate();
        let s2 = ClusterSecret::generate();
        let key = generate("test");
        assert_eq!(s1.digest(&key), s1.digest(&key));
        assert_ne!(s1.digest(&key), s2.digest(&key));
        assert_ne!(s1.digest(&key), s1.digest(&generate("test")));
    }

    #[test]
    fn the_keyed_digest_agrees_with_the_stored_one() {
        let s1 = ClusterSecret::generate();
        let key = generate("test");
        let keyed = s1.keyed();
        assert!(keyed.matches(&key, &s1.digest(&key)));
        assert!(keyed.matches(&key, &s1.digest(&key)), "reusable");
        assert!(!keyed.matches(&generate("test"), &s1.digest(&key)));
        assert!(!keyed.matches(&key, &ClusterSecret::generate().digest(&key)));
        assert!(!keyed.matches(&key, &Digest("ab".into())));
    }

    #[test]
    fn derived_secrets_are_stable_per_input_and_valid() {
        let k = ClusterSecret::generate();
        let a = derive("live", &k, "api-key", "req-1");
        assert_eq!(a, derive("live", &k, "api-key", "req-1"));
        assert_ne!(a, derive("live", &k, "api-key", "req-2"));
        assert_ne!(a, derive("live", &k, "admin-token", "req-1"));
        assert_ne!(
            a,
            derive("live", &ClusterSecret::generate(), "api-key", "req-1")
        );
        assert!(parse(&a).is_ok());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert!("root".parse::<Role>().is_err());
    }
}
