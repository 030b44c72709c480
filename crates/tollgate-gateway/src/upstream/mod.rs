//! The HTTP/1.1 client to model endpoints, on its own small implementation of the wire format
//! (`upstream/wire.rs`): a request is written, and its response read, by the request's own task
//! straight from the socket — no dispatcher, channel or connection task in between, and a body
//! piece is a slice of the connection's read buffer (no copy). Idle connections are kept per
//! `host:port` (LIFO), one pool per event loop; a connection goes back to its pool only after its
//! response was read to the end. Plain `http://` only for now (see docs/routing.md).

mod wire;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wire::{Decoded, Framing};

/// Idle connections kept per upstream host.
const IDLE_PER_HOST_MAX: usize = 1024;
/// Idle connections older than this are closed instead of reused (below the 5 s keep-alive of
/// common model servers, e.g. uvicorn under vLLM).
const IDLE_MAX: Duration = Duration::from_secs(4);
/// Room made in a connection's read buffer before a read.
const READ_BYTES: usize = 16 << 10;
/// Most of a `/models` answer a health probe reads (to reuse the connection).
const PROBE_BODY_BYTES_MAX: usize = 1 << 20;
/// Most room made at once for a body of announced length (a larger one grows as it arrives).
const COLLECT_RESERVE_MAX: usize = 1 << 20;
/// A connection goes back to its pool with a fresh read buffer once this many bytes went through
/// its current one: the old allocation may have grown with a large body, and it is freed when
/// the last piece of it is dropped instead of being kept by the idle connection.
const BUFFER_BYTES_MAX: usize = 64 << 10;
/// Most interim (1xx) heads skipped before the final one.
const INTERIM_HEADS_MAX: usize = 16;
/// A connection idle longer than this is checked at checkout by asking its socket (a system
/// call), not the event loop's readiness: upstreams close idle connections after a keep-alive
/// timeout (seconds), and a close the event loop has not polled since would pass.
const PROBE_IDLE: Duration = Duration::from_secs(1);
/// How long a stream's connection waits, after the client got everything, for the end of the
/// upstream's body (its last chunk often comes in a later segment) to be pooled again.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// One upstream connection; dropping it closes it.
pub struct UpConn {
    host: String,
    io: TcpStream,
    /// Bytes read and not yet taken (the next head or body piece).
    buf: BytesMut,
    /// Bytes read into `buf`'s allocation since it was made.
    buf_read: usize,
    idle_since: Instant,
}

