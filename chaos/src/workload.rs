//! The workload: client tasks sending chat completions (streaming and not) through random
//! gateways with the tenants' keys, some with an `Idempotency-Key` retried after a failure, and
//! recording every attempt's outcome — the history the checker judges.

use crate::http::{HttpClient, HttpError, Resp, request};
use crate::tenants::{MAX_TOKENS, MODEL, TenantKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-attempt deadline (the gateway's own total timeout is 30 s).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(40);
/// Retries of an idempotent request after a failure (or one deliberate repeat after success),
/// on the same gateway.
const IDEMPOTENT_RETRIES: u32 = 3;

/// One attempt as the client saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub client: u32,
    pub seq: u64,
    /// Tenant key name (`budget`, `rate`, `bulk`).
    pub key: String,
    pub gateway: usize,
    pub stream: bool,
    pub idempotency_key: Option<String>,
    /// 0, 1, …: which try of the same idempotency key.
    pub retry: u32,
    /// Milliseconds from the start of the run.
    pub sent_ms: u64,
    pub ended_ms: u64,
    /// 0 when no response head arrived.
    pub status: u16,
    /// OpenAI error code of a refusal (`rate_limit_exceeded`, `insufficient_quota`, …), or the
    /// transport error.
    pub error: String,
    /// The gateway's request id (the ledger id), when a head arrived.
    pub request_id: Option<String>,
    /// A whole 200 response: a JSON body with usage, or a stream that reached `[DONE]`.
    pub complete: bool,
    /// Prompt and completion tokens the response reported.
    pub usage: Option<(u64, u64)>,
    /// Answered from the gateway's idempotency store (`idempotent-replayed: true`).
    pub replayed: bool,
}

impl Attempt {
    pub fn refused(&self) -> bool {
        self.status == 429
    }
}

pub struct Workload {
    pub attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
struct Ctx {
    http: HttpClient,
    gateways: Vec<String>,
    keys: Vec<TenantKey>,
    start: Instant,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    /// Pause between a client's requests.
    think: Duration,
}

impl Workload {
    /// Starts `clients` tasks (seeded from `seed`) against `gateways`.
    pub fn start(
        gateways: Vec<String>,
        keys: Vec<TenantKey>,
        clients: u32,
        think: Duration,
        seed: u64,
        start: Instant,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let ctx = Ctx {
            http: crate::http::client(),
            gateways,
            keys,
            start,
            stop: stop.clone(),
            attempts: attempts.clone(),
            think,
        };
        let tasks = (0..clients)
            .map(|c| {
                let ctx = ctx.clone();
                let rng = StdRng::seed_from_u64(
                    seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(c as u64 + 1)),
                );
                tokio::spawn(client_loop(ctx, c, rng))
            })
            .collect();
        Workload {
            attempts,
            stop,
            tasks,
        }
    }

    /// Stops sending and waits for the attempts in flight (each bounded by its deadline).
    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let v = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.clone()
    }
}

fn pick_key(keys: &[TenantKey], rng: &mut StdRng) -> usize {
    let total: u32 = keys.iter().map(|k| k.weight).sum::<u32>().max(1);
    let mut x = rng.random_range(0..total);
    for (i, k) in keys.iter().enumerate() {
        if x < k.weight {
            return i;
        }
        x -= k.weight;
    }
    0
}

async fn client_loop(ctx: Ctx, client: u32, mut rng: StdRng) {
    let mut seq = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let key = pick_key(&ctx.keys, &mut rng);
        let gateway = rng.random_range(0..ctx.gateways.len());
        let stream = rng.random_bool(0.5);
        let idem = (!stream && rng.random_bool(0.3)).then(|| format!("chaos-{client}-{seq}"));
        let words = rng.random_range(3..12);
        for retry in 0..=IDEMPOTENT_RETRIES {
            let a = attempt(
                &ctx,
                client,
                seq,
                key,
                gateway,
                stream,
                idem.as_deref(),
                retry,
                words,
            )
            .await;
            // an idempotent request is retried after a failure, and a quarter of the completed
            // ones are sent once more on purpose (that repeat must be a replay, not a rerun)
            let repeat = idem.is_some() && a.complete && !a.replayed && rng.random_bool(0.25);
            let again = idem.is_some() && (repeat || (!a.complete && retryable(&a)));
            let failed = a.status == 0 || a.status >= 500;
            ctx.attempts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(a);
            if !again || ctx.stop.load(Ordering::Relaxed) {
                if failed {
                    // back off from a failing gateway a little
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seq += 1;
        tokio::time::sleep(ctx.think).await;
    }
}

fn retryable(a: &Attempt) -> bool {
    a.status == 0 || a.status == 409 || a.status >= 500 || (a.status == 200 && !a.complete)
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    ctx: &Ctx,
    client: u32,
    seq: u64,
    key: usize,
    gateway: usize,
    stream: bool,
    idem: Option<&str>,
    retry: u32,
    words: usize,
) -> Attempt {
    let k = &ctx.keys[key];
    let content = vec!["ledger"; words].join(" ");
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(i) = idem {
        // the upstream records it: executions per key are counted where they happen (GW-4)
        body["user"] = json!(crate::checker::idem_tag(i));
    }
    let auth = format!("Bearer {}", k.secret);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(i) = idem {
        headers.push(("idempotency-key", i));
    }
    let url = format!("http://{}/v1/chat/completions", ctx.gateways[gateway]);
    let sent_ms = ctx.start.elapsed().as_millis() as u64;
    let r = request(
        &ctx.http,
        "POST",
        &url,
        &headers,
        &body.to_string(),
        ATTEMPT_TIMEOUT,
    )
    .await;
    let mut a = Attempt {
        client,
        seq,
        key: k.name.clone(),
        gateway,
        stream,
        idempotency_key: idem.map(str::to_owned),
        retry,
        sent_ms,
        ended_ms: ctx.start.elapsed().as_millis() as u64,
        ..Attempt::default()
    };
    match r {
        Ok(resp) => judge(&mut a, &resp, true),
        Err(HttpError::BodyCut { head, error }) => {
            judge(&mut a, &head, false);
            a.error = format!("body cut: {error}");
        }
        Err(HttpError::NoResponse(e)) => a.error = e,
    }
    a
}

/// Fills status, ids, completeness and usage from a response (`whole`: the body ended cleanly).
fn judge(a: &mut Attempt, r: &Resp, whole: bool) {
    a.status = r.status;
    a.request_id = r.header("x-request-id").map(str::to_owned);
    a.replayed = r.header("idempotent-replayed") == Some("true");
    if r.status != 200 {
        a.error = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("http {}", r.status));
        return;
    }
    let usage_of = |v: &Value| -> Option<(u64, u64)> {
        Some((
            v["usage"]["prompt_tokens"].as_u64()?,
            v["usage"]["completion_tokens"].as_u64()?,
        ))
    };
    if a.stream {
        let mut done = false;
        let mut errored = false;
        for line in r.body.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                if line.starts_with("event: error") {
                    errored = true;
                }
                continue;
            };
            if data == "[DONE]" {
                done = true;
            } else if let Ok(v) = serde_json::from_str::<Value>(data) {
                if v.get("error").is_some() {
                    errored = true;
                }
                if let Some(u) = usage_of(&v) {
                    a.usage = Some(u);
                }
            }
        }
        a.complete = whole && done && !errored && a.usage.is_some();
    } else {
        a.usage = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| usage_of(&v));
        a.complete = whole && a.usage.is_some();
    }
}
