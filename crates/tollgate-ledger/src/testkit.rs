//! Fixtures for tests and benchmarks (no I/O): the commands that bootstrap a cluster with the
//! tenant `acme` / `web` and its key `live_key1`, and usage records for that tenant. Fixtures
//! take literal ids and panic on an invalid one; nothing in a running node calls them.

use crate::command::Command;
use tollgate_types::config::{AdminTokenRecord, ApiKeyRecord, KeyStatus, Org, OrgStatus, Project};
use tollgate_types::secret::{ClusterSecret, Role};
use tollgate_types::usage::{UsageRecord, UsageStatus};

/// A validated id from a literal (panics on an invalid one: fixtures only).
pub fn id<T: TryFrom<String>>(s: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s.to_owned()).expect("a valid id literal")
}

/// Bootstrap (admin token `admin_root`, the digest of `"x"`), org `acme`, project `web`, key
/// `live_key1` (the digest of `"k"`), all with `secret`.
pub fn tenant(secret: &ClusterSecret) -> Vec<Command> {
    let admin = AdminTokenRecord {
        id: id("admin_root"),
        name: "root".into(),
        role: Role::Admin,
        digest: secret.digest("x"),
        revoked: false,
        created_at_ms: 0,
    };
    vec![
        Command::Bootstrap {
            keygen: ClusterSecret::generate(),
            secret: secret.clone(),
            admin,
        },
        Command::CreateOrg(Org {
            id: id("acme"),
            name: "Acme".into(),
            status: OrgStatus::Active,
            tier: 0,
        }),
        Command::CreateProject(Project {
            org: id("acme"),
            id: id("web"),
            name: "Web".into(),
        }),
        Command::CreateKey(ApiKeyRecord {
            id: id("live_key1"),
            org: id("acme"),
            project: id("web"),
            name: "k".into(),
            digest: secret.digest("k"),
            status: KeyStatus::Active,
            allowed_models: vec![],
            scopes: vec![],
            expires_at_ms: None,
            created_at_ms: 0,
        }),
    ]
}

/// A completed request of the `tenant` on model `m` through gateway `gw1`.
pub fn usage(request_id: &str, prompt_tokens: u64, completion_tokens: u64) -> UsageRecord {
    UsageRecord {
        request_id: id(request_id),
        org: id("acme"),
        project: id("web"),
        key: id("live_key1"),
        model: id("m"),
        gateway: "gw1".into(),
        prompt_tokens,
        completion_tokens,
        cost_micros: prompt_tokens + completion_tokens,
        price_version: 1,
        status: UsageStatus::Completed,
        started_at_ms: 0,
        ended_at_ms: 0,
        estimated: false,
        unbacked: false,
    }
}
