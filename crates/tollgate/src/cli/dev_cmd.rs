//! `tollgate dev`: one command, no config: a single-node quota store on loopback, bootstrapped
//! and seeded with a demo org, project, API key, models and a budget. Prints how to use it.
//! (The OpenAI-compatible gateway and simulated upstreams join this command with the gateway work.)

use super::store_cmd::wait_for_signal;
use anyhow::Context;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tollgate_client::StoreClient;
use tollgate_store::node::{StoreConfig, StoreNode};
use tollgate_types::admin::AdminOp;
use tollgate_types::amount::Price;
use tollgate_types::config::{ConfigDoc, Endpoint, ModelDef, Org, OrgStatus, Project, Tier};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::secret;
use tollgate_types::{ModelName, OrgId, ProjectId};

#[derive(Args)]
pub struct DevArgs {
    /// Store address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub store_listen: SocketAddr,
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

fn demo_doc() -> anyhow::Result<ConfigDoc> {
    let org: OrgId = id("demo")?;
    let model = |name: &str, port: u16| -> anyhow::Result<ModelDef> {
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
                    endpoints: vec![Endpoint {
                        url: format!("http://127.0.0.1:{port}/v1"),
                        weight: 1,
                        upstream_model: None,
                    }],
                },
                Tier {
                    endpoints: vec![Endpoint {
                        url: format!("http://127.0.0.1:{}/v1", port + 1),
                        weight: 1,
                        upstream_model: None,
                    }],
                },
            ],
        })
    };
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
        models: vec![model("demo-chat", 7801)?, model("demo-embed", 7811)?],
        limits: vec![Limit {
            scope: Scope::Org { org },
            model: None,
            dimension: Dimension::TokenBudget {
                period: Period::Month,
            },
            limit: 10_000_000,
            burst: 0,
            fail_policy: FailPolicy::Strict,
            shadow: false,
        }],
    })
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
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
    let peer_token = secret::generate("peer");
    let mut cfg = StoreConfig::new(1, args.store_listen, data_dir.join("store-1"), peer_token);
    cfg.initial_cluster = Some(BTreeMap::from([(1, args.store_listen.to_string())]));
    cfg.bootstrap_admin_token = Some(token.clone());
    let node = StoreNode::start(cfg)
        .await
        .with_context(|| format!("starting the store on {}", args.store_listen))?;
    let store_addr = node.addr.to_string();

    let client = StoreClient::new(vec![store_addr.clone()], Some(token.clone()))?;
    client
        .write_with_id("dev-seed-config".into(), &AdminOp::ApplyConfig(demo_doc()?))
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
    let api_key = client
        .write(&key_op)
        .await
        .context("creating the demo API key")?
        .secret
        .unwrap_or_default();

    let summary = json!({
        "store_addr": store_addr,
        "admin_token": token,
        "api_key": api_key,
        "models": ["demo-chat", "demo-embed"],
        "data_dir": data_dir,
    });
    match args.output {
        super::output::Format::Json => println!("{summary}"),
        super::output::Format::Text => println!(
            "Tollgate dev is running.\n  store:       {store_addr}\n  admin token: {token}\n  API key:     {api_key}\n  models:      demo-chat, demo-embed\n\nTry:\n  TOLLGATE_STORE={store_addr} TOLLGATE_ADMIN_TOKEN={token} tollgate admin org list\n  TOLLGATE_STORE={store_addr} TOLLGATE_ADMIN_TOKEN={token} tollgate cluster status\n\nCtrl-C stops everything."
        ),
    }
    wait_for_signal().await;
    node.shutdown().await;
    drop(tmp);
    Ok(())
}
