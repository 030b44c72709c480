//! Commands: everything that changes the state machine, each wrapped in a `Request` that carries
//! its idempotency id, the leader's timestamp and the actor.

use serde::{Deserialize, Serialize};
use std::fmt;
use tollgate_types::config::ConfigDoc;
use tollgate_types::config::{AdminTokenRecord, ApiKeyRecord, ModelDef, Org, OrgStatus, Project};
use tollgate_types::limits::{Limit, LimitKey};
use tollgate_types::secret::{ClusterSecret, Digest};
use tollgate_types::usage::UsageRecord;
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId};

/// Who asks. Admin actors are authorized inside `apply`, against the replicated token table, so
/// a token revoked by an earlier entry can never authorize a later one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// The store itself (bootstrap, housekeeping).
    System,
    /// An admin token: its public id and the HMAC digest of what was presented.
    Admin { token_id: KeyId, digest: Digest },
    /// A gateway node (lease and usage traffic).
    Gateway { id: String },
}

/// A command with its identity. `id` makes a retried write apply once: a repeat within the
/// dedup window returns the original outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per logical write (a UUID chosen by the client), at most `REQUEST_ID_BYTES_MAX`.
    pub id: String,
    /// Store time in ms since the Unix epoch, stamped by the leader. `apply` never reads a clock.
    pub ts_ms: u64,
    pub actor: Actor,
    pub command: Command,
}

/// Longest request id.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First entry of a new cluster: the key-digest secret and the first admin token.
    Bootstrap {
        secret: ClusterSecret,
        /// Store-only key from which API keys and admin tokens are derived (never shipped to
        /// gateways, unlike `secret`).
        keygen: ClusterSecret,
        admin: AdminTokenRecord,
    },
    CreateOrg(Org),
    UpdateOrg {
        id: OrgId,
        name: Option<String>,
        status: Option<OrgStatus>,
        tier: Option<u8>,
    },
    DeleteOrg {
        id: OrgId,
    },
    CreateProject(Project),
    DeleteProject {
        org: OrgId,
        id: ProjectId,
    },
    CreateKey(ApiKeyRecord),
    RevokeKey {
        id: KeyId,
    },
    PutModel(ModelDef),
    DeleteModel {
        name: ModelName,
    },
    PutLimit(Limit),
    DeleteLimit(LimitKey),
    CreateAdminToken(AdminTokenRecord),
    RevokeAdminToken {
        id: KeyId,
    },
    /// Declarative config: upsert every org, project, model and limit in the document, atomically.
    ApplyConfig(ConfigDoc),
    /// A gateway's lease refresh: its usage records since the last call, returns of unused
    /// lease amounts and wants per bucket. `gateway` is the lease holder (`id:incarnation`).
    Acquire {
        gateway: String,
        wants: Vec<tollgate_types::lease::Want>,
        returns: Vec<tollgate_types::lease::Return>,
        usage: Vec<UsageRecord>,
    },
    /// Usage records from a gateway: ledger entries and lease settlements, deduplicated by id.
    RecordUsage {
        records: Vec<UsageRecord>,
    },
    /// Requests that reached the leader together, proposed as one log entry (the store's
    /// proposal batching). Each is admitted, deduplicated and applied on its own, in order,
    /// exactly as if it had its own entry; the batch itself is a container (never deduplicated,
    /// never nested).
    Batch(Vec<Request>),
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "bootstrap",
            Command::CreateOrg(_) => "org.create",
            Command::UpdateOrg { .. } => "org.update",
            Command::DeleteOrg { .. } => "org.delete",
            Command::CreateProject(_) => "project.create",
            Command::DeleteProject { .. } => "project.delete",
            Command::CreateKey(_) => "key.create",
            Command::RevokeKey { .. } => "key.revoke",
            Command::PutModel(_) => "model.put",
            Command::DeleteModel { .. } => "model.delete",
            Command::PutLimit(_) => "limit.put",
            Command::DeleteLimit(_) => "limit.delete",
            Command::CreateAdminToken(_) => "token.create",
            Command::RevokeAdminToken { .. } => "token.revoke",
            Command::ApplyConfig(_) => "config.apply",
            Command::Acquire { .. } => "lease.acquire",
            Command::RecordUsage { .. } => "usage.record",
            Command::Batch(_) => "batch",
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}@{}", self.command.name(), self.id, self.ts_ms)
    }
}
