//! The customer listener: TCP (or TLS with rustls when a certificate is configured), one hyper
//! HTTP/1.1 connection task per client with `TCP_NODELAY`, a header-read timeout, a bound on the
//! request head, and a cap on open connections.

use crate::settings::Settings;
use crate::{Gw, StartError, pipeline};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// How long open connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(5);

pub fn tls_acceptor(s: &Settings) -> Result<Option<TlsAcceptor>, StartError> {
    let (cert, key) = match (&s.tls_cert, &s.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(StartError::Tls(
                "pass both --tls-cert and --tls-key, or neither".into(),
            ));
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(format!("reading {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("reading {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}

/// Serves customer connections: on the caller's runtime, or on `settings.event_loops` event
/// loops of their own (one thread and single-threaded runtime each, all accepting from the one
/// listener, so a connection and its upstream connections stay on one thread). Resolves when
/// every loop has stopped. The connection cap is shared by all loops.
pub async fn run(
    gw: Arc<Gw>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(gw.settings.limits.connections_max));
    let loops = gw.settings.event_loops;
    if loops == 0 {
        return serve(gw, listener, tls, stop, slots).await;
    }
    let std_listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the customer listener could not be shared");
            return;
        }
    };
    let threads = spawn_loops(loops, &gw, &std_listener, &tls, &stop, &slots);
    if threads.is_empty() {
        // no loop could start (out of threads or memory): serve here rather than not at all
        match TcpListener::from_std(std_listener) {
            Ok(l) => return serve(gw, l, tls, stop, slots).await,
            Err(e) => return tracing::error!(error = %e, "registering the customer listener"),
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

/// Starts up to `loops` event loop threads on copies of `listener`; those that could start.
fn spawn_loops(
    loops: usize,
    gw: &Arc<Gw>,
    listener: &std::net::TcpListener,
    tls: &Option<TlsAcceptor>,
    stop: &watch::Receiver<bool>,
    slots: &Arc<Semaphore>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for i in 0..loops {
        let l = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "sharing the customer listener");
                break;
            }
        };
        let (gw, tls, stop, slots) = (gw.clone(), tls.clone(), stop.clone(), slots.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("tollgate-loop-{i}"))
            .spawn(move || event_loop(i + 1, gw, l, tls, stop, slots));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "starting an event loop thread"),
        }
    }
    threads
}

/// One event loop: a single-threaded runtime serving connections from its copy of the listener.
fn event_loop(
    shard: usize,
    gw: Arc<Gw>,
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(error = %e, "building an event loop"),
    };
    crate::upstream::set_shard(shard);
    let all = u32::try_from(gw.settings.limits.connections_max).unwrap_or(u32::MAX);
    rt.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(l) => serve(gw, l, tls, stop, slots.clone()).await,
            Err(e) => tracing::error!(error = %e, "registering the customer listener"),
        }
        // open connections drain (each bounded by DRAIN) on this loop: every permit back means
        // every loop's connections have ended
        let _ = tokio::time::timeout(DRAIN, slots.acquire_many(all)).await;
    });
    // what is still open after the drain is dropped here, on its own thread
    rt.shutdown_timeout(Duration::from_millis(100));
}

async fn serve(
    gw: Arc<Gw>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // out of file descriptors and the like: back off instead of spinning
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(gw, stream, stop).await,
                Some(acceptor) => {
                    let timeout = gw.settings.limits.header_read_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(gw, s, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<I>(gw: Arc<Gw>, io: I, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &gw.settings.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_bytes_max.max(8192))
        .keep_alive(true);
    let svc_gw = gw.clone();
    let svc = service_fn(move |req| pipeline::handle(svc_gw.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}
