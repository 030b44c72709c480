//! `tollgate gateway`: an OpenAI-compatible gateway node fed by the quota store.

use super::store_cmd::wait_for_signal;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tollgate_gateway::Settings;
use tollgate_types::lease::{LEASE_TTL_MS, REQUEST_DURATION_MAX_MS};

#[derive(Args)]
pub struct GatewayArgs {
    /// Customer listener (HTTP, or HTTPS with --tls-cert/--tls-key).
    #[arg(long, default_value = "127.0.0.1:7600")]
    pub listen: SocketAddr,
    /// Quota store nodes (host:port), comma separated.
    #[arg(long, env = "TOLLGATE_STORE", value_delimiter = ',', required = true)]
    pub store: Vec<String>,
    /// Operator token the gateway presents to the store.
    #[arg(long, env = "TOLLGATE_STORE_TOKEN", hide_env_values = true)]
    pub store_token: Option<String>,
    /// Directory for the gateway's local state (usage journal).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// This gateway's id towards the store (default: gw-<port>).
    #[arg(long)]
    pub gateway_id: Option<String>,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS to the store: `--store-ca`, `--store-cert`, `--store-key` (a gateway
    /// certificate from `tollgate certs issue --role gateway`).
    #[command(flatten)]
    pub store_tls: super::StoreTlsArgs,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub hooks: super::hooks_args::HooksArgs,
}

/// Limits, timeouts and routing knobs (defaults suit production).
#[derive(Args, Clone, Default)]
pub struct Tuning {
    /// Largest request body in bytes (larger gets 413).
    #[arg(long)]
    pub body_bytes_max: Option<usize>,
    /// Largest upstream answer read whole, and largest single stream event, in bytes.
    #[arg(long)]
    pub upstream_body_bytes_max: Option<usize>,
    /// Upstream connect timeout.
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    /// Time until the upstream's response head.
    #[arg(long)]
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest silence between two stream chunks.
    #[arg(long)]
    pub stream_idle_timeout_ms: Option<u64>,
    /// Whole-request time limit.
    #[arg(long)]
    pub total_timeout_ms: Option<u64>,
    /// Tries per request, the first included.
    #[arg(long)]
    pub attempts_max: Option<u32>,
    /// Consecutive failures that eject an endpoint.
    #[arg(long)]
    pub eject_after_failures: Option<u32>,
    /// First ejection time (doubles on repeats).
    #[arg(long)]
    pub eject_base_ms: Option<u64>,
    /// Concurrent requests per endpoint.
    #[arg(long)]
    pub endpoint_inflight_max: Option<u32>,
    /// Requests allowed to wait for a saturated pool.
    #[arg(long)]
    pub queue_max: Option<usize>,
    /// How long a request may wait in that queue.
    #[arg(long)]
    pub queue_timeout_ms: Option<u64>,
    /// Active health probe interval.
    #[arg(long)]
    pub probe_interval_ms: Option<u64>,
    /// Longest a request waits for a lease refresh when its lease runs short.
    #[arg(long)]
    pub admit_wait_ms: Option<u64>,
    /// Regular lease refresh interval.
    #[arg(long)]
    pub lease_refresh_ms: Option<u64>,
    /// Run without the usage journal (to measure its cost only: a crash then loses the usage
    /// records not yet shipped).
    #[arg(long)]
    pub no_journal: bool,
    /// How often the usage journal is fsynced while written to (1-1000): the most a power loss
    /// or kernel crash can take of it (a killed process loses nothing). Default 2.
    #[arg(long)]
    pub journal_sync_ms: Option<u64>,
    /// Event loops serving customer connections, one thread each (default: one per core; 0:
    /// on the shared worker pool).
    #[arg(long, env = "TOLLGATE_EVENT_LOOPS")]
    pub event_loops: Option<usize>,
}

fn ms(v: Option<u64>, into: &mut Duration) {
    if let Some(v) = v {
        *into = Duration::from_millis(v);
    }
}

impl Tuning {
    pub fn apply(&self, s: &mut Settings) -> anyhow::Result<()> {
        if let Some(b) = self.body_bytes_max {
            s.limits.body_bytes_max = b;
        }
        if let Some(b) = self.upstream_body_bytes_max {
            s.limits.upstream_body_bytes_max = b;
        }
        ms(self.connect_timeout_ms, &mut s.timeouts.connect);
        ms(self.first_byte_timeout_ms, &mut s.timeouts.first_byte);
        ms(self.stream_idle_timeout_ms, &mut s.timeouts.stream_idle);
        ms(self.total_timeout_ms, &mut s.timeouts.total);
        let r = &mut s.routing;
        if let Some(v) = self.attempts_max {
            r.attempts_max = v;
        }
        if let Some(v) = self.eject_after_failures {
            r.eject_after_failures = v;
        }
        ms(self.eject_base_ms, &mut r.eject_base);
        if let Some(v) = self.endpoint_inflight_max {
            r.endpoint_inflight_max = v;
        }
        if let Some(v) = self.queue_max {
            r.queue_max = v;
        }
        ms(self.queue_timeout_ms, &mut r.queue_timeout);
        ms(self.probe_interval_ms, &mut r.probe_interval);
        ms(self.admit_wait_ms, &mut s.quota.admit_wait);
        s.journal = !self.no_journal;
        s.event_loops = match self.event_loops {
            Some(n) => {
                anyhow::ensure!(n <= 256, "--event-loops must be between 0 and 256");
                n
            }
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if let Some(v) = self.journal_sync_ms {
            anyhow::ensure!(
                (1..=1000).contains(&v),
                "--journal-sync-ms must be between 1 and 1000 (milliseconds)"
            );
            s.journal_sync = Duration::from_millis(v);
        }
        if let Some(v) = self.lease_refresh_ms {
            anyhow::ensure!(
                (100..=LEASE_TTL_MS / 2).contains(&v),
                "--lease-refresh-ms must be between 100 and {} (half the lease TTL)",
                LEASE_TTL_MS / 2
            );
            s.quota.refresh = Duration::from_millis(v);
            s.quota.horizon = Duration::from_millis(2 * v);
        }
        anyhow::ensure!(
            s.timeouts.total <= Duration::from_millis(REQUEST_DURATION_MAX_MS),
            "--total-timeout-ms must be at most {REQUEST_DURATION_MAX_MS}: the store keeps a lease's hold that long after the lease for requests still running"
        );
        Ok(())
    }
}

/// Gateway ids name lease holders in the store: `[A-Za-z0-9-_.]`, at most 48 characters.
pub fn check_gateway_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 48
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    anyhow::ensure!(
        ok,
        "--gateway-id {id:?}: use 1-48 characters of letters, digits, '-', '_' and '.'"
    );
    Ok(())
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    args.hooks.install()?;
    let mut s = Settings::new(args.listen, args.store, args.data_dir);
    s.store_token = args.store_token;
    s.store_tls = args.store_tls.files()?;
    if let Some(id) = args.gateway_id {
        check_gateway_id(&id)?;
        s.gateway_id = id;
    }
    s.tls_cert = args.tls_cert;
    s.tls_key = args.tls_key;
    args.tuning.apply(&mut s)?;
    let scheme = if s.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let handle = tollgate_gateway::start(s)
        .await
        .context("starting the gateway")?;
    eprintln!(
        "tollgate gateway: listening on {scheme}://{}/v1",
        handle.addr
    );
    wait_for_signal().await;
    handle.shutdown().await;
    Ok(())
}
