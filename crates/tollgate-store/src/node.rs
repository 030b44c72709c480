//! A running store node: opens storage, starts Raft and the gRPC server, initializes a new
//! cluster from `initial_cluster` and proposes the bootstrap entry once a leader exists.

use crate::network::{Network, PEER_MESSAGE_BYTES_MAX, PeerToken};
use crate::server::NodeCtx;
use crate::server::admin_svc::{AdminService, bootstrap_command};
use crate::server::quota_svc::QuotaService;
use crate::server::raft_svc::RaftService;
use crate::storage::{Durable, LogStore, StateMachineStore};
use crate::types::{NodeId, Raft};
use anyhow::Context as _;
use openraft::{BasicNode, Config, SnapshotPolicy};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate_ledger::Actor;
use tollgate_proto::{
    admin::admin_server::AdminServer, quota::quota_server::QuotaServer,
    raft::raft_server::RaftServer,
};
use tollgate_types::secret::{self, ClusterSecret};

/// Where a generated bootstrap admin token is written (mode 0600).
pub const TOKEN_FILE: &str = "bootstrap-admin-token";

/// Largest admin or quota request (keeps every Raft entry below the storage limit).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 128 << 10;
/// Most entries in one replication message: keeps it below the peer message limit.
const REPLICATION_ENTRIES_MAX: u64 = 256;
const _: () = assert!(
    (REPLICATION_ENTRIES_MAX as usize) * crate::storage::ENTRY_BYTES_MAX
        < crate::network::PEER_MESSAGE_BYTES_MAX
);
const _: () = assert!(CLIENT_MESSAGE_BYTES_MAX < crate::storage::ENTRY_BYTES_MAX);

/// Longest peer address.
pub const PEER_ADDR_BYTES_MAX: usize = 255;

/// Checks a peer address: `host:port` where host is an IP (IPv6 in brackets) or a DNS name.
pub fn check_peer_addr(addr: &str) -> Result<(), String> {
    let bad = || format!("'{addr}' is not host:port (an IP address or DNS name, and a port)");
    if addr.len() > PEER_ADDR_BYTES_MAX {
        return Err(bad());
    }
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// The address other nodes and clients use (defaults to `listen`).
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// `id -> address` of the founding members; `None` when joining an existing cluster.
    pub initial_cluster: Option<BTreeMap<NodeId, String>>,
    /// Shared secret every Raft RPC between nodes must carry (the same on every node).
    pub peer_token: String,
    /// The first admin token; generated when `None`.
    pub bootstrap_admin_token: Option<String>,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many applied entries.
    pub snapshot_logs: u64,
    /// Mutual TLS on the gRPC port and to peers (this node's store certificate and the CA).
    pub tls: Option<tollgate_proto::tls::TlsFiles>,
}

impl StoreConfig {
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        data_dir: PathBuf,
        peer_token: String,
    ) -> StoreConfig {
        StoreConfig {
            node_id,
            listen,
            advertise: None,
            data_dir,
            initial_cluster: None,
            peer_token,
            bootstrap_admin_token: None,
            // openraft gives replication RPCs one heartbeat interval to answer; on a loaded
            // 2-core machine a follower's fsync can take 100+ ms, so leave room
            heartbeat_ms: 300,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_logs: 10_000,
            tls: None,
        }
    }

    fn raft_config(&self) -> anyhow::Result<Config> {
        let cfg = Config {
            cluster_name: "tollgate".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.snapshot_logs.min(1_000),
            purge_batch_size: (self.snapshot_logs / 4).clamp(1, 256),
            max_payload_entries: REPLICATION_ENTRIES_MAX,
            ..Default::default()
        };
        Ok(cfg.validate()?)
    }
}

/// What the node reports once started.
pub struct StoreNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft,
    pub ctx: NodeCtx,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    /// Resolves with the bootstrap admin token this node generated (written to the data dir).
    pub bootstrap: Option<tokio::task::JoinHandle<anyhow::Result<Option<String>>>>,
}

