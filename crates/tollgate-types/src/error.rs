//! `ErrorCode`: one table that maps every failure to its HTTP status, OpenAI `type`/`code`, gRPC
//! code, source and retryability. Gateway, store and CLI all speak it.

use serde::{Deserialize, Serialize};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSource {
    Client,
    Gateway,
    Store,
    Upstream,
}

/// Every failure Tollgate reports, to customers, operators and peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing, malformed, unknown, revoked or expired credential.
    InvalidApiKey,
    /// Valid credential, but not allowed to do this (model not allowed, org frozen, role too low).
    PermissionDenied,
    /// The request is malformed or fails validation; `param` names the field.
    InvalidRequest,
    /// The model does not exist or is not visible to the caller.
    ModelNotFound,
    /// An addressed entity (org, project, key, limit, …) does not exist.
    NotFound,
    /// The entity already exists.
    AlreadyExists,
    /// The same `Idempotency-Key` is in flight, or was used with a different body.
    IdempotencyConflict,
    /// Request body over the configured size.
    BodyTooLarge,
    /// A rate limit (requests or tokens per minute, concurrency) refused the request.
    RateLimitExceeded,
    /// A budget (tokens or money per period) is exhausted.
    InsufficientQuota,
    /// The upstream failed or answered with an error.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// Load shedding: the gateway or the store is saturated.
    Overloaded,
    /// The store has no leader or quorum right now.
    StoreUnavailable,
    /// This store node is not the leader; the write must go to the leader.
    NotLeader,
    /// A bug or an unexpected failure inside Tollgate.
    Internal,
}

/// gRPC status codes (numbers as in the gRPC spec), without depending on tonic here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Everything one `ErrorCode` maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorInfo {
    pub http_status: u16,
    /// OpenAI `error.type`.
    pub openai_type: &'static str,
    /// OpenAI `error.code` (also Tollgate's stable machine-readable name).
    pub code: &'static str,
    pub grpc: GrpcCode,
    pub source: ErrorSource,
    /// Whether the same request may succeed when retried unchanged.
    pub retryable: bool,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidApiKey,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidRequest,
        ErrorCode::ModelNotFound,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::IdempotencyConflict,
        ErrorCode::BodyTooLarge,
        ErrorCode::RateLimitExceeded,
        ErrorCode::InsufficientQuota,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Overloaded,
        ErrorCode::StoreUnavailable,
        ErrorCode::NotLeader,
        ErrorCode::Internal,
    ];

    pub const fn info(self) -> ErrorInfo {
        use ErrorCode as E;
        use ErrorSource::{Client, Gateway, Store, Upstream};
        use GrpcCode as G;
        let (http_status, openai_type, code, grpc, source, retryable) = match self {
            E::InvalidApiKey => (
                401,
                "invalid_request_error",
                "invalid_api_key",
                G::Unauthenticated,
                Client,
                false,
            ),
            E::PermissionDenied => (
                403,
                "permission_denied",
                "permission_denied",
                G::PermissionDenied,
                Client,
                false,
            ),
            E::InvalidRequest => (
                400,
                "invalid_request_error",
                "invalid_request_error",
                G::InvalidArgument,
                Client,
                false,
            ),
            E::ModelNotFound => (
                404,
                "invalid_request_error",
                "model_not_found",
                G::NotFound,
                Client,
                false,
            ),
            E::NotFound => (
                404,
                "invalid_request_error",
                "not_found",
                G::NotFound,
                Client,
                false,
            ),
            E::AlreadyExists => (
                409,
                "invalid_request_error",
                "already_exists",
                G::AlreadyExists,
                Client,
                false,
            ),
            E::IdempotencyConflict => (
                409,
                "invalid_request_error",
                "idempotency_conflict",
                G::Aborted,
                Client,
                true,
            ),
            E::BodyTooLarge => (
                413,
                "invalid_request_error",
                "request_too_large",
                G::InvalidArgument,
                Client,
                false,
            ),
            E::RateLimitExceeded => (
                429,
                "requests",
                "rate_limit_exceeded",
                G::ResourceExhausted,
                Client,
                true,
            ),
            E::InsufficientQuota => (
                429,
                "insufficient_quota",
                "insufficient_quota",
                G::ResourceExhausted,
                Client,
                false,
            ),
            E::UpstreamError => (
                502,
                "api_error",
                "upstream_error",
                G::Unavailable,
                Upstream,
                true,
            ),
            E::UpstreamTimeout => (
                504,
                "api_error",
                "upstream_timeout",
                G::DeadlineExceeded,
                Upstream,
                true,
            ),
            E::Overloaded => (
                503,
                "api_error",
                "overloaded",
                G::Unavailable,
                Gateway,
                true,
            ),
            E::StoreUnavailable => (
                503,
                "api_error",
                "store_unavailable",
                G::Unavailable,
                Store,
                true,
            ),
            E::NotLeader => (
                503,
                "api_error",
                "not_leader",
                G::FailedPrecondition,
                Store,
                true,
            ),
            E::Internal => (
                500,
                "api_error",
                "internal_error",
                G::Internal,
                Gateway,
                true,
            ),
        };
        ErrorInfo {
            http_status,
            openai_type,
            code,
            grpc,
            source,
            retryable,
        }
    }

    /// The stable machine-readable name (`ErrorInfo::code`).
    pub const fn as_str(self) -> &'static str {
        self.info().code
    }

    /// Parses the stable name back; used by clients reading gRPC error details.
    pub fn from_code_str(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a client-safe message: what went wrong and what to fix. Never holds another
/// tenant's ids or internal addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The offending request field, for `invalid_request_error`.
    #[serde(default)]
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
        }
    }
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message).with_param(param)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code_str(c.as_str()), Some(c));
        }
    }

    #[test]
    fn quota_and_rate_limits_are_distinguishable() {
        let rate = ErrorCode::RateLimitExceeded.info();
        let quota = ErrorCode::InsufficientQuota.info();
        assert_eq!((rate.http_status, quota.http_status), (429, 429));
        assert_ne!(rate.code, quota.code);
        assert!(rate.retryable && !quota.retryable);
    }
}
