//! The Admin gRPC service: writes (through Raft, on the leader), linearizable reads, cluster
//! status and membership changes.

use super::auth::{admin_actor, authorize_read};
use super::errors::{api_status, bad_json, not_leader};
use super::{NodeCtx, queries};
use crate::status::cluster_status;
use crate::storage::Durable;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};
use std::collections::BTreeSet;
use tollgate_ledger::{Command, Outcome};
use tollgate_proto::admin::*;
use tollgate_proto::tls::{Role as TlsRole, require_role};
use tollgate_types::admin::{AdminOp, AdminQuery, AdminWriteResult};
use tollgate_types::config::{AdminTokenRecord, ApiKeyRecord, KeyStatus};
use tollgate_types::error::{ApiError, ErrorCode};
use tollgate_types::secret::{self, ADMIN_ENV, Role};
use tollgate_types::{KeyId, ids::IdError};
use tonic::{Request, Response, Status};

pub struct AdminService {
    ctx: NodeCtx,
    durable: Durable,
}

impl AdminService {
    pub fn new(ctx: NodeCtx, durable: Durable) -> AdminService {
        AdminService { ctx, durable }
    }

    /// Under mutual TLS: admin and store certificates may call the admin service; a gateway
    /// certificate only its reads (`read`: the usage export a gateway serves over HTTP), never
    /// writes or membership. Tokens are checked on top.
    fn require_cert<T>(&self, req: &Request<T>, read: bool) -> Result<(), Status> {
        let roles: &[TlsRole] = if read {
            &[TlsRole::Admin, TlsRole::Store, TlsRole::Gateway]
        } else {
            &[TlsRole::Admin, TlsRole::Store]
        };
        require_role(req, self.ctx.mtls, roles)
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.raft.is_leader() {
            Ok(())
        } else {
            Err(not_leader(self.ctx.leader().1))
        }
    }

    async fn change(&self, change: ChangeMembers<u64, BasicNode>) -> Result<(), Status> {
        self.ctx
            .raft
            .change_membership(change, false)
            .await
            .map_err(raft_err)?;
        Ok(())
    }

    fn membership_response(&self) -> Result<Response<MembershipResponse>, Status> {
        let status = cluster_status(
            self.ctx.id,
            &self.ctx.raft,
            &self.ctx.sm,
            &self.durable,
            false,
        );
        Ok(Response::new(MembershipResponse {
            status_json: json_response(&status)?,
        }))
    }

    async fn authorize_admin<T>(&self, req: &Request<T>, need: Role) -> Result<(), Status> {
        self.require_cert(req, need == Role::Viewer)?;
        self.require_leader()?;
        self.ctx.linearizable().await?;
        let actor = admin_actor(req, &self.ctx.sm)?;
        authorize_read(&actor, &self.ctx.sm, need)
    }
}

fn raft_err(e: impl std::fmt::Display) -> Status {
    api_status(ApiError::new(
        ErrorCode::StoreUnavailable,
        format!("raft: {e}"),
    ))
}

fn id_err(param: &str, e: IdError) -> Status {
    api_status(ApiError::invalid(param, e.to_string()))
}

/// The cluster's digest key and the store-only key-derivation key.
type Keys = (secret::ClusterSecret, secret::ClusterSecret);

