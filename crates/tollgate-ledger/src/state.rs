//! `State`: everything the quota store replicates, and `apply`, the one entry point that changes
//! it. Deterministic: the same requests in the same order give the same state on every replica.

use crate::audit::{AuditEntry, AuditRecord, next_record};
use crate::command::{Actor, Command, REQUEST_ID_BYTES_MAX, Request};
use crate::dedup::Dedup;
use crate::lease::{Bucket, BucketId, Leases};
use crate::ledger::Ledger;
use crate::outcome::Outcome;
use crate::usage::{IdKey, UsageIndex};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_types::config::{AdminTokenRecord, ApiKeyRecord, ModelDef, Org, Project};
use tollgate_types::error::{ApiError, ErrorCode};
use tollgate_types::limits::{Limit, LimitKey};
use tollgate_types::secret::{ClusterSecret, Role};
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId};

/// A broken invariant: a bug. The store stops applying rather than replicate a wrong state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    #[error(
        "QL-1 violated for bucket {bucket}: settled {settled} + held {held} > limit {limit} + debt {debt}"
    )]
    Ql1 {
        bucket: String,
        settled: u64,
        held: u64,
        limit: u64,
        debt: u64,
    },
    #[error("RL-1 violated for rate bucket {bucket}: level {level} > depth {depth}")]
    Rl1 {
        bucket: String,
        level: u64,
        depth: u64,
    },
    #[error("LG-1 violated: request id {0} appears twice in the ledger")]
    Lg1(String),
    #[error("AU-1 violated: audit record {0} does not link to its predecessor")]
    Au1(u64),
    #[error("SM-1 violated: store clock would go back from {from} to {to}")]
    Sm1 { from: u64, to: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Store time of the last applied request; never decreases (SM-1).
    pub clock_ms: u64,
    /// HMAC secret for key and token digests; `None` until bootstrap.
    pub secret: Option<ClusterSecret>,
    /// Store-only key for deriving new API keys and admin tokens from request ids.
    pub keygen: Option<ClusterSecret>,
    /// Bumped by every configuration change; gateways watch it.
    pub config_version: u64,
    pub orgs: BTreeMap<OrgId, Org>,
    pub projects: BTreeMap<(OrgId, ProjectId), Project>,
    pub keys: BTreeMap<KeyId, ApiKeyRecord>,
    pub tokens: BTreeMap<KeyId, AdminTokenRecord>,
    pub models: BTreeMap<ModelName, ModelDef>,
    pub limits: BTreeMap<LimitKey, Limit>,
    pub buckets: BTreeMap<BucketId, Bucket>,
    /// Store minute of the last sweep of past-period buckets.
    pub pruned_minute: u64,
    pub leases: Leases,
    /// The usage ledger: length, chain head, and the entries the store has not yet moved to
    /// its archive (`ledger.rs`). Persistent (structurally shared) collections below: a
    /// snapshot clones them in O(1) instead of copying every id under the state lock.
    pub ledger: Ledger,
    /// The dedup index, keyed by `IdKey` (UUIDv7 ids as 128 bits, in time order): pruned past
    /// the retention (`usage::USAGE_DEDUP_RETENTION_MS`), which bounds it.
    pub usage_index: imbl::OrdMap<IdKey, UsageIndex>,
    pub audit: imbl::Vector<AuditRecord>,
    pub dedup: Dedup,
}

/// What one apply touched, for the invariant checks that follow it.
#[derive(Default)]
pub(crate) struct Touched {
    pub buckets: Vec<BucketId>,
    pub ledger_from: u64,
    pub audit_from: usize,
}

