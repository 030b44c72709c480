//! Prometheus metrics with bounded labels: routes and error codes are fixed enums, endpoints come
//! from configuration (operator-bounded), never key ids or request data.

use crate::router::Router;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate_types::ErrorCode;

/// Route label of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Chat = 0,
    Completions,
    Embeddings,
    Models,
    Ops,
    Other,
}

const ROUTES: [&str; 6] = [
    "chat_completions",
    "completions",
    "embeddings",
    "models",
    "ops",
    "other",
];
/// Outcome label: "ok", a Tollgate error code, or "upstream_client_error" (a 4xx relayed).
const CODES: usize = ErrorCode::ALL.len() + 2;
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
const STREAM_ENDS: [&str; 6] = [
    "client_gone",
    "upstream_closed",
    "upstream_broken",
    "idle_timeout",
    "total_timeout",
    "other",
];

#[derive(Debug)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
    }
}

#[derive(Debug)]
pub struct Metrics {
    requests: [[AtomicU64; CODES]; ROUTES.len()],
    duration: [Histogram; ROUTES.len()],
    ttft: Histogram,
    retries: AtomicU64,
    replays: AtomicU64,
    stream_ends: [AtomicU64; STREAM_ENDS.len()],
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    pub config_version: AtomicU64,
    pub config_updates: AtomicU64,
    pub store_connected: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            duration: std::array::from_fn(|_| Histogram::new()),
            ttft: Histogram::new(),
            retries: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            stream_ends: std::array::from_fn(|_| AtomicU64::new(0)),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            config_version: AtomicU64::new(0),
            config_updates: AtomicU64::new(0),
            store_connected: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

fn code_index(code: Option<ErrorCode>, relayed_client_error: bool) -> usize {
    match code {
        None if relayed_client_error => CODES - 1,
        None => 0,
        Some(c) => 1 + ErrorCode::ALL.iter().position(|x| *x == c).unwrap_or(0),
    }
}

fn code_name(i: usize) -> &'static str {
    match i {
        0 => "ok",
        i if i == CODES - 1 => "upstream_client_error",
        i => ErrorCode::ALL[i - 1].as_str(),
    }
}

impl Metrics {
    pub fn request(
        &self,
        route: RouteLabel,
        code: Option<ErrorCode>,
        relayed_client_error: bool,
        d: Duration,
    ) {
        let r = route as usize;
        self.requests[r][code_index(code, relayed_client_error)].fetch_add(1, Ordering::Relaxed);
        self.duration[r].observe(d);
    }

    pub fn ttft(&self, d: Duration) {
        self.ttft.observe(d);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
    }

    pub fn stream_end(&self, reason: &str) {
        let i = STREAM_ENDS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(STREAM_ENDS.len() - 1);
        self.stream_ends[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, router: &Router, admission_mode: &str, idempotency_keys: usize) -> String {
        let mut o = String::with_capacity(16 << 10);
        let _ = writeln!(o, "# TYPE tollgate_gateway_requests_total counter");
        for (r, route) in ROUTES.iter().enumerate() {
            for c in 0..CODES {
                let n = self.requests[r][c].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "tollgate_gateway_requests_total{{route=\"{route}\",code=\"{}\"}} {n}",
                        code_name(c)
                    );
                }
            }
        }
        let _ = writeln!(
            o,
            "# TYPE tollgate_gateway_request_duration_seconds histogram"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            self.duration[r].render(
                &mut o,
                "tollgate_gateway_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        let _ = writeln!(o, "# TYPE tollgate_gateway_upstream_ttft_seconds histogram");
        self.ttft
            .render(&mut o, "tollgate_gateway_upstream_ttft_seconds", "");
        let _ = writeln!(o, "# TYPE tollgate_gateway_stream_failures_total counter");
        for (i, reason) in STREAM_ENDS.iter().enumerate() {
            let n = self.stream_ends[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "tollgate_gateway_stream_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        self.render_scalars(&mut o, router, admission_mode, idempotency_keys);
        render_endpoints(&mut o, router);
        o
    }

    fn render_scalars(&self, o: &mut String, router: &Router, mode: &str, idem: usize) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let scalars = [
            (
                "tollgate_gateway_retries_total",
                "counter",
                load(&self.retries),
            ),
            (
                "tollgate_gateway_idempotent_replays_total",
                "counter",
                load(&self.replays),
            ),
            (
                "tollgate_gateway_prompt_tokens_total",
                "counter",
                load(&self.prompt_tokens),
            ),
            (
                "tollgate_gateway_completion_tokens_total",
                "counter",
                load(&self.completion_tokens),
            ),
            (
                "tollgate_gateway_config_version",
                "gauge",
                load(&self.config_version),
            ),
            (
                "tollgate_gateway_config_updates_total",
                "counter",
                load(&self.config_updates),
            ),
            (
                "tollgate_gateway_store_connected",
                "gauge",
                load(&self.store_connected),
            ),
            (
                "tollgate_gateway_queue_depth",
                "gauge",
                router.queued() as u64,
            ),
            ("tollgate_gateway_idempotency_keys", "gauge", idem as u64),
            (
                "tollgate_gateway_uptime_seconds",
                "gauge",
                self.started.elapsed().as_secs(),
            ),
        ];
        for (name, kind, v) in scalars {
            let _ = writeln!(o, "# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# TYPE tollgate_gateway_admission_mode gauge\ntollgate_gateway_admission_mode{{mode=\"{mode}\"}} 1"
        );
    }
}

fn render_endpoints(o: &mut String, router: &Router) {
    let now = Instant::now();
    let _ = writeln!(o, "# TYPE tollgate_gateway_endpoint_inflight gauge");
    let _ = writeln!(o, "# TYPE tollgate_gateway_endpoint_ejected gauge");
    let _ = writeln!(o, "# TYPE tollgate_gateway_endpoint_attempts_total counter");
    let _ = writeln!(
        o,
        "# TYPE tollgate_gateway_endpoint_ejections_total counter"
    );
    for e in router.all() {
        let url = e.url.replace('"', "");
        let _ = writeln!(
            o,
            "tollgate_gateway_endpoint_inflight{{endpoint=\"{url}\"}} {}",
            e.inflight()
        );
        let _ = writeln!(
            o,
            "tollgate_gateway_endpoint_ejected{{endpoint=\"{url}\"}} {}",
            u8::from(e.ejected(now))
        );
        for (outcome, n) in [("success", &e.successes), ("failure", &e.failures)] {
            let _ = writeln!(
                o,
                "tollgate_gateway_endpoint_attempts_total{{endpoint=\"{url}\",outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "tollgate_gateway_endpoint_ejections_total{{endpoint=\"{url}\"}} {}",
            e.ejections_total.load(Ordering::Relaxed)
        );
    }
}