/// Turns an operator's op into a replicated command, deriving secrets where needed from the
/// request id (a retry with the same id shows the same secret). Returns the plaintext to show.
fn to_command(
    op: AdminOp,
    keys: Option<&Keys>,
    request_id: &str,
) -> Result<(Command, Option<String>), Status> {
    let cluster = || {
        keys.ok_or_else(|| {
            api_status(ApiError::new(
                ErrorCode::StoreUnavailable,
                "not bootstrapped",
            ))
        })
    };
    Ok(match op {
        AdminOp::CreateOrg(o) => (Command::CreateOrg(o), None),
        AdminOp::UpdateOrg {
            id,
            name,
            status,
            tier,
        } => (
            Command::UpdateOrg {
                id,
                name,
                status,
                tier,
            },
            None,
        ),
        AdminOp::DeleteOrg { id } => (Command::DeleteOrg { id }, None),
        AdminOp::CreateProject(p) => (Command::CreateProject(p), None),
        AdminOp::DeleteProject { org, id } => (Command::DeleteProject { org, id }, None),
        AdminOp::CreateKey {
            org,
            project,
            name,
            env,
            allowed_models,
            scopes,
            expires_at_ms,
        } => {
            let valid_env = !env.is_empty()
                && env.len() <= secret::ENV_CHARS_MAX
                && env.bytes().all(|b| b.is_ascii_lowercase());
            if !valid_env || env == ADMIN_ENV {
                return Err(api_status(ApiError::invalid(
                    "env",
                    "env must be 1-8 lowercase letters (e.g. live, test) and not 'admin'",
                )));
            }
            let plain = secret::derive(&env, &cluster()?.1, "api-key", request_id);
            let parsed = secret::parse(&plain)
                .map_err(|e| api_status(ApiError::new(ErrorCode::Internal, e.to_string())))?;
            let id = KeyId::parse(parsed.key_id()).map_err(|e| id_err("id", e))?;
            let record = ApiKeyRecord {
                id,
                org,
                project,
                name,
                digest: cluster()?.0.digest(&plain),
                status: KeyStatus::Active,
                allowed_models,
                scopes,
                expires_at_ms,
                created_at_ms: 0,
            };
            (Command::CreateKey(record), Some(plain))
        }
        AdminOp::RevokeKey { id } => (Command::RevokeKey { id }, None),
        AdminOp::PutModel(m) => (Command::PutModel(m), None),
        AdminOp::DeleteModel { name } => (Command::DeleteModel { name }, None),
        AdminOp::PutLimit(l) => (Command::PutLimit(l), None),
        AdminOp::DeleteLimit(k) => (Command::DeleteLimit(k), None),
        AdminOp::CreateAdminToken { name, role } => {
            let (digest_key, keygen) = cluster()?;
            let plain = secret::derive(ADMIN_ENV, keygen, "admin-token", request_id);
            let record = admin_token_record(&plain, &name, role, digest_key)?;
            (Command::CreateAdminToken(record), Some(plain))
        }
        AdminOp::RevokeAdminToken { id } => (Command::RevokeAdminToken { id }, None),
        AdminOp::ApplyConfig(doc) => (Command::ApplyConfig(doc), None),
    })
}

/// The record for a given admin token plaintext (bootstrap uses a caller-chosen token).
pub fn admin_token_record(
    plain: &str,
    name: &str,
    role: Role,
    cluster: &secret::ClusterSecret,
) -> Result<AdminTokenRecord, Status> {
    let parsed =
        secret::parse(plain).map_err(|e| api_status(ApiError::invalid("token", e.to_string())))?;
    if parsed.env != ADMIN_ENV {
        return Err(api_status(ApiError::invalid(
            "token",
            "admin tokens have the form tg_admin_<random>_<checksum>",
        )));
    }
    let id = KeyId::parse(parsed.key_id()).map_err(|e| id_err("token", e))?;
    Ok(AdminTokenRecord {
        id,
        name: name.to_owned(),
        role,
        digest: cluster.digest(plain),
        revoked: false,
        created_at_ms: 0,
    })
}

fn write_result(
    outcome: Outcome,
    log_index: u64,
    secret: Option<String>,
) -> Result<AdminWriteResult, Status> {
    let mut result = AdminWriteResult {
        log_index,
        ..Default::default()
    };
    match outcome {
        Outcome::Done { config_version } => result.config_version = config_version,
        Outcome::Applied {
            config_version,
            changed,
        } => {
            result.config_version = config_version;
            result.changed = changed;
        }
        Outcome::Created { id, config_version } => {
            let shown = secret.filter(|s| secret::parse(s).is_ok_and(|p| p.key_id() == id));
            if shown.is_none() {
                return Err(api_status(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "this request id already created {id}; its secret was returned by the first call and cannot be shown again"
                    ),
                )));
            }
            result.config_version = config_version;
            result.id = Some(id);
            result.secret = shown;
        }
        Outcome::Error(e) => return Err(api_status(e)),
        other => {
            return Err(api_status(ApiError::new(
                ErrorCode::Internal,
                format!("unexpected outcome {other:?}"),
            )));
        }
    }
    Ok(result)
}

