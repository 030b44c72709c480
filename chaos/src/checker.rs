//! The invariant checker: a pure function from what a run observed (the clients' history, the
//! ledger, the upstreams' oracle, the buckets, every replica's digest) to named checks with
//! numbers. It never talks to the cluster, so tests can feed it broken histories.

use crate::workload::Attempt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One ledger entry, as the export returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub seq: u64,
    pub request_id: String,
    pub org: String,
    pub project: String,
    pub key: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `completed`, `client_aborted`, `upstream_failed`, `in_doubt`.
    pub status: String,
    pub estimated: bool,
    /// Gateway wall clock, ms since the Unix epoch.
    pub started_at_ms: u64,
}

impl LedgerRow {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What the simulated upstreams served under one request id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OracleRow {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub complete: bool,
    /// Times served (a gateway retry repeats an id).
    pub attempts: u32,
    /// Each try as served: `[prompt, completion, complete (0/1)]` (empty: not reported).
    #[serde(default)]
    pub tries: Vec<[u64; 3]>,
    /// The request's `user` field: the workload tags idempotent requests `idem:<key>`.
    #[serde(default)]
    pub user: Option<String>,
}

/// A store bucket (one limit, one period) as the leader reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketRow {
    /// `org`, `org/project` or `org/key:<id>`.
    pub scope: String,
    /// `token_budget`, `requests_per_minute`, …
    pub dimension: String,
    pub volume: bool,
    pub checked_limit: u64,
    pub settled: u64,
    pub held: u64,
    pub debt: u64,
    /// Remaining amount of every live lease.
    pub lease_remaining: Vec<u64>,
    /// Latest release deadline of a live lease, store ms.
    pub release_at_max_ms: u64,
    /// The store's clock when read.
    pub store_clock_ms: u64,
}

/// One member's view at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRow {
    pub node: u64,
    /// None: the node did not answer.
    pub applied: Option<u64>,
    pub digest: Option<String>,
}

/// A rate limit to hold the admissions to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateSpec {
    /// Which ledger rows count: those of this `org/project`.
    pub scope: String,
    pub per_minute: u64,
    pub burst: u64,
}

/// Everything the checker judges.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observed {
    pub attempts: Vec<Attempt>,
    pub ledger: Vec<LedgerRow>,
    pub oracle: BTreeMap<String, OracleRow>,
    pub buckets: Vec<BucketRow>,
    pub replicas: Vec<ReplicaRow>,
    pub rates: Vec<RateSpec>,
    /// Forward jumps the store clock may have taken (injected offsets), ms: they widen the
    /// rate bound by `r·jump` (the bound is over store time).
    pub clock_jump_ms: u64,
    /// Wall-clock ms at the run's start (to place ledger rows on the run's timeline).
    pub start_wall_ms: u64,
    /// Time from heal to the first successful write, ms (None: none within the deadline).
    pub recovery_ms: Option<u64>,
    pub recovery_bound_ms: u64,
    /// Gateway restarts: (gateway, run ms) — an idempotency key's memory does not survive one.
    pub gateway_restarts: Vec<(usize, u64)>,
    /// Processes that exited on their own (a crash, not a nemesis kill).
    pub crashed: Vec<String>,
    /// Why the final state (ledger, buckets) could not be read, if it could not.
    pub observe_error: Option<String>,
    /// Every admission was backed by a lease (strict policies) and input estimates are exact
    /// (the simulated upstream counts tokens the way the gateway estimates them): then budgets
    /// must end with no debt at all, not merely `U ≤ L + D`.
    #[serde(default)]
    pub exact_estimates: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub what: String,
    pub ok: bool,
    /// The numbers behind the verdict.
    pub detail: String,
    /// The first violations, each precise enough to look up.
    pub violations: Vec<String>,
}

/// Violations listed per check at most (the count is in `detail`).
const LISTED_MAX: usize = 20;
/// Rate bound: lease TTL and the transit/drift allowance ε.
const TTL_MS: u64 = tollgate_types::lease::LEASE_TTL_MS;
const EPSILON_MS: u64 = 1_000;
const WINDOW_MS: u64 = 60_000;

