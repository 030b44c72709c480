//! The limit model: a limit attaches to a scope (org, project or key, optionally narrowed to a
//! model) and a dimension, with a fail policy and a shadow switch. Identity = (scope, model, dimension).

use crate::ids::{KeyId, ModelName, OrgId, ProjectId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scope {
    Org { org: OrgId },
    Project { org: OrgId, project: ProjectId },
    Key { org: OrgId, key: KeyId },
}

impl Scope {
    pub fn org(&self) -> &OrgId {
        match self {
            Scope::Org { org } | Scope::Project { org, .. } | Scope::Key { org, .. } => org,
        }
    }
    /// Whether a request by `key` of `project` in `org` falls under this scope.
    pub fn covers(&self, org: &OrgId, project: &ProjectId, key: &KeyId) -> bool {
        match self {
            Scope::Org { org: o } => o == org,
            Scope::Project { org: o, project: p } => o == org && p == project,
            Scope::Key { org: o, key: k } => o == org && k == key,
        }
    }
}

/// The entries of a map keyed by `LimitKey` whose scope is `scope`: one range of the map (keys
/// sort by scope first), so finding a request's limits never scans every tenant's.
pub fn in_scope<'a, V>(
    map: &'a BTreeMap<LimitKey, V>,
    scope: &Scope,
) -> impl Iterator<Item = (&'a LimitKey, &'a V)> + use<'a, V> {
    let first = LimitKey {
        scope: scope.clone(),
        model: None,
        dimension: Dimension::RequestsPerMinute,
    };
    let scope = scope.clone();
    map.range(first..)
        .take_while(move |(k, _)| k.scope == scope)
}

/// The entries of a map keyed by `LimitKey` whose scope covers a request by `key` of `project`
/// in `org` (its org's, its project's and its key's limits), in key order (scopes sort org <
/// project < key, so the three ranges come out in the map's own order).
pub fn covering<'a, V>(
    map: &'a BTreeMap<LimitKey, V>,
    org: &OrgId,
    project: &ProjectId,
    key: &KeyId,
) -> impl Iterator<Item = (&'a LimitKey, &'a V)> + use<'a, V> {
    let scopes = [
        Scope::Org { org: org.clone() },
        Scope::Project {
            org: org.clone(),
            project: project.clone(),
        },
        Scope::Key {
            org: org.clone(),
            key: key.clone(),
        },
    ];
    scopes.into_iter().flat_map(move |s| in_scope(map, &s))
}

/// A calendar period for budgets, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
    /// Never resets (a prepaid balance).
    Total,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    RequestsPerMinute,
    InputTokensPerMinute,
    OutputTokensPerMinute,
    ConcurrentRequests,
    /// Total tokens (input + output) per period.
    TokenBudget {
        period: Period,
    },
    /// Money in micro-units per period.
    MoneyBudget {
        period: Period,
    },
}

impl Dimension {
    pub fn is_budget(self) -> bool {
        matches!(
            self,
            Dimension::TokenBudget { .. } | Dimension::MoneyBudget { .. }
        )
    }
}

/// What a gateway does for this limit once its lease expired and the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailPolicy {
    /// Deny.
    #[default]
    Strict,
    /// Spend an emergency reserve per gateway, already counted as held in the store.
    Reserve { per_gateway: u64 },
    /// Admit, flag the admission as unbacked, alert.
    Open,
}

/// Identity of a limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitKey {
    pub scope: Scope,
    #[serde(default)]
    pub model: Option<ModelName>,
    pub dimension: Dimension,
}

/// A limit: its identity (scope, model, dimension) and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub scope: Scope,
    /// Narrows the limit to one model; `None` covers all models.
    #[serde(default)]
    pub model: Option<ModelName>,
    pub dimension: Dimension,
    /// Units per minute for rates, slots for concurrency, units per period for budgets.
    pub limit: u64,
    /// Extra units a rate limit may admit at once (token-bucket depth beyond `limit`).
    #[serde(default)]
    pub burst: u64,
    #[serde(default)]
    pub fail_policy: FailPolicy,
    /// Measure without enforcing.
    #[serde(default)]
    pub shadow: bool,
}

/// Largest limit value (keeps every sum in the state machine far from u64 overflow).
pub const LIMIT_VALUE_MAX: u64 = 1 << 53;

impl Limit {
    pub fn key(&self) -> LimitKey {
        LimitKey {
            scope: self.scope.clone(),
            model: self.model.clone(),
            dimension: self.dimension,
        }
    }

