//! `tollgate admin`: orgs, projects, keys, models, limits, admin tokens, `apply -f`, audit.

use super::Conn;
use super::limit_args::{LimitArgs, LimitKeyArgs};
use super::output::{Format, lines, print};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use tollgate_client::StoreClient;
use tollgate_types::admin::{AdminOp, AdminQuery, AdminWriteResult};
use tollgate_types::amount::Price;
use tollgate_types::config::{
    ConfigDoc, Endpoint, KeyScope, ModelDef, Org, OrgStatus, Project, Tier,
};
use tollgate_types::secret::Role;
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId};

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    #[command(subcommand)]
    Org(OrgCmd),
    #[command(subcommand)]
    Project(ProjectCmd),
    #[command(subcommand)]
    Key(KeyCmd),
    #[command(subcommand)]
    Model(ModelCmd),
    #[command(subcommand)]
    Limit(LimitCmd),
    #[command(subcommand)]
    Token(TokenCmd),
    /// Apply a declarative config file (YAML or JSON): orgs, projects, models, limits.
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Print the diff without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
pub enum OrgCmd {
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 0)]
        tier: u8,
    },
    List,
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<u8>,
    },
    /// Refuse all traffic of the org until unfrozen.
    Freeze {
        id: String,
    },
    Unfreeze {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ProjectCmd {
    Create {
        #[arg(long)]
        org: String,
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        org: Option<String>,
    },
    Delete {
        #[arg(long)]
        org: String,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create an API key; its secret is printed once.
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "live")]
        env: String,
        /// Models the key may use (comma separated); all when absent.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Endpoints the key may call (comma separated: chat_completions, completions,
        /// embeddings, models); all when absent.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<KeyScope>,
        /// Expiry, ms since the Unix epoch.
        #[arg(long)]
        expires_at_ms: Option<u64>,
    },
    List {
        #[arg(long)]
        org: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Create or replace a model and its route.
    Put {
        name: String,
        #[arg(long)]
        max_output_tokens: u64,
        #[arg(long)]
        default_output_tokens: Option<u64>,
        /// Price per million input tokens, micro-units.
        #[arg(long, default_value_t = 0)]
        input_price: u64,
        /// Price per million output tokens, micro-units.
        #[arg(long, default_value_t = 0)]
        output_price: u64,
        /// Primary tier endpoint base URLs (repeatable), e.g. http://127.0.0.1:9001/v1.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Fallback tier endpoint base URLs (repeatable).
        #[arg(long = "fallback")]
        fallbacks: Vec<String>,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum LimitCmd {
    Put(LimitArgs),
    List {
        #[arg(long)]
        org: Option<String>,
    },
    Delete(LimitKeyArgs),
    /// Live buckets: settled usage, holds, recorded debt, leases per gateway.
    Usage {
        #[arg(long)]
        org: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an admin token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "viewer")]
        role: Role,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    List {
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Recompute every hash link of the audit chain.
    Verify,
}

fn endpoints(urls: &[String]) -> Tier {
    Tier {
        endpoints: urls
            .iter()
            .map(|u| Endpoint {
                url: u.clone(),
                weight: 1,
                upstream_model: None,
            })
            .collect(),
    }
}

fn write_text(r: &AdminWriteResult) -> String {
    match (&r.id, &r.secret) {
        (Some(id), Some(s)) => format!("created {id}\nsecret (shown once, store it now): {s}"),
        _ if r.changed > 0 => format!(
            "applied: {} changed, config version {}",
            r.changed, r.config_version
        ),
        _ => format!(
            "ok (config version {}, log index {})",
            r.config_version, r.log_index
        ),
    }
}

async fn write(client: &StoreClient, format: Format, op: AdminOp) -> anyhow::Result<()> {
    let r = client.write(&op).await?;
    print(format, &r, write_text);
    Ok(())
}

async fn list(
    client: &StoreClient,
    format: Format,
    q: AdminQuery,
    fields: &[&str],
) -> anyhow::Result<()> {
    let v: Value = client.read(&q).await?;
    print(format, &v, |v| lines(v, fields));
    Ok(())
}

fn org_id(s: &str) -> anyhow::Result<OrgId> {
    OrgId::parse(s).context("org id")
}

fn opt_org(s: &Option<String>) -> anyhow::Result<Option<OrgId>> {
    s.as_deref().map(org_id).transpose()
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let f = args.conn.output;
    match args.command {
        AdminCommand::Org(c) => org(&client, f, c).await,
        AdminCommand::Project(c) => project(&client, f, c).await,
        AdminCommand::Key(c) => key(&client, f, c).await,
        AdminCommand::Model(c) => model(&client, f, c).await,
        AdminCommand::Limit(c) => limit(&client, f, c).await,
        AdminCommand::Token(c) => token(&client, f, c).await,
        AdminCommand::Apply { file, dry_run } => apply(&client, f, &file, dry_run).await,
        AdminCommand::Audit(c) => audit(&client, f, c).await,
    }
}

async fn org(client: &StoreClient, f: Format, c: OrgCmd) -> anyhow::Result<()> {
    let status = |id: String, s| -> anyhow::Result<AdminOp> {
        Ok(AdminOp::UpdateOrg {
            id: org_id(&id)?,
            name: None,
            status: Some(s),
            tier: None,
        })
    };
    match c {
        OrgCmd::Create { id, name, tier } => {
            let org = Org {
                id: org_id(&id)?,
                name: name.unwrap_or_else(|| id.clone()),
                status: OrgStatus::Active,
                tier,
            };
            write(client, f, AdminOp::CreateOrg(org)).await
        }
        OrgCmd::List => {
            list(
                client,
                f,
                AdminQuery::ListOrgs,
                &["id", "name", "status", "tier"],
            )
            .await
        }
        OrgCmd::Update { id, name, tier } => {
            write(
                client,
                f,
                AdminOp::UpdateOrg {
                    id: org_id(&id)?,
                    name,
                    status: None,
                    tier,
                },
            )
            .await
        }
        OrgCmd::Freeze { id } => write(client, f, status(id, OrgStatus::Frozen)?).await,
        OrgCmd::Unfreeze { id } => write(client, f, status(id, OrgStatus::Active)?).await,
        OrgCmd::Delete { id } => write(client, f, AdminOp::DeleteOrg { id: org_id(&id)? }).await,
    }
}

async fn project(client: &StoreClient, f: Format, c: ProjectCmd) -> anyhow::Result<()> {
    match c {
        ProjectCmd::Create { org, id, name } => {
            let p = Project {
                org: org_id(&org)?,
                id: ProjectId::parse(&id).context("project id")?,
                name: name.unwrap_or(id),
            };
            write(client, f, AdminOp::CreateProject(p)).await
        }
        ProjectCmd::List { org } => {
            list(
                client,
                f,
                AdminQuery::ListProjects {
                    org: opt_org(&org)?,
                },
                &["org", "id", "name"],
            )
            .await
        }
        ProjectCmd::Delete { org, id } => {
            write(
                client,
                f,
                AdminOp::DeleteProject {
                    org: org_id(&org)?,
                    id: ProjectId::parse(&id).context("project id")?,
                },
            )
            .await
        }
    }
}

async fn key(client: &StoreClient, f: Format, c: KeyCmd) -> anyhow::Result<()> {
    match c {
        KeyCmd::Create {
            org,
            project,
            name,
            env,
            models,
            scopes,
            expires_at_ms,
        } => {
            let allowed_models = models
                .iter()
                .map(|m| ModelName::parse(m))
                .collect::<Result<_, _>>()
                .context("--models")?;
            let op = AdminOp::CreateKey {
                org: org_id(&org)?,
                project: ProjectId::parse(&project).context("--project")?,
                name,
                env,
                allowed_models,
                scopes,
                expires_at_ms,
            };
            write(client, f, op).await
        }
        KeyCmd::List { org } => {
            list(
                client,
                f,
                AdminQuery::ListKeys {
                    org: opt_org(&org)?,
                },
                &["id", "org", "project", "name", "status"],
            )
            .await
        }
        KeyCmd::Revoke { id } => {
            write(
                client,
                f,
                AdminOp::RevokeKey {
                    id: KeyId::parse(&id).context("key id")?,
                },
            )
            .await
        }
    }
}

async fn model(client: &StoreClient, f: Format, c: ModelCmd) -> anyhow::Result<()> {
    match c {
        ModelCmd::Put {
            name,
            max_output_tokens,
            default_output_tokens,
            input_price,
            output_price,
            endpoints: eps,
            fallbacks,
        } => {
            let mut tiers = vec![endpoints(&eps)];
            if !fallbacks.is_empty() {
                tiers.push(endpoints(&fallbacks));
            }
            let m = ModelDef {
                name: ModelName::parse(&name).context("model name")?,
                max_output_tokens,
                default_output_tokens: default_output_tokens.unwrap_or(max_output_tokens.min(1024)),
                price: Price {
                    input_per_mtok_micros: input_price,
                    output_per_mtok_micros: output_price,
                },
                price_version: 0,
                tiers,
            };
            write(client, f, AdminOp::PutModel(m)).await
        }
        ModelCmd::List => {
            list(
                client,
                f,
                AdminQuery::ListModels,
                &["name", "max_output_tokens", "price_version"],
            )
            .await
        }
        ModelCmd::Delete { name } => {
            write(
                client,
                f,
                AdminOp::DeleteModel {
                    name: ModelName::parse(&name).context("model name")?,
                },
            )
            .await
        }
    }
}

async fn limit(client: &StoreClient, f: Format, c: LimitCmd) -> anyhow::Result<()> {
    match c {
        LimitCmd::Put(a) => write(client, f, AdminOp::PutLimit(a.to_limit()?)).await,
        LimitCmd::List { org } => {
            list(
                client,
                f,
                AdminQuery::ListLimits {
                    org: opt_org(&org)?,
                },
                &["scope", "model", "dimension", "limit", "fail_policy"],
            )
            .await
        }
        LimitCmd::Delete(k) => write(client, f, AdminOp::DeleteLimit(k.to_key()?)).await,
        LimitCmd::Usage { org } => {
            list(
                client,
                f,
                AdminQuery::Buckets {
                    org: opt_org(&org)?,
                },
                &["limit", "period", "settled", "held", "debt", "tokens"],
            )
            .await
        }
    }
}

async fn token(client: &StoreClient, f: Format, c: TokenCmd) -> anyhow::Result<()> {
    match c {
        TokenCmd::Create { name, role } => {
            write(client, f, AdminOp::CreateAdminToken { name, role }).await
        }
        TokenCmd::List => {
            list(
                client,
                f,
                AdminQuery::ListTokens,
                &["id", "name", "role", "revoked"],
            )
            .await
        }
        TokenCmd::Revoke { id } => {
            write(
                client,
                f,
                AdminOp::RevokeAdminToken {
                    id: KeyId::parse(&id).context("token id")?,
                },
            )
            .await
        }
    }
}

/// Reads a config document (YAML or JSON). YAML is read into a JSON value first so enums use
/// the same `{variant: {...}}` maps in both formats (no YAML `!tags`).
pub fn read_doc(file: &PathBuf) -> anyhow::Result<ConfigDoc> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let value: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not valid YAML or JSON", file.display()))?;
    serde_json::from_value(value)
        .with_context(|| format!("{} is not a valid config document", file.display()))
}

async fn apply(
    client: &StoreClient,
    f: Format,
    file: &PathBuf,
    dry_run: bool,
) -> anyhow::Result<()> {
    let doc = read_doc(file)?;
    if dry_run {
        let diff: Value = client.read(&AdminQuery::DiffConfig(doc)).await?;
        print(f, &diff, diff_text);
        return Ok(());
    }
    write(client, f, AdminOp::ApplyConfig(doc)).await
}

fn diff_text(diff: &Value) -> String {
    let mut out = Vec::new();
    for c in diff.as_array().into_iter().flatten() {
        let target = c.get("target").and_then(Value::as_str).unwrap_or("?");
        match c.get("kind").and_then(Value::as_str) {
            Some("create") => out.push(format!(
                "+ {target}\n    {}",
                c["after"].as_str().unwrap_or("")
            )),
            Some("update") => out.push(format!(
                "~ {target}\n  - {}\n  + {}",
                c["before"].as_str().unwrap_or(""),
                c["after"].as_str().unwrap_or("")
            )),
            _ => out.push(format!("= {target}")),
        }
    }
    if out.is_empty() {
        "(empty document)".to_owned()
    } else {
        out.join("\n")
    }
}

async fn audit(client: &StoreClient, f: Format, c: AuditCmd) -> anyhow::Result<()> {
    match c {
        AuditCmd::List { from_seq, limit } => {
            list(
                client,
                f,
                AdminQuery::Audit { from_seq, limit },
                &["seq", "ts_ms", "actor", "action", "target"],
            )
            .await
        }
        AuditCmd::Verify => {
            let v: Value = client.read(&AdminQuery::AuditVerify).await?;
            let ok = v.get("ok").and_then(Value::as_bool) == Some(true);
            print(f, &v, |v| match ok {
                true => format!(
                    "audit chain ok: {} records, head {}",
                    v["records"], v["head"]
                ),
                false => format!("AUDIT CHAIN BROKEN: {}", v["error"]),
            });
            if ok {
                Ok(())
            } else {
                anyhow::bail!("audit chain verification failed")
            }
        }
    }
}
