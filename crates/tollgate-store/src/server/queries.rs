//! Read queries over the state machine (run after the linearizable barrier). Results are JSON;
//! secrets (key and token digests, the cluster secret) are never returned.

use super::errors::api_status;
use crate::storage::SmHandle;
use serde_json::{Value, json};
use tollgate_ledger::State;
use tollgate_ledger::audit::verify_chain;
use tollgate_types::OrgId;
use tollgate_types::admin::{AdminQuery, READ_PAGE_MAX};
use tonic::Status;

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn redact(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("digest");
    }
    v
}

fn org_match(filter: &Option<OrgId>, org: &OrgId) -> bool {
    filter.as_ref().is_none_or(|f| f == org)
}

/// `ledger` reads the archived ledger entries (all of them up to `state.ledger.len()`).
pub fn run(
    state: &State,
    applied_index: Option<u64>,
    q: &AdminQuery,
    ledger: &SmHandle,
) -> Result<Value, Status> {
    Ok(match q {
        AdminQuery::ListOrgs => to_json(state.orgs.values().collect::<Vec<_>>()),
        AdminQuery::ListProjects { org } => to_json(
            state
                .projects
                .values()
                .filter(|p| org_match(org, &p.org))
                .collect::<Vec<_>>(),
        ),
        AdminQuery::ListKeys { org } => Value::Array(
            state
                .keys
                .values()
                .filter(|k| org_match(org, &k.org))
                .map(|k| redact(to_json(k)))
                .collect(),
        ),
        AdminQuery::ListModels => to_json(state.models.values().collect::<Vec<_>>()),
        AdminQuery::ListLimits { org } => to_json(
            state
                .limits
                .values()
                .filter(|l| org_match(org, l.scope.org()))
                .collect::<Vec<_>>(),
        ),
        AdminQuery::Buckets { org } => Value::Array(
            state
                .buckets
                .iter()
                .filter(|((k, _), _)| org_match(org, k.scope.org()))
                .map(|((k, period), b)| bucket_view(state, k, *period, b))
                .collect(),
        ),
        AdminQuery::ListTokens => {
            Value::Array(state.tokens.values().map(|t| redact(to_json(t))).collect())
        }
        AdminQuery::Audit { from_seq, limit } => {
            let start = from_seq.saturating_sub(1) as usize;
            let n = (*limit).min(READ_PAGE_MAX) as usize;
            to_json(state.audit.iter().skip(start).take(n).collect::<Vec<_>>())
        }
        AdminQuery::AuditVerify => match verify_chain(None, state.audit.iter()) {
            Ok(n) => {
                json!({"ok": true, "records": n, "head": state.audit.last().map(|r| r.hash.clone())})
            }
            Err(e) => json!({"ok": false, "records": state.audit.len(), "error": e.to_string()}),
        },
        AdminQuery::DiffConfig(doc) => to_json(state.diff_config(doc).map_err(api_status)?),
        AdminQuery::UsageExport { since_seq, limit } => {
            let n = (*limit).min(READ_PAGE_MAX) as usize;
            let page = ledger
                .ledger_page(*since_seq, n, state.ledger.len())
                .map_err(|e| Status::internal(format!("reading the ledger archive: {e}")))?;
            to_json(page)
        }
        AdminQuery::StateDigest => json!({
            "applied_index": applied_index,
            "digest": state_digest(state),
            "ledger_len": state.ledger.len(),
            "audit_len": state.audit.len(),
            "config_version": state.config_version,
        }),
    })
}

fn bucket_view(
    state: &State,
    key: &tollgate_types::limits::LimitKey,
    period: u64,
    b: &tollgate_ledger::lease::Bucket,
) -> Value {
    let leases: Vec<Value> = state
        .leases
        .by_id
        .values()
        .filter(|l| &l.bucket.0 == key && l.bucket.1 == period)
        .map(|l| json!({"id": l.id, "holder": l.holder, "amount": l.amount, "remaining": l.remaining(), "reserve": l.reserve, "release_at_ms": l.release_at_ms}))
        .collect();
    json!({
        "limit": key,
        "period": period,
        "checked_limit": b.limit,
        "settled": b.settled,
        "held": b.held,
        "debt": b.debt,
        "tokens": (tollgate_ledger::lease::kind(key.dimension) == tollgate_ledger::lease::Kind::Rate).then(|| b.tokens()),
        "leases": leases,
        "store_clock_ms": state.clock_ms,
    })
}

/// SHA-256 over the canonical encoding of the whole state: equal on replicas at equal index.
pub fn state_digest(state: &State) -> String {
    tollgate_ledger::audit::bytes_hash(&crate::codec::encode(state).unwrap_or_default())
}
