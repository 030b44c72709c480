//! Request handlers: the OpenAI-compatible endpoints and the control endpoints.

use crate::stats::Served;
use crate::tokens::{count_input, count_messages, generate};
use crate::{BODY_BYTES_MAX, Behavior, Body, Mock};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str, param: Option<&str>) -> Response<Body> {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": null}}),
    )
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn handle(mock: Arc<Mock>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let behavior = mock.behavior();
    let path = req.uri().path().to_owned();
    let control = path.starts_with("/mock/");
    let mut resp = if behavior.down && !control {
        error(StatusCode::SERVICE_UNAVAILABLE, "upstream is down", None)
    } else {
        route(&mock, behavior.clone(), req, &path).await
    };
    if let Ok(v) = behavior.name.parse() {
        resp.headers_mut().insert("x-mock-name", v);
    }
    Ok(resp)
}

async fn route(
    mock: &Arc<Mock>,
    behavior: Behavior,
    req: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let method = req.method().clone();
    match (method, path) {
        (Method::GET, "/healthz") => full(StatusCode::OK, "text/plain", "ok\n"),
        (Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
                {"id": "mock", "object": "model", "created": 0, "owned_by": "tollgate-mock"}
            ]}),
        ),
        (Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            let id = request_id(mock, &req);
            let body = match read_json(req).await {
                Ok(v) => v,
                Err(resp) => return resp,
            };
            mock.remember(&body);
            inference(mock, behavior, path, id, body).await
        }
        (Method::GET, "/mock/behavior") => match serde_json::to_value(&behavior) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
        },
        (Method::POST, "/mock/behavior") => {
            let patch = match read_json(req).await {
                Ok(v) => v,
                Err(resp) => return resp,
            };
            match behavior.patched(&patch) {
                Ok(next) => {
                    let v = serde_json::to_value(&next).unwrap_or(Value::Null);
                    mock.set_behavior(next);
                    json_response(StatusCode::OK, &v)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e, None),
            }
        }
        (Method::GET, "/mock/last_request") => match mock.last_request() {
            Some(v) => json_response(StatusCode::OK, &v),
            None => error(StatusCode::NOT_FOUND, "no request yet", None),
        },
        (Method::GET, "/mock/stats") => json_response(StatusCode::OK, &json!(mock.stats.totals())),
        (Method::GET, "/mock/served") => {
            let all: serde_json::Map<String, Value> = mock
                .stats
                .all()
                .into_iter()
                .map(|(id, s, d)| (id, served_json(&s, &d)))
                .collect();
            json_response(StatusCode::OK, &Value::Object(all))
        }
        (Method::DELETE, "/mock/served") => {
            mock.stats.reset();
            json_response(StatusCode::OK, &json!({"reset": true}))
        }
        (Method::GET, p) if p.starts_with("/mock/served/") => {
            let id = &p["/mock/served/".len()..];
            match mock.stats.get(id) {
                Some(s) => json_response(
                    StatusCode::OK,
                    &served_json(&s, &mock.stats.detail(id).unwrap_or_default()),
                ),
                None => error(StatusCode::NOT_FOUND, "no request with this id", None),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint", None),
    }
}

/// One id's oracle entry: the sums over its tries, each try, and its `user` tag.
fn served_json(s: &crate::stats::Served, d: &crate::stats::Detail) -> Value {
    let mut v = json!(s);
    v["tries"] = json!(d.tries);
    v["user"] = json!(d.user);
    v
}

/// The caller's `x-request-id`, or a generated one.
fn request_id(mock: &Mock, req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("mock-{}", mock.requests.load(Ordering::Relaxed)))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes = Limited::new(req.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("reading body: {e}"), None))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}"), None))
}

/// What kind of inference request this is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
    Embedding,
}

