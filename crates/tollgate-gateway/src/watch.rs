//! The config watch: a long-lived `WatchConfig` stream to one store node at a time (rotating
//! through `--store` on failure, with backoff). Each snapshot is indexed and swapped in
//! atomically; requests in flight keep the snapshot they started with. While no store is
//! reachable the gateway keeps serving from its last snapshot.

use crate::Gw;
use crate::snapshot::Snapshot;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tollgate_proto::quota::WatchConfigRequest;
use tollgate_proto::quota::quota_client::QuotaClient;
use tollgate_types::config::GatewayConfig;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest config snapshot accepted.
const CONFIG_BYTES_MAX: usize = 256 << 20;

pub async fn run(gw: Arc<Gw>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    let mut i = 0usize;
    loop {
        let addr = gw.settings.store[i % gw.settings.store.len().max(1)].clone();
        i += 1;
        let result = tokio::select! {
            r = follow(&gw, &addr) => r,
            _ = stop.changed() => return,
        };
        gw.metrics.store_connected.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                tracing::warn!(store = %addr, "config watch ended; reconnecting");
            }
            Err(e) => {
                tracing::warn!(store = %addr, error = %e, "config watch failed; serving the last config")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn follow(gw: &Arc<Gw>, addr: &str) -> Result<(), String> {
    let dial = tollgate_types::faults::dial_addr(addr);
    let channel = tollgate_proto::tls::store_endpoint(dial, gw.store_tls.as_ref())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = QuotaClient::new(channel).max_decoding_message_size(CONFIG_BYTES_MAX);
    let known = gw.snapshot.load().as_ref().map_or(0, |s| s.version);
    let mut req = tonic::Request::new(WatchConfigRequest {
        known_version: known,
    });
    if let Some(t) = &gw.settings.store_token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    let mut stream = client
        .watch_config(req)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    gw.metrics.store_connected.store(1, Ordering::Relaxed);
    loop {
        let snap = match stream.message().await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
        };
        let cfg: GatewayConfig = serde_json::from_slice(&snap.config_json)
            .map_err(|e| format!("undecodable config version {}: {e}", snap.version))?;
        install(gw, cfg);
    }
}

/// Indexes and swaps in a config.
pub fn install(gw: &Gw, cfg: GatewayConfig) {
    let version = cfg.version;
    gw.quota.install(&cfg);
    let snap = Snapshot::build(cfg, &gw.router);
    tracing::info!(
        version,
        models = snap.models.len(),
        keys = snap.keys.len(),
        "config installed"
    );
    gw.snapshot.store(Some(Arc::new(snap)));
    gw.metrics.config_version.store(version, Ordering::Relaxed);
    gw.metrics.config_updates.fetch_add(1, Ordering::Relaxed);
}
