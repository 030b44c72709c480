//! The request path composed in one place: ops endpoints, the model listing, and inference
//! requests through authenticate → validate → (idempotency) → admit → route + upstream →
//! stream/meter → settle → log. Every response gets `x-request-id` and `Server-Timing`.

use crate::Gw;
use crate::body::{Body, full, json, json_bytes};
use crate::error::GwError;
use crate::idempotency::{Begin, KEY_BYTES_MAX, Stored, body_hash};
use crate::metrics::RouteLabel;
use crate::phases::admit::{AdmitRequest, Usage};
use crate::phases::auth::{self, Caller};
use crate::phases::log::{self, Timing};
use crate::phases::settle::{Settlement, SettlementParts, now_ms};
use crate::phases::stream;
use crate::phases::upstream;
use crate::phases::validate::{self, Kind, Validated};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tollgate_types::config::KeyScope;
use tollgate_types::usage::UsageStatus;
use tollgate_types::{ErrorCode, ModelName, OrgId, RequestId};

/// What the access log and metrics learn about a request.
#[derive(Default)]
struct Outcome {
    code: Option<ErrorCode>,
    relayed_client_error: bool,
    org: Option<OrgId>,
    model: Option<ModelName>,
}

/// A client-supplied `x-request-id` is echoed if it is short and printable.
fn client_request_id(req: &Request<Incoming>) -> Option<HeaderValue> {
    let v = req.headers().get("x-request-id")?;
    let ok = !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
    ok.then(|| v.clone())
}

pub async fn handle(gw: Arc<Gw>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let mut timing = Timing::start();
    let method = req.method().clone();
    // shares the request's buffer: the path outlives the request for the access log
    let uri = req.uri().clone();
    // the ledger identity is always ours; the client's id is only echoed
    let request_id = uuid::Uuid::now_v7().to_string();
    let echo = client_request_id(&req);
    let mut out = Outcome::default();
    let (label, result) = dispatch(&gw, req, &request_id, &mut timing, &mut out).await;
    let mut resp = result.unwrap_or_else(|e| {
        out.code = Some(e.code());
        e.into_response()
    });
    let h = resp.headers_mut();
    let rid = echo.unwrap_or_else(|| {
        HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("invalid"))
    });
    h.insert("x-request-id", rid);
    let st = timing.header();
    if !st.is_empty()
        && let Ok(v) = HeaderValue::try_from(st)
    {
        h.insert("server-timing", v);
    }
    let elapsed = start.elapsed();
    gw.metrics
        .request(label, out.code, out.relayed_client_error, elapsed);
    if label != RouteLabel::Ops {
        log::access(&log::Access {
            request_id: &request_id,
            method: method.as_str(),
            path: uri.path(),
            status: resp.status().as_u16(),
            code: out.code.map_or("ok", |c| c.as_str()),
            org: out.org.as_ref().map(OrgId::as_str),
            model: out.model.as_ref().map(ModelName::as_str),
            elapsed,
        });
    }
    Ok(resp)
}

/// A response, or the error that becomes one.
type Answer = Result<Response<Body>, GwError>;

async fn dispatch(
    gw: &Arc<Gw>,
    req: Request<Incoming>,
    request_id: &str,
    timing: &mut Timing,
    out: &mut Outcome,
) -> (RouteLabel, Answer) {
    let uri = req.uri().clone();
    match (req.method(), uri.path()) {
        (&Method::GET, "/healthz") => (
            RouteLabel::Ops,
            Ok(json(StatusCode::OK, &json!({"status": "ok"}))),
        ),
        (&Method::GET, "/readyz") => (RouteLabel::Ops, Ok(readyz(gw))),
        (&Method::GET, "/metrics") => (RouteLabel::Ops, Ok(metrics(gw))),
        (&Method::GET, "/admin/quota") => (RouteLabel::Ops, quota_status(gw, &req)),
        (&Method::GET, "/admin/usage/export") => {
            (RouteLabel::Ops, crate::export::usage_export(gw, &req).await)
        }
        (&Method::GET, "/v1/models") => (RouteLabel::Models, models(gw, &req, None, out)),
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = p["/v1/models/".len()..].to_owned();
            (RouteLabel::Models, models(gw, &req, Some(&id), out))
        }
        (&Method::POST, "/v1/chat/completions") => (
            RouteLabel::Chat,
            inference(gw, req, Kind::Chat, request_id, timing, out).await,
        ),
        (&Method::POST, "/v1/completions") => (
            RouteLabel::Completions,
            inference(gw, req, Kind::Completion, request_id, timing, out).await,
        ),
        (&Method::POST, "/v1/embeddings") => (
            RouteLabel::Embeddings,
            inference(gw, req, Kind::Embedding, request_id, timing, out).await,
        ),
        (m, p) => (
            RouteLabel::Other,
            Err(GwError::new(
                ErrorCode::NotFound,
                format!("Unknown request URL: {m} {p}."),
            )),
        ),
    }
}

