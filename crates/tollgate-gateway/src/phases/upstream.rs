//! Phases 4–5, route and call the upstream: pick an endpoint (tiers, p2c, health, queue), send,
//! and retry on connect errors, timeouts, 429 and 5xx — only before anything reached the client
//! (a response head from the upstream commits the request), only to endpoints not yet tried, and
//! only while the retry budget allows. Upstream `Retry-After` cools the endpoint down.

use crate::Gw;
use crate::error::GwError;
use crate::phases::validate::Validated;
use crate::router::Picked;
use crate::router::endpoint::Outcome;
use crate::upstream::UpResponse;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_types::ErrorCode;

/// The committed upstream response.
pub struct Forwarded {
    /// Status and body (read by whoever relays it), on the upstream connection it holds.
    pub resp: UpResponse,
    pub picked: Picked,
    /// When the chosen attempt was sent.
    pub sent_at: Instant,
    pub attempts: u32,
}

/// Longest upstream error body read for the error message.
const ERROR_BODY_BYTES_MAX: usize = 16 << 10;

pub async fn forward(
    gw: &Arc<Gw>,
    v: &Validated,
    request_id: &str,
    traceparent: Option<&HeaderValue>,
    deadline: Instant,
) -> Result<Forwarded, GwError> {
    let router = &gw.router;
    router.budget.deposit();
    let default_body = v.upstream_body(None)?;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_err: Option<GwError> = None;
    let mut headers = vec![(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_str(request_id).unwrap_or(HeaderValue::from_static("invalid")),
    )];
    if let Some(tp) = traceparent {
        headers.push((HeaderName::from_static("traceparent"), tp.clone()));
    }
    for attempt in 1..=router.cfg.attempts_max.max(1) {
        if attempt > 1 {
            if Instant::now() >= deadline || !router.budget.try_withdraw() {
                break;
            }
            gw.metrics.retry();
        }
        let picked = match router
            .pick(&v.model.route, &tried, deadline, v.priority)
            .await
        {
            Ok(p) => p,
            Err(e) => return Err(last_err.unwrap_or(e)),
        };
        tried.push(Arc::as_ptr(&picked.endpoint.state) as usize);
        let body = match &picked.endpoint.upstream_model {
            None => default_body.clone(),
            Some(m) => v.upstream_body(Some(m))?,
        };
        let state = picked.endpoint.state.clone();
        let wait = gw
            .settings
            .timeouts
            .first_byte
            .min(deadline.saturating_duration_since(Instant::now()));
        let sent_at = Instant::now();
        let call = gw
            .client
            .post_json(&state.url, v.kind.path(), body, &headers);
        let err = match tokio::time::timeout(wait, call).await {
            Err(_) => {
                state.record(Outcome::Failure, Duration::ZERO, &router.cfg);
                GwError::new(
                    ErrorCode::UpstreamTimeout,
                    format!(
                        "The model server did not answer within {} ms.",
                        wait.as_millis()
                    ),
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %state.url, error = %e, request_id, "upstream send failed");
                state.record(Outcome::Failure, Duration::ZERO, &router.cfg);
                GwError::new(
                    ErrorCode::UpstreamError,
                    "The model server could not be reached.",
                )
            }
            Ok(Ok(mut resp)) => {
                let status = resp.status;
                if status.is_success() || (status.is_client_error() && status.as_u16() != 429) {
                    // alive and answering: a client error is the request's fault, not the endpoint's
                    state.record(Outcome::Success, sent_at.elapsed(), &router.cfg);
                    return Ok(Forwarded {
                        resp,
                        picked,
                        sent_at,
                        attempts: attempt,
                    });
                }
                if let Some(d) = resp.retry_after {
                    state.cool_down(d, &router.cfg);
                }
                state.record(Outcome::Failure, Duration::ZERO, &router.cfg);
                let detail = error_message(&mut resp).await;
                gw.client.release(resp);
                tracing::warn!(endpoint = %state.url, %status, detail, request_id, "upstream error");
                GwError::new(
                    ErrorCode::UpstreamError,
                    format!("The model server answered {status}: {detail}"),
                )
            }
        };
        last_err = Some(err);
    }
    Err(last_err.unwrap_or_else(|| {
        GwError::new(
            ErrorCode::UpstreamError,
            "No upstream attempt could be made.",
        )
    }))
}

/// The upstream's error message (OpenAI-shaped or plain), bounded, for logs and the client.
async fn error_message(resp: &mut UpResponse) -> String {
    let read = resp.collect(ERROR_BODY_BYTES_MAX);
    let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_secs(2), read).await else {
        return "no readable error body".into();
    };
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect())
}