impl State {
    /// Applies one request. Expected refusals (bad input, no permission, not found) are
    /// `Ok(Outcome::Error)`; `Err` means an invariant broke and the replica must stop.
    pub fn apply(&mut self, req: &Request) -> Result<Outcome, InvariantViolation> {
        if let Command::Batch(requests) = &req.command {
            return self.apply_batch(requests);
        }
        let now = self.clock_ms.max(req.ts_ms);
        if now < self.clock_ms {
            return Err(InvariantViolation::Sm1 {
                from: self.clock_ms,
                to: now,
            });
        }
        self.clock_ms = now;
        self.dedup.prune(now);
        // admission before dedup: a repeated id answers only a caller allowed to send it, and a
        // refusal is not remembered (a later, authorized retry with the same id still runs)
        let actor = match self.admit(req) {
            Ok(actor) => actor,
            Err(e) => return Ok(Outcome::Error(e)),
        };
        if let Some(previous) = self.dedup.get(&req.id) {
            return Ok(previous.clone());
        }
        let mut touched = Touched {
            ledger_from: self.ledger.len(),
            audit_from: self.audit.len(),
            ..Default::default()
        };
        let outcome = match self.execute(req, actor.as_deref(), &mut touched) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Error(e),
        };
        self.check_invariants(&touched)?;
        // usage batches are deduplicated per record (LG-1): a retried batch gets `Duplicate`
        // acks with the original sequence numbers, so their outcomes need not be kept here
        let per_record = matches!(req.command, Command::RecordUsage { .. });
        if !per_record {
            self.dedup.insert(&req.id, now, outcome.clone());
        }
        Ok(outcome)
    }

    /// Each request of a batch on its own, in order; a nested batch is refused.
    fn apply_batch(&mut self, requests: &[Request]) -> Result<Outcome, InvariantViolation> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for req in requests {
            outcomes.push(match req.command {
                Command::Batch(_) => Outcome::Error(ApiError::invalid(
                    "command",
                    "a batch cannot contain a batch",
                )),
                _ => self.apply(req)?,
            });
        }
        Ok(Outcome::Batch(outcomes))
    }

    /// Checks the request id and the actor; returns the actor's audit name (`None` for the
    /// bootstrap entry, which checks its own preconditions).
    fn admit(&self, req: &Request) -> Result<Option<String>, ApiError> {
        if req.id.is_empty() || req.id.len() > REQUEST_ID_BYTES_MAX {
            return Err(ApiError::invalid(
                "request_id",
                format!("request ids are 1 to {REQUEST_ID_BYTES_MAX} bytes"),
            ));
        }
        if matches!(req.command, Command::Bootstrap { .. }) {
            return Ok(None);
        }
        if self.secret.is_none() {
            return Err(ApiError::new(
                ErrorCode::StoreUnavailable,
                "the cluster is not bootstrapped yet",
            ));
        }
        self.authorize(&req.actor, &req.command).map(Some)
    }

    fn execute(
        &mut self,
        req: &Request,
        actor: Option<&str>,
        touched: &mut Touched,
    ) -> Result<Outcome, ApiError> {
        let Some(actor) = actor else {
            return match &req.command {
                Command::Bootstrap {
                    secret,
                    keygen,
                    admin,
                } => self.bootstrap(req, secret, keygen, admin),
                _ => Err(ApiError::new(
                    ErrorCode::Internal,
                    "request was not admitted",
                )),
            };
        };
        let ctx = Ctx { req, actor };
        match &req.command {
            Command::Acquire {
                gateway,
                wants,
                returns,
                usage,
            } => self.acquire(gateway, (wants, returns, usage), touched),
            Command::RecordUsage { records } => self.record_usage(records, touched),
            _ => self.execute_config(&ctx, touched),
        }
    }

    fn bootstrap(
        &mut self,
        req: &Request,
        secret: &ClusterSecret,
        keygen: &ClusterSecret,
        admin: &AdminTokenRecord,
    ) -> Result<Outcome, ApiError> {
        if req.actor != Actor::System {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "only the store may bootstrap",
            ));
        }
        if self.secret.is_some() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                "the cluster is already bootstrapped",
            ));
        }
        self.secret = Some(secret.clone());
        self.keygen = Some(keygen.clone());
        let mut admin = admin.clone();
        admin.role = Role::Admin;
        admin.created_at_ms = self.clock_ms;
        let after = redacted_json(&admin);
        self.tokens.insert(admin.id.clone(), admin.clone());
        self.audit_push(
            req,
            "system",
            "bootstrap",
            &format!("token/{}", admin.id),
            None,
            Some(after),
        );
        self.config_version += 1;
        Ok(Outcome::Done {
            config_version: self.config_version,
        })
    }

    /// Checks the actor against the replicated token table; returns its audit name.
    fn authorize(&self, actor: &Actor, cmd: &Command) -> Result<String, ApiError> {
        let need = required_role(cmd);
        let gateway_command = matches!(cmd, Command::Acquire { .. } | Command::RecordUsage { .. });
        match actor {
            Actor::System => Ok("system".to_owned()),
            Actor::Gateway { id } if gateway_command => Ok(format!("gateway:{id}")),
            Actor::Gateway { .. } => Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "gateways may only send lease and usage requests",
            )),
            Actor::Admin { token_id, digest } => {
                let bad =
                    || ApiError::new(ErrorCode::InvalidApiKey, "unknown or revoked admin token");
                let token = self.tokens.get(token_id).ok_or_else(bad)?;
                if token.revoked || !token.digest.ct_eq(digest) {
                    return Err(bad());
                }
                if token.role < need {
                    return Err(ApiError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "this action needs the {need} role; the token has {}",
                            token.role
                        ),
                    ));
                }
                Ok(format!("token:{token_id}"))
            }
        }
    }

    pub(crate) fn audit_push(
        &mut self,
        req: &Request,
        actor: &str,
        action: &str,
        target: &str,
        before: Option<String>,
        after: Option<String>,
    ) {
        let entry = AuditEntry {
            ts_ms: self.clock_ms,
            actor,
            action,
            target,
            before: before.as_deref(),
            after: after.as_deref(),
            request_id: &req.id,
        };
        let record = next_record(self.audit.last(), entry);
        self.audit.push_back(record);
    }

    fn check_invariants(&self, touched: &Touched) -> Result<(), InvariantViolation> {
        for id in &touched.buckets {
            if let Some(b) = self.buckets.get(id) {
                b.check(id)?;
            }
        }
        let recent = self.ledger.recent();
        // by index: `iter().skip(n)` would walk every entry the store has not taken
        let fresh = (self.ledger.len() - touched.ledger_from) as usize;
        for i in recent.len().saturating_sub(fresh)..recent.len() {
            self.check_indexed(&recent[i])?;
        }
        for i in touched.audit_from.max(1)..self.audit.len() {
            if self.audit[i].prev_hash != self.audit[i - 1].hash {
                return Err(InvariantViolation::Au1(self.audit[i].seq));
            }
        }
        Ok(())
    }

    /// LG-1 for one appended entry: the index maps its id to exactly this entry, so a second
    /// entry with the same id cannot be in the ledger.
    fn check_indexed(&self, entry: &crate::usage::LedgerEntry) -> Result<(), InvariantViolation> {
        match self.usage_index.get(&IdKey::of(&entry.record.request_id)) {
            Some(UsageIndex::InLedger { seq, .. }) if *seq == entry.seq => Ok(()),
            _ => Err(InvariantViolation::Lg1(entry.record.request_id.to_string())),
        }
    }

    /// Checks QL-1 on every bucket, LG-1 over the ledger entries still held here, and the audit
    /// chain (tests, models). Archived entries are checked against the chain head with
    /// `ledger::chain_over` when a snapshot carrying them is installed.
    pub fn check_all_invariants(&self) -> Result<(), InvariantViolation> {
        for (id, b) in &self.buckets {
            b.check(id)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in self.ledger.recent() {
            if !seen.insert(&e.record.request_id) {
                return Err(InvariantViolation::Lg1(e.record.request_id.to_string()));
            }
        }
        crate::audit::verify_chain(None, self.audit.iter()).map_err(|e| match e {
            crate::audit::ChainError::Gap { seq, .. }
            | crate::audit::ChainError::BrokenLink { seq, .. }
            | crate::audit::ChainError::BadHash { seq } => InvariantViolation::Au1(seq),
        })?;
        Ok(())
    }
}

/// Request plus the authorized actor's audit name.
pub(crate) struct Ctx<'a> {
    pub req: &'a Request,
    pub actor: &'a str,
}

fn required_role(cmd: &Command) -> Role {
    match cmd {
        Command::CreateAdminToken(_) | Command::RevokeAdminToken { .. } => Role::Admin,
        // Usage backfills by hand need an operator; gateways are let through by `authorize`.
        _ => Role::Operator,
    }
}

/// JSON of an entity for the audit log, with any `digest` field removed.
pub(crate) fn redacted_json<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove("digest");
            serde_json::Value::Object(m).to_string()
        }
        Ok(other) => other.to_string(),
        Err(e) => format!("\"<unserializable: {e}>\""),
    }
}