fn check(name: &str, what: &str, detail: String, violations: Vec<String>) -> Check {
    Check {
        name: name.into(),
        what: what.into(),
        ok: violations.is_empty(),
        detail,
        violations: violations.into_iter().take(LISTED_MAX).collect(),
    }
}

/// Runs every check.
pub fn check_all(o: &Observed) -> Vec<Check> {
    vec![
        ql1(o),
        replicas(o),
        lg1(o),
        lg2(o),
        lg2_served(o),
        lg3(o),
        budget(o),
        rate(o),
        holds(o),
        idempotency(o),
        recovery(o),
        crashes(o),
        readable(o),
    ]
}

fn readable(o: &Observed) -> Check {
    check(
        "OBSERVE",
        "after the heal, the ledger, the oracle and the buckets could be read (else every check above is moot)",
        o.observe_error.clone().unwrap_or_else(|| "read".into()),
        o.observe_error.iter().cloned().collect(),
    )
}

fn ql1(o: &Observed) -> Check {
    let v: Vec<String> = o
        .buckets
        .iter()
        .filter(|b| b.volume && b.settled + b.held > b.checked_limit + b.debt)
        .map(|b| {
            format!(
                "{} {}: S {} + H {} > L {} + D {}",
                b.scope, b.dimension, b.settled, b.held, b.checked_limit, b.debt
            )
        })
        .collect();
    let n = v.len();
    check(
        "QL-1",
        "S + H ≤ L + D on every volume bucket (equal on every replica: see RP-1)",
        format!(
            "{} volume buckets, {n} over",
            o.buckets.iter().filter(|b| b.volume).count()
        ),
        v,
    )
}

