//! `GET /admin/usage/export?since_seq=N&limit=M[&org=O]`: the usage ledger over HTTP/JSON for
//! billing systems. The caller's bearer must be an admin token of at least the `viewer` role;
//! the gateway passes it to the store, which checks it and answers a linearizable read. Entries
//! come in sequence order; `next_since_seq` is the cursor to poll from next.

use crate::Gw;
use crate::body::{Body, json};
use crate::error::GwError;
use crate::phases::auth;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json as j};
use tollgate_client::StoreClient;
use tollgate_types::ErrorCode;
use tollgate_types::admin::{AdminQuery, READ_PAGE_MAX};

/// Default page size.
const PAGE: u32 = 1_000;

struct Params {
    since_seq: u64,
    limit: u32,
    org: Option<String>,
}

fn params(query: Option<&str>) -> Result<Params, GwError> {
    let mut p = Params {
        since_seq: 0,
        limit: PAGE,
        org: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |name: &str| {
            v.parse::<u64>().map_err(|_| {
                GwError::invalid(name, format!("'{name}' must be a non-negative integer"))
            })
        };
        match k {
            "since_seq" => p.since_seq = num("since_seq")?,
            "limit" => {
                let n = num("limit")?;
                if n == 0 || n > u64::from(READ_PAGE_MAX) {
                    return Err(GwError::invalid(
                        "limit",
                        format!("'limit' must be between 1 and {READ_PAGE_MAX}"),
                    ));
                }
                p.limit = n as u32;
            }
            "org" => p.org = Some(v.to_owned()),
            other => {
                return Err(GwError::invalid(
                    other,
                    format!("unknown parameter '{other}'; use since_seq, limit, org"),
                ));
            }
        }
    }
    Ok(p)
}

fn store_error(e: tollgate_client::ClientError) -> GwError {
    match e.code {
        Some(code @ (ErrorCode::InvalidApiKey | ErrorCode::PermissionDenied)) => {
            GwError::new(code, e.message)
        }
        _ => GwError::new(ErrorCode::StoreUnavailable, e.message)
            .retry_after(std::time::Duration::from_secs(1)),
    }
}

pub async fn usage_export(gw: &Gw, req: &Request<Incoming>) -> Result<Response<Body>, GwError> {
    let token = auth::bearer(req.headers())?.to_owned();
    let p = params(req.uri().query())?;
    let mut client =
        StoreClient::new(gw.settings.store.clone(), Some(token)).map_err(store_error)?;
    if let Some(t) = &gw.settings.store_tls {
        client = client.with_tls(t).map_err(store_error)?;
    }
    let page: Vec<Value> = client
        .read(&AdminQuery::UsageExport {
            since_seq: p.since_seq,
            limit: p.limit,
        })
        .await
        .map_err(store_error)?;
    let next = page
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(p.since_seq);
    let has_more = page.len() == p.limit as usize;
    let data: Vec<Value> = page
        .into_iter()
        .filter(|e| {
            p.org
                .as_deref()
                .is_none_or(|o| e["record"]["org"].as_str() == Some(o))
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &j!({"object": "list", "data": data, "next_since_seq": next, "has_more": has_more}),
    ))
}
