//! The tenants a chaos run drives, with limits the checker can hold the cluster to:
//!
//! | key | org/project | limit | what it exercises |
//! |---|---|---|---|
//! | `budget` | `acme/p1` | token budget `BUDGET_TOKENS` per month | exhausted mid-run: `U ≤ L + D` |
//! | `rate` | `acme/p2` | `RATE_RPM` requests per minute | driven above the limit: the rate bound |
//! | `bulk` | `beta/q1` | org token budget far above use | a plain counter: ledger = bucket |

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use tollgate_client::StoreClient;
use tollgate_types::admin::AdminOp;
use tollgate_types::amount::Price;
use tollgate_types::config::{ConfigDoc, Endpoint, ModelDef, Org, OrgStatus, Project, Tier};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::{ModelName, OrgId, ProjectId};

pub const MODEL: &str = "m";
pub const BUDGET_TOKENS: u64 = 12_000;
pub const RATE_RPM: u64 = 240;
pub const BULK_BUDGET_TOKENS: u64 = 1_000_000_000;
/// Completion tokens per request (the upstream's length; requests ask for `MAX_TOKENS`).
pub const COMPLETION_TOKENS: u64 = 12;
pub const MAX_TOKENS: u64 = 12;

#[derive(Debug, Clone, Serialize)]
pub struct TenantKey {
    pub name: String,
    pub org: String,
    pub project: String,
    /// The key id (as the ledger records it).
    pub key_id: String,
    #[serde(skip)]
    pub secret: String,
    /// Share of the workload's requests (per mille).
    pub weight: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tenants {
    pub keys: Vec<TenantKey>,
    pub limits: Vec<Limit>,
}

fn id<T>(r: Result<T, tollgate_types::IdError>, what: &str) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

fn limit(scope: Scope, dimension: Dimension, value: u64) -> Limit {
    Limit {
        scope,
        model: None,
        dimension,
        limit: value,
        burst: 0,
        fail_policy: FailPolicy::Strict,
        shadow: false,
    }
}

/// Applies the orgs, projects, model (routed to `upstream_urls`) and limits; creates the keys.
pub async fn seed(client: &StoreClient, upstream_urls: &[String]) -> anyhow::Result<Tenants> {
    let acme = id(OrgId::parse("acme"), "org")?;
    let beta = id(OrgId::parse("beta"), "org")?;
    let project = |org: &OrgId, p: &str| -> anyhow::Result<Project> {
        Ok(Project {
            org: org.clone(),
            id: id(ProjectId::parse(p), "project")?,
            name: p.to_owned(),
        })
    };
    let limits = vec![
        limit(
            Scope::Project {
                org: acme.clone(),
                project: id(ProjectId::parse("p1"), "project")?,
            },
            Dimension::TokenBudget {
                period: Period::Month,
            },
            BUDGET_TOKENS,
        ),
        limit(
            Scope::Project {
                org: acme.clone(),
                project: id(ProjectId::parse("p2"), "project")?,
            },
            Dimension::RequestsPerMinute,
            RATE_RPM,
        ),
        limit(
            Scope::Org { org: beta.clone() },
            Dimension::TokenBudget {
                period: Period::Month,
            },
            BULK_BUDGET_TOKENS,
        ),
    ];
    let doc = ConfigDoc {
        version: 1,
        orgs: vec![
            Org {
                id: acme.clone(),
                name: "Acme".into(),
                status: OrgStatus::Active,
                tier: 0,
            },
            Org {
                id: beta.clone(),
                name: "Beta".into(),
                status: OrgStatus::Active,
                tier: 1,
            },
        ],
        projects: vec![
            project(&acme, "p1")?,
            project(&acme, "p2")?,
            project(&beta, "q1")?,
        ],
        models: vec![ModelDef {
            name: id(ModelName::parse(MODEL), "model")?,
            max_output_tokens: 1000,
            default_output_tokens: MAX_TOKENS,
            price: Price {
                input_per_mtok_micros: 1_000_000,
                output_per_mtok_micros: 2_000_000,
            },
            price_version: 1,
            tiers: vec![Tier {
                endpoints: upstream_urls
                    .iter()
                    .map(|u| Endpoint {
                        url: u.clone(),
                        weight: 1,
                        upstream_model: None,
                    })
                    .collect(),
            }],
        }],
        limits: limits.clone(),
    };
    client
        .write_with_id("chaos-seed-config".into(), &AdminOp::ApplyConfig(doc))
        .await
        .context("seeding the config")?;
    let mut keys = Vec::new();
    for (name, org, p, weight) in [
        ("budget", &acme, "p1", 400),
        ("rate", &acme, "p2", 300),
        ("bulk", &beta, "q1", 300),
    ] {
        let op = AdminOp::CreateKey {
            org: org.clone(),
            project: id(ProjectId::parse(p), "project")?,
            name: format!("chaos {name}"),
            env: "test".into(),
            allowed_models: vec![],
            scopes: vec![],
            expires_at_ms: None,
        };
        let r = client
            .write_with_id(format!("chaos-key-{name}"), &op)
            .await
            .with_context(|| format!("creating the {name} key"))?;
        keys.push(TenantKey {
            name: name.into(),
            org: org.to_string(),
            project: p.into(),
            key_id: r.id.context("the store returned no key id")?,
            secret: r.secret.context("the store returned no key secret")?,
            weight,
        });
    }
    Ok(Tenants { keys, limits })
}

/// How the simulated upstreams answer: short completions paced so a stream lasts ~100 ms.
pub fn mock_behavior() -> Value {
    json!({
        "completion_tokens": COMPLETION_TOKENS,
        "tokens_per_sec": 120,
        "chunk_tokens": 3,
        "ttft_ms": 10,
        "fail_rate": 0.0,
    })
}
