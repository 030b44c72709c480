//! The client against raw upstreams on loopback: each test server reads requests and writes
//! exactly the bytes the test gives it, and counts the connections it accepted and the requests
//! it read.

use super::*;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// What the test server does with each request on a connection.
#[derive(Clone, Copy)]
enum After {
    /// Keep the connection open for the next request.
    Stay,
    /// Close the connection after the answer.
    Close,
    /// Answer the first request; read the second and close without answering it.
    DropSecond,
}

struct Raw {
    base: String,
    accepted: Arc<AtomicUsize>,
    /// Request heads read, over all connections.
    requests: Arc<AtomicUsize>,
    /// One message per connection the server closed.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that answers every request (a head ending in an empty line; bodies are not sent by
/// these tests) with the bytes of `pieces`, written with a pause between them.
async fn raw(pieces: Vec<&'static [u8]>, after: After) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (closes, closed) = tokio::sync::mpsc::unbounded_channel();
    let (count, heads) = (accepted.clone(), requests.clone());
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (pieces, heads, closes) = (pieces.clone(), heads.clone(), closes.clone());
            tokio::spawn(async move {
                serve(s, &pieces, after, &heads).await;
                let _ = closes.send(()); // the connection is closed by now
            });
        }
    });
    Raw {
        base: format!("http://{addr}/v1"),
        accepted,
        requests,
        closed,
        task,
    }
}

