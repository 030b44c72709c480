//! `tollgate-load`: a closed-loop load generator. N clients each send one request at a time until
//! the duration ends; latencies go into HDR histograms. Targets: a Tollgate store (usage records
//! through the Quota API, `--batch` records per request) or an etcd node (KV Put with a value of
//! the same size). Prints one JSON object. Only ever point it at loopback.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

mod etcdpb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("etcdserverpb");
}
mod http;
mod store;

#[derive(Parser)]
struct Args {
    /// Concurrent clients (each with one request in flight).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Upper bound of HTTP/2 connections shared by the clients.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// Usage records to a Tollgate store (the leader is found from any node).
    Store {
        #[arg(long, value_delimiter = ',')]
        store: Vec<String>,
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN")]
        token: String,
        /// Usage records per request (1 = no batching).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Send lease `Acquire`s instead (each client a gateway wanting 3 buckets: requests and
        /// input tokens per minute, a monthly token budget), carrying `--batch` records (0: none).
        #[arg(long)]
        acquire: bool,
    },
    /// HTTP POST of a JSON body over keep-alive HTTP/1.1 connections (one per client): the
    /// gateway, the simulated upstream direct, nginx, TensorZero.
    Http {
        #[arg(long)]
        url: String,
        #[arg(long, env = "TOLLGATE_API_KEY")]
        key: Option<String>,
        /// JSON request body; `"stream": true` measures time to first bytes too.
        #[arg(long)]
        body: String,
    },
    /// KV Put to etcd.
    Etcd {
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value_t = 300)]
        value_bytes: usize,
    },
}

pub fn loopback_only(addr: &str) -> anyhow::Result<()> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    anyhow::ensure!(
        host.starts_with("127.") || host == "localhost" || host == "[::1]",
        "load goes to loopback only, not {addr}"
    );
    Ok(())
}

pub fn channels(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    loopback_only(addr)?;
    (0..n.max(1))
        .map(|_| {
            let ep = Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10));
            Ok(ep.connect_lazy())
        })
        .collect()
}

/// Runs `clients` loops of `op(client_index, seq)` until `duration`; returns (ops, errors, histogram µs).
pub async fn drive<F, Fut>(clients: usize, duration: Duration, op: F) -> (u64, u64, Histogram<u64>)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let (mut ok, mut err, mut seq) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                seq += 1;
                if op(c, seq).await {
                    ok += 1;
                    let _ = h.record(t.elapsed().as_micros() as u64);
                } else {
                    err += 1;
                }
            }
            (ok, err, h)
        }));
    }
    let mut total = Histogram::<u64>::new(3).expect("histogram");
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        if let Ok((o, e, h)) = t.await {
            ok += o;
            err += e;
            let _ = total.add(h);
        }
    }
    (ok, err, total)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration_s);
    let conns = args.connections.min(args.clients).max(1);
    let (label, batch, (ok, err, h)) = match args.target {
        Target::Store {
            store,
            token,
            batch,
            acquire,
        } => {
            let load = store::Load {
                clients: args.clients,
                conns,
                batch,
                acquire,
            };
            let r = store::run(&store, &token, &load, duration)
                .await
                .context("store load")?;
            let label = if acquire {
                "tollgate-store-acquire"
            } else {
                "tollgate-store"
            };
            (label, batch, r)
        }
        Target::Http { url, key, body } => {
            return http_main(&url, key, body, args.clients, duration).await;
        }
        Target::Etcd {
            endpoint,
            value_bytes,
        } => {
            let chans = channels(&endpoint, conns)?;
            let value = vec![b'x'; value_bytes];
            let run = uuid::Uuid::new_v4().simple().to_string();
            let r = drive(args.clients, duration, move |c, seq| {
                let mut kv = etcdpb::kv_client::KvClient::new(chans[c % chans.len()].clone());
                let req = etcdpb::PutRequest {
                    key: format!("bench/{run}/{c}/{seq}").into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                };
                async move { kv.put(req).await.is_ok() }
            })
            .await;
            ("etcd", 1, r)
        }
    };
    let secs = duration.as_secs_f64();
    let out = serde_json::json!({
        "target": label,
        "clients": args.clients,
        "batch": batch,
        "requests": ok,
        "errors": err,
        "requests_per_s": (ok as f64 / secs).round(),
        "records_per_s": ((ok * batch as u64) as f64 / secs).round(),
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
    });
    println!("{out}");
    Ok(())
}

async fn http_main(
    url: &str,
    key: Option<String>,
    body: String,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let r = http::run(url, key, body, clients, duration).await?;
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    let out = serde_json::json!({
        "target": url,
        "clients": clients,
        "requests": r.ok,
        "errors": r.errors,
        "requests_per_s": (r.ok as f64 / duration.as_secs_f64()).round(),
        "p50_ms": q(&r.latency_us, 0.5),
        "p99_ms": q(&r.latency_us, 0.99),
        "ttfb_p50_ms": q(&r.ttft_us, 0.5),
        "ttfb_p99_ms": q(&r.ttft_us, 0.99),
    });
    println!("{out}");
    Ok(())
}
