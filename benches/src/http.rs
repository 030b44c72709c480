//! HTTP target: each client owns one keep-alive HTTP/1.1 connection (`TCP_NODELAY`) and posts the
//! same JSON body in a loop. For streams (`"stream": true` in the body) it also records the time to
//! the first body bytes (TTFT) and checks the stream ended with `[DONE]`.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub struct Report {
    pub ok: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
    pub ttft_us: Histogram<u64>,
}

struct Target {
    addr: String,
    path: String,
    auth: Option<String>,
    body: Bytes,
    stream: bool,
}

pub async fn run(
    url: &str,
    key: Option<String>,
    body: String,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--url must start with http://"))?;
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    crate::loopback_only(addr)?;
    let parsed: serde_json::Value = serde_json::from_str(&body)?;
    let target = Arc::new(Target {
        addr: addr.to_owned(),
        path: format!("/{path}"),
        auth: key.map(|k| format!("Bearer {k}")),
        stream: parsed["stream"].as_bool() == Some(true),
        body: Bytes::from(body),
    });
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(target.clone(), deadline)))
        .collect();
    let mut report = Report {
        ok: 0,
        errors: 0,
        latency_us: Histogram::new(3)?,
        ttft_us: Histogram::new(3)?,
    };
    for t in tasks {
        let r = t.await??;
        report.ok += r.ok;
        report.errors += r.errors;
        report.latency_us.add(r.latency_us)?;
        report.ttft_us.add(r.ttft_us)?;
    }
    Ok(report)
}

async fn connect(addr: &str) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn client(t: Arc<Target>, deadline: Instant) -> anyhow::Result<Report> {
    let mut r = Report {
        ok: 0,
        errors: 0,
        latency_us: Histogram::new(3)?,
        ttft_us: Histogram::new(3)?,
    };
    let mut sender = connect(&t.addr).await?;
    while Instant::now() < deadline {
        if sender.ready().await.is_err() {
            sender = connect(&t.addr).await?;
        }
        let start = Instant::now();
        match one(&mut sender, &t, start).await {
            Ok(ttft) => {
                r.ok += 1;
                r.latency_us.record(start.elapsed().as_micros() as u64)?;
                r.ttft_us.record(ttft.as_micros() as u64)?;
            }
            Err(_) => {
                r.errors += 1;
                sender = connect(&t.addr).await?;
            }
        }
    }
    Ok(r)
}

/// One request; returns the time to the first body bytes.
async fn one(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    t: &Target,
    start: Instant,
) -> anyhow::Result<Duration> {
    let mut b = hyper::Request::post(&t.path)
        .header("host", &t.addr)
        .header("content-type", "application/json");
    if let Some(a) = &t.auth {
        b = b.header("authorization", a);
    }
    let resp = sender
        .send_request(b.body(Full::new(t.body.clone()))?)
        .await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let mut ttft = None;
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            ttft.get_or_insert_with(|| start.elapsed());
            if t.stream {
                tail.extend_from_slice(&data);
                let keep = tail.len().saturating_sub(32);
                tail.drain(..keep);
            }
        }
    }
    if t.stream {
        anyhow::ensure!(
            tail.windows(6).any(|w| w == b"[DONE]"),
            "stream did not end with [DONE]"
        );
    }
    Ok(ttft.unwrap_or_else(|| start.elapsed()))
}
