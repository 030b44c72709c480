//! Declarative configuration: a document of orgs, projects, models and limits that `apply`
//! upserts atomically, and the diff a dry run prints.

use crate::state::State;
use serde::{Deserialize, Serialize};
use tollgate_types::config::{CONFIG_DOC_ITEMS_MAX, CONFIG_DOC_VERSION, ConfigDoc, ModelDef};
use tollgate_types::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Update,
    Unchanged,
}

/// One line of a diff: what would change and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// e.g. `org/acme`, `model/gpt-4o-mini`.
    pub target: String,
    pub before: Option<String>,
    pub after: String,
}

fn change<T: Serialize + PartialEq>(target: String, before: Option<&T>, after: &T) -> Change {
    let after_json = serde_json::to_string(after).unwrap_or_default();
    let kind = match before {
        None => ChangeKind::Create,
        Some(b) if b == after => ChangeKind::Unchanged,
        Some(_) => ChangeKind::Update,
    };
    Change {
        kind,
        target,
        before: before.map(|b| serde_json::to_string(b).unwrap_or_default()),
        after: after_json,
    }
}

impl State {
    /// Validates a document against the current state and lists what applying it would change.
    /// Nothing is modified; `ApplyConfig` applies exactly this diff or nothing.
    pub fn diff_config(&self, doc: &ConfigDoc) -> Result<Vec<Change>, ApiError> {
        self.validate_doc(doc)?;
        let mut out = Vec::with_capacity(doc.item_count());
        for o in &doc.orgs {
            out.push(change(format!("org/{}", o.id), self.orgs.get(&o.id), o));
        }
        for p in &doc.projects {
            out.push(change(
                format!("project/{}/{}", p.org, p.id),
                self.projects.get(&(p.org.clone(), p.id.clone())),
                p,
            ));
        }
        for m in &doc.models {
            let mut m = m.clone();
            let before = self.models.get(&m.name);
            m.price_version = next_price_version(before, &m);
            out.push(change(format!("model/{}", m.name), before, &m));
        }
        for l in &doc.limits {
            let target = format!(
                "limit/{}",
                serde_json::to_string(&l.key()).unwrap_or_default()
            );
            out.push(change(target, self.limits.get(&l.key()), l));
        }
        Ok(out)
    }

    fn validate_doc(&self, doc: &ConfigDoc) -> Result<(), ApiError> {
        if doc.version != CONFIG_DOC_VERSION {
            return Err(ApiError::invalid(
                "version",
                format!(
                    "config document version {} is not supported; use version: {CONFIG_DOC_VERSION}",
                    doc.version
                ),
            ));
        }
        if doc.item_count() > CONFIG_DOC_ITEMS_MAX {
            return Err(ApiError::invalid(
                "items",
                format!("at most {CONFIG_DOC_ITEMS_MAX} entities per document"),
            ));
        }
        for (i, o) in doc.orgs.iter().enumerate() {
            tollgate_types::config::validate_name(&format!("orgs[{i}].name"), &o.name)?;
        }
        let org_known = |org| self.orgs.contains_key(org) || doc.orgs.iter().any(|o| &o.id == org);
        for (i, p) in doc.projects.iter().enumerate() {
            tollgate_types::config::validate_name(&format!("projects[{i}].name"), &p.name)?;
            if !org_known(&p.org) {
                return Err(ApiError::invalid(
                    format!("projects[{i}].org"),
                    format!("org {} does not exist", p.org),
                ));
            }
        }
        for (i, m) in doc.models.iter().enumerate() {
            m.validate()
                .map_err(|e| prefix_param(e, &format!("models[{i}]")))?;
        }
        for (i, l) in doc.limits.iter().enumerate() {
            l.validate()
                .map_err(|e| prefix_param(e, &format!("limits[{i}]")))?;
            self.check_limit_targets(l, doc)
                .map_err(|e| prefix_param(e, &format!("limits[{i}]")))?;
        }
        Ok(())
    }
}

/// The price version a model gets: unchanged price keeps it, a new price bumps it.
pub(crate) fn next_price_version(before: Option<&ModelDef>, m: &ModelDef) -> u64 {
    match before {
        None => 1,
        Some(b) if b.price == m.price => b.price_version,
        Some(b) => b.price_version + 1,
    }
}

pub(crate) fn prefix_param(mut e: ApiError, prefix: &str) -> ApiError {
    e.param = Some(match e.param.take() {
        Some(p) => format!("{prefix}.{p}"),
        None => prefix.to_owned(),
    });
    e
}
