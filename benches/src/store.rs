//! Store target: sets up an org, project and key (idempotent), finds the leader, then sends
//! `RecordUsage` requests of `batch` fresh records each.

use crate::{channels, drive};
use hdrhistogram::Histogram;
use std::time::Duration;
use tollgate_client::StoreClient;
use tollgate_proto::quota::{RecordUsageRequest, quota_client::QuotaClient};
use tollgate_types::admin::AdminOp;
use tollgate_types::config::{Org, OrgStatus, Project};
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

fn records(key: &str, run: &str, c: usize, seq: u64, batch: usize) -> anyhow::Result<Vec<u8>> {
    let recs: anyhow::Result<Vec<UsageRecord>> = (0..batch)
        .map(|i| {
            Ok(UsageRecord {
                request_id: format!("{run}-{c}-{seq}-{i}").as_str().parse_id()?,
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
    Ok(serde_json::to_vec(&recs?)?)
}

pub async fn run(
    store: &[String],
    token: &str,
    clients: usize,
    conns: usize,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let client = StoreClient::new(store.to_vec(), Some(token.to_owned()))?;
    let key = setup(&client).await?;
    let status: serde_json::Value = client.leader_status().await?;
    let leader = status["leader"].as_u64();
    let addr = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"].as_u64() == leader))
        .and_then(|m| m["addr"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no leader address"))?
        .to_owned();
    let chans = channels(&addr, conns)?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    Ok(drive(clients, duration, move |c, seq| {
        let mut q = QuotaClient::new(chans[c % chans.len()].clone());
        let body = records(&key, &run, c, seq, batch);
        let auth = auth.clone();
        async move {
            let Ok(records_json) = body else { return false };
            let mut req = tonic::Request::new(RecordUsageRequest {
                gateway_id: "load".into(),
                request_id: format!("b-{c}-{seq}-{}", uuid::Uuid::new_v4().simple()),
                records_json,
            });
            req.metadata_mut().insert("authorization", auth);
            q.record_usage(req).await.is_ok()
        }
    })
    .await)
}
