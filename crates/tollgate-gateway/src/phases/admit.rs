//! Phase 3, admit: the decision whether a validated request may run, made locally against the
//! gateway's leases ([`crate::quota::Quota`]) without a network round trip in the common case.
//! A request reserves `input_estimate + max_output` tokens (and the matching money, one request,
//! one concurrency slot) in every limit that applies to it, all at once or none.

use crate::phases::auth::Caller;
use hyper::header::{HeaderName, HeaderValue};
use tollgate_types::amount::Price;
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

/// An admitted request's reservations, settled exactly once.
#[derive(Debug, Default)]
pub struct Ticket {
    /// `x-ratelimit-*` headers for the response.
    pub headers: crate::quota::headers::Headers,
    pub holds: crate::quota::Holds,
    /// The limits the holds are in.
    pub applies: crate::quota::AppliesList,
    pub price: Price,
    /// An output-counting limit applies: the upstream `max_tokens` must not exceed this.
    pub clamp_output: Option<u64>,
    /// Admitted without a lease (fail policy `open`): the usage record says so.
    pub unbacked: bool,
}

impl Ticket {
    pub fn header_pairs(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.headers.pairs()
    }
}

/// Actual usage of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Counts are the gateway's estimate (the upstream reported none).
    pub estimated: bool,
}
