//! Phase 1, authenticate: `Authorization: Bearer tg_<env>_<random>_<checksum>`. The checksum
//! rejects typos without a lookup; the public key id finds the record; the HMAC digest of the
//! presented secret is compared in constant time. Then: revoked or expired key, frozen org,
//! endpoint scope.

use crate::error::GwError;
use crate::snapshot::Snapshot;
use hyper::HeaderMap;
use std::sync::Arc;
use tollgate_types::ErrorCode;
use tollgate_types::config::{ApiKeyRecord, KeyScope, KeyStatus, Org, OrgStatus};
use tollgate_types::secret;

/// Who is calling: the key and its org, as of the snapshot the request started with.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: Arc<ApiKeyRecord>,
    pub org: Arc<Org>,
}

fn invalid(msg: &str) -> GwError {
    GwError::new(ErrorCode::InvalidApiKey, msg)
}

/// The bearer token of the request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Result<&str, GwError> {
    let raw = headers
        .get(hyper::header::AUTHORIZATION)
        .ok_or_else(|| {
            invalid("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        })?
        .to_str()
        .map_err(|_| invalid("The Authorization header is not valid ASCII."))?;
    let token = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .ok_or_else(|| invalid("The Authorization header must be 'Bearer <key>'."))?;
    Ok(token.trim())
}

pub fn authenticate(
    snap: &Snapshot,
    headers: &HeaderMap,
    scope: KeyScope,
    now_ms: u64,
) -> Result<Caller, GwError> {
    let token = bearer(headers)?;
    let incorrect = || invalid("Incorrect API key provided.");
    let parsed = secret::parse(token).map_err(|_| incorrect())?;
    let key = snap.keys.get(parsed.key_id()).ok_or_else(incorrect)?;
    // constant-time: the digest comparison does not reveal how much of it matched
    if !snap.digest_key.matches(token, &key.digest) {
        return Err(incorrect());
    }
    if key.status == KeyStatus::Revoked {
        return Err(GwError::new(
            ErrorCode::PermissionDenied,
            "This API key has been revoked.",
        ));
    }
    if key.expires_at_ms.is_some_and(|t| now_ms >= t) {
        return Err(invalid("This API key has expired."));
    }
    let org = snap
        .orgs
        .get(&key.org)
        .filter(|_| {
            snap.projects
                .contains(&(key.org.clone(), key.project.clone()))
        })
        .ok_or_else(incorrect)?;
    if org.status == OrgStatus::Frozen {
        return Err(GwError::new(
            ErrorCode::PermissionDenied,
            "This organization is frozen; contact your administrator.",
        ));
    }
    if !key.allows_scope(scope) {
        return Err(GwError::new(
            ErrorCode::PermissionDenied,
            "This API key is not allowed to call this endpoint.",
        ));
    }
    Ok(Caller {
        key: key.clone(),
        org: org.clone(),
    })
}

/// Constant-time equality of two byte strings (their lengths may leak, not their contents).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Caller {
    /// Whether the key may use a model (an empty allow-list allows all).
    pub fn may_use(&self, model: &str) -> bool {
        self.key.allowed_models.is_empty()
            || self.key.allowed_models.iter().any(|m| m.as_str() == model)
    }
}
