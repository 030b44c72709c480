//! Store target: sets up an org, project and key (idempotent), finds the leader, then sends
//! `RecordUsage` requests of `batch` fresh records each.

use crate::{channels, drive};
use hdrhistogram::Histogram;
use std::time::Duration;
use tollgate_client::StoreClient;
use tollgate_proto::quota::{AcquireRequest, RecordUsageRequest, quota_client::QuotaClient};
use tollgate_types::admin::AdminOp;
use tollgate_types::config::{Org, OrgStatus, Project};
use tollgate_types::lease::{AcquireBody, Want};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, LimitKey, Period, Scope};
use tollgate_types::usage::{UsageRecord, UsageStatus};

async fn setup(client: &StoreClient) -> anyhow::Result<String> {
    let org = Org {
        id: "bench".parse_id()?,
        name: "bench".into(),
        status: OrgStatus::Active,
        tier: 0,
    };
    let _ = client
        .write_with_id("bench-org".into(), &AdminOp::CreateOrg(org))
        .await;
    let p = Project {
        org: "bench".parse_id()?,
        id: "load".parse_id()?,
        name: "load".into(),
    };
    let _ = client
        .write_with_id("bench-project".into(), &AdminOp::CreateProject(p))
        .await;
    let key = AdminOp::CreateKey {
        org: "bench".parse_id()?,
        project: "load".parse_id()?,
        name: "bench".into(),
        env: "test".into(),
        allowed_models: vec![],
        scopes: vec![],
        expires_at_ms: None,
    };
    let created = client.write(&key).await?;
    created
        .id
        .ok_or_else(|| anyhow::anyhow!("no key id returned"))
}

trait ParseId {
    fn parse_id<T: TryFrom<String>>(&self) -> anyhow::Result<T>
    where
        T::Error: std::error::Error + Send + Sync + 'static;
}

impl ParseId for str {
    fn parse_id<T: TryFrom<String>>(&self) -> anyhow::Result<T>
    where
        T::Error: std::error::Error + Send + Sync + 'static,
    {
        Ok(T::try_from(self.to_owned())?)
    }
}

/// `batch` records with fresh UUIDv7 request ids, as gateways mint them (the store's dedup index
/// keys those by their 128 bits and prunes them by the time inside).
fn records(key: &str, batch: usize) -> anyhow::Result<Vec<u8>> {
    let recs: anyhow::Result<Vec<UsageRecord>> = (0..batch)
        .map(|_| {
            Ok(UsageRecord {
                request_id: uuid::Uuid::now_v7().to_string().as_str().parse_id()?,
                org: "bench".parse_id()?,
                project: "load".parse_id()?,
                key: key.parse_id()?,
                model: "bench-model".parse_id()?,
                gateway: "load".into(),
                prompt_tokens: 120,
                completion_tokens: 380,
                cost_micros: 250,
                price_version: 1,
                status: UsageStatus::Completed,
                started_at_ms: 0,
                ended_at_ms: 0,
                estimated: false,
                unbacked: false,
            })
        })
        .collect();
    tollgate_proto::wire::encode(&recs?).map_err(anyhow::Error::msg)
}

/// What to send.
pub struct Load {
    pub clients: usize,
    pub conns: usize,
    pub batch: usize,
    pub acquire: bool,
}

/// The bench org's limits (large: the load measures the store, not refusals).
async fn limits(client: &StoreClient) -> anyhow::Result<Vec<LimitKey>> {
    let mut keys = Vec::new();
    for dimension in [
        Dimension::RequestsPerMinute,
        Dimension::InputTokensPerMinute,
        Dimension::TokenBudget {
            period: Period::Month,
        },
    ] {
        let l = Limit {
            scope: Scope::Org {
                org: "bench".parse_id()?,
            },
            model: None,
            dimension,
            limit: 1 << 50,
            burst: 0,
            fail_policy: FailPolicy::Strict,
            shadow: false,
        };
        keys.push(l.key());
        client.write(&AdminOp::PutLimit(l)).await?;
    }
    Ok(keys)
}

fn acquire_body(keys: &[LimitKey], records_bin: &[u8]) -> anyhow::Result<Vec<u8>> {
    let usage: Vec<UsageRecord> =
        tollgate_proto::wire::decode(records_bin).map_err(anyhow::Error::msg)?;
    let body = AcquireBody {
        usage,
        returns: vec![],
        wants: keys
            .iter()
            .map(|k| Want {
                limit: k.clone(),
                want: 100,
                unit: 10,
                overrun: 0,
            })
            .collect(),
    };
    tollgate_proto::wire::encode(&body).map_err(anyhow::Error::msg)
}

pub async fn run(
    store: &[String],
    token: &str,
    load: &Load,
    duration: Duration,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let client = StoreClient::new(store.to_vec(), Some(token.to_owned()))?;
    let key = setup(&client).await?;
    let keys = if load.acquire {
        limits(&client).await?
    } else {
        Vec::new()
    };
    let status: serde_json::Value = client.leader_status().await?;
    let leader = status["leader"].as_u64();
    let addr = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"].as_u64() == leader))
        .and_then(|m| m["addr"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no leader address"))?
        .to_owned();
    let chans = channels(&addr, load.conns)?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let (batch, acquire) = (load.batch, load.acquire);
    Ok(drive(load.clients, duration, move |c, seq| {
        let mut q = QuotaClient::new(chans[c % chans.len()].clone());
        let body = records(&key, batch);
        let auth = auth.clone();
        let keys = keys.clone();
        let request_id = format!("b-{c}-{seq}-{}", uuid::Uuid::new_v4().simple());
        async move {
            let Ok(records_bin) = body else { return false };
            if acquire {
                let Ok(body_bin) = acquire_body(&keys, &records_bin) else {
                    return false;
                };
                let mut req = tonic::Request::new(AcquireRequest {
                    gateway_id: format!("load-{c}"),
                    request_id,
                    body_bin,
                    ..Default::default()
                });
                req.metadata_mut().insert("authorization", auth);
                return q.acquire(req).await.is_ok();
            }
            let mut req = tonic::Request::new(RecordUsageRequest {
                gateway_id: "load".into(),
                request_id,
                records_bin,
                ..Default::default()
            });
            req.metadata_mut().insert("authorization", auth);
            q.record_usage(req).await.is_ok()
        }
    })
    .await)
}