impl StoreNode {
    pub async fn start(cfg: StoreConfig) -> anyhow::Result<StoreNode> {
        let peer_token = PeerToken::new(&cfg.peer_token).map_err(anyhow::Error::msg)?;
        // read the TLS files before anything starts: a bad path or PEM fails the start
        let mut server = tonic::transport::Server::builder();
        let peer_tls = match &cfg.tls {
            Some(t) => {
                let config = t.server_config().map_err(anyhow::Error::msg)?;
                server = server
                    .tls_config(config)
                    .context("the TLS files (--tls-ca, --tls-cert, --tls-key)")?;
                Some(t.client_config().map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        std::fs::create_dir_all(&cfg.data_dir)?;
        let durable = Durable::open(&cfg.data_dir)?;
        let log = LogStore::open(durable.clone())?;
        let sm = StateMachineStore::open(&cfg.data_dir, durable.log_meter())?;
        let handle = sm.handle();
        let raft = Raft::new(
            cfg.node_id,
            std::sync::Arc::new(cfg.raft_config()?),
            Network::new(peer_token.clone(), peer_tls),
            log,
            sm,
        )
        .await?;
        let ctx = NodeCtx::new(cfg.node_id, raft.clone(), handle).with_mtls(cfg.tls.is_some());

        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(serve(
            server,
            listener,
            ctx.clone(),
            durable,
            peer_token,
            rx,
        ));

        let mut bootstrap = None;
        if let Some(members) = &cfg.initial_cluster {
            let grace =
                Duration::from_millis(cfg.election_timeout_max_ms * FOUNDING_GRACE_TIMEOUTS);
            found(&raft, members, cfg.node_id, grace).await?;
            bootstrap = Some(tokio::spawn(bootstrap_when_leader(
                ctx.clone(),
                cfg.clone(),
            )));
        }
        Ok(StoreNode {
            id: cfg.node_id,
            addr,
            raft,
            ctx,
            shutdown: Some(tx),
            server,
            bootstrap,
        })
    }

    /// Resolves when Raft stopped on a fatal error (a storage write failed, e.g. a full disk):
    /// the node can then neither vote nor replicate, so its process should exit and be
    /// restarted by its supervisor rather than linger as a member that never answers.
    pub async fn fatal(&self) -> String {
        use openraft::async_runtime::WatchReceiver;
        // Waits on the server metrics (a vote, state, leader or membership change; the channel
        // closes when Raft stops) rather than on `metrics()`, which changes with every append,
        // commit and apply: waking this task (the process's main thread) several times per
        // write cost a context switch each, about a sixth of a node's switches per write.
        let mut server = self.raft.server_metrics();
        loop {
            if let Err(e) = &self.raft.metrics().borrow_watched().running_state {
                return e.to_string();
            }
            if server.changed().await.is_err() {
                return match &self.raft.metrics().borrow_watched().running_state {
                    Err(e) => e.to_string(),
                    Ok(()) => "raft stopped".into(),
                };
            }
        }
    }

    /// Stops Raft and the server.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.server).await;
    }
}

async fn serve(
    server: tonic::transport::Server,
    listener: TcpListener,
    ctx: NodeCtx,
    durable: Durable,
    peer_token: PeerToken,
    stop: oneshot::Receiver<()>,
) {
    let raft_svc = RaftServer::new(RaftService::new(
        ctx.raft.clone(),
        peer_token,
        ctx.mtls,
        ctx.sm.incoming_dir().to_path_buf(),
    ))
    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let admin = AdminServer::new(AdminService::new(ctx.clone(), durable))
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(64 << 20);
    let quota = QuotaServer::new(QuotaService::new(ctx))
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(64 << 20);
    // nodelay on every accepted socket: `Server::tcp_nodelay` does not apply to a caller's
    // listener, and HTTP/2 writes headers and data separately (a 40 ms Nagle/delayed-ACK stall)
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = server
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .add_service(raft_svc)
        .add_service(admin)
        .add_service(quota)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "store gRPC server stopped");
    }
}

/// How many maximal election timeouts a founding member other than the first waits to hear
/// from the cluster before it initializes Raft itself.
const FOUNDING_GRACE_TIMEOUTS: u64 = 2;

