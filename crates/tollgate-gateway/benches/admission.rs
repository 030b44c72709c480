//! Time per local admission decision: `Quota::try_admit` over the limits that apply to a request
//! (lock the org's cell once, check all, take all) followed by its settlement, with leases that
//! cover the load — the path every request takes when no refresh is needed. Run:
//! `cargo bench -p tollgate-gateway --bench admission`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

/// As in the `tollgate` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};
use tollgate_gateway::phases::admit::{Ticket, Usage};
use tollgate_gateway::quota::{Quota, QuotaSettings};
use tollgate_types::amount::Price;
use tollgate_types::config::{ApiKeyRecord, GatewayConfig, KeyStatus};
use tollgate_types::lease::{Grant, LeaseMode};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::secret::ClusterSecret;
use tollgate_types::{KeyId, OrgId, ProjectId};

fn limit(dimension: Dimension) -> Limit {
    Limit {
        scope: Scope::Org {
            org: OrgId::parse("acme").expect("org"),
        },
        model: None,
        dimension,
        limit: 1 << 50,
        burst: 0,
        fail_policy: FailPolicy::Strict,
        shadow: false,
    }
}

/// A quota with `dims` limits on one key, each holding a lease far larger than the bench uses.
fn setup(dims: &[Dimension]) -> (Quota, tollgate_gateway::quota::AppliesList, Vec<u64>) {
    let secret = ClusterSecret::generate();
    let key = ApiKeyRecord {
        id: KeyId::parse("live_bench").expect("key"),
        org: OrgId::parse("acme").expect("org"),
        project: ProjectId::parse("p").expect("project"),
        name: "bench".into(),
        digest: secret.digest("x"),
        status: KeyStatus::Active,
        allowed_models: vec![],
        scopes: vec![],
        expires_at_ms: None,
        created_at_ms: 0,
    };
    let cfg = GatewayConfig {
        version: 1,
        secret,
        orgs: vec![],
        projects: vec![],
        keys: vec![key],
        models: vec![],
        limits: dims.iter().map(|d| limit(*d)).collect(),
    };
    let q = Quota::new(QuotaSettings::default(), None);
    q.install(&cfg);
    let now = Instant::now();
    for (i, b) in q.buckets.lock().expect("buckets").values().enumerate() {
        let grant = Grant {
            limit: b.key.clone(),
            lease_id: i as u64 + 1,
            granted: 1 << 50,
            ttl_ms: 3_600_000,
            mode: LeaseMode::Lease,
            available: 0,
            reset_ms: 0,
            reserve: 0,
            period: 0,
        };
        b.lock().apply_grant(&grant, now, 0, now, true);
    }
    let applies = q.plan_for("live_bench", None);
    let amounts = applies.iter().map(|_| 120).collect();
    (q, applies, amounts)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    g.measurement_time(Duration::from_secs(5));
    let usage = Usage {
        prompt_tokens: 20,
        completion_tokens: 100,
        estimated: false,
    };
    for (name, dims) in [
        ("1_limit", vec![Dimension::RequestsPerMinute]),
        (
            "3_limits",
            vec![
                Dimension::RequestsPerMinute,
                Dimension::InputTokensPerMinute,
                Dimension::TokenBudget {
                    period: Period::Month,
                },
            ],
        ),
    ] {
        let (q, applies, amounts) = setup(&dims);
        // the decision alone, given the time (the request path reuses the clock read of the
        // phase before); the leases are far larger than what the run takes
        let now = Instant::now();
        g.bench_function(format!("decide_{name}"), |b| {
            b.iter(|| {
                black_box(
                    q.try_admit(black_box(&applies), black_box(&amounts), true, now)
                        .expect("admitted"),
                )
            })
        });
        // decision plus settlement to the actual usage (refund)
        g.bench_function(format!("decide_and_settle_{name}"), |b| {
            b.iter(|| {
                let (holds, headers) = q
                    .try_admit(
                        black_box(&applies),
                        black_box(&amounts),
                        true,
                        Instant::now(),
                    )
                    .expect("admitted");
                let mut t = Ticket {
                    headers,
                    holds,
                    applies: applies.clone(),
                    price: Price::default(),
                    clamp_output: None,
                    unbacked: false,
                };
                q.settle(&mut t, &usage);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