impl UpConn {
    /// Makes room in the buffer for the next read.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_BYTES / 4 {
            self.buf.reserve(READ_BYTES);
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` when the upstream closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            match self.read_once() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    /// Reads more bytes if the socket has them now (no waiting, no waker kept).
    fn try_fill(&mut self) -> Poll<io::Result<usize>> {
        match self.read_once() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            r => Poll::Ready(r),
        }
    }

    /// One read into the buffer, done the way tokio's own `poll_read` does it: a read that
    /// leaves room in the buffer drained the socket (epoll is edge-triggered), so the socket's
    /// readiness is cleared — with the readiness seen before the read, so an event that came
    /// during it is kept — and the next read waits for epoll instead of making a system call
    /// that fails with `WouldBlock`. That was one such call per request (at `alive`, between
    /// every response and the next request) and one per piece of a stream. `WouldBlock` when
    /// nothing is readable (often without a system call).
    fn read_once(&mut self) -> io::Result<usize> {
        self.make_room();
        let room = self.buf.capacity() - self.buf.len();
        let (socket, buf) = (&self.io, &mut self.buf);
        let mut got = None;
        let read = socket.try_io(tokio::io::Interest::READABLE, || {
            let n = socket.try_read_buf(buf)?;
            got = Some(n);
            if n > 0 && n < room {
                // tells tokio to clear the readiness; the bytes are in `got`
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let read = got.map_or(read, Ok);
        if let Ok(n) = read {
            self.buf_read += n;
        }
        read
    }

    /// Writes the head and the body (gathered: one system call for a usual request).
    async fn write_request(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let n = if head.is_empty() {
                self.io.write(body).await?
            } else {
                let parts = [IoSlice::new(head), IoSlice::new(body)];
                self.io.write_vectored(&parts).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        Ok(())
    }

    /// Reads up to the final response head (a few interim 1xx heads are skipped).
    async fn read_head(&mut self, method_is_head: bool) -> io::Result<wire::Head> {
        let mut interim = 0;
        loop {
            if !self.buf.is_empty() {
                match wire::parse_head(&self.buf, method_is_head)? {
                    Some((n, Some(head))) => {
                        self.buf.advance(n);
                        return Ok(head);
                    }
                    Some((n, None)) if interim < INTERIM_HEADS_MAX => {
                        interim += 1;
                        self.buf.advance(n);
                        continue;
                    }
                    Some(_) => return Err(wire::bad("too many interim (1xx) answers")),
                    None => {}
                }
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the model server closed the connection before it answered",
                ));
            }
        }
    }

    /// An idle connection the upstream has not closed (nor sent anything unasked on). Briefly
    /// idle (the usual case under load), the event loop's readiness answers without a system
    /// call; longer idle, the socket itself is asked.
    fn alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        if self.idle_since.elapsed() < PROBE_IDLE {
            return matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        let peek = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(
            rustix::net::recv(&self.io, &mut probe[..], peek),
            Err(rustix::io::Errno::AGAIN)
        )
    }
}

/// An upstream response: its status, and its body read piece by piece from the connection it
/// holds. Dropping it before the end closes the connection (cancelling the upstream request).
pub struct UpResponse {
    pub status: StatusCode,
    /// `retry-after-ms`, else `retry-after` (seconds).
    pub retry_after: Option<Duration>,
    conn: UpConn,
    framing: Framing,
    keep_alive: bool,
    ended: bool,
}

impl std::fmt::Debug for UpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpResponse")
            .field("host", &self.conn.host)
            .field("status", &self.status)
            .finish()
    }
}

impl UpResponse {
    /// The next piece of the body; `None` at its end (for a body framed by the connection's
    /// close, also when it closes); an error when the body is malformed or cut short.
    pub async fn chunk(&mut self) -> Option<io::Result<Bytes>> {
        poll_fn(|cx| self.step(|c| c.poll_fill(cx))).await
    }

    /// The next piece if it is here without waiting for the network.
    pub fn ready_chunk(&mut self) -> Option<Option<io::Result<Bytes>>> {
        match self.step(UpConn::try_fill) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    fn step(
        &mut self,
        mut fill: impl FnMut(&mut UpConn) -> Poll<io::Result<usize>>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let decoded = match self.framing.decode(&mut self.conn.buf) {
                Ok(Decoded::More) => match ready!(fill(&mut self.conn)) {
                    Ok(0) => {
                        self.keep_alive = false;
                        self.framing.at_eof()
                    }
                    Ok(_) => continue,
                    Err(e) => Err(e),
                },
                other => other,
            };
            return Poll::Ready(match decoded {
                Ok(Decoded::Data(d)) => Some(Ok(d)),
                Ok(_) => {
                    self.ended = true;
                    None
                }
                Err(e) => {
                    self.ended = true;
                    self.keep_alive = false;
                    Some(Err(e))
                }
            });
        }
    }

    /// The whole body, at most `limit` bytes (more is an error).
    pub async fn collect(&mut self, limit: usize) -> io::Result<Bytes> {
        if let Some(n) = self.framing.remaining() {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > limit {
                return Err(too_large(limit));
            }
            // the usual case: the whole body lands in the read buffer and is taken as one piece
            let room = n.min(COLLECT_RESERVE_MAX);
            self.conn
                .buf
                .reserve(room.saturating_sub(self.conn.buf.len()));
            while self.conn.buf.len() < n {
                if poll_fn(|cx| self.conn.poll_fill(cx)).await? == 0 {
                    break; // cut short: the next chunk says so
                }
            }
        }
        let mut all = match self.chunk().await {
            None => return Ok(Bytes::new()),
            Some(first) => first?,
        };
        let mut joined: Option<BytesMut> = None;
        while let Some(piece) = self.chunk().await {
            let piece = piece?;
            let j = joined.get_or_insert_with(|| BytesMut::from(std::mem::take(&mut all)));
            if j.len() + piece.len() > limit {
                return Err(too_large(limit));
            }
            j.extend_from_slice(&piece);
        }
        let all = joined.map_or(all, BytesMut::freeze);
        if all.len() > limit {
            return Err(too_large(limit));
        }
        Ok(all)
    }
}

fn too_large(limit: usize) -> io::Error {
    wire::bad(format!("body larger than {limit} bytes"))
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("upstream URL '{0}' is not a valid http URL")]
    BadUrl(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("talking to {0}: {1}")]
    Io(String, io::Error),
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
    /// ever used by the loop whose reactor it is registered with.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Binds the calling thread (an event loop, `1..=loops`) to its own pool of idle connections.
pub fn set_shard(shard: usize) {
    SHARD.with(|s| s.set(shard));
}

/// `http://host:port/prefix` → (`host:port`, `/prefix`).
fn split_url(base: &str) -> Result<(&str, &str), SendError> {
    let bad = || SendError::BadUrl(base.to_owned());
    let rest = base.strip_prefix("http://").ok_or_else(bad)?;
    let (host, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() || !wire::is_token_text(host) || !wire::is_token_text(prefix) {
        return Err(bad());
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
        while let Some(c) = list.pop() {
            if c.idle_since.elapsed() < IDLE_MAX && c.alive() {
                return Some(c);
            }
        }
        None
    }

    /// Returns the connection of a response read to the end to its pool (any other is closed).
    pub fn release(&self, resp: UpResponse) {
        if !(resp.ended && resp.keep_alive) {
            return;
        }
        let mut conn = resp.conn;
        if !conn.buf.is_empty() {
            return; // bytes beyond the response: not a connection to trust
        }
        if conn.buf_read > BUFFER_BYTES_MAX {
            conn.buf = BytesMut::new();
            conn.buf_read = 0;
        }
        conn.idle_since = Instant::now();
        let Ok(mut idle) = self.pool().lock() else {
            return;
        };
        match idle.get_mut(&conn.host) {
            Some(list) if list.len() >= IDLE_PER_HOST_MAX => {}
            Some(list) => list.push(conn),
            None => {
                idle.insert(conn.host.clone(), vec![conn]);
            }
        }
    }

    /// Pools a response's connection once its body has ended: at once if the end is already
    /// here; else a task on this event loop waits for it (at most [`DRAIN_WAIT`]; anything but
    /// the end closes the connection) — so a stream whose last chunk trails its `[DONE]` does
    /// not cost a new connection. Returns that task, if one was needed.
    pub fn release_when_done(&self, mut resp: UpResponse) -> Option<tokio::task::JoinHandle<()>> {
        match resp.ready_chunk() {
            Some(None) => self.release(resp),
            Some(Some(_)) => {} // more body, or broken: not reusable
            None => {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                let client = self.clone();
                return Some(runtime.spawn(async move {
                    if let Ok(None) = tokio::time::timeout(DRAIN_WAIT, resp.chunk()).await {
                        client.release(resp);
                    }
                }));
            }
        }
        None
    }

    async fn connect(&self, host: &str) -> Result<UpConn, SendError> {
        let err = |e: String| SendError::Connect(host.to_owned(), e);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(host))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| err(e.to_string()))?;
        Ok(UpConn {
            host: host.to_owned(),
            io: tcp,
            buf: BytesMut::new(),
            buf_read: 0,
            idle_since: Instant::now(),
        })
    }

