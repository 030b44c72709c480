//! Command-line interface: subcommands and the shared connection flags.

mod admin_cmd;
mod certs_cmd;
mod chaos_cmd;
mod cluster_cmd;
mod dev_cmd;
mod gateway_cmd;
mod hooks_args;
mod limit_args;
mod mock_cmd;
mod output;
mod store_cmd;
mod usage_cmd;

use clap::{Args, Parser, Subcommand};
use tollgate_client::StoreClient;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Gateway and quota control plane for AI model serving"
)]
pub struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `tollgate_store=debug`.
    #[arg(long, global = true, env = "TOLLGATE_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a local Tollgate with no configuration: store, gateway and simulated upstreams,
    /// seeded with a demo tenant.
    Dev(dev_cmd::DevArgs),
    /// Run an OpenAI-compatible gateway node.
    Gateway(Box<gateway_cmd::GatewayArgs>),
    /// Run the simulated OpenAI-compatible model server (tests, benchmarks, chaos runs).
    MockUpstream(mock_cmd::MockArgs),
    /// Run a quota-store node.
    Store(store_cmd::StoreArgs),
    /// Manage orgs, projects, keys, models, limits, admin tokens and the audit log.
    Admin(admin_cmd::AdminArgs),
    /// Inspect and change the store cluster's membership.
    Cluster(cluster_cmd::ClusterArgs),
    /// Read the usage ledger: export for billing (JSON Lines, CSV), summaries.
    Usage(usage_cmd::UsageArgs),
    /// Run fault scenarios against a real local cluster and check the invariants.
    Chaos(chaos_cmd::ChaosArgs),
    /// Make a cluster CA and role certificates for mutual TLS on the store's port.
    Certs(certs_cmd::CertsArgs),
}

/// How to reach the store.
#[derive(Args, Clone)]
pub struct Conn {
    /// Store node addresses (host:port), comma separated; the leader is found from any of them.
    #[arg(long, env = "TOLLGATE_STORE", value_delimiter = ',', global = true)]
    pub store: Vec<String>,
    /// Admin token (tg_admin_…).
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: StoreTlsArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub output: output::Format,
}

impl Conn {
    pub fn client(&self) -> anyhow::Result<StoreClient> {
        let client = StoreClient::new(self.store.clone(), self.token.clone())?;
        Ok(match self.tls.files()? {
            Some(files) => client.with_tls(&files)?,
            None => client,
        })
    }
}

/// Mutual TLS to the store (when it runs with `--tls-*`): the cluster CA and this party's
/// certificate and key (`tollgate certs`).
#[derive(Args, Clone, Default)]
pub struct StoreTlsArgs {
    /// The cluster CA certificate (PEM) that signed the store's certificate.
    #[arg(long, env = "TOLLGATE_STORE_CA", global = true)]
    pub store_ca: Option<std::path::PathBuf>,
    /// This party's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "TOLLGATE_STORE_CERT", global = true)]
    pub store_cert: Option<std::path::PathBuf>,
    /// This party's private key (PEM).
    #[arg(long, env = "TOLLGATE_STORE_KEY", global = true)]
    pub store_key: Option<std::path::PathBuf>,
}

impl StoreTlsArgs {
    pub fn files(&self) -> anyhow::Result<Option<tollgate_proto::tls::TlsFiles>> {
        tollgate_proto::tls::TlsFiles::from_parts(
            "--store",
            self.store_ca.clone(),
            self.store_cert.clone(),
            self.store_key.clone(),
        )
        .map_err(anyhow::Error::msg)
    }
}

pub fn init_tracing(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(a) => dev_cmd::run(a).await,
        Command::Gateway(a) => gateway_cmd::run(*a).await,
        Command::MockUpstream(a) => mock_cmd::run(a).await,
        Command::Store(a) => store_cmd::run(a).await,
        Command::Admin(a) => admin_cmd::run(a).await,
        Command::Cluster(a) => cluster_cmd::run(a).await,
        Command::Usage(a) => usage_cmd::run(a).await,
        Command::Chaos(a) => chaos_cmd::run(a).await,
        Command::Certs(a) => certs_cmd::run(a),
    }
}
