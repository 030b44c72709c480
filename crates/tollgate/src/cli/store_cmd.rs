//! `tollgate store`: run one quota-store node until Ctrl-C / SIGTERM.

use anyhow::{Context, bail};
use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tollgate_client::StoreClient;
use tollgate_store::node::{StoreConfig, StoreNode};

#[derive(Args)]
pub struct StoreArgs {
    /// This node's id: unique, never reused for another node (even after removal).
    #[arg(long)]
    pub node_id: u64,
    /// Address to serve Raft, admin and quota gRPC on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address other nodes reach this one at (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory for the Raft log, vote, snapshots (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Founding members, `1=127.0.0.1:7001,2=…`, given identically to each founding node.
    #[arg(long, conflicts_with = "join")]
    pub initial_cluster: Option<String>,
    /// Join an existing cluster through this member (needs an admin token with the admin role).
    #[arg(long)]
    pub join: Option<String>,
    /// First admin token of a new cluster (tg_admin_…); generated and written to
    /// <data-dir>/bootstrap-admin-token when absent.
    #[arg(long, env = "TOLLGATE_BOOTSTRAP_ADMIN_TOKEN", hide_env_values = true)]
    pub bootstrap_admin_token: Option<String>,
    /// Shared secret that every Raft RPC between store nodes carries; the same on every node,
    /// at least 32 printable characters (e.g. `openssl rand -hex 32`).
    #[arg(long, env = "TOLLGATE_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: String,
    /// Admin token used by --join.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Cluster CA certificate (PEM): with --tls-cert and --tls-key, the node serves mutual TLS
    /// (every caller needs a certificate from this CA; roles per certificate) and speaks TLS to
    /// its peers.
    #[arg(long, env = "TOLLGATE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), role store (`tollgate certs issue --role store`).
    #[arg(long, env = "TOLLGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Snapshot (and purge the log) every this many entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_logs: u64,
    #[command(flatten)]
    pub hooks: super::hooks_args::HooksArgs,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_members(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("'{part}' is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("node id '{id}' is not a number"))?;
        let addr = addr.trim();
        tollgate_store::node::check_peer_addr(addr).map_err(anyhow::Error::msg)?;
        if out.insert(id, addr.to_owned()).is_some() {
            bail!("node id {id} appears twice in --initial-cluster");
        }
    }
    if out.is_empty() {
        bail!("--initial-cluster lists no members");
    }
    Ok(out)
}

impl StoreArgs {
    fn config(&self) -> anyhow::Result<StoreConfig> {
        let mut cfg = StoreConfig::new(
            self.node_id,
            self.listen,
            self.data_dir.clone(),
            self.peer_token.clone(),
        );
        cfg.advertise = self.advertise.clone();
        cfg.bootstrap_admin_token = self.bootstrap_admin_token.clone();
        cfg.snapshot_logs = self.snapshot_logs.max(10);
        cfg.tls = tollgate_proto::tls::TlsFiles::from_parts(
            "--tls",
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        if let Some(ic) = &self.initial_cluster {
            let members = parse_members(ic)?;
            if !members.contains_key(&self.node_id) {
                bail!(
                    "--initial-cluster does not contain this node's id {}",
                    self.node_id
                );
            }
            cfg.initial_cluster = Some(members);
        }
        Ok(cfg)
    }
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    args.hooks.install()?;
    let cfg = args.config()?;
    let cfg_tls = cfg.tls.clone();
    let mut node = StoreNode::start(cfg)
        .await
        .context("starting the store node")?;
    eprintln!("tollgate store: node {} serving on {}", node.id, node.addr);
    if let Some(bootstrap) = node.bootstrap.take() {
        let generated = args.bootstrap_admin_token.is_none();
        let file = args.data_dir.join("bootstrap-admin-token");
        tokio::spawn(async move {
            match bootstrap.await {
                Ok(Ok(Some(token))) if generated => eprintln!(
                    "tollgate store: bootstrapped a new cluster; first admin token (shown once, also in {}): {token}",
                    file.display()
                ),
                Ok(Ok(Some(_))) => eprintln!("tollgate store: bootstrapped a new cluster"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => eprintln!("tollgate store: bootstrap failed: {e:#}"),
                Err(e) => eprintln!("tollgate store: bootstrap task failed: {e}"),
            }
        });
    }
    if let Some(join) = &args.join {
        let advertise = args
            .advertise
            .clone()
            .unwrap_or_else(|| node.addr.to_string());
        let mut client = StoreClient::new(vec![join.clone()], args.token.clone())?;
        if let Some(tls) = &cfg_tls {
            client = client.with_tls(tls)?;
        }
        let _: serde_json::Value = client
            .add_node(node.id, &advertise)
            .await
            .context("joining the cluster")?;
        eprintln!("tollgate store: node {} joined through {join}", node.id);
    }
    tokio::select! {
        _ = wait_for_signal() => {}
        why = node.fatal() => {
            eprintln!("tollgate store: raft stopped on a fatal error, exiting so the node restarts clean: {why}");
            node.shutdown().await;
            bail!("raft stopped: {why}");
        }
    }
    eprintln!("tollgate store: shutting down");
    node.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