async fn inference(
    mock: &Arc<Mock>,
    b: Behavior,
    path: &str,
    id: String,
    body: Value,
) -> Response<Body> {
    let n = mock.requests.fetch_add(1, Ordering::Relaxed);
    let _inflight = mock.stats.enter();
    let kind = match path {
        "/v1/chat/completions" => Kind::Chat,
        "/v1/completions" => Kind::Completion,
        _ => Kind::Embedding,
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned();
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        mock.stats.tag(&id, user);
    }
    let prompt_tokens = match kind {
        Kind::Chat => count_messages(body.get("messages").unwrap_or(&Value::Null)),
        Kind::Completion => count_input(body.get("prompt").unwrap_or(&Value::Null)),
        Kind::Embedding => count_input(body.get("input").unwrap_or(&Value::Null)),
    };
    if b.fails(n) {
        mock.stats.record(
            &id,
            Served {
                prompt_tokens: 0,
                completion_tokens: 0,
                status: b.fail_status,
                complete: true,
                stream: false,
                attempts: 1,
            },
        );
        let status = StatusCode::from_u16(b.fail_status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut r = error(status, "injected failure", None);
        if let Some(s) = b.retry_after_s
            && let Ok(v) = s.to_string().parse()
        {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        return r;
    }
    if kind == Kind::Embedding {
        return embeddings(mock, &b, &id, &model, &body, prompt_tokens).await;
    }
    let requested = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64));
    let completion = match requested {
        Some(m) => m.min(u64::from(b.completion_tokens)),
        None => u64::from(b.completion_tokens),
    };
    let finish = if requested == Some(completion) {
        "length"
    } else {
        "stop"
    };
    let g = Generation {
        kind,
        id: format!(
            "{}-mock-{n}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            }
        ),
        request_id: id,
        model,
        created: now_s(),
        prompt_tokens,
        completion,
        finish,
        seed: b.seed ^ n,
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        stream(mock.clone(), b, g, usage)
    } else {
        whole(mock, &b, g).await
    }
}

struct Generation {
    kind: Kind,
    id: String,
    request_id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    completion: u64,
    finish: &'static str,
    seed: u64,
}

impl Generation {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt_tokens + self.completion,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Chat, false) => "chat.completion",
            _ => "text_completion",
        }
    }

    fn choice(&self, text: &str, finish: Option<&str>, chunk: bool, first: bool) -> Value {
        match (self.kind, chunk) {
            (Kind::Chat, false) => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": finish,
            }),
            (Kind::Chat, true) => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if finish.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            _ => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
        }
    }

    /// One SSE event; `usage` is only present when the client asked for it (null until the end).
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Bytes {
        let mut v = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "system_fingerprint": "tollgate-mock",
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (usage, v.as_object_mut()) {
            obj.insert("usage".into(), u);
        }
        Bytes::from(format!("data: {v}\n\n"))
    }
}

/// Sleeps until `at`; returns at once when it has passed (a zero sleep still waits for the next
/// timer tick, about a millisecond).
async fn wait_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(at.into()).await;
    }
}

fn pace(b: &Behavior, start: Instant, tokens: u64) -> Option<Instant> {
    let ttft = start + Duration::from_millis(b.ttft_ms);
    if b.tokens_per_sec == 0 {
        return Some(ttft);
    }
    let micros = tokens.saturating_mul(1_000_000) / b.tokens_per_sec;
    Some(ttft + Duration::from_micros(micros))
}

/// Records a non-streaming request whose caller went away before the response was written
/// (the handler is dropped mid-generation): the prompt was read, nothing was sent.
struct Abandoned<'a> {
    mock: &'a Mock,
    id: &'a str,
    prompt_tokens: u64,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.mock.stats.record(
                self.id,
                Served {
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: 0,
                    status: 499,
                    complete: false,
                    stream: false,
                    attempts: 1,
                },
            );
        }
    }
}

async fn whole(mock: &Mock, b: &Behavior, g: Generation) -> Response<Body> {
    let start = Instant::now();
    let mut abandoned = Abandoned {
        mock,
        id: &g.request_id,
        prompt_tokens: g.prompt_tokens,
        armed: true,
    };
    if let Some(at) = pace(b, start, g.completion) {
        wait_until(at).await;
    }
    abandoned.armed = false;
    let text = generate(g.seed, 0, g.completion);
    let v = json!({
        "id": g.id, "object": g.object(false), "created": g.created,
        "model": g.model, "system_fingerprint": "tollgate-mock",
        "choices": [g.choice(&text, Some(g.finish), false, true)],
        "usage": g.usage(),
    });
    mock.stats.record(
        &g.request_id,
        Served {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion,
            status: 200,
            complete: true,
            stream: false,
            attempts: 1,
        },
    );
    json_response(StatusCode::OK, &v)
}

