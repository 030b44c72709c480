//! Phase 3, admit: the decision whether a validated request may run, made locally without a
//! network round trip. The interface is what the limits work implements (leased buckets,
//! reservations of `input_estimate + max_output`, settlement to actual usage); until then the
//! gateway runs with [`Unmetered`], which admits every authenticated request and says so in
//! `/metrics` (`tollgate_gateway_admission_mode`).

use crate::error::GwError;
use crate::phases::auth::Caller;
use hyper::header::{HeaderName, HeaderValue};
use tollgate_types::config::ModelDef;

/// What admission looks at.
#[derive(Debug)]
pub struct AdmitRequest<'a> {
    pub caller: &'a Caller,
    pub model: &'a ModelDef,
    pub request_id: &'a str,
    pub input_estimate: u64,
    pub max_output: u64,
}

/// An admitted request's hold, returned to [`Admission::settle`] exactly once.
#[derive(Debug, Default)]
pub struct Ticket {
    /// `x-ratelimit-*` headers for the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Tokens reserved at admission (refunded down to the actual usage at settlement).
    pub reserved_tokens: u64,
}

/// Actual usage of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Counts are the gateway's estimate (the upstream reported none).
    pub estimated: bool,
}

pub trait Admission: Send + Sync + 'static {
    /// Admits or refuses (429 `rate_limit_exceeded` / `insufficient_quota`) a request.
    fn admit(&self, req: &AdmitRequest<'_>) -> Result<Ticket, GwError>;
    /// Settles a ticket against what the request actually used.
    fn settle(&self, ticket: Ticket, usage: &Usage);
    /// A short name for metrics and `/readyz`.
    fn mode(&self) -> &'static str;
}

/// Admits everything: no limits are enforced by this gateway.
#[derive(Debug, Default)]
pub struct Unmetered;

impl Admission for Unmetered {
    fn admit(&self, req: &AdmitRequest<'_>) -> Result<Ticket, GwError> {
        Ok(Ticket {
            headers: Vec::new(),
            reserved_tokens: req.input_estimate + req.max_output,
        })
    }

    fn settle(&self, _ticket: Ticket, _usage: &Usage) {}

    fn mode(&self) -> &'static str {
        "unmetered"
    }
}
