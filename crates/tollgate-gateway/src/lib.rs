//! The Tollgate gateway: an OpenAI-compatible HTTP data plane. Configuration (orgs, projects, key
//! digests, models and routes) arrives from the quota store's watch stream into an atomically
//! swapped [`snapshot::Snapshot`]; each request runs the phases in [`phases`], composed in
//! [`pipeline`]; upstream selection and health live in [`router`].

pub mod body;
pub mod error;
pub mod export;
pub mod idempotency;
pub mod journal;
pub mod metrics;
pub mod phases;
pub mod pipeline;
pub mod quota;
pub mod router;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod upstream;
pub mod watch;

use arc_swap::ArcSwapOption;
use phases::settle::Settler;
use quota::Quota;
pub use settings::Settings;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// Everything the request path shares.
pub struct Gw {
    pub settings: Settings,
    pub snapshot: ArcSwapOption<snapshot::Snapshot>,
    pub router: Arc<router::Router>,
    pub client: upstream::UpstreamClient,
    pub quota: Arc<Quota>,
    pub settler: Arc<dyn Settler>,
    /// The usage journal (`<data-dir>/journal`), unless turned off.
    pub journal: Option<Arc<journal::Journal>>,
    pub idempotency: idempotency::Idempotency,
    pub metrics: Arc<metrics::Metrics>,
    /// The client side of mutual TLS to the store, when configured.
    pub store_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// The journal's syncer thread and its stop flag.
type Syncer = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

/// A running gateway; call [`GatewayHandle::shutdown`] to stop it.
pub struct GatewayHandle {
    pub addr: SocketAddr,
    pub gw: Arc<Gw>,
    stop: signal::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    syncer: Option<Syncer>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("creating the data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no store address: pass --store host:port[,host:port...]")]
    NoStore,
    #[error("opening the usage journal in {path}: {source}")]
    Journal {
        path: String,
        source: std::io::Error,
    },
}

/// Starts a gateway: admission on leases from the store, usage records shipped with each
/// lease refresh.
pub async fn start(settings: Settings) -> Result<GatewayHandle, StartError> {
    start_with(settings, None).await
}

/// `start`, with another usage-record sink than the store (tests).
pub async fn start_with(
    settings: Settings,
    settler: Option<Arc<dyn Settler>>,
) -> Result<GatewayHandle, StartError> {
    if settings.store.is_empty() {
        return Err(StartError::NoStore);
    }
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::DataDir {
        path: settings.data_dir.display().to_string(),
        source,
    })?;
    let tls = server::tls_acceptor(&settings)?;
    let store_tls = match &settings.store_tls {
        Some(t) => {
            let config = t.client_config().map_err(StartError::Tls)?;
            // the certificate and key are parsed here: a bad file fails the start, not each call
            tollgate_proto::tls::store_endpoint("127.0.0.1:1", Some(&config))
                .map_err(StartError::Tls)?;
            Some(config)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.listen,
        source,
    })?;
    let journal = match settings.journal {
        true => {
            let dir = settings.data_dir.join("journal");
            let (j, replay) =
                journal::Journal::open(&dir).map_err(|source| StartError::Journal {
                    path: dir.display().to_string(),
                    source,
                })?;
            Some((Arc::new(j), replay))
        }
        false => None,
    };
    let quota = Arc::new(Quota::new(
        settings.quota.clone(),
        journal.as_ref().map(|(j, _)| j.clone()),
    ));
    let journal = journal.map(|(j, replay)| {
        resume(&quota, &j, replay);
        j
    });
    let settler = settler.unwrap_or_else(|| quota.shipper.clone());
    let holder = format!("{}:{}", settings.gateway_id, incarnation());
    let rpc = quota::rpc::StoreRpc::new(
        settings.store.clone(),
        settings.store_token.clone(),
        holder.clone(),
        store_tls.clone(),
    );
    let gw = Arc::new(Gw {
        router: router::Router::new(settings.routing.clone()),
        client: upstream::UpstreamClient::new(settings.timeouts.connect, settings.event_loops),
        idempotency: idempotency::Idempotency::new(
            settings.limits.idempotency_keys_max,
            settings.limits.idempotency_ttl,
        ),
        settings,
        snapshot: ArcSwapOption::empty(),
        quota,
        settler,
        journal: journal.clone(),
        metrics: Arc::new(metrics::Metrics::default()),
        store_tls,
    });
    let (stop, stop_rx) = signal::channel(false);
    let tasks = vec![
        tokio::spawn(server::run(gw.clone(), listener, tls, stop_rx.clone())),
        tokio::spawn(watch::run(gw.clone(), stop_rx.clone())),
        tokio::spawn(quota::refresh::run(gw.quota.clone(), rpc, stop_rx.clone())),
        tokio::spawn(router::probe::run(
            gw.router.clone(),
            gw.client.clone(),
            stop_rx,
        )),
    ];
    tracing::info!(%addr, gateway = %gw.settings.gateway_id, %holder, "gateway listening");
    let syncer = gw.journal.as_ref().map(|j| {
        let stop_sync = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            stop_sync.clone(),
            j.start_syncer(stop_sync, gw.settings.journal_sync),
        )
    });
    Ok(GatewayHandle {
        addr,
        gw,
        stop,
        tasks,
        syncer,
    })
}

/// Queues what the journal holds from a previous run: unacknowledged records with their
/// original ids, and reservations that never settled, settled now as `InDoubt`.
fn resume(quota: &Quota, journal: &journal::Journal, replay: journal::Replay) {
    use phases::settle::Settler as _;
    if replay.torn_bytes > 0 {
        tracing::warn!(
            bytes = replay.torn_bytes,
            "journal: cut a torn tail left by a crash"
        );
    }
    if !replay.unacked.is_empty() || !replay.in_doubt.is_empty() {
        tracing::info!(
            unacknowledged = replay.unacked.len(),
            in_doubt = replay.in_doubt.len(),
            acked_up_to = journal.acked(),
            "journal: shipping what a previous run left"
        );
    }
    for (seq, r) in replay.unacked {
        quota.shipper.push(seq, r);
    }
    let now = phases::settle::now_ms();
    for r in replay.in_doubt {
        quota.shipper.settle(r.in_doubt(now));
    }
}

/// A fresh identity per process start: leases of a previous run of the same gateway id are
/// never mistaken for this one's (they lapse and are released by the store).
fn incarnation() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl GatewayHandle {
    /// Whether the gateway has a configuration (what `/readyz` reports).
    pub fn ready(&self) -> bool {
        self.gw.snapshot.load().is_some()
    }

    /// Stops accepting, lets open connections finish (bounded), stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some((stop, thread)) = self.syncer {
            stop.store(true, std::sync::atomic::Ordering::Release);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