async fn serve(mut s: TcpStream, pieces: &[&[u8]], after: After, heads: &AtomicUsize) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    for nth in 1.. {
        while memchr::memmem::find(&seen, b"\r\n\r\n").is_none() {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen.clear();
        heads.fetch_add(1, Ordering::SeqCst);
        if matches!(after, After::DropSecond) && nth == 2 {
            return;
        }
        for p in pieces {
            if s.write_all(p).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let After::Close = after {
            return;
        }
    }
}

fn client() -> UpstreamClient {
    UpstreamClient::new(Duration::from_secs(2), 0)
}

async fn get(c: &UpstreamClient, base: &str) -> UpResponse {
    match c.send(&Method::GET, base, "/x", Bytes::new(), &[]).await {
        Ok(r) => r,
        Err(e) => panic!("request failed: {e}"),
    }
}

#[tokio::test]
async fn a_connection_read_to_the_end_carries_the_next_request() {
    let s = raw(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"],
        After::Stay,
    )
    .await;
    let c = client();
    for _ in 0..3 {
        let mut r = get(&c, &s.base).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.collect(100).await.ok().as_deref(), Some(&b"hello"[..]));
        c.release(r);
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_dropped_before_its_end_closes_its_connection() {
    // the answer promises 5 bytes and sends 3: its connection is mid-body for good
    let s = raw(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"],
        After::Stay,
    )
    .await;
    let c = client();
    let mut r = get(&c, &s.base).await;
    assert!(matches!(r.chunk().await, Some(Ok(b)) if &b[..] == b"hel"));
    c.release(r); // not at its end: closed, not pooled
    let r = get(&c, &s.base).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let mut s = raw(vec![answer], After::Close).await;
    let c = client();
    for _ in 0..3 {
        let mut r = get(&c, &s.base).await;
        assert_eq!(r.collect(100).await.ok().as_deref(), Some(&b"ok"[..]));
        c.release(r);
        s.closed.recv().await; // the upstream closed the now idle connection
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(s.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_the_upstream_may_have_received_is_never_sent_again() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let s = raw(vec![answer], After::DropSecond).await;
    let c = client();
    let mut r = get(&c, &s.base).await;
    assert!(r.collect(100).await.is_ok());
    c.release(r);
    // written whole on the pooled connection; the upstream closes it without an answer
    let body = Bytes::from_static(b"{}");
    let second = c.send(&Method::POST, &s.base, "/x", body, &[]).await;
    assert!(matches!(second, Err(SendError::Io(..))), "{second:?}");
    assert_eq!(
        s.requests.load(Ordering::SeqCst),
        2,
        "each request sent once"
    );
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_connection_does_not_keep_a_large_body_s_buffer() {
    static BIG: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let mut v = b"HTTP/1.1 200 OK\r\ncontent-length: 300000\r\n\r\n".to_vec();
        v.resize(v.len() + 300_000, b'x');
        v
    });
    let s = raw(vec![BIG.as_slice()], After::Stay).await;
    let c = client();
    let mut r = get(&c, &s.base).await;
    let body = r.collect(1 << 20).await;
    assert_eq!(body.as_ref().map(Bytes::len).ok(), Some(300_000));
    drop(body);
    c.release(r);
    let host = s.base.trim_start_matches("http://").trim_end_matches("/v1");
    // what the idle connection's buffer holds on to (a reserve takes back a unique allocation)
    let cap = c.checkout(host).map(|mut conn| {
        conn.buf.reserve(1);
        conn.buf.capacity()
    });
    assert!(cap.is_some_and(|n| n <= BUFFER_BYTES_MAX), "{cap:?}");
}

#[tokio::test]
async fn chunked_pieces_arrive_as_they_are_sent_and_the_connection_is_reused() {
    let s = raw(
        vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"6\r\ndata: \r\n",
            b"3\r\none\r\n",
            b"0\r\n\r\n",
        ],
        After::Stay,
    )
    .await;
    let c = client();
    for _ in 0..2 {
        let mut r = get(&c, &s.base).await;
        let mut pieces = Vec::new();
        while let Some(p) = r.chunk().await {
            pieces.push(p.map(|b| b.to_vec()).unwrap_or_default());
        }
        assert_eq!(pieces, vec![b"data: ".to_vec(), b"one".to_vec()]);
        c.release(r);
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stream_whose_end_trails_its_last_event_still_gives_its_connection_back() {
    // an upstream that sends a stream's last event, and its end only when told to
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let (go, mut told) = tokio::sync::mpsc::unbounded_channel::<()>();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                let event = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n";
                let sent = s.write_all(event).await.is_ok() && told.recv().await.is_some();
                if !sent || s.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        }
    });
    let c = client();
    for _ in 0..2 {
        let mut r = get(&c, &base).await;
        assert!(matches!(r.chunk().await, Some(Ok(b)) if &b[..] == b"data: [DONE]\n\n"));
        // the end is held back: a task waits for it
        let drain = c.release_when_done(r).expect("waits for the end");
        go.send(()).expect("server running");
        assert!(drain.await.is_ok());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
    server.abort();
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let s = raw(
        vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\non"],
        After::Close,
    )
    .await;
    let c = client();
    let mut r = get(&c, &s.base).await;
    assert!(matches!(r.chunk().await, Some(Ok(b)) if &b[..] == b"on"));
    assert!(matches!(r.chunk().await, Some(Err(_))));
    assert!(r.chunk().await.is_none());
    let s = raw(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"],
        After::Close,
    )
    .await;
    let mut r = get(&c, &s.base).await;
    assert!(r.collect(100).await.is_err());
}

#[tokio::test]
async fn a_body_framed_by_the_close_ends_there_and_is_not_reused() {
    let s = raw(
        vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close"],
        After::Close,
    )
    .await;
    let c = client();
    let mut r = get(&c, &s.base).await;
    assert_eq!(
        r.collect(100).await.ok().as_deref(),
        Some(&b"until close"[..])
    );
    c.release(r);
    let mut r = get(&c, &s.base).await;
    assert!(r.collect(100).await.is_ok());
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let s = raw(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789"],
        After::Stay,
    )
    .await;
    let c = client();
    assert!(get(&c, &s.base).await.collect(9).await.is_err());
    let s = raw(
        vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n01234\r\n",
            b"5\r\n56789\r\n0\r\n\r\n",
        ],
        After::Stay,
    )
    .await;
    assert!(get(&c, &s.base).await.collect(9).await.is_err());
    assert_eq!(
        get(&c, &s.base).await.collect(10).await.ok().as_deref(),
        Some(&b"0123456789"[..])
    );
}

#[tokio::test]
async fn interim_answers_are_skipped_and_retry_after_is_read() {
    let s = raw(
        vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Slow Down\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n"],
        After::Stay,
    )
    .await;
    let c = client();
    let r = get(&c, &s.base).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_garbled_answer_is_an_error_not_a_retry() {
    let s = raw(vec![b"SSH-2.0-OpenSSH\r\n\r\n"], After::Stay).await;
    let c = client();
    let r = c.send(&Method::GET, &s.base, "/x", Bytes::new(), &[]).await;
    assert!(matches!(r, Err(SendError::Io(..))), "{r:?}");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn urls_split_into_host_and_prefix() {
    assert_eq!(
        split_url("http://10.0.0.1:8000/v1").ok(),
        Some(("10.0.0.1:8000", "/v1"))
    );
    assert_eq!(split_url("http://h:1").ok(), Some(("h:1", "")));
    assert!(split_url("https://h/v1").is_err());
    assert!(split_url("http:///v1").is_err());
    assert!(split_url("http://h:1/v1 x").is_err());
    assert!(split_url("http://h:1/v1\r\nx: y").is_err());
}

/// Connections sit idle for a while before an upstream closes them (its keep-alive timeout).
/// Picked after that, a connection is checked by asking its socket: the close is found even
/// when the event loop has not polled since it arrived — here it cannot have, as the test never
/// yields between the close and the check.
#[tokio::test]
async fn a_long_idle_connection_is_checked_with_its_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conn = |io| UpConn {
        host: addr.to_string(),
        io,
        buf: BytesMut::new(),
        buf_read: 0,
        idle_since: Instant::now() - PROBE_IDLE * 2,
    };
    let mut open = conn(TcpStream::connect(addr).await.expect("connect"));
    let (_open_peer, _) = listener.accept().await.expect("accept");
    let mut closed = conn(TcpStream::connect(addr).await.expect("connect"));
    let (closed_peer, _) = listener.accept().await.expect("accept");
    // what a response read leaves: the readiness cleared by a read that found nothing
    assert!(open.try_fill().is_pending() && closed.try_fill().is_pending());
    drop(closed_peer);
    // wait for the close outside tokio (poll(2) on the socket), so its reactor never sees it
    let mut fds = [rustix::event::PollFd::new(
        &closed.io,
        rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP,
    )];
    let wait = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&wait)).expect("poll"), 1);
    assert!(!closed.alive(), "a closed connection passed the check");
    assert!(open.alive(), "an open idle connection failed the check");
}