/// Founds a new cluster: the founding member with the lowest id initializes Raft at once; every
/// other member only if nothing reached it within `grace` (the first member is down, or lost its
/// disk before it could replicate). Every member initializing at once, which openraft allows,
/// made same-term candidates step each other down right after bootstrap and left the cluster
/// without a leader for a whole election timeout (seen as lease acquires failing in `tollgate
/// dev` under load). A member a candidate has asked for its vote counts as initialized, so the
/// late path does nothing in a cluster that formed.
async fn found(
    raft: &Raft,
    members: &BTreeMap<NodeId, String>,
    me: NodeId,
    grace: Duration,
) -> anyhow::Result<()> {
    if members.keys().next() == Some(&me) || raft.is_initialized().await? {
        return initialize(raft, members).await;
    }
    let (raft, members) = (raft.clone(), members.clone());
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if let Err(e) = initialize(&raft, &members).await {
            // also the path of a node shut down within the grace
            tracing::debug!(error = %e, "late initialization of a founding member");
        }
    });
    Ok(())
}

/// Initializes Raft with the founding members (identical member maps on several nodes are
/// allowed by openraft); a node that is already initialized keeps its state.
async fn initialize(raft: &Raft, members: &BTreeMap<NodeId, String>) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        return Ok(());
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.api_error(),
                Some(openraft::errors::InitializeError::NotAllowed(_))
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until some leader exists; if this node leads a cluster that has no bootstrap entry yet,
/// proposes it. Writes the generated admin token to `<data-dir>/bootstrap-admin-token` (0600)
/// only once the bootstrap entry is applied.
async fn bootstrap_when_leader(ctx: NodeCtx, cfg: StoreConfig) -> anyhow::Result<Option<String>> {
    let token = cfg
        .bootstrap_admin_token
        .clone()
        .unwrap_or_else(|| secret::generate(secret::ADMIN_ENV));
    let generated = cfg.bootstrap_admin_token.is_none();
    let path = cfg.data_dir.join(TOKEN_FILE);
    // a token file left by an earlier run of this node (crash after writing it) is reused
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if generated && secret::parse(t.trim()).is_ok() => t.trim().to_owned(),
        _ => token,
    };
    let token_id = secret::parse(&token)
        .map_err(|e| anyhow::anyhow!("bootstrap admin token: {e}"))?
        .key_id()
        .to_owned();
    let mut written = false;
    loop {
        // bootstrapped: by this node's write (perhaps one that timed out but committed) or another's
        let (done, ours) = ctx.sm.read(|d| {
            (
                d.state.secret.is_some(),
                d.state.tokens.keys().any(|k| k.as_str() == token_id),
            )
        });
        if done && ours {
            return Ok(Some(token));
        }
        if done {
            // another node bootstrapped the cluster with its own token: ours is worthless
            if generated {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(None);
        }
        if ctx.raft.is_leader() {
            // the token is on disk before it can be committed, so a crash right after the
            // commit cannot lose the only admin credential
            if generated && !written {
                write_token_file(&cfg.data_dir, &token)?;
                written = true;
            }
            let cmd = bootstrap_command(&token, ClusterSecret::generate())
                .map_err(|s| anyhow::anyhow!(s.message().to_owned()))?;
            let id = format!("bootstrap-{}", uuid::Uuid::new_v4());
            // the outcome is read back from the state on the next turn
            let _ = ctx.write(id, Actor::System, cmd).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_token_file(dir: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(TOKEN_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_peer_addr;

    #[test]
    fn peer_addresses() {
        for ok in [
            "127.0.0.1:7000",
            "[::1]:7000",
            "store-0.store.ns.svc.cluster.local:7000",
            "localhost:1",
        ] {
            assert!(check_peer_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "7000",
            "host:",
            "host:0",
            "host:99999",
            "-bad.example:1",
            "a..b:1",
            "http://x:1",
        ] {
            assert!(check_peer_addr(bad).is_err(), "{bad}");
        }
    }
}
