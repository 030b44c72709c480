//! `tollgate dev`: one command, no config. Starts (in this process) a quota store (1 node, or
//! `--store-nodes 3`), gateways (`--gateways N`) and two simulated upstreams; seeds a demo org,
//! project, API key and models with a fallback route; prints how to use it once everything is
//! ready. Ctrl-C stops everything and removes the temporary data.

use super::store_cmd::wait_for_signal;
use anyhow::Context;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tollgate_client::StoreClient;
use tollgate_gateway::{GatewayHandle, Settings};
use tollgate_mock_upstream::{Behavior, MockServer};
use tollgate_store::node::{StoreConfig, StoreNode};
use tollgate_types::admin::AdminOp;
use tollgate_types::amount::Price;
use tollgate_types::config::{ConfigDoc, Endpoint, ModelDef, Org, OrgStatus, Project, Tier};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::secret;
use tollgate_types::{ModelName, OrgId, ProjectId};

/// Most store nodes and gateways `dev` runs.
const NODES_MAX: u16 = 7;
/// How long to wait for the gateways' first config.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct DevArgs {
    /// Address of the first store node (further nodes use the following ports).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub store_listen: SocketAddr,
    /// Address of the first gateway (further gateways use the following ports).
    #[arg(long, default_value = "127.0.0.1:7600")]
    pub gateway_listen: SocketAddr,
    /// The two simulated upstreams.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7801,127.0.0.1:7802"
    )]
    pub upstream_listen: Vec<SocketAddr>,
    /// Store nodes (1, 3 or 5).
    #[arg(long, default_value_t = 1)]
    pub store_nodes: u16,
    /// Gateway nodes.
    #[arg(long, default_value_t = 1)]
    pub gateways: u16,
    /// Data directory (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object once ready.
    #[arg(long, value_enum, default_value = "text")]
    pub output: super::output::Format,
}

fn id<T: TryFrom<String>>(s: &str) -> anyhow::Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    T::try_from(s.to_owned()).map_err(anyhow::Error::new)
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        url: format!("http://{addr}/v1"),
        weight: 1,
        upstream_model: None,
    }
}

/// A model served by `primary`, falling back to `fallback`.
fn model(name: &str, primary: SocketAddr, fallback: SocketAddr) -> anyhow::Result<ModelDef> {
    Ok(ModelDef {
        name: id::<ModelName>(name)?,
        max_output_tokens: 4096,
        default_output_tokens: 256,
        price: Price {
            input_per_mtok_micros: 150_000,
            output_per_mtok_micros: 600_000,
        },
        price_version: 0,
        tiers: vec![
            Tier {
                endpoints: vec![endpoint(primary)],
            },
            Tier {
                endpoints: vec![endpoint(fallback)],
            },
        ],
    })
}

fn demo_doc(a: SocketAddr, b: SocketAddr) -> anyhow::Result<ConfigDoc> {
    let org: OrgId = id("demo")?;
    Ok(ConfigDoc {
        version: 1,
        orgs: vec![Org {
            id: org.clone(),
            name: "Demo".into(),
            status: OrgStatus::Active,
            tier: 0,
        }],
        projects: vec![Project {
            org: org.clone(),
            id: id::<ProjectId>("default")?,
            name: "Default".into(),
        }],
        models: vec![model("demo-chat", a, b)?, model("demo-embed", b, a)?],
        limits: vec![
            Limit {
                scope: Scope::Org { org: org.clone() },
                model: None,
                dimension: Dimension::TokenBudget {
                    period: Period::Month,
                },
                limit: 10_000_000,
                burst: 0,
                fail_policy: FailPolicy::Strict,
                shadow: false,
            },
            Limit {
                scope: Scope::Org { org },
                model: None,
                dimension: Dimension::RequestsPerMinute,
                limit: 6_000,
                burst: 0,
                fail_policy: FailPolicy::Open,
                shadow: false,
            },
        ],
    })
}

fn shifted(addr: SocketAddr, by: u16) -> anyhow::Result<SocketAddr> {
    let port = addr
        .port()
        .checked_add(by)
        .context("port out of range: choose a lower first port")?;
    Ok(SocketAddr::new(addr.ip(), port))
}

/// Everything `dev` started, stopped in reverse order.
struct Running {
    stores: Vec<StoreNode>,
    mocks: Vec<MockServer>,
    gateways: Vec<GatewayHandle>,
}

impl Running {
    async fn stop(self) {
        for g in self.gateways {
            g.shutdown().await;
        }
        for m in self.mocks {
            m.shutdown().await;
        }
        for s in self.stores {
            s.shutdown().await;
        }
    }
}

async fn start_stores(
    args: &DevArgs,
    data_dir: &Path,
    token: &str,
) -> anyhow::Result<Vec<StoreNode>> {
    let n = args.store_nodes;
    let members: BTreeMap<u64, String> = (0..n)
        .map(|i| Ok((u64::from(i) + 1, shifted(args.store_listen, i)?.to_string())))
        .collect::<anyhow::Result<_>>()?;
    let peer_token = secret::generate("peer");
    let mut nodes = Vec::new();
    // the lowest id founds the cluster: started last, it finds its peers up and wins its first
    // election instead of waiting an election timeout for them
    for (node_id, addr) in members.iter().rev() {
        let listen: SocketAddr = addr.parse()?;
        let mut cfg = StoreConfig::new(
            *node_id,
            listen,
            data_dir.join(format!("store-{node_id}")),
            peer_token.clone(),
        );
        cfg.initial_cluster = Some(members.clone());
        cfg.bootstrap_admin_token = Some(token.to_owned());
        let node = StoreNode::start(cfg)
            .await
            .with_context(|| format!("starting store node {node_id} on {listen}"))?;
        nodes.push(node);
    }
    nodes.reverse();
    Ok(nodes)
}

