//! `tollgate mock-upstream`: a simulated OpenAI-compatible model server for tests, benchmarks and
//! chaos runs. Deterministic token counts (see [`tokens`]), configurable time to first token,
//! pacing, chunking, injected errors, stalls and mid-stream drops ([`Behavior`]), and a count of
//! every token served per request id ([`stats`]): the oracle for exactness checks.
//!
//! Endpoints: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `GET /v1/models`,
//! `GET /healthz`; control: `GET|POST /mock/behavior`, `GET /mock/stats`,
//! `GET /mock/served[/{request_id}]`, `DELETE /mock/served`, `GET /mock/last_request`.

pub mod behavior;
mod handlers;
pub mod stats;
pub mod tokens;

pub use behavior::Behavior;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Response body type: whole bodies and streams alike.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Largest request body the mock reads.
pub const BODY_BYTES_MAX: usize = 64 << 20;

/// Shared state of one mock server.
pub struct Mock {
    behavior: RwLock<Behavior>,
    pub stats: stats::Stats,
    requests: AtomicU64,
    /// The last inference request body received (`GET /mock/last_request`).
    last_request: std::sync::Mutex<Option<serde_json::Value>>,
}

impl Mock {
    pub fn behavior(&self) -> Behavior {
        self.behavior.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Remembers the last inference request body.
    pub fn remember(&self, body: &serde_json::Value) {
        if let Ok(mut g) = self.last_request.lock() {
            *g = Some(body.clone());
        }
    }

    pub fn last_request(&self) -> Option<serde_json::Value> {
        self.last_request.lock().ok().and_then(|g| g.clone())
    }

    pub fn set_behavior(&self, b: Behavior) {
        if let Ok(mut g) = self.behavior.write() {
            *g = b;
        }
    }
}

/// A running mock server; dropping it does not stop it, call [`MockServer::shutdown`].
pub struct MockServer {
    pub addr: SocketAddr,
    pub mock: Arc<Mock>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Binds `addr` and serves until shut down.
    pub async fn start(addr: SocketAddr, behavior: Behavior) -> std::io::Result<MockServer> {
        behavior
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mock = Arc::new(Mock {
            behavior: RwLock::new(behavior),
            stats: stats::Stats::default(),
            requests: AtomicU64::new(0),
            last_request: std::sync::Mutex::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, mock.clone(), stop_rx));
        Ok(MockServer {
            addr,
            mock,
            stop,
            task,
        })
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, mock: Arc<Mock>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("mock accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mock = mock.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handlers::handle(mock.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}
