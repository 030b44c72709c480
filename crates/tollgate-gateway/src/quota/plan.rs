//! Which limits apply to a request: built once per config version, per API key (org, project
//! and key limits, each optionally narrowed to a model), so admission does one lookup.

use super::bucket::{Cell, Kind, LocalBucket, kind};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tollgate_types::ModelName;
use tollgate_types::OrgId;
use tollgate_types::amount::Price;
use tollgate_types::config::ApiKeyRecord;
use tollgate_types::limits::{Dimension, Limit, LimitKey, covering};

/// A limit that applies to a key, with its local bucket (its key names the model, if any).
#[derive(Debug, Clone)]
pub struct Applies {
    pub bucket: Arc<LocalBucket>,
    pub dimension: Dimension,
    /// The limit only measures (copied at plan time: the request path need not lock for it).
    pub shadow: bool,
}

impl Applies {
    /// Whether the limit covers requests for `model` (`None`: only unnarrowed limits).
    pub fn covers(&self, model: Option<&ModelName>) -> bool {
        match (&self.bucket.key.model, model) {
            (Some(m), Some(want)) => m == want,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

/// Per key id: the limits that may apply, in lock order.
pub type Plan = HashMap<String, Arc<[Applies]>>;

/// Builds the plan of every key, creating buckets for new limits (existing buckets keep their
/// leases; their parameters are updated in place).
pub fn build(
    keys: &[ApiKeyRecord],
    limits: &[Limit],
    buckets: &mut BTreeMap<LimitKey, Arc<LocalBucket>>,
    now: std::time::Instant,
) -> Plan {
    // lookups by key and org, not scans: a config of many tenants must not cost
    // keys × limits at every change
    let wanted: BTreeSet<LimitKey> = limits.iter().map(Limit::key).collect();
    buckets.retain(|k, _| wanted.contains(k));
    let mut next = buckets.values().map(|b| b.order).max().map_or(0, |o| o + 1);
    let mut cells: HashMap<OrgId, Arc<Cell>> = buckets
        .values()
        .map(|b| (b.key.scope.org().clone(), b.cell.clone()))
        .collect();
    for l in limits {
        match buckets.get(&l.key()) {
            Some(b) => {
                let mut inner = b.lock();
                inner.limit = l.clone();
            }
            None => {
                // one cell per org: a request's limits then share one lock
                let cell = cells.entry(l.scope.org().clone()).or_default().clone();
                let b = LocalBucket::new(l.clone(), next, cell, now);
                buckets.insert(l.key(), Arc::new(b));
                next += 1;
            }
        }
    }
    let mut plan = Plan::with_capacity(keys.len());
    for k in keys {
        let mut list: Vec<Applies> = covering(buckets, &k.org, &k.project, &k.id)
            .map(|(_, b)| Applies {
                bucket: b.clone(),
                dimension: b.key.dimension,
                shadow: b.lock().limit.shadow,
            })
            .collect();
        if list.is_empty() {
            continue;
        }
        list.sort_by_key(|a| a.bucket.order);
        plan.insert(k.id.as_str().to_owned(), list.into());
    }
    plan
}

/// What a request reserves in a dimension.
pub fn reservation(dim: Dimension, input: u64, output: u64, price: &Price) -> u64 {
    match dim {
        Dimension::RequestsPerMinute | Dimension::ConcurrentRequests => 1,
        Dimension::InputTokensPerMinute => input,
        Dimension::OutputTokensPerMinute => output,
        Dimension::TokenBudget { .. } => input.saturating_add(output),
        Dimension::MoneyBudget { .. } => price.cost_micros(input, output),
    }
}

/// Whether a dimension counts output tokens (then the upstream `max_tokens` must be clamped to
/// what was reserved).
pub fn counts_output(dim: Dimension) -> bool {
    matches!(
        dim,
        Dimension::OutputTokensPerMinute
            | Dimension::TokenBudget { .. }
            | Dimension::MoneyBudget { .. }
    )
}

/// Whether denial in this dimension is `insufficient_quota` (a budget) rather than a rate limit.
pub fn is_budget(dim: Dimension) -> bool {
    kind(dim) == Kind::Volume
}
