//! The configuration model: orgs, projects, API keys, admin tokens, models and their routes.
//! These are the values the state machine stores and the watch stream ships to gateways.

use crate::amount::{Price, Tokens};
use crate::ids::{KeyId, ModelName, OrgId, ProjectId};
use crate::secret::{Digest, Role};
use serde::{Deserialize, Serialize};

/// Whether an org may send traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OrgStatus {
    #[default]
    Active,
    /// All of the org's keys are refused with `permission_denied` until unfrozen.
    Frozen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    #[serde(default)]
    pub status: OrgStatus,
    /// Priority class for queued admission (0 = highest).
    #[serde(default)]
    pub tier: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub org: OrgId,
    pub id: ProjectId,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    #[default]
    Active,
    Revoked,
}

/// An API key as stored: never the plaintext, only its HMAC digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub org: OrgId,
    pub project: ProjectId,
    pub name: String,
    pub digest: Digest,
    pub status: KeyStatus,
    /// Models this key may call; empty means every model.
    pub allowed_models: Vec<ModelName>,
    /// Endpoints this key may call; empty means every endpoint.
    #[serde(default)]
    pub scopes: Vec<KeyScope>,
    /// Store time (ms since the Unix epoch) after which the key is refused; `None` never expires.
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

/// An API endpoint family a key may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `GET /v1/models`, `GET /v1/models/{id}`
    Models,
}

impl std::str::FromStr for KeyScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat_completions" => Ok(KeyScope::ChatCompletions),
            "completions" => Ok(KeyScope::Completions),
            "embeddings" => Ok(KeyScope::Embeddings),
            "models" => Ok(KeyScope::Models),
            other => Err(format!(
                "unknown scope '{other}': use chat_completions, completions, embeddings or models"
            )),
        }
    }
}

impl ApiKeyRecord {
    /// Whether the key may call an endpoint of this family.
    pub fn allows_scope(&self, scope: KeyScope) -> bool {
        self.scopes.is_empty() || self.scopes.contains(&scope)
    }
}

/// An admin token as stored (digest only) with its role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTokenRecord {
    pub id: KeyId,
    pub name: String,
    pub role: Role,
    pub digest: Digest,
    pub revoked: bool,
    pub created_at_ms: u64,
}

/// One upstream endpoint inside a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Base URL of an OpenAI-compatible server, e.g. `http://127.0.0.1:9001/v1`.
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The model name to send upstream, when it differs from the public name.
    #[serde(default)]
    pub upstream_model: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// A tier: one pool of endpoints. Tiers are tried in order (primary, then fallbacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub endpoints: Vec<Endpoint>,
}

/// A model as customers see it, its limits, its price and its route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    pub name: ModelName,
    /// Largest `max_tokens` a request may ask for.
    pub max_output_tokens: Tokens,
    /// `max_tokens` assumed when a request gives none.
    pub default_output_tokens: Tokens,
    #[serde(default)]
    pub price: Price,
    /// Price catalog version; bumped by the store on every price change.
    #[serde(default)]
    pub price_version: u64,
    /// The route: tiers of endpoint pools.
    pub tiers: Vec<Tier>,
}

/// Largest number of tiers or endpoints in a route, names and URLs length.
pub const ROUTE_TIERS_MAX: usize = 8;
pub const TIER_ENDPOINTS_MAX: usize = 64;
pub const NAME_BYTES_MAX: usize = 200;
pub const URL_BYTES_MAX: usize = 2048;

impl ModelDef {
    /// Checks a model definition; the error names the field to fix.
    pub fn validate(&self) -> Result<(), crate::error::ApiError> {
        use crate::error::ApiError;
        if self.max_output_tokens == 0 {
            return Err(ApiError::invalid(
                "max_output_tokens",
                "max_output_tokens must be at least 1",
            ));
        }
        if self.default_output_tokens == 0 || self.default_output_tokens > self.max_output_tokens {
            return Err(ApiError::invalid(
                "default_output_tokens",
                format!(
                    "default_output_tokens must be between 1 and max_output_tokens ({})",
                    self.max_output_tokens
                ),
            ));
        }
        if self.tiers.is_empty() || self.tiers.len() > ROUTE_TIERS_MAX {
            return Err(ApiError::invalid(
                "tiers",
                format!("a route needs 1 to {ROUTE_TIERS_MAX} tiers"),
            ));
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            validate_tier(i, tier)?;
        }
        Ok(())
    }
}

