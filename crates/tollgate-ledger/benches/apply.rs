//! Criterion benchmarks of `State::apply`: one usage record, a batch of 100, and a lease acquire,
//! on a state with an org, a project, a key and three limits that every record settles into.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tollgate_ledger::testkit::{self, id};
use tollgate_ledger::{Actor, Command, Request, State};
use tollgate_types::lease::Want;
use tollgate_types::limits::{Dimension, FailPolicy, Limit, LimitKey, Period, Scope};
use tollgate_types::secret::ClusterSecret;
use tollgate_types::usage::UsageRecord;

fn req(n: &mut u64, command: Command) -> Request {
    *n += 1;
    Request {
        id: format!("r{n}"),
        ts_ms: 1_700_000_000_000 + *n,
        actor: Actor::System,
        command,
    }
}

fn limit(dimension: Dimension, value: u64) -> Limit {
    Limit {
        scope: Scope::Org { org: id("acme") },
        model: None,
        dimension,
        limit: value,
        burst: 0,
        fail_policy: FailPolicy::Strict,
        shadow: false,
    }
}

fn setup() -> (State, u64) {
    let mut s = State::default();
    let mut n = 0;
    let mut cmds = testkit::tenant(&ClusterSecret::generate());
    cmds.extend([
        Command::PutLimit(limit(Dimension::RequestsPerMinute, u64::MAX >> 12)),
        Command::PutLimit(limit(
            Dimension::TokenBudget {
                period: Period::Month,
            },
            u64::MAX >> 12,
        )),
        Command::PutLimit(limit(
            Dimension::MoneyBudget {
                period: Period::Month,
            },
            u64::MAX >> 12,
        )),
    ]);
    for c in cmds {
        let r = req(&mut n, c);
        s.apply(&r).expect("setup applies");
    }
    (s, n)
}

fn record(i: u64) -> UsageRecord {
    UsageRecord {
        cost_micros: 250,
        ..testkit::usage(&format!("req-{i}"), 120, 380)
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    for batch in [1u64, 100] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("record_usage_batch_{batch}"), |b| {
            let (state, mut n) = setup();
            let mut state = state;
            let mut next = 0u64;
            b.iter_batched(
                || {
                    let records = (0..batch).map(|_| {
                        next += 1;
                        record(next)
                    });
                    req(
                        &mut n,
                        Command::RecordUsage {
                            records: records.collect(),
                        },
                    )
                },
                |r| black_box(state.apply(&r).expect("applies")),
                BatchSize::SmallInput,
            );
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("acquire_3_wants", |b| {
        let (mut state, mut n) = setup();
        let wants: Vec<Want> = [
            Dimension::RequestsPerMinute,
            Dimension::TokenBudget {
                period: Period::Month,
            },
            Dimension::MoneyBudget {
                period: Period::Month,
            },
        ]
        .into_iter()
        .map(|dimension| Want {
            limit: LimitKey {
                scope: Scope::Org { org: id("acme") },
                model: None,
                dimension,
            },
            want: 10,
            unit: 1,
            overrun: 0,
        })
        .collect();
        b.iter_batched(
            || {
                req(
                    &mut n,
                    Command::Acquire {
                        gateway: "gw1".into(),
                        wants: wants.clone(),
                        returns: vec![],
                        usage: vec![],
                    },
                )
            },
            |r| black_box(state.apply(&r).expect("applies")),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