    /// Sends a request and reads the response head, on a pooled connection or a new one. A
    /// pooled connection whose write fails (the upstream closed it while it sat idle) is
    /// replaced by another, since the upstream cannot have acted on an unfinished request; once
    /// a request is written it is never sent again here (the upstream may be working on it: a
    /// failure is the attempt's, for `forward`'s retry budget to decide on). Read the body from
    /// the response, then [`UpstreamClient::release`] it.
    pub async fn send(
        &self,
        method: &Method,
        base: &str,
        path: &str,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<UpResponse, SendError> {
        let (host, prefix) = split_url(base)?;
        if !wire::is_token_text(path) {
            return Err(SendError::BadUrl(format!("{base}{path}")));
        }
        let head = wire::request_head(method.as_str(), host, [prefix, path], body.len(), headers);
        let io_err = |e| SendError::Io(host.to_owned(), e);
        for _ in 0..3 {
            let (mut conn, pooled) = match self.checkout(host) {
                Some(c) => (c, true),
                None => (self.connect(host).await?, false),
            };
            match conn.write_request(&head, &body).await {
                Ok(()) => {}
                Err(e) if pooled && stale(&e) => continue,
                Err(e) => return Err(io_err(e)),
            }
            let h = conn
                .read_head(method == Method::HEAD)
                .await
                .map_err(io_err)?;
            return Ok(UpResponse {
                status: h.status,
                retry_after: h.retry_after,
                conn,
                framing: h.framing,
                keep_alive: h.keep_alive,
                ended: false,
            });
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
    ) -> Result<UpResponse, SendError> {
        self.send(&Method::POST, base, path, body, headers).await
    }

    /// Active health probe: `GET {base}/models` gets an HTTP answer other than a 5xx within
    /// `timeout` (a server without `/models` answers 404 and is alive).
    pub async fn probe(&self, base: &str, timeout: Duration) -> bool {
        let call = async {
            let mut resp = self
                .send(&Method::GET, base, "/models", Bytes::new(), &[])
                .await
                .ok()?;
            let ok = !resp.status.is_server_error();
            // read to the end so the connection can be reused
            if resp.collect(PROBE_BODY_BYTES_MAX).await.is_ok() {
                self.release(resp);
            }
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, call).await, Ok(Some(true)))
    }
}

/// How a write fails on a connection the upstream closed while it sat idle.
fn stale(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

#[cfg(test)]
mod tests;
