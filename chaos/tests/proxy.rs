//! The fault proxy over real loopback sockets, against an echo server that counts what reaches
//! it: pass, blackhole, one-way, drop, reset, and healing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_chaos::proxy::{Fault, Proxy};

/// An echo server; counts accepted connections and bytes received.
async fn echo() -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let (conns, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, b) = (conns.clone(), bytes.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    b.fetch_add(n as u64, Ordering::SeqCst);
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, conns, bytes)
}

/// Polls until `f` holds (no timing assertion: the test fails only if it never holds).
async fn eventually(f: impl Fn() -> bool) {
    for _ in 0..2_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition never held");
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await.expect("read back");
    got
}

#[tokio::test]
async fn pass_forwards_both_ways() {
    let (addr, conns, _) = echo().await;
    let p = Proxy::start("t", &addr).await.expect("proxy");
    let mut s = TcpStream::connect(p.listen).await.expect("connect");
    assert_eq!(roundtrip(&mut s, b"hello").await, b"hello");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(p.stats.bytes.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn blackhole_swallows_and_never_connects_then_heals() {
    let (addr, conns, bytes) = echo().await;
    let p = Proxy::start("t", &addr).await.expect("proxy");
    let mut live = TcpStream::connect(p.listen).await.expect("connect");
    assert_eq!(roundtrip(&mut live, b"a").await, b"a");
    p.set(Fault::Blackhole);
    // an open connection: bytes vanish in the proxy
    live.write_all(b"lost").await.expect("write");
    eventually(|| p.stats.swallowed.load(Ordering::SeqCst) >= 4).await;
    // a new connection is accepted but never reaches the target
    let mut fresh = TcpStream::connect(p.listen).await.expect("connect");
    fresh.write_all(b"also lost").await.expect("write");
    eventually(|| p.stats.swallowed.load(Ordering::SeqCst) >= 13).await;
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "no new connection reached the target"
    );
    assert_eq!(
        bytes.load(Ordering::SeqCst),
        1,
        "only the byte before the fault arrived"
    );
    // heal: new connections pass again
    p.set(Fault::Pass);
    let mut healed = TcpStream::connect(p.listen).await.expect("connect");
    assert_eq!(roundtrip(&mut healed, b"back").await, b"back");
}

#[tokio::test]
async fn one_way_delivers_requests_and_loses_answers() {
    let (addr, _, bytes) = echo().await;
    let p = Proxy::start("t", &addr).await.expect("proxy");
    p.set(Fault::OneWay { to_target: true });
    let mut s = TcpStream::connect(p.listen).await.expect("connect");
    s.write_all(b"ping").await.expect("write");
    eventually(|| bytes.load(Ordering::SeqCst) == 4).await;
    // the echo came back to the proxy and was swallowed there
    eventually(|| p.stats.swallowed.load(Ordering::SeqCst) == 4).await;
}

#[tokio::test]
async fn reset_all_sends_rst_on_open_connections() {
    let (addr, _, _) = echo().await;
    let p = Proxy::start("t", &addr).await.expect("proxy");
    let mut s = TcpStream::connect(p.listen).await.expect("connect");
    assert_eq!(roundtrip(&mut s, b"x").await, b"x");
    p.reset_all();
    let mut buf = [0u8; 8];
    let r = s.read(&mut buf).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    // new connections are unaffected
    let mut again = TcpStream::connect(p.listen).await.expect("connect");
    assert_eq!(roundtrip(&mut again, b"y").await, b"y");
}

#[tokio::test]
async fn drop_everything_resets_new_connections() {
    let (addr, conns, _) = echo().await;
    let p = Proxy::start("t", &addr).await.expect("proxy");
    p.set(Fault::Drop { per_mille: 1000 });
    let mut s = TcpStream::connect(p.listen).await.expect("connect");
    let mut buf = [0u8; 8];
    let _ = s.write_all(b"z").await;
    let r = s.read(&mut buf).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            || matches!(r, Ok(0)),
        "{r:?}"
    );
    assert_eq!(conns.load(Ordering::SeqCst), 0);
    assert!(p.stats.resets.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn delay_still_delivers_in_order() {
    let (addr, _, _) = echo().await;
    let p = Proxy::start("t", &addr).await.expect("proxy");
    p.set(Fault::Delay {
        ms: 5,
        jitter_ms: 5,
    });
    let mut s = TcpStream::connect(p.listen).await.expect("connect");
    for i in 0..10u8 {
        assert_eq!(roundtrip(&mut s, &[i, i + 1]).await, vec![i, i + 1]);
    }
}

#[tokio::test]
async fn a_dead_target_is_a_reset() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let p = Proxy::start("t", &format!("127.0.0.1:{port}"))
        .await
        .expect("proxy");
    let mut s = TcpStream::connect(p.listen).await.expect("connect");
    let mut buf = [0u8; 8];
    let r = s.read(&mut buf).await;
    assert!(r.is_err() || matches!(r, Ok(0)), "{r:?}");
}