fn replicas(o: &Observed) -> Check {
    let mut v = Vec::new();
    for r in &o.replicas {
        if r.applied.is_none() || r.digest.is_none() {
            v.push(format!("node {} did not answer", r.node));
        }
    }
    let views: BTreeSet<(Option<u64>, Option<&String>)> = o
        .replicas
        .iter()
        .filter(|r| r.applied.is_some())
        .map(|r| (r.applied, r.digest.as_ref()))
        .collect();
    if views.len() > 1 {
        let same_index: BTreeMap<Option<u64>, BTreeSet<Option<&String>>> =
            o.replicas.iter().fold(BTreeMap::new(), |mut m, r| {
                m.entry(r.applied).or_default().insert(r.digest.as_ref());
                m
            });
        for (idx, digests) in same_index {
            if digests.len() > 1 {
                v.push(format!(
                    "replicas at applied index {idx:?} disagree: {} different digests",
                    digests.len()
                ));
            }
        }
        if v.is_empty() {
            v.push(format!(
                "replicas never reached the same applied index: {:?}",
                o.replicas
                    .iter()
                    .map(|r| (r.node, r.applied))
                    .collect::<Vec<_>>()
            ));
        }
    }
    check(
        "RP-1",
        "every member reaches the same applied index with the same state digest",
        format!(
            "{} members: {}",
            o.replicas.len(),
            o.replicas
                .iter()
                .map(|r| format!(
                    "node {} applied {} digest {}",
                    r.node,
                    r.applied.map_or("-".into(), |a| a.to_string()),
                    r.digest.as_deref().map_or("-", |d| &d[..d.len().min(12)])
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        v,
    )
}

fn lg1(o: &Observed) -> Check {
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut v = Vec::new();
    for r in &o.ledger {
        if let Some(first) = seen.insert(&r.request_id, r.seq) {
            v.push(format!(
                "request {} at seq {first} and again at seq {}",
                r.request_id, r.seq
            ));
        }
    }
    let n = v.len();
    check(
        "LG-1",
        "no request id appears twice in the ledger",
        format!("{} ledger entries, {n} duplicates", o.ledger.len()),
        v,
    )
}

fn by_id(o: &Observed) -> BTreeMap<&str, &LedgerRow> {
    o.ledger
        .iter()
        .map(|r| (r.request_id.as_str(), r))
        .collect()
}

fn lg2(o: &Observed) -> Check {
    let ledger = by_id(o);
    let mut v = Vec::new();
    // a replay is the stored answer of an earlier execution (GW-4 checks those), under a fresh
    // request id that is never billed
    let complete: Vec<&Attempt> = o
        .attempts
        .iter()
        .filter(|a| a.complete && !a.replayed)
        .collect();
    for a in &complete {
        let Some(id) = a.request_id.as_deref() else {
            v.push(format!(
                "client {} #{}: complete without a request id",
                a.client, a.seq
            ));
            continue;
        };
        match ledger.get(id) {
            None => v.push(format!(
                "{id} ({} key, complete at the client) is not in the ledger",
                a.key
            )),
            Some(r) if r.status != "completed" || r.estimated => v.push(format!(
                "{id}: complete at the client, ledger says {}{}",
                r.status,
                if r.estimated { " (estimated)" } else { "" }
            )),
            Some(r) => {
                if let Some((p, c)) = a.usage
                    && (p, c) != (r.prompt_tokens, r.completion_tokens)
                {
                    v.push(format!(
                        "{id}: client saw {p}+{c} tokens, ledger {}+{}",
                        r.prompt_tokens, r.completion_tokens
                    ));
                }
            }
        }
    }
    let n = v.len();
    check(
        "LG-2",
        "every response a client saw complete is in the ledger, completed, with the tokens the client saw",
        format!(
            "{} complete responses, {n} missing or different",
            complete.len()
        ),
        v,
    )
}

fn lg2_served(o: &Observed) -> Check {
    let ledger = by_id(o);
    let v: Vec<String> = o
        .oracle
        .keys()
        .filter(|id| !ledger.contains_key(id.as_str()))
        .map(|id| format!("{id} was served by an upstream but is not in the ledger"))
        .collect();
    let n = v.len();
    check(
        "LG-2-SERVED",
        "every request an upstream served is in the ledger (nothing lost in a crash)",
        format!("{} served ids, {n} missing", o.oracle.len()),
        v,
    )
}

fn lg3(o: &Observed) -> Check {
    let mut v = Vec::new();
    let (mut ledger_tokens, mut oracle_tokens, mut compared) = (0u64, 0u64, 0u64);
    for r in &o.ledger {
        let Some(s) = o.oracle.get(&r.request_id) else {
            continue;
        };
        if r.estimated || r.status != "completed" || !s.complete {
            continue;
        }
        compared += 1;
        ledger_tokens += r.tokens();
        oracle_tokens += s.prompt_tokens + s.completion_tokens;
        // a retried id was served more than once: the ledger bills the one try that was
        // delivered whole, never a sum
        let (lp, lc) = (r.prompt_tokens, r.completion_tokens);
        let matches = if s.attempts <= 1 {
            (lp, lc) == (s.prompt_tokens, s.completion_tokens)
        } else if s.tries.is_empty() {
            lp <= s.prompt_tokens && lc <= s.completion_tokens
        } else {
            s.tries
                .iter()
                .any(|t| t[2] == 1 && (t[0], t[1]) == (lp, lc))
        };
        if !matches {
            v.push(format!(
                "{}: ledger {lp}+{lc}, upstream served {}+{} in {} attempt(s) {:?}",
                r.request_id, s.prompt_tokens, s.completion_tokens, s.attempts, s.tries
            ));
        }
    }
    // bucket counters: every budget bucket's settled = the ledger's tokens in its scope
    for b in o.buckets.iter().filter(|b| b.dimension == "token_budget") {
        let sum: u64 = o
            .ledger
            .iter()
            .filter(|r| in_scope(r, &b.scope))
            .map(LedgerRow::tokens)
            .sum();
        if sum != b.settled {
            v.push(format!(
                "{} token budget: store counter {} ≠ ledger {sum}",
                b.scope, b.settled
            ));
        }
    }
    let n = v.len();
    check(
        "LG-3",
        "ledger = upstream oracle (per request) = the store's bucket counters",
        format!(
            "{compared} completed requests compared: ledger {ledger_tokens} tokens, oracle {oracle_tokens}; {n} differences"
        ),
        v,
    )
}

fn in_scope(r: &LedgerRow, scope: &str) -> bool {
    match scope.split_once('/') {
        None => r.org == scope,
        Some((org, rest)) => match rest.strip_prefix("key:") {
            Some(k) => r.org == org && r.key == k,
            None => r.org == org && r.project == rest,
        },
    }
}

fn budget(o: &Observed) -> Check {
    let mut v = Vec::new();
    let mut detail = Vec::new();
    for b in o.buckets.iter().filter(|b| b.dimension == "token_budget") {
        let used: u64 = o
            .ledger
            .iter()
            .filter(|r| in_scope(r, &b.scope))
            .map(LedgerRow::tokens)
            .sum();
        detail.push(format!(
            "{}: used {used} of {} (debt {})",
            b.scope, b.checked_limit, b.debt
        ));
        if used > b.checked_limit + b.debt {
            v.push(format!(
                "{}: used {used} > limit {} + debt {}",
                b.scope, b.checked_limit, b.debt
            ));
        }
        if o.exact_estimates && b.debt > 0 {
            v.push(format!(
                "{}: debt {} with exact estimates and strict policies (over-admission)",
                b.scope, b.debt
            ));
        }
    }
    check(
        "BUDGET-BOUND",
        "usage of every budget U ≤ L + D, and D = 0 when every admission had a lease and estimates are exact (docs/design/quotas.md §4)",
        detail.join("; "),
        v,
    )
}

fn rate(o: &Observed) -> Check {
    let mut v = Vec::new();
    let mut detail = Vec::new();
    for spec in &o.rates {
        let mut times: Vec<u64> = o
            .ledger
            .iter()
            .filter(|r| in_scope(r, &spec.scope))
            .map(|r| r.started_at_ms.saturating_sub(o.start_wall_ms))
            .collect();
        times.sort_unstable();
        let r_per_ms = spec.per_minute as f64 / 60_000.0;
        let bound = (spec.per_minute + spec.burst) as f64
            + r_per_ms * (WINDOW_MS + TTL_MS + EPSILON_MS + o.clock_jump_ms) as f64;
        let bound = bound.floor() as usize;
        let (mut worst, mut worst_at) = (0usize, 0u64);
        let mut j = 0;
        for i in 0..times.len() {
            while j < times.len() && times[j] < times[i] + WINDOW_MS {
                j += 1;
            }
            if j - i > worst {
                (worst, worst_at) = (j - i, times[i]);
            }
        }
        detail.push(format!(
            "{}: at most {worst} admitted in a 60 s window (from {:.1} s), bound {bound} = B + r·(W + TTL + ε{})",
            spec.scope,
            worst_at as f64 / 1e3,
            if o.clock_jump_ms > 0 { " + clock jump" } else { "" }
        ));
        if worst > bound {
            v.push(format!(
                "{}: {worst} admitted in the 60 s window from {:.1} s > bound {bound}",
                spec.scope,
                worst_at as f64 / 1e3
            ));
        }
    }
    check(
        "RATE-BOUND",
        "admissions in any 60 s window ≤ B + r·(W + TTL + ε) (docs/design/quotas.md §4)",
        detail.join("; "),
        v,
    )
}

fn holds(o: &Observed) -> Check {
    use tollgate_types::lease::{
        LEASE_TTL_MS, REQUEST_DURATION_MAX_MS, RESERVE_TTL_MS, SETTLE_MARGIN_MS,
    };
    let horizon = LEASE_TTL_MS.max(RESERVE_TTL_MS) + REQUEST_DURATION_MAX_MS + SETTLE_MARGIN_MS;
    let mut v = Vec::new();
    let mut held_total = 0;
    for b in o.buckets.iter().filter(|b| b.volume) {
        held_total += b.held;
        let leased: u64 = b.lease_remaining.iter().sum();
        if b.held != leased {
            v.push(format!(
                "{} {}: held {} but live leases hold {leased} (a hold without a lease never returns)",
                b.scope, b.dimension, b.held
            ));
        }
        if !b.lease_remaining.is_empty() && b.release_at_max_ms > b.store_clock_ms + horizon {
            v.push(format!(
                "{} {}: a lease releases at {} ms, beyond the deadline {} ms",
                b.scope,
                b.dimension,
                b.release_at_max_ms,
                b.store_clock_ms + horizon
            ));
        }
    }
    check(
        "QL-2",
        "every hold belongs to a live lease released by its reconciliation deadline (TTL + T_req_max + margin)",
        format!("{held_total} units held at the end, all by leases with a deadline"),
        v,
    )
}

/// The tag the workload puts in an idempotent request's `user` field.
pub fn idem_tag(key: &str) -> String {
    format!("idem:{key}")
}

fn idempotency(o: &Observed) -> Check {
    let mut by_key: BTreeMap<&str, Vec<&Attempt>> = BTreeMap::new();
    for a in &o.attempts {
        if let Some(k) = a.idempotency_key.as_deref() {
            by_key.entry(k).or_default().push(a);
        }
    }
    // executions, counted where they happen: request ids the upstream served under the key's
    // tag and the gateway completed (a completed response is what the gateway stores to replay;
    // a failed one frees the key, so a retry after it runs again by design)
    let ledger = by_id(o);
    let mut executions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, s) in &o.oracle {
        let Some(key) = s.user.as_deref().and_then(|u| u.strip_prefix("idem:")) else {
            continue;
        };
        if ledger
            .get(id.as_str())
            .is_some_and(|r| r.status == "completed")
        {
            executions.entry(key).or_default().insert(id);
        }
    }
    let mut v = Vec::new();
    let (mut retried, mut replays) = (0, 0);
    for (k, tries) in &by_key {
        retried += (tries.len() > 1) as usize;
        replays += tries.iter().filter(|a| a.replayed).count();
        let executed = executions.get(k).map_or(0, BTreeSet::len);
        let (first, last) = (
            tries.iter().map(|a| a.sent_ms).min().unwrap_or(0),
            tries.iter().map(|a| a.ended_ms).max().unwrap_or(0),
        );
        let gw = tries[0].gateway;
        let restarted = o
            .gateway_restarts
            .iter()
            .any(|(g, at)| *g == gw && (first..=last).contains(at));
        if executed > 1 && !restarted {
            v.push(format!(
                "Idempotency-Key {k}: executed {executed} times on gateway {gw}: {:?}",
                executions.get(k)
            ));
        }
    }
    let n = v.len();
    check(
        "GW-4",
        "an Idempotency-Key repeated on the same gateway (no restart in between) executes upstream once",
        format!(
            "{} keys, {retried} sent more than once, {replays} replays, {n} executed twice",
            by_key.len()
        ),
        v,
    )
}

fn recovery(o: &Observed) -> Check {
    let v = match o.recovery_ms {
        Some(ms) if ms <= o.recovery_bound_ms => vec![],
        Some(ms) => vec![format!(
            "first write succeeded {ms} ms after heal, bound {} ms",
            o.recovery_bound_ms
        )],
        None => vec![format!(
            "no write succeeded within {} ms of heal",
            o.recovery_bound_ms
        )],
    };
    check(
        "RECOVERY",
        "a write succeeds within the stated time after the faults heal",
        format!(
            "first write {} ms after heal (bound {} ms)",
            o.recovery_ms.map_or("-".into(), |m| m.to_string()),
            o.recovery_bound_ms
        ),
        v,
    )
}

fn crashes(o: &Observed) -> Check {
    check(
        "NO-CRASH",
        "no process exited on its own (an invariant assertion in apply stops a replica)",
        format!("{} unexpected exits", o.crashed.len()),
        o.crashed.clone(),
    )
}