    pub fn validate(&self) -> Result<(), crate::error::ApiError> {
        use crate::error::ApiError;
        if self.limit > LIMIT_VALUE_MAX || self.burst > LIMIT_VALUE_MAX {
            return Err(ApiError::invalid(
                "limit",
                format!("limit and burst must be at most {LIMIT_VALUE_MAX}"),
            ));
        }
        if self.dimension.is_budget() && self.burst != 0 {
            return Err(ApiError::invalid(
                "burst",
                "burst applies to rate limits only; remove it from budgets",
            ));
        }
        if let FailPolicy::Reserve { per_gateway } = self.fail_policy
            && per_gateway > self.limit
        {
            return Err(ApiError::invalid(
                "fail_policy.per_gateway",
                "the emergency reserve per gateway cannot exceed the limit",
            ));
        }
        Ok(())
    }
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian (H. Hinnant).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const MS_PER_DAY: u64 = 86_400_000;

/// (year, month, day) to days since 1970-01-01, the inverse of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Store time (ms) at which the period containing `ts_ms` ends; `None` for `Total`.
pub fn period_end_ms(period: Period, ts_ms: u64) -> Option<u64> {
    let days = ts_ms / MS_PER_DAY;
    match period {
        Period::Day => Some((days + 1) * MS_PER_DAY),
        Period::Month => {
            let (y, m, _) = civil_from_days(days as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some(days_from_civil(ny, nm, 1).max(0) as u64 * MS_PER_DAY)
        }
        Period::Total => None,
    }
}

/// A stable index of the period that contains `ts_ms`: days since epoch, months since epoch, or 0.
pub fn period_index(period: Period, ts_ms: u64) -> u64 {
    let days = ts_ms / MS_PER_DAY;
    match period {
        Period::Day => days,
        Period::Month => {
            let (y, m, _) = civil_from_days(days as i64);
            ((y - 1970) * 12 + i64::from(m) - 1).max(0) as u64
        }
        Period::Total => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_math() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        // 2026-11-27T00:00Z = 20_784 days
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        let ts = 20_784 * MS_PER_DAY + 5;
        assert_eq!(period_index(Period::Month, ts), (2026 - 1970) * 12 + 10);
        assert_eq!(period_index(Period::Day, ts), 20_784);
        assert_eq!(period_index(Period::Total, ts), 0);
        assert_eq!(days_from_civil(2026, 11, 27), 20_784);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(
            period_end_ms(Period::Month, ts),
            Some(days_from_civil(2026, 12, 1) as u64 * MS_PER_DAY)
        );
        assert_eq!(period_end_ms(Period::Day, ts), Some(20_785 * MS_PER_DAY));
        let dec = days_from_civil(2026, 12, 31) as u64 * MS_PER_DAY;
        assert_eq!(
            period_end_ms(Period::Month, dec),
            Some(days_from_civil(2027, 1, 1) as u64 * MS_PER_DAY)
        );
        assert_eq!(period_end_ms(Period::Total, ts), None);
    }

    #[test]
    fn scopes_cover() {
        let org = OrgId::parse("a").expect("id");
        let other = OrgId::parse("b").expect("id");
        let p = ProjectId::parse("p").expect("id");
        let k = KeyId::parse("live_x").expect("id");
        assert!(Scope::Org { org: org.clone() }.covers(&org, &p, &k));
        assert!(!Scope::Org { org: other }.covers(&org, &p, &k));
        assert!(
            Scope::Key {
                org: org.clone(),
                key: k.clone()
            }
            .covers(&org, &p, &k)
        );
    }

    #[test]
    fn covering_finds_exactly_what_covers_finds() {
        let id = |s: &str| OrgId::parse(s).expect("id");
        let pid = |s: &str| ProjectId::parse(s).expect("id");
        let kid = |s: &str| KeyId::parse(s).expect("id");
        let dims = [
            Dimension::RequestsPerMinute,
            Dimension::ConcurrentRequests,
            Dimension::TokenBudget {
                period: Period::Month,
            },
            Dimension::MoneyBudget {
                period: Period::Total,
            },
        ];
        let models = [None, Some(ModelName::parse("m").expect("id"))];
        let mut map = BTreeMap::new();
        for o in ["a", "ab", "b"] {
            let scopes = [
                Scope::Org { org: id(o) },
                Scope::Project {
                    org: id(o),
                    project: pid("p"),
                },
                Scope::Project {
                    org: id(o),
                    project: pid("q"),
                },
                Scope::Key {
                    org: id(o),
                    key: kid("k1"),
                },
                Scope::Key {
                    org: id(o),
                    key: kid("k2"),
                },
            ];
            for scope in scopes {
                for model in &models {
                    for dimension in dims {
                        let key = LimitKey {
                            scope: scope.clone(),
                            model: model.clone(),
                            dimension,
                        };
                        map.insert(key, ());
                    }
                }
            }
        }
        for o in ["a", "ab", "b", "c"] {
            for p in ["p", "q", "r"] {
                for k in ["k1", "k2", "k3"] {
                    let (o, p, k) = (id(o), pid(p), kid(k));
                    // same entries, same (key) order: the state machine's iteration is unchanged
                    let fast: Vec<_> = covering(&map, &o, &p, &k).map(|(k, _)| k).collect();
                    let slow: Vec<_> = map.keys().filter(|l| l.scope.covers(&o, &p, &k)).collect();
                    assert_eq!(fast, slow, "{o} {p} {k}");
                }
            }
        }
    }
}
