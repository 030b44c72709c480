//! After the heal: wait for recovery, for the ledger to hold everything the upstreams served,
//! and for the replicas to converge; then read what the checker needs.

use crate::checker::{BucketRow, LedgerRow, OracleRow, ReplicaRow};
use crate::cluster::Cluster;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tollgate_types::admin::{AdminOp, AdminQuery};
use tollgate_types::config::{Org, OrgStatus};

/// How long a write may take to succeed after the heal (checked as RECOVERY).
pub const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// How long the ledger may take to catch up with the upstreams (gateways ship every 2.5 s).
pub const LEDGER_DEADLINE: Duration = Duration::from_secs(120);
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
const PAGE: u32 = 1000;

/// Time from now until a write commits (None if not within `RECOVERY_BOUND`).
pub async fn recovery(c: &Cluster) -> Option<Duration> {
    let t0 = Instant::now();
    let mut n = 0u32;
    while t0.elapsed() < RECOVERY_BOUND {
        n += 1;
        if let Ok(client) = c.client() {
            let op = AdminOp::CreateOrg(Org {
                id: tollgate_types::OrgId::parse(&format!("probe-{n}")).ok()?,
                name: "chaos recovery probe".into(),
                status: OrgStatus::Active,
                tier: 0,
            });
            let w = tokio::time::timeout(
                RECOVERY_BOUND.saturating_sub(t0.elapsed()),
                client.write_with_id(uuid::Uuid::now_v7().to_string(), &op),
            )
            .await;
            if matches!(w, Ok(Ok(_))) {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The whole ledger, in sequence order.
pub async fn ledger(c: &Cluster) -> anyhow::Result<Vec<LedgerRow>> {
    let client = c.client()?;
    let mut out = Vec::new();
    loop {
        let page: Vec<Value> = client
            .read(&AdminQuery::UsageExport {
                since_seq: out.len() as u64,
                limit: PAGE,
            })
            .await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page.iter().map(ledger_row));
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ledger_row(e: &Value) -> LedgerRow {
    let r = &e["record"];
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    LedgerRow {
        seq: e["seq"].as_u64().unwrap_or(0),
        request_id: s(&r["request_id"]),
        org: s(&r["org"]),
        project: s(&r["project"]),
        key: s(&r["key"]),
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        status: s(&r["status"]),
        estimated: r["estimated"] == true,
        started_at_ms: n("started_at_ms"),
    }
}

pub async fn oracle(c: &Cluster) -> anyhow::Result<BTreeMap<String, OracleRow>> {
    Ok(c.oracle()
        .await?
        .into_iter()
        .map(|(id, v)| {
            let row = OracleRow {
                prompt_tokens: v["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: v["completion_tokens"].as_u64().unwrap_or(0),
                complete: v["complete"] == true,
                attempts: v["attempts"].as_u64().unwrap_or(1) as u32,
                tries: serde_json::from_value(v["tries"].clone()).unwrap_or_default(),
                user: v["user"].as_str().map(str::to_owned),
            };
            (id, row)
        })
        .collect())
}

/// Waits until every id the upstreams served is in the ledger (or the deadline); returns the
/// ledger and the oracle as last read.
pub async fn settled_ledger(
    c: &Cluster,
) -> anyhow::Result<(Vec<LedgerRow>, BTreeMap<String, OracleRow>)> {
    let t0 = Instant::now();
    loop {
        let o = oracle(c).await?;
        let l = ledger(c).await?;
        let ids: BTreeSet<&str> = l.iter().map(|r| r.request_id.as_str()).collect();
        if o.keys().all(|k| ids.contains(k.as_str())) || t0.elapsed() > LEDGER_DEADLINE {
            return Ok((l, o));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn scope_str(scope: &Value) -> String {
    // externally tagged: {"org": {"org": "acme"}}, {"project": {"org": …, "project": …}}, …
    let org = |v: &Value| s(&v["org"]);
    match scope {
        Value::Object(m) if m.contains_key("org") => org(&m["org"]),
        Value::Object(m) if m.contains_key("project") => {
            let inner = &m["project"];
            format!("{}/{}", org(inner), s(&inner["project"]))
        }
        Value::Object(m) if m.contains_key("key") => {
            let inner = &m["key"];
            format!("{}/key:{}", org(inner), s(&inner["key"]))
        }
        other => other.to_string(),
    }
}

fn dimension_str(d: &Value) -> String {
    match d {
        Value::String(s) => s.clone(),
        Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
        other => other.to_string(),
    }
}

/// Every bucket, as the leader reports it.
pub async fn buckets(c: &Cluster) -> anyhow::Result<Vec<BucketRow>> {
    let client = c.client()?;
    let raw: Vec<Value> = client.read(&AdminQuery::Buckets { org: None }).await?;
    Ok(raw
        .iter()
        .map(|b| {
            let leases = b["leases"].as_array().cloned().unwrap_or_default();
            let dimension = dimension_str(&b["limit"]["dimension"]);
            BucketRow {
                scope: scope_str(&b["limit"]["scope"]),
                volume: b["tokens"].is_null(),
                dimension,
                checked_limit: b["checked_limit"].as_u64().unwrap_or(0),
                settled: b["settled"].as_u64().unwrap_or(0),
                held: b["held"].as_u64().unwrap_or(0),
                debt: b["debt"].as_u64().unwrap_or(0),
                lease_remaining: leases
                    .iter()
                    .map(|l| l["remaining"].as_u64().unwrap_or(0))
                    .collect(),
                release_at_max_ms: leases
                    .iter()
                    .filter_map(|l| l["release_at_ms"].as_u64())
                    .max()
                    .unwrap_or(0),
                store_clock_ms: b["store_clock_ms"].as_u64().unwrap_or(0),
            }
        })
        .collect())
}

/// Each member's (applied index, digest), once all agree or at the deadline.
pub async fn replicas(c: &Cluster) -> Vec<ReplicaRow> {
    let t0 = Instant::now();
    loop {
        let mut rows = Vec::new();
        for st in c.stores.iter().filter(|s| s.member) {
            let mut row = ReplicaRow {
                node: st.id,
                ..ReplicaRow::default()
            };
            if let Some(client) = c.node_client(&st.addr)
                && let Ok(Ok(v)) = tokio::time::timeout(
                    Duration::from_secs(3),
                    client.node_status_with::<Value>(Some(&st.addr), true),
                )
                .await
            {
                row.applied = v["applied_index"].as_u64();
                row.digest = v["state_digest"].as_str().map(str::to_owned);
            }
            rows.push(row);
        }
        let first = rows.first().map(|r| (r.applied, r.digest.clone()));
        let agree = rows
            .iter()
            .all(|r| r.applied.is_some() && Some((r.applied, r.digest.clone())) == first);
        if agree || t0.elapsed() > CONVERGE_DEADLINE {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