fn readyz(gw: &Gw) -> Response<Body> {
    let snap = gw.snapshot.load();
    let connected = gw
        .metrics
        .store_connected
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1;
    let body = json!({
        "ready": snap.is_some(),
        "config_version": snap.as_ref().map(|s| s.version),
        "store_connected": connected,
        "admission": gw.quota.mode(),
    });
    let status = if snap.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

fn metrics(gw: &Gw) -> Response<Body> {
    let mut text = gw
        .metrics
        .render(&gw.router, gw.quota.mode(), gw.idempotency.len());
    gw.quota.render_metrics(&mut text);
    if let Some(j) = &gw.journal {
        j.stats.render(&mut text);
    }
    let mut r = full(StatusCode::OK, text);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// The per-gateway enforcement view, for operators: the bearer must be the gateway's store token.
fn quota_status(gw: &Gw, req: &Request<Incoming>) -> Answer {
    let presented = auth::bearer(req.headers())?;
    let ok = gw
        .settings
        .store_token
        .as_deref()
        .is_some_and(|t| auth::ct_eq(t.as_bytes(), presented.as_bytes()));
    if !ok {
        return Err(GwError::new(
            ErrorCode::PermissionDenied,
            "The quota status needs the gateway's operator token.",
        ));
    }
    Ok(json(StatusCode::OK, &gw.quota.status()))
}

fn snapshot(gw: &Gw) -> Result<Arc<crate::snapshot::Snapshot>, GwError> {
    gw.snapshot.load_full().ok_or_else(|| {
        GwError::new(
            ErrorCode::StoreUnavailable,
            "The gateway has not received its configuration from the store yet.",
        )
        .retry_after(std::time::Duration::from_secs(1))
    })
}

fn models(gw: &Gw, req: &Request<Incoming>, id: Option<&str>, out: &mut Outcome) -> Answer {
    let snap = snapshot(gw)?;
    let caller = auth::authenticate(&snap, req.headers(), KeyScope::Models, now_ms())?;
    out.org = Some(caller.org.id.clone());
    let entry =
        |name: &str| json!({"id": name, "object": "model", "created": 0, "owned_by": "tollgate"});
    match id {
        None => {
            let data: Vec<_> = snap
                .models
                .keys()
                .filter(|m| caller.may_use(m))
                .map(|m| entry(m))
                .collect();
            Ok(json(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        Some(m) if snap.models.contains_key(m) && caller.may_use(m) => {
            Ok(json(StatusCode::OK, &entry(m)))
        }
        Some(m) => Err(GwError::new(
            ErrorCode::ModelNotFound,
            format!("The model `{m}` does not exist or you do not have access to it."),
        )
        .with_param("model")),
    }
}

/// Reads the request body within the size and time limits (413 / 400).
async fn read_body(gw: &Gw, req: Request<Incoming>) -> Result<Bytes, GwError> {
    let limits = &gw.settings.limits;
    let max = limits.body_bytes_max;
    let too_large = || {
        GwError::new(
            ErrorCode::BodyTooLarge,
            format!("The request body is larger than the limit of {max} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    let body = req.into_body();
    if declared.is_some_and(|n| n > max as u64) {
        // read (and drop) a moderately oversized body so the client sees the 413 instead of a
        // reset connection; a huge one is cut off
        let drain = Limited::new(body, max.saturating_mul(8)).collect();
        let _ = tokio::time::timeout(limits.body_read_timeout, drain).await;
        return Err(too_large());
    }
    let read = Limited::new(body, max).collect();
    match tokio::time::timeout(limits.body_read_timeout, read).await {
        Err(_) => Err(GwError::new(
            ErrorCode::InvalidRequest,
            "The request body was not received in time.",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(GwError::new(
            ErrorCode::InvalidRequest,
            "The request body could not be read.",
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, GwError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= KEY_BYTES_MAX => Ok(Some(s.to_owned())),
        _ => Err(GwError::invalid(
            "Idempotency-Key",
            format!(
                "The Idempotency-Key header must be 1-{KEY_BYTES_MAX} printable ASCII characters."
            ),
        )),
    }
}

/// Forgets an idempotency key unless the request completed.
struct IdemGuard<'a> {
    gw: &'a Gw,
    org: OrgId,
    key: String,
    done: bool,
}

impl IdemGuard<'_> {
    fn complete(mut self, stored: Option<Stored>) {
        self.gw.idempotency.complete(&self.org, &self.key, stored);
        self.done = true;
    }
}

impl Drop for IdemGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.gw.idempotency.forget(&self.org, &self.key);
        }
    }
}

async fn inference(
    gw: &Arc<Gw>,
    req: Request<Incoming>,
    kind: Kind,
    request_id: &str,
    timing: &mut Timing,
    out: &mut Outcome,
) -> Answer {
    let start = Instant::now();
    let deadline = start + gw.settings.timeouts.total;
    let snap = snapshot(gw)?;
    let caller = auth::authenticate(&snap, req.headers(), kind.scope(), now_ms())?;
    out.org = Some(caller.org.id.clone());
    timing.mark("auth");
    let idem_key = idempotency_key(&req)?;
    let traceparent = req.headers().get("traceparent").cloned();
    let raw = read_body(gw, req).await?;
    timing.mark("read");
    let mut v = validate::validate(kind, &raw, &snap, &caller)?;
    out.model = Some(v.model.def.name.clone());
    timing.mark("validate");
    let idem = match idem_key {
        None => None,
        Some(key) => match gw.idempotency.begin(&caller.org.id, &key, body_hash(&raw)) {
            Begin::Run => Some(IdemGuard {
                gw,
                org: caller.org.id.clone(),
                key,
                done: false,
            }),
            Begin::Replay(s) => return Ok(replay(gw, s)),
            Begin::Conflict(msg) => return Err(GwError::new(ErrorCode::IdempotencyConflict, msg)),
            Begin::Full => {
                return Err(GwError::new(
                    ErrorCode::Overloaded,
                    "Too many idempotent requests in flight; retry later.",
                )
                .retry_after(std::time::Duration::from_secs(1)));
            }
        },
    };
    if idem.is_some() {
        // hashing a large body takes a while: admission checks leases against a fresh time
        timing.mark("idempotency");
    }
    let settlement = admit(gw, &caller, &mut v, request_id, timing.last()).await?;
    timing.mark("admit");
    let fwd = match upstream::forward(gw, &v, request_id, traceparent.as_ref(), deadline).await {
        Ok(f) => f,
        Err(e) => {
            settlement.finish(Usage::default(), UsageStatus::UpstreamFailed);
            return Err(e);
        }
    };
    timing.mark("upstream");
    if v.stream && fwd.resp.status.is_success() {
        if let Some(g) = idem {
            g.complete(None);
        }
        return Ok(stream::relay(
            gw.clone(),
            fwd,
            v.include_usage,
            settlement,
            deadline,
        ));
    }
    let whole = match stream::read_whole(gw, fwd, deadline).await {
        Ok(w) => w,
        Err(e) => {
            settlement.finish(Usage::default(), UsageStatus::UpstreamFailed);
            return Err(e);
        }
    };
    timing.mark("body");
    respond_whole(gw, &v, whole, settlement, idem, out)
}

/// Admits the request against its limits. When an output-counting limit applies and the client
/// set no `max_tokens`, the upstream gets the reserved default, so output never exceeds what
/// was reserved.
async fn admit(
    gw: &Arc<Gw>,
    caller: &Caller,
    v: &mut Validated,
    request_id: &str,
    now: Instant,
) -> Result<Settlement, GwError> {
    // before admission: nothing after it may fail without settling the ticket
    let rid = RequestId::parse(request_id)
        .map_err(|e| GwError::new(ErrorCode::Internal, format!("request id: {e}")))?;
    let ticket = gw
        .quota
        .admit(
            &AdmitRequest {
                caller,
                model: &v.model.def,
                request_id,
                input_estimate: v.input_estimate,
                max_output: v.max_output,
            },
            now,
        )
        .await?;
    let clamp = ticket.clamp_output.is_some() && !v.max_tokens_given;
    let parts = SettlementParts {
        quota: gw.quota.clone(),
        settler: gw.settler.clone(),
        metrics: gw.metrics.clone(),
        gateway: gw.settings.gateway_id.as_str().into(),
    };
    let reserved = crate::journal::record::Reserved {
        request_id: rid.clone(),
        org: caller.key.org.clone(),
        project: caller.key.project.clone(),
        key: caller.key.id.clone(),
        model: v.model.def.name.clone(),
        gateway: gw.settings.gateway_id.as_str().into(),
        input_estimate: v.input_estimate,
        max_output: v.max_output,
        price: v.model.def.price,
        price_version: v.model.def.price_version,
        started_at_ms: now_ms(),
    };
    let settlement = Settlement::new(
        parts,
        ticket,
        rid,
        caller.clone(),
        &v.model.def,
        v.input_estimate,
    );
    if clamp {
        let max_tokens = v.max_tokens;
        if let Err(e) = v
            .body_mut()
            .map(|b| b.insert("max_tokens".into(), json!(max_tokens)))
        {
            settlement.finish(Usage::default(), UsageStatus::UpstreamFailed);
            return Err(e);
        }
    }
    // the reservation reaches the journal before the request goes upstream
    if let Some(Err(e)) = gw.journal.as_ref().map(|j| j.reserved(&reserved)) {
        tracing::error!(error = %e, "journal append failed; refusing the request");
        settlement.finish(Usage::default(), UsageStatus::UpstreamFailed);
        return Err(GwError::new(
            ErrorCode::Overloaded,
            "The gateway cannot record usage right now; retry shortly.",
        )
        .retry_after(std::time::Duration::from_secs(1)));
    }
    Ok(settlement)
}

fn respond_whole(
    gw: &Gw,
    v: &Validated,
    whole: stream::Whole,
    settlement: Settlement,
    idem: Option<IdemGuard<'_>>,
    out: &mut Outcome,
) -> Answer {
    let headers = settlement.headers();
    if !whole.status.is_success() {
        // the upstream refused the request itself (4xx): relay it, bill nothing
        out.relayed_client_error = true;
        settlement.finish(Usage::default(), UsageStatus::UpstreamFailed);
        return Ok(relay_client_error(whole.status, whole.body));
    }
    let usage = whole.usage.unwrap_or(Usage {
        prompt_tokens: v.input_estimate,
        completion_tokens: 0,
        estimated: true,
    });
    settlement.finish(usage, UsageStatus::Completed);
    if let Some(g) = idem {
        let fits = whole.body.len() <= gw.settings.limits.idempotency_body_bytes_max;
        g.complete(fits.then(|| Stored {
            status: whole.status.as_u16(),
            body: whole.body.clone(),
        }));
    }
    let mut r = json_bytes(whole.status, whole.body);
    for (k, val) in headers {
        r.headers_mut().insert(k, val);
    }
    Ok(r)
}

/// An upstream 4xx: passed through when it is OpenAI-shaped, wrapped otherwise.
fn relay_client_error(status: StatusCode, body: Bytes) -> Response<Body> {
    let shaped = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.get("error").is_some_and(|e| e.is_object()));
    if shaped {
        return json_bytes(status, body);
    }
    let msg: String = String::from_utf8_lossy(&body).chars().take(500).collect();
    let v = json!({"error": {"message": format!("The model server refused the request: {msg}"),
        "type": "invalid_request_error", "param": null, "code": "upstream_rejected"}});
    json(status, &v)
}

fn replay(gw: &Gw, s: Stored) -> Response<Body> {
    gw.metrics.replay();
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
    let mut r = json_bytes(status, s.body);
    r.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}
