//! A fault-injecting TCP proxy: one per link (store→store, gateway→store, gateway→upstream). It
//! forwards bytes both ways until told otherwise: add delay, kill connections at random (drop),
//! swallow everything (blackhole, a silent partition), deliver only one direction (one-way cut),
//! or reset every open connection at once (RST, `SO_LINGER 0`).

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CHUNK_BYTES: usize = 16 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a link does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "fault")]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Hold each chunk for `ms` (plus up to `jitter_ms`) before forwarding it.
    Delay { ms: u64, jitter_ms: u64 },
    /// Each new connection and each forwarded chunk is, with this probability (per mille),
    /// answered by a reset instead.
    Drop { per_mille: u32 },
    /// Accept and swallow everything, forward nothing (a silent partition: no RST, no FIN).
    Blackhole,
    /// Forward only from the dialling side to the target (`to_target: true`) or only back.
    OneWay { to_target: bool },
}

/// Counters of one proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
    pub swallowed: AtomicU64,
    pub resets: AtomicU64,
}

/// A running proxy; stops (and resets its connections) when dropped.
pub struct Proxy {
    pub name: String,
    pub listen: SocketAddr,
    pub target: String,
    fault: watch::Sender<Fault>,
    /// Bumped to reset every open connection.
    epoch: watch::Sender<u64>,
    pub stats: Arc<ProxyStats>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(name: &str, target: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (fault, fault_rx) = watch::channel(Fault::Pass);
        let (epoch, epoch_rx) = watch::channel(0u64);
        let stats = Arc::new(ProxyStats::default());
        let ctx = Link {
            target: target.to_owned(),
            fault: fault_rx,
            epoch: epoch_rx,
            stats: stats.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, ctx));
        Ok(Proxy {
            name: name.to_owned(),
            listen,
            target: target.to_owned(),
            fault,
            epoch,
            stats,
            task,
        })
    }

    pub fn addr(&self) -> String {
        self.listen.to_string()
    }

    pub fn set(&self, f: Fault) {
        self.fault.send_replace(f);
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Resets (RST) every connection open now; new ones proceed under the current fault.
    pub fn reset_all(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }
}

#[derive(Clone)]
struct Link {
    target: String,
    fault: watch::Receiver<Fault>,
    epoch: watch::Receiver<u64>,
    stats: Arc<ProxyStats>,
}

impl Link {
    fn current(&self) -> Fault {
        *self.fault.borrow()
    }
}

fn roll(per_mille: u32) -> bool {
    per_mille > 0 && rand::rng().random_range(0..1000) < per_mille
}

async fn accept_loop(listener: TcpListener, ctx: Link) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        // resets count from the accept: a `reset_all` before the task first runs still applies
        let mut epoch = ctx.epoch.clone();
        epoch.mark_unchanged();
        tokio::spawn(serve(client, ctx.clone(), epoch));
    }
}

/// Closes with RST instead of FIN.
fn reset(s: TcpStream, stats: &ProxyStats) {
    stats.resets.fetch_add(1, Ordering::Relaxed);
    let _ = s.set_zero_linger();
    drop(s);
}

async fn serve(client: TcpStream, ctx: Link, epoch: watch::Receiver<u64>) {
    let _ = client.set_nodelay(true);
    match ctx.current() {
        Fault::Drop { per_mille } if roll(per_mille) => return reset(client, &ctx.stats),
        Fault::Blackhole => return swallow(client, ctx, epoch).await,
        _ => {}
    }
    let upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&ctx.target)).await {
            Ok(Ok(s)) => s,
            // the target is down: the dialler sees a reset, as it would without the proxy
            _ => return reset(client, &ctx.stats),
        };
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (kill, killed) = watch::channel(false);
    // both directions subscribe before either runs, so neither can miss the other's reset
    let ends = [(kill.subscribe(), epoch.clone()), (kill.subscribe(), epoch)];
    let [up_end, down_end] = ends;
    let ((cr, uw), (ur, cw)) = tokio::join!(
        pump(cr, uw, true, &ctx, &kill, up_end),
        pump(ur, cw, false, &ctx, &kill, down_end)
    );
    if *killed.borrow() {
        if let Ok(c) = cr.reunite(cw) {
            reset(c, &ctx.stats);
        }
        if let Ok(u) = ur.reunite(uw) {
            reset(u, &ctx.stats);
        }
    }
}

/// Forwards one direction chunk by chunk under the current fault (`to_target`: dialler →
/// target) until EOF, an error, or a reset of the connection (`kill`, set by either direction
/// or by `reset_all`). Gives the halves back so the caller can reset the sockets.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    to_target: bool,
    ctx: &Link,
    kill: &watch::Sender<bool>,
    (mut killed, mut epoch): (watch::Receiver<bool>, watch::Receiver<u64>),
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return (from, to);
                }
                Ok(n) => n,
            },
            _ = killed.changed() => return (from, to),
            _ = epoch.changed() => {
                kill.send_replace(true);
                return (from, to);
            }
        };
        let forward = match ctx.current() {
            Fault::Pass => true,
            Fault::Delay { ms, jitter_ms } => {
                let j = if jitter_ms > 0 {
                    rand::rng().random_range(0..=jitter_ms)
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(ms + j)).await;
                true
            }
            Fault::Drop { per_mille } if roll(per_mille) => {
                kill.send_replace(true);
                return (from, to);
            }
            Fault::Drop { .. } => true,
            Fault::Blackhole => false,
            Fault::OneWay { to_target: open } => open == to_target,
        };
        if !forward {
            ctx.stats.swallowed.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() {
                kill.send_replace(true);
                return (from, to);
            },
            _ = killed.changed() => return (from, to),
        }
        ctx.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Reads and discards until the dialler gives up or the connections are reset: a connection
/// accepted into a blackhole never reaches the target, even after the fault lifts.
async fn swallow(mut client: TcpStream, ctx: Link, mut epoch: watch::Receiver<u64>) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        tokio::select! {
            r = client.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => { ctx.stats.swallowed.fetch_add(n as u64, Ordering::Relaxed); }
            },
            _ = epoch.changed() => return reset(client, &ctx.stats),
        }
    }
}