fn validate_tier(i: usize, tier: &Tier) -> Result<(), crate::error::ApiError> {
    use crate::error::ApiError;
    if tier.endpoints.is_empty() || tier.endpoints.len() > TIER_ENDPOINTS_MAX {
        return Err(ApiError::invalid(
            format!("tiers[{i}].endpoints"),
            format!("a tier needs 1 to {TIER_ENDPOINTS_MAX} endpoints"),
        ));
    }
    for (j, ep) in tier.endpoints.iter().enumerate() {
        let param = format!("tiers[{i}].endpoints[{j}]");
        let scheme_ok = ep.url.starts_with("http://") || ep.url.starts_with("https://");
        if !scheme_ok || ep.url.len() > URL_BYTES_MAX {
            return Err(ApiError::invalid(
                format!("{param}.url"),
                format!(
                    "endpoint url must start with http:// or https:// and be at most {URL_BYTES_MAX} bytes"
                ),
            ));
        }
        if ep.weight == 0 {
            return Err(ApiError::invalid(
                format!("{param}.weight"),
                "endpoint weight must be at least 1",
            ));
        }
    }
    Ok(())
}

/// Checks a human-readable name (org, project, key names).
pub fn validate_name(param: &str, name: &str) -> Result<(), crate::error::ApiError> {
    if name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(crate::error::ApiError::invalid(
            param,
            format!("{param} must be at most {NAME_BYTES_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A declarative configuration document (`tollgate admin apply -f`): upserted atomically.
/// The only document version this build reads.
pub const CONFIG_DOC_VERSION: u32 = 1;
/// Most entities in one document.
pub const CONFIG_DOC_ITEMS_MAX: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    pub version: u32,
    #[serde(default)]
    pub orgs: Vec<Org>,
    #[serde(default)]
    pub projects: Vec<Project>,
    #[serde(default)]
    pub models: Vec<ModelDef>,
    #[serde(default)]
    pub limits: Vec<crate::limits::Limit>,
}

impl ConfigDoc {
    pub fn item_count(&self) -> usize {
        self.orgs.len() + self.projects.len() + self.models.len() + self.limits.len()
    }
}

/// Everything a gateway needs to serve requests without a store round trip, shipped by the
/// config watch stream and swapped atomically on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayConfig {
    pub version: u64,
    /// The HMAC secret for API key digests.
    pub secret: crate::secret::ClusterSecret,
    pub orgs: Vec<Org>,
    pub projects: Vec<Project>,
    pub keys: Vec<ApiKeyRecord>,
    pub models: Vec<ModelDef>,
    pub limits: Vec<crate::limits::Limit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelDef {
        ModelDef {
            name: ModelName::parse("m").expect("valid"),
            max_output_tokens: 100,
            default_output_tokens: 10,
            price: Price::default(),
            price_version: 0,
            tiers: vec![Tier {
                endpoints: vec![Endpoint {
                    url: "http://127.0.0.1:1/v1".into(),
                    weight: 1,
                    upstream_model: None,
                }],
            }],
        }
    }

    #[test]
    fn model_validation_names_the_field() {
        assert!(model().validate().is_ok());
        let mut m = model();
        m.default_output_tokens = 1000;
        assert_eq!(
            m.validate().expect_err("too big").param.as_deref(),
            Some("default_output_tokens")
        );
        let mut m = model();
        m.tiers[0].endpoints[0].url = "ftp://x".into();
        assert_eq!(
            m.validate().expect_err("bad url").param.as_deref(),
            Some("tiers[0].endpoints[0].url")
        );
    }
}
