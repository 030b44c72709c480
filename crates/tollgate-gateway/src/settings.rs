//! Gateway settings: listeners, size and time limits, routing and health parameters. Every field
//! has a production default; the CLI exposes the ones operators tune.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Quota store nodes (`host:port`), tried in turn for the config watch.
    pub store: Vec<String>,
    /// Operator token the gateway presents to the store.
    pub store_token: Option<String>,
    /// This gateway's identity towards the store (leases, usage).
    pub gateway_id: String,
    pub data_dir: PathBuf,
    /// PEM certificate chain and private key: serve HTTPS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub routing: Routing,
    pub quota: crate::quota::QuotaSettings,
    /// Keep the usage journal (`<data-dir>/journal`). Off only to measure its cost: usage
    /// records then live in memory until shipped, and a crash loses them.
    pub journal: bool,
    /// How often the journal is `fdatasync`ed while written to: what a power loss can take.
    pub journal_sync: std::time::Duration,
    /// Mutual TLS to the store (the cluster CA, this gateway's certificate and key).
    pub store_tls: Option<tollgate_proto::tls::TlsFiles>,
    /// Customer connections are served by this many event loops, each a single-threaded
    /// runtime on its own thread sharing the listener; 0 serves them on the caller's runtime.
    pub event_loops: usize,
}

/// Size and connection limits on the customer listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger gets 413.
    pub body_bytes_max: usize,
    /// Largest request head (request line + headers) hyper buffers.
    pub header_bytes_max: usize,
    /// Time allowed to receive a request head.
    pub header_read_timeout: Duration,
    /// Time allowed to receive the request body.
    pub body_read_timeout: Duration,
    /// Open customer connections at most; more wait in the accept backlog.
    pub connections_max: usize,
    /// Largest non-streaming upstream response body.
    pub upstream_body_bytes_max: usize,
    /// Idempotency keys remembered per gateway, and for how long.
    pub idempotency_keys_max: usize,
    pub idempotency_ttl: Duration,
    /// Largest response stored for idempotent replay.
    pub idempotency_body_bytes_max: usize,
}

/// Upstream timeouts.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the upstream's response head (for non-streaming requests: the whole generation).
    pub first_byte: Duration,
    /// Longest silence between two chunks of a stream.
    pub stream_idle: Duration,
    /// Whole request, queueing and retries included.
    pub total: Duration,
}

/// Routing, health and backpressure parameters.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Tries per request (the first included), across endpoints and tiers.
    pub attempts_max: u32,
    /// Retries allowed as a fraction of requests (plus `retry_budget_min_per_sec`).
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_sec: u32,
    /// Consecutive failures that eject (open the circuit of) an endpoint.
    pub eject_after_failures: u32,
    /// First ejection; doubled per repeated ejection up to `eject_max`.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// Most concurrent requests per endpoint.
    pub endpoint_inflight_max: u32,
    /// Requests waiting for a saturated pool, and how long each may wait.
    pub queue_max: usize,
    pub queue_timeout: Duration,
    /// Active health probes (`GET {endpoint}/models`).
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Longest upstream `Retry-After` honoured.
    pub retry_after_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 4 << 20,
            header_bytes_max: 64 << 10,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            connections_max: 10_000,
            upstream_body_bytes_max: 32 << 20,
            idempotency_keys_max: 100_000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_body_bytes_max: 1 << 20,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(120),
            stream_idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            attempts_max: 3,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            eject_after_failures: 5,
            eject_base: Duration::from_secs(5),
            eject_max: Duration::from_secs(120),
            endpoint_inflight_max: 1024,
            queue_max: 1024,
            queue_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(60),
        }
    }
}

impl Settings {
    pub fn new(listen: SocketAddr, store: Vec<String>, data_dir: PathBuf) -> Settings {
        Settings {
            listen,
            store,
            store_token: None,
            gateway_id: format!("gw-{}", listen.port()),
            data_dir,
            tls_cert: None,
            tls_key: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            routing: Routing::default(),
            quota: crate::quota::QuotaSettings::default(),
            journal: true,
            journal_sync: crate::journal::SYNC_EVERY,
            event_loops: 0,
            store_tls: None,
        }
    }
}