async fn seed(client: &StoreClient, doc: ConfigDoc) -> anyhow::Result<String> {
    client
        .write_with_id("dev-seed-config".into(), &AdminOp::ApplyConfig(doc))
        .await
        .context("seeding the demo config")?;
    let key_op = AdminOp::CreateKey {
        org: id("demo")?,
        project: id("default")?,
        name: "demo key".into(),
        env: "test".into(),
        allowed_models: vec![],
        scopes: vec![],
        expires_at_ms: None,
    };
    Ok(client
        .write_with_id("dev-seed-key".into(), &key_op)
        .await
        .context("creating the demo API key")?
        .secret
        .unwrap_or_default())
}

async fn start_gateways(
    args: &DevArgs,
    data_dir: &Path,
    stores: &[String],
    token: &str,
) -> anyhow::Result<Vec<GatewayHandle>> {
    let mut out = Vec::new();
    for i in 0..args.gateways {
        let listen = shifted(args.gateway_listen, i)?;
        let mut s = Settings::new(
            listen,
            stores.to_vec(),
            data_dir.join(format!("gateway-{}", i + 1)),
        );
        s.store_token = Some(token.to_owned());
        s.gateway_id = format!("dev-gw-{}", i + 1);
        let g = tollgate_gateway::start(s)
            .await
            .with_context(|| format!("starting gateway {} on {listen}", i + 1))?;
        out.push(g);
    }
    let start = Instant::now();
    while !out.iter().all(GatewayHandle::ready) {
        if start.elapsed() > READY_TIMEOUT {
            anyhow::bail!(
                "the gateways did not receive their configuration within {READY_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(out)
}

fn check(args: &DevArgs) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    if !matches!(args.store_nodes, 1 | 3 | 5) {
        anyhow::bail!("--store-nodes must be 1, 3 or 5");
    }
    if args.gateways == 0 || args.gateways > NODES_MAX {
        anyhow::bail!("--gateways must be 1..={NODES_MAX}");
    }
    match args.upstream_listen.as_slice() {
        [a, b] => Ok((*a, *b)),
        _ => anyhow::bail!("--upstream-listen takes exactly two addresses (primary,fallback)"),
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (ua, ub) = check(&args)?;
    let tmp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary data dir")?),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| tmp.as_ref().map(|t| t.path().to_path_buf()))
        .context("no data dir")?;
    let token = secret::generate(secret::ADMIN_ENV);
    let mut running = Running {
        stores: Vec::new(),
        mocks: Vec::new(),
        gateways: Vec::new(),
    };
    let result = start_all(&args, &data_dir, &token, (ua, ub), &mut running).await;
    match result {
        Ok(summary) => {
            print_summary(&args, &summary);
            wait_for_signal().await;
        }
        Err(e) => {
            running.stop().await;
            return Err(e);
        }
    }
    running.stop().await;
    drop(tmp);
    Ok(())
}

async fn start_all(
    args: &DevArgs,
    data_dir: &Path,
    token: &str,
    (ua, ub): (SocketAddr, SocketAddr),
    running: &mut Running,
) -> anyhow::Result<serde_json::Value> {
    for (addr, name) in [(ua, "upstream-a"), (ub, "upstream-b")] {
        let b = Behavior {
            name: name.into(),
            ..Behavior::default()
        };
        let m = MockServer::start(addr, b)
            .await
            .with_context(|| format!("starting the simulated upstream on {addr}"))?;
        running.mocks.push(m);
    }
    running.stores = start_stores(args, data_dir, token).await?;
    let stores: Vec<String> = running.stores.iter().map(|n| n.addr.to_string()).collect();
    let client = StoreClient::new(stores.clone(), Some(token.to_owned()))?;
    let api_key = seed(&client, demo_doc(ua, ub)?).await?;
    running.gateways = start_gateways(args, data_dir, &stores, token).await?;
    let urls: Vec<String> = running
        .gateways
        .iter()
        .map(|g| format!("http://{}/v1", g.addr))
        .collect();
    Ok(json!({
        "gateway_url": urls[0],
        "gateway_urls": urls,
        "api_key": api_key,
        "admin_token": token,
        "store_addr": stores[0],
        "store_addrs": stores,
        "models": ["demo-chat", "demo-embed"],
        "upstreams": running.mocks.iter().map(|m| format!("http://{}", m.addr)).collect::<Vec<_>>(),
        "data_dir": data_dir,
    }))
}

fn print_summary(args: &DevArgs, s: &serde_json::Value) {
    let get = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
    match args.output {
        super::output::Format::Json => println!("{s}"),
        super::output::Format::Text => {
            let (url, key, tok, store) = (
                get("gateway_url"),
                get("api_key"),
                get("admin_token"),
                get("store_addr"),
            );
            println!(
                "Tollgate dev is running.\n  gateway:     {url}\n  API key:     {key}\n  admin token: {tok}\n  store:       {store}\n  models:      demo-chat (fallback route), demo-embed\n\nTry:\n  curl {url}/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"demo-chat\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n  TOLLGATE_STORE={store} TOLLGATE_ADMIN_TOKEN={tok} tollgate admin org list\n\nCtrl-C stops everything."
            );
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