fn json_response<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        self.require_cert(&req, false)?;
        self.require_leader()?;
        let actor = admin_actor(&req, &self.ctx.sm)?;
        let body = req.into_inner();
        if body.request_id.is_empty()
            || body.request_id.len() > tollgate_ledger::command::REQUEST_ID_BYTES_MAX
        {
            return Err(api_status(ApiError::invalid(
                "request_id",
                "request_id must be 1 to 128 bytes",
            )));
        }
        let op: AdminOp = serde_json::from_slice(&body.op_json).map_err(|e| bad_json("op", &e))?;
        // refuse unknown, revoked or under-privileged tokens before anything reaches the log;
        // `apply` checks again against the replicated state at its position in the log
        let need = match op {
            AdminOp::CreateAdminToken { .. } | AdminOp::RevokeAdminToken { .. } => Role::Admin,
            _ => Role::Operator,
        };
        authorize_read(&actor, &self.ctx.sm, need)?;
        let keys = self
            .ctx
            .sm
            .read(|d| d.state.secret.clone().zip(d.state.keygen.clone()));
        let (command, secret) = to_command(op, keys.as_ref(), &body.request_id)?;
        let (outcome, log_index) = self.ctx.write(body.request_id, actor, command).await?;
        let result = write_result(outcome, log_index, secret)?;
        Ok(Response::new(WriteResponse {
            result_json: json_response(&result)?,
        }))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        self.authorize_admin(&req, Role::Viewer).await?;
        let query: AdminQuery =
            serde_json::from_slice(&req.get_ref().query_json).map_err(|e| bad_json("query", &e))?;
        let value = if matches!(query, AdminQuery::StateDigest) {
            // hashing encodes the whole state: do it on a clone, outside the state lock
            let sm = self.ctx.sm.clone();
            let (state, applied) = sm.read(|d| (d.state.clone(), d.last_applied.map(|l| l.index)));
            tokio::task::spawn_blocking(move || queries::run(&state, applied, &query, &sm))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        } else {
            let sm = &self.ctx.sm;
            sm.read(|d| queries::run(&d.state, d.last_applied.map(|l| l.index), &query, sm))?
        };
        Ok(Response::new(ReadResponse {
            result_json: json_response(&value)?,
        }))
    }

    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.require_cert(&req, false)?;
        let actor = admin_actor(&req, &self.ctx.sm)?;
        authorize_read(&actor, &self.ctx.sm, Role::Viewer)?;
        let with_digest = req.get_ref().with_digest;
        let (id, raft, sm, durable) = (
            self.ctx.id,
            self.ctx.raft.clone(),
            self.ctx.sm.clone(),
            self.durable.clone(),
        );
        let status = tokio::task::spawn_blocking(move || {
            cluster_status(id, &raft, &sm, &durable, with_digest)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ClusterStatusResponse {
            status_json: json_response(&status)?,
        }))
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.authorize_admin(&req, Role::Admin).await?;
        let AddNodeRequest { node_id, addr } = req.into_inner();
        if let Err(e) = crate::node::check_peer_addr(&addr) {
            return Err(api_status(ApiError::invalid("addr", e)));
        }
        let known = self
            .ctx
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&node_id)
            .cloned();
        if known.is_some_and(|n| n.addr != addr) {
            return Err(api_status(ApiError::invalid(
                "node_id",
                format!(
                    "node {node_id} is already a member with another address; never reuse a node id"
                ),
            )));
        }
        self.ctx
            .raft
            .add_learner(node_id, BasicNode { addr }, true)
            .await
            .map_err(raft_err)?;
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])))
            .await?;
        self.membership_response()
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.authorize_admin(&req, Role::Admin).await?;
        let node_id = req.into_inner().node_id;
        let m = self
            .ctx
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone();
        if m.get_node(&node_id).is_none() {
            return Err(api_status(ApiError::not_found(format!(
                "node {node_id} is not a member"
            ))));
        }
        let ids = BTreeSet::from([node_id]);
        let change = if m.voter_ids().any(|v| v == node_id) {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.change(change).await?;
        self.membership_response()
    }
}

/// Bootstrap helper for the node: the write it proposes once, as the first leader.
pub fn bootstrap_command(
    admin_token: &str,
    cluster: secret::ClusterSecret,
) -> Result<Command, Status> {
    let record = admin_token_record(admin_token, "bootstrap", Role::Admin, &cluster)?;
    Ok(Command::Bootstrap {
        secret: cluster,
        keygen: secret::ClusterSecret::generate(),
        admin: record,
    })
}
