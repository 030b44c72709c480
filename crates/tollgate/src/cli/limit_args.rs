//! Flags that describe a limit (`tollgate admin limit put|delete`).

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, LimitKey, Period, Scope};
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DimensionArg {
    /// Requests per minute.
    Rpm,
    /// Input tokens per minute.
    InputTpm,
    /// Output tokens per minute.
    OutputTpm,
    /// Concurrent requests.
    Concurrency,
    /// Tokens (input + output) per --period.
    TokenBudget,
    /// Money in micro-units per --period.
    MoneyBudget,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PeriodArg {
    Day,
    Month,
    Total,
}

#[derive(Args, Clone)]
pub struct LimitKeyArgs {
    #[arg(long)]
    pub org: String,
    /// Narrow the scope to a project of the org.
    #[arg(long, conflicts_with = "key")]
    pub project: Option<String>,
    /// Narrow the scope to one API key (its id).
    #[arg(long)]
    pub key: Option<String>,
    /// Narrow the limit to one model.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum)]
    pub dimension: DimensionArg,
    /// Budget period (budgets only).
    #[arg(long, value_enum)]
    pub period: Option<PeriodArg>,
}

#[derive(Args, Clone)]
pub struct LimitArgs {
    #[command(flatten)]
    pub key: LimitKeyArgs,
    /// The limit: per minute for rates, slots for concurrency, units per period for budgets.
    #[arg(long)]
    pub limit: u64,
    #[arg(long, default_value_t = 0)]
    pub burst: u64,
    /// strict, open, or reserve:<units per gateway>.
    #[arg(long, default_value = "strict")]
    pub fail_policy: String,
    /// Measure without enforcing.
    #[arg(long)]
    pub shadow: bool,
}

fn period(p: Option<PeriodArg>, dim: DimensionArg) -> anyhow::Result<Period> {
    match p {
        Some(PeriodArg::Day) => Ok(Period::Day),
        Some(PeriodArg::Month) => Ok(Period::Month),
        Some(PeriodArg::Total) => Ok(Period::Total),
        None => bail!("--dimension {dim:?} needs --period day|month|total"),
    }
}

impl LimitKeyArgs {
    pub fn to_key(&self) -> anyhow::Result<LimitKey> {
        let org = OrgId::parse(&self.org).context("--org")?;
        let scope = match (&self.project, &self.key) {
            (Some(p), _) => Scope::Project {
                org,
                project: ProjectId::parse(p).context("--project")?,
            },
            (None, Some(k)) => Scope::Key {
                org,
                key: KeyId::parse(k).context("--key")?,
            },
            (None, None) => Scope::Org { org },
        };
        let model = self
            .model
            .as_deref()
            .map(ModelName::parse)
            .transpose()
            .context("--model")?;
        let budget = matches!(
            self.dimension,
            DimensionArg::TokenBudget | DimensionArg::MoneyBudget
        );
        if !budget && self.period.is_some() {
            bail!("--period applies to token-budget and money-budget only");
        }
        let dimension = match self.dimension {
            DimensionArg::Rpm => Dimension::RequestsPerMinute,
            DimensionArg::InputTpm => Dimension::InputTokensPerMinute,
            DimensionArg::OutputTpm => Dimension::OutputTokensPerMinute,
            DimensionArg::Concurrency => Dimension::ConcurrentRequests,
            DimensionArg::TokenBudget => Dimension::TokenBudget {
                period: period(self.period, self.dimension)?,
            },
            DimensionArg::MoneyBudget => Dimension::MoneyBudget {
                period: period(self.period, self.dimension)?,
            },
        };
        Ok(LimitKey {
            scope,
            model,
            dimension,
        })
    }
}

fn fail_policy(s: &str) -> anyhow::Result<FailPolicy> {
    match s {
        "strict" => Ok(FailPolicy::Strict),
        "open" => Ok(FailPolicy::Open),
        other => match other.strip_prefix("reserve:") {
            Some(n) => Ok(FailPolicy::Reserve {
                per_gateway: n.parse().context("reserve:<units> needs a number")?,
            }),
            None => bail!("--fail-policy must be strict, open or reserve:<units>, not '{other}'"),
        },
    }
}

impl LimitArgs {
    pub fn to_limit(&self) -> anyhow::Result<Limit> {
        let key = self.key.to_key()?;
        Ok(Limit {
            scope: key.scope,
            model: key.model,
            dimension: key.dimension,
            limit: self.limit,
            burst: self.burst,
            fail_policy: fail_policy(&self.fail_policy)?,
            shadow: self.shadow,
        })
    }
}
