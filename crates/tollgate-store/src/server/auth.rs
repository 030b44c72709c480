//! Admin authentication: the bearer token from the `authorization` metadata, checked offline
//! (format, checksum), digested with the cluster secret and looked up with a constant-time
//! compare. Writes carry the digest into `apply`, which authorizes again against replicated state.

use super::errors::api_status;
use crate::storage::SmHandle;
use tollgate_ledger::Actor;
use tollgate_types::KeyId;
use tollgate_types::error::{ApiError, ErrorCode};
use tollgate_types::secret::{self, ADMIN_ENV, Role};
use tonic::Status;

fn unauthenticated(msg: &str) -> Status {
    api_status(ApiError::new(ErrorCode::InvalidApiKey, msg))
}

/// Parses the bearer token and builds the admin actor (not yet authorized).
pub fn admin_actor<T>(req: &tonic::Request<T>, sm: &SmHandle) -> Result<Actor, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthenticated("missing admin token: pass --token or set TOLLGATE_ADMIN_TOKEN")
        })?;
    let token = header.strip_prefix("Bearer ").unwrap_or(header).trim();
    let parsed =
        secret::parse(token).map_err(|e| unauthenticated(&format!("admin token rejected: {e}")))?;
    if parsed.env != ADMIN_ENV {
        return Err(unauthenticated(
            "this is an API key, not an admin token (admin tokens start with tg_admin_)",
        ));
    }
    let token_id =
        KeyId::parse(parsed.key_id()).map_err(|_| unauthenticated("malformed admin token"))?;
    let digest = sm
        .read(|d| d.state.secret.as_ref().map(|s| s.digest(token)))
        .ok_or_else(|| {
            api_status(ApiError::new(
                ErrorCode::StoreUnavailable,
                "the cluster is not bootstrapped yet",
            ))
        })?;
    Ok(Actor::Admin { token_id, digest })
}

/// Checks an actor against the local state for a read (after the linearizable barrier).
pub fn authorize_read(actor: &Actor, sm: &SmHandle, need: Role) -> Result<(), Status> {
    let Actor::Admin { token_id, digest } = actor else {
        return Err(unauthenticated("an admin token is required"));
    };
    let role = sm.read(|d| {
        d.state
            .tokens
            .get(token_id)
            .filter(|t| !t.revoked && t.digest.ct_eq(digest))
            .map(|t| t.role)
    });
    match role {
        None => Err(unauthenticated("unknown or revoked admin token")),
        Some(r) if r < need => Err(api_status(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("this action needs the {need} role; the token has {r}"),
        ))),
        Some(_) => Ok(()),
    }
}
