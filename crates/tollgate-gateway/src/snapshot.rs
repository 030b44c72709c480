//! The gateway's view of the configuration: built from each `GatewayConfig` the store's watch
//! stream delivers, indexed for the request path (key id → key, org → org, model → definition and
//! route), and swapped atomically. Requests never wait for the store.

use crate::router::{Route, Router};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tollgate_types::config::{ApiKeyRecord, GatewayConfig, ModelDef, Org};
use tollgate_types::secret::KeyedDigest;
use tollgate_types::{OrgId, ProjectId};

#[derive(Debug)]
pub struct ModelEntry {
    pub def: ModelDef,
    pub route: Route,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    /// The cluster secret's HMAC, keyed once per snapshot for the request path (the secret
    /// itself is not kept).
    pub digest_key: KeyedDigest,
    pub keys: HashMap<String, Arc<ApiKeyRecord>>,
    pub orgs: HashMap<OrgId, Arc<Org>>,
    pub projects: HashSet<(OrgId, ProjectId)>,
    /// Sorted, for stable `/v1/models` listings.
    pub models: BTreeMap<String, Arc<ModelEntry>>,
    pub limits: Vec<tollgate_types::limits::Limit>,
}

impl Snapshot {
    /// Indexes a config; endpoint health is kept for URLs the router already knows.
    pub fn build(cfg: GatewayConfig, router: &Router) -> Snapshot {
        let models: BTreeMap<String, Arc<ModelEntry>> = cfg
            .models
            .into_iter()
            .map(|def| {
                let route = router.route_for(&def);
                (
                    def.name.as_str().to_owned(),
                    Arc::new(ModelEntry { def, route }),
                )
            })
            .collect();
        let used: HashSet<String> = models
            .values()
            .flat_map(|m| m.route.tiers.iter().flatten())
            .map(|e| e.state.url.clone())
            .collect();
        router.retain(&used);
        Snapshot {
            version: cfg.version,
            digest_key: cfg.secret.keyed(),
            keys: cfg
                .keys
                .into_iter()
                .map(|k| (k.id.as_str().to_owned(), Arc::new(k)))
                .collect(),
            orgs: cfg
                .orgs
                .into_iter()
                .map(|o| (o.id.clone(), Arc::new(o)))
                .collect(),
            projects: cfg.projects.into_iter().map(|p| (p.org, p.id)).collect(),
            models,
            limits: cfg.limits,
        }
    }
}
