//! The HTTP/1.1 client to model endpoints. Each pooled connection is driven by the request that
//! holds it — on the request's own task — instead of by a connection task of its own, so an
//! upstream chunk reaches the relay without a cross-task (often cross-thread) hand-off. Idle
//! connections are kept per `host:port` (LIFO); a connection goes back to the pool only after
//! its response was read to the end. Plain `http://` only for now (see docs/routing.md).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per upstream host.
const IDLE_PER_HOST_MAX: usize = 1024;
/// Idle connections older than this are closed instead of reused (below the 5 s keep-alive of
/// common model servers, e.g. uvicorn under vLLM).
const IDLE_MAX: Duration = Duration::from_secs(4);
/// Polls of the connection per wake-up before yielding (fairness).
const DRIVE_SPINS_MAX: usize = 64;

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One upstream connection; dropping it closes it.
pub struct UpConn {
    host: String,
    sender: http1::SendRequest<Full<Bytes>>,
    /// None once the connection has ended (closed or failed): dropping the finished driver
    /// drops its half of the response body, so a body read ends instead of waiting.
    driver: Option<Pin<Box<Driver>>>,
    idle_since: Instant,
}

impl std::fmt::Debug for UpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpConn").field("host", &self.host).finish()
    }
}

impl UpConn {
    /// Polls `fut` while driving this connection's I/O on the same task.
    pub async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        poll_fn(|cx| self.poll_with(cx, fut.as_mut())).await
    }

    fn poll_with<F: Future>(
        &mut self,
        cx: &mut Context<'_>,
        mut fut: Pin<&mut F>,
    ) -> Poll<F::Output> {
        for _ in 0..DRIVE_SPINS_MAX {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            let Some(driver) = self.driver.as_mut() else {
                // the dispatcher is gone: `fut` resolves (with an error or the end) when woken
                return Poll::Pending;
            };
            match driver.as_mut().poll(cx) {
                Poll::Ready(_) => self.driver = None,
                // the driver may have produced what `fut` waits for: poll it once more
                Poll::Pending => return fut.as_mut().poll(cx),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether the connection can take another request now.
    fn reusable(&mut self) -> bool {
        if self.sender.is_closed() {
            return false;
        }
        let Some(driver) = self.driver.as_mut() else {
            return false;
        };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // let the dispatcher finish the previous exchange and notice a server close
        if driver.as_mut().poll(&mut cx).is_ready() {
            self.driver = None;
            return false;
        }
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("upstream URL '{0}' is not a valid http URL")]
    BadUrl(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("building the upstream request: {0}")]
    Build(#[from] hyper::http::Error),
}

/// Idle connections per host, one map per event loop (index 0: the shared worker pool).
type Pools = Arc<[Mutex<HashMap<String, Vec<UpConn>>>]>;

#[derive(Clone)]
pub struct UpstreamClient {
    idle: Pools,
    connect_timeout: Duration,
}

thread_local! {
    /// Which pool this thread's requests use: its event loop's own, so a connection is only
    /// ever driven by the loop whose reactor it is registered with.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Binds the calling thread (an event loop, `1..=loops`) to its own pool of idle connections.
pub fn set_shard(shard: usize) {
    SHARD.with(|s| s.set(shard));
}

/// `http://host:port/prefix` → (`host:port`, `/prefix`).
fn split_url(base: &str) -> Result<(&str, &str), SendError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| SendError::BadUrl(base.to_owned()))?;
    let (host, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(SendError::BadUrl(base.to_owned()));
    }
    Ok((host, prefix))
}

impl UpstreamClient {
    /// A client for `loops` event loops (0: requests run on a shared worker pool).
    pub fn new(connect_timeout: Duration, loops: usize) -> UpstreamClient {
        UpstreamClient {
            idle: (0..=loops).map(|_| Mutex::new(HashMap::new())).collect(),
            connect_timeout,
        }
    }

    fn pool(&self) -> &Mutex<HashMap<String, Vec<UpConn>>> {
        let shard = SHARD.with(std::cell::Cell::get);
        &self.idle[shard.min(self.idle.len() - 1)]
    }

    fn checkout(&self, host: &str) -> Option<UpConn> {
        let mut idle = self.pool().lock().ok()?;
        let list = idle.get_mut(host)?;
        while let Some(mut c) = list.pop() {
            if c.idle_since.elapsed() < IDLE_MAX && c.reusable() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose response was read to the end.
    pub fn release(&self, mut conn: UpConn) {
        if !conn.reusable() {
            return;
        }
        conn.idle_since = Instant::now();
        if let Ok(mut idle) = self.pool().lock() {
            let list = idle.entry(conn.host.clone()).or_default();
            if list.len() < IDLE_PER_HOST_MAX {
                list.push(conn);
            }
        }
    }

    async fn connect(&self, host: &str) -> Result<UpConn, SendError> {
        let err = |e: String| SendError::Connect(host.to_owned(), e);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(host))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| err(e.to_string()))?;
        let (sender, driver) = http1::handshake(TokioIo::new(tcp)).await?;
        Ok(UpConn {
            host: host.to_owned(),
            sender,
            driver: Some(Box::pin(driver)),
            idle_since: Instant::now(),
        })
    }

    /// Sends a request on a pooled connection (or a new one when a pooled one turns out closed
    /// before the request was written). The caller drives the returned connection while it
    /// reads the body, then [`UpstreamClient::release`]s it.
    pub async fn send(
        &self,
        method: Method,
        base: &str,
        path: &str,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(Response<Incoming>, UpConn), SendError> {
        let (host, prefix) = split_url(base)?;
        let mut req = Some(build(
            &method,
            host,
            &format!("{prefix}{path}"),
            body,
            headers,
        )?);
        for _ in 0..3 {
            let (mut conn, pooled) = match self.checkout(host) {
                Some(c) => (c, true),
                None => (self.connect(host).await?, false),
            };
            let Some(r) = req.take() else { break };
            let sent = conn.sender.try_send_request(r);
            match conn.drive(sent).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    // never written: a stale pooled connection; try another
                    Some(r) if pooled => req = Some(r),
                    _ => return Err(e.into_error().into()),
                },
            }
        }
        Err(SendError::Connect(
            host.to_owned(),
            "no usable connection".into(),
        ))
    }

    /// `POST {base}{path}` with a JSON body and extra headers.
    pub async fn post_json(
        &self,
        base: &str,
        path: &str,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(Response<Incoming>, UpConn), SendError> {
        self.send(Method::POST, base, path, body, headers).await
    }

    /// Active health probe: `GET {base}/models` gets an HTTP answer other than a 5xx within
    /// `timeout` (a server without `/models` answers 404 and is alive).
    pub async fn probe(&self, base: &str, timeout: Duration) -> bool {
        use http_body_util::BodyExt;
        let call = async {
            let (resp, mut conn) = self
                .send(Method::GET, base, "/models", Bytes::new(), &[])
                .await
                .ok()?;
            let ok = !resp.status().is_server_error();
            // read to the end so the connection can be reused
            conn.drive(resp.into_body().collect()).await.ok()?;
            self.release(conn);
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
    }
}

fn build(
    method: &Method,
    host: &str,
    path: &str,
    body: Bytes,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<Request<Full<Bytes>>, SendError> {
    let uri = if path.is_empty() {
        Uri::from_static("/")
    } else {
        Uri::try_from(path).map_err(hyper::http::Error::from)?
    };
    let has_body = !body.is_empty();
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.reserve(headers.len() + 2);
    h.insert(
        HOST,
        HeaderValue::from_str(host).map_err(hyper::http::Error::from)?,
    );
    if has_body {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (k, v) in headers {
        h.append(k, v.clone());
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_prefix() {
        assert_eq!(
            split_url("http://10.0.0.1:8000/v1").ok(),
            Some(("10.0.0.1:8000", "/v1"))
        );
        assert_eq!(split_url("http://h:1").ok(), Some(("h:1", "")));
        assert!(split_url("https://h/v1").is_err());
        assert!(split_url("http:///v1").is_err());
    }
}