/// Records what a stream served when the producer ends, however it ends.
struct StreamRecord {
    mock: Arc<Mock>,
    id: String,
    served: Served,
}

impl Drop for StreamRecord {
    fn drop(&mut self) {
        self.mock.stats.record(&self.id, self.served);
    }
}

/// Pause between the last chunk and an injected connection drop.
const DROP_LINGER: Duration = Duration::from_millis(20);

type Tx = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn stream(mock: Arc<Mock>, b: Behavior, g: Generation, include_usage: bool) -> Response<Body> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(produce(mock, b, g, include_usage, tx));
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

async fn send(tx: &Tx, bytes: Bytes) -> bool {
    tx.send(Ok(Frame::data(bytes))).await.is_ok()
}

async fn produce(mock: Arc<Mock>, b: Behavior, g: Generation, include_usage: bool, tx: Tx) {
    let start = Instant::now();
    let mut rec = StreamRecord {
        mock,
        id: g.request_id.clone(),
        served: Served {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: 0,
            status: 200,
            complete: false,
            stream: true,
            attempts: 1,
        },
    };
    let usage_null = include_usage.then_some(Value::Null);
    let mut sent = 0u64;
    let mut first = true;
    while sent < g.completion {
        if b.stall_after_tokens.is_some_and(|s| sent >= u64::from(s)) {
            tx.closed().await;
            return;
        }
        if b.drop_after_tokens.is_some_and(|d| sent >= u64::from(d)) {
            // let what was sent reach the wire first, as in a real crash mid-generation
            while tx.capacity() < tx.max_capacity() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(DROP_LINGER).await;
            let _ = tx
                .send(Err(std::io::Error::other("injected mid-stream drop")))
                .await;
            return;
        }
        let next = (sent + u64::from(b.chunk_tokens)).min(g.completion);
        let next = cut(next, sent, b.stall_after_tokens);
        let next = cut(next, sent, b.drop_after_tokens);
        if let Some(at) = pace(&b, start, next) {
            wait_until(at).await;
        }
        let text = generate(g.seed, sent, next);
        let choice = g.choice(&text, None, true, first);
        if !send(&tx, g.chunk(json!([choice]), usage_null.clone())).await {
            return;
        }
        first = false;
        rec.served.completion_tokens = next;
        sent = next;
    }
    if g.completion == 0
        && let Some(at) = pace(&b, start, 0)
    {
        wait_until(at).await;
    }
    let last = g.choice("", Some(g.finish), true, first);
    if !send(&tx, g.chunk(json!([last]), usage_null)).await {
        return;
    }
    if include_usage && !send(&tx, g.chunk(json!([]), Some(g.usage()))).await {
        return;
    }
    if send(&tx, Bytes::from_static(b"data: [DONE]\n\n")).await {
        rec.served.complete = true;
    }
}

/// Ends a chunk at a fault point so the fault happens after exactly that many tokens.
fn cut(next: u64, sent: u64, at: Option<u32>) -> u64 {
    match at {
        Some(a) if u64::from(a) > sent => next.min(u64::from(a)),
        _ => next,
    }
}

async fn embeddings(
    mock: &Mock,
    b: &Behavior,
    id: &str,
    model: &str,
    body: &Value,
    prompt_tokens: u64,
) -> Response<Body> {
    if b.ttft_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.ttft_ms)).await;
    }
    let inputs = match body.get("input") {
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.len(),
        _ => 1,
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map(|d| d.min(u64::from(crate::behavior::EMBEDDING_DIMS_MAX)))
        .unwrap_or(u64::from(b.embedding_dims)) as usize;
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let v: Vec<f32> = (0..dims)
                .map(|d| {
                    let h = crate::tokens::mix(b.seed ^ ((i as u64) << 32) ^ d as u64);
                    (h % 2000) as f32 / 1000.0 - 1.0
                })
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    mock.stats.record(
        id,
        Served {
            prompt_tokens,
            completion_tokens: 0,
            status: 200,
            complete: true,
            stream: false,
            attempts: 1,
        },
    );
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    )
}
