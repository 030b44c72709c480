//! The Quota gRPC service gateways call: a config watch stream (full snapshot on every config
//! version), lease acquisition and usage records. Until gateways get mTLS identities (gateway
//! issue), callers authenticate with an admin token of the operator role.

use super::NodeCtx;
use super::auth::{admin_actor, authorize_read};
use super::errors::{api_status, bad_json, not_leader};
use futures::Stream;
use std::pin::Pin;
use tollgate_ledger::{Actor, Command, Outcome};
use tollgate_proto::quota::*;
use tollgate_proto::tls::{Role as TlsRole, require_role};
use tollgate_proto::wire;
use tollgate_types::config::GatewayConfig;
use tollgate_types::error::{ApiError, ErrorCode};
use tollgate_types::lease::{AcquireBody, AcquireResult};
use tollgate_types::secret::Role;
use tollgate_types::usage::UsageRecord;
use tonic::{Request, Response, Status};

/// Longest gateway id.
pub const GATEWAY_ID_BYTES_MAX: usize = 64;

pub struct QuotaService {
    ctx: NodeCtx,
}

impl QuotaService {
    pub fn new(ctx: NodeCtx) -> QuotaService {
        QuotaService { ctx }
    }

    /// Checks the caller's token (operator role) and returns it, for callers that re-check later.
    fn authorize<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        // under mutual TLS only gateway certificates reach config, leases and usage
        require_role(req, self.ctx.mtls, &[TlsRole::Gateway])?;
        let actor = admin_actor(req, &self.ctx.sm)?;
        authorize_read(&actor, &self.ctx.sm, Role::Operator)?;
        Ok(actor)
    }

    fn gateway_actor(&self, id: &str) -> Result<Actor, Status> {
        let ok = !id.is_empty()
            && id.len() <= GATEWAY_ID_BYTES_MAX
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !ok {
            return Err(api_status(ApiError::invalid(
                "gateway_id",
                "gateway ids are 1-64 characters of [A-Za-z0-9-_.:]",
            )));
        }
        if !self.ctx.raft.is_leader() {
            return Err(not_leader(self.ctx.leader().1));
        }
        Ok(Actor::Gateway { id: id.to_owned() })
    }

    fn snapshot(&self) -> Option<ConfigSnapshot> {
        let cfg = self.ctx.sm.read(|d| {
            let s = &d.state;
            Some(GatewayConfig {
                version: s.config_version,
                secret: s.secret.clone()?,
                orgs: s.orgs.values().cloned().collect(),
                projects: s.projects.values().cloned().collect(),
                keys: s.keys.values().cloned().collect(),
                models: s.models.values().cloned().collect(),
                limits: s.limits.values().cloned().collect(),
            })
        })?;
        let config_json = serde_json::to_vec(&cfg).ok()?;
        Some(ConfigSnapshot {
            version: cfg.version,
            config_json,
        })
    }
}

/// The answer in the encoding the request came in, as the response's (JSON, binary) fields:
/// one is set, the other empty.
fn answer<T: serde::Serialize>(value: &T, binary: bool) -> Result<(Vec<u8>, Vec<u8>), Status> {
    if binary {
        Ok((Vec::new(), wire::encode(value).map_err(Status::internal)?))
    } else {
        let json = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
        Ok((json, Vec::new()))
    }
}

/// A request body in either encoding: `bin` when set, else `json`.
#[allow(clippy::result_large_err)]
fn body<T: serde::de::DeserializeOwned>(what: &str, json: &[u8], bin: &[u8]) -> Result<T, Status> {
    if bin.is_empty() {
        return serde_json::from_slice(json).map_err(|e| bad_json(what, &e));
    }
    wire::decode(bin).map_err(|e| {
        api_status(ApiError::invalid(
            format!("{what}_bin"),
            format!("{what}_bin is not valid: {e}"),
        ))
    })
}

fn outcome_bytes(
    outcome: Outcome,
    store_ts_ms: u64,
    binary: bool,
) -> Result<(Vec<u8>, Vec<u8>), Status> {
    match outcome {
        Outcome::Error(e) => Err(api_status(e)),
        Outcome::Leases { grants, acks } => answer(
            &AcquireResult {
                store_ts_ms,
                grants,
                acks,
            },
            binary,
        ),
        Outcome::Usage { acks } => answer(&acks, binary),
        other => Err(api_status(ApiError::new(
            ErrorCode::Internal,
            format!("unexpected outcome {other:?}"),
        ))),
    }
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<ConfigSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl quota_server::Quota for QuotaService {
    type WatchConfigStream = ConfigStream;

    async fn watch_config(
        &self,
        req: Request<WatchConfigRequest>,
    ) -> Result<Response<ConfigStream>, Status> {
        let actor = self.authorize(&req)?;
        let mut known = req.into_inner().known_version;
        let mut rx = self.ctx.sm.subscribe_config();
        let svc = QuotaService {
            ctx: self.ctx.clone(),
        };
        let stream = async_stream_like(move |tx| async move {
            loop {
                // re-check the caller on every change: a revoked token stops receiving config
                if let Err(denied) = authorize_read(&actor, &svc.ctx.sm, Role::Operator) {
                    let _ = tx.send(Err(denied)).await;
                    return;
                }
                if let Some(snap) = svc.snapshot()
                    && snap.version != known
                {
                    known = snap.version;
                    if tx.send(Ok(snap)).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn acquire(
        &self,
        req: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        self.authorize(&req)?;
        let body = req.into_inner();
        let actor = self.gateway_actor(&body.gateway_id)?;
        let binary = !body.body_bin.is_empty();
        let parsed: AcquireBody = self::body("body", &body.body_json, &body.body_bin)?;
        let cmd = Command::Acquire {
            gateway: body.gateway_id,
            wants: parsed.wants,
            returns: parsed.returns,
            usage: parsed.usage,
        };
        let (outcome, _, ts) = self.ctx.write_stamped(body.request_id, actor, cmd).await?;
        let (result_json, result_bin) = outcome_bytes(outcome, ts, binary)?;
        Ok(Response::new(AcquireResponse {
            result_json,
            result_bin,
        }))
    }

    async fn record_usage(
        &self,
        req: Request<RecordUsageRequest>,
    ) -> Result<Response<RecordUsageResponse>, Status> {
        self.authorize(&req)?;
        let body = req.into_inner();
        let actor = self.gateway_actor(&body.gateway_id)?;
        let binary = !body.records_bin.is_empty();
        let records: Vec<UsageRecord> =
            self::body("records", &body.records_json, &body.records_bin)?;
        let (outcome, _, ts) = self
            .ctx
            .write_stamped(body.request_id, actor, Command::RecordUsage { records })
            .await?;
        let (acks_json, acks_bin) = outcome_bytes(outcome, ts, binary)?;
        Ok(Response::new(RecordUsageResponse {
            acks_json,
            acks_bin,
        }))
    }
}

/// A bounded channel-backed stream driven by a producer task (ends when the client goes away).
fn async_stream_like<F, Fut>(producer: F) -> ConfigStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<ConfigSnapshot, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
