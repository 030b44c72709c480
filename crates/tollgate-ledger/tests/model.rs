//! Property tests of the state machine against a simple reference model: random sequences of
//! config, lease, return and usage commands, with duplicate records, conflicting bodies, retried
//! request ids and time jumps. After every step: QL-1, LG-1 and the audit chain hold, settled
//! usage per bucket equals what the model summed, and a retried request id returns its first outcome.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tollgate_ledger::lease::bucket_period;
use tollgate_ledger::testkit::{self, id};
use tollgate_ledger::{Actor, Command, Outcome, Request, State, UsageAck};
use tollgate_types::config::{AdminTokenRecord, Org, OrgStatus};
use tollgate_types::lease::{Return, Want};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, LimitKey, Period, Scope};
use tollgate_types::secret::{ClusterSecret, Role};
use tollgate_types::usage::UsageRecord;
use tollgate_types::{OrgId, RequestId};

struct Fixture {
    state: State,
    n: u64,
    ts: u64,
}

impl Fixture {
    fn new() -> Self {
        let mut f = Fixture {
            state: State::default(),
            n: 0,
            ts: 1_700_000_000_000,
        };
        for command in testkit::tenant(&ClusterSecret::generate()) {
            f.run(command);
        }
        f
    }

    fn request(&mut self, command: Command) -> Request {
        self.n += 1;
        Request {
            id: format!("req-{}", self.n),
            ts_ms: self.ts,
            actor: Actor::System,
            command,
        }
    }

    fn run(&mut self, command: Command) -> Outcome {
        let req = self.request(command);
        self.state.apply(&req).expect("no invariant violation")
    }
}

fn key(dimension: Dimension) -> LimitKey {
    LimitKey {
        scope: Scope::Org { org: id("acme") },
        model: None,
        dimension,
    }
}

/// The three kinds of bucket the lease steps exercise.
const DIMS: [Dimension; 3] = [
    Dimension::TokenBudget {
        period: Period::Total,
    },
    Dimension::RequestsPerMinute,
    Dimension::ConcurrentRequests,
];

fn budget_key() -> LimitKey {
    key(DIMS[0])
}

fn record(rid: u8, tokens: u64, gateway: u8) -> UsageRecord {
    UsageRecord {
        gateway: format!("gw{gateway}").into(),
        cost_micros: tokens,
        ..testkit::usage(&format!("r{rid}"), tokens / 2, tokens - tokens / 2)
    }
}

#[derive(Debug, Clone)]
enum Step {
    Acquire {
        gateway: u8,
        dim: usize,
        want: u64,
        overrun: u64,
    },
    Return {
        lease: u8,
        unused: u64,
        gateway: u8,
    },
    /// Usage shipped in an `Acquire` (drawing on that holder's leases) or alone.
    Usage {
        rid: u8,
        tokens: u64,
        gateway: u8,
        in_acquire: bool,
    },
    SetLimit {
        dim: usize,
        limit: u64,
        reserve: u64,
    },
    Advance {
        ms: u64,
    },
    RetryLast,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3, 0usize..3, 0u64..400, 0u64..3).prop_map(|(gateway, dim, want, overrun)| {
            Step::Acquire { gateway, dim, want, overrun }
        }),
        2 => (1u8..8, 0u64..200, 0u8..3).prop_map(|(lease, unused, gateway)| Step::Return {
            lease,
            unused,
            gateway
        }),
        3 => (0u8..40, 0u64..300, 0u8..3, any::<bool>()).prop_map(|(rid, tokens, gateway, in_acquire)| {
            Step::Usage { rid, tokens, gateway, in_acquire }
        }),
        1 => (0usize..3, 0u64..3000, 0u64..50).prop_map(|(dim, limit, reserve)| Step::SetLimit {
            dim,
            limit,
            reserve
        }),
        2 => prop_oneof![0u64..20_000, 600_000u64..2_000_000].prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::RetryLast),
    ]
}

fn limit(dim: usize, limit: u64, reserve: u64) -> Limit {
    Limit {
        scope: Scope::Org { org: id("acme") },
        model: None,
        dimension: DIMS[dim],
        limit,
        burst: 0,
        fail_policy: match reserve {
            0 => FailPolicy::Strict,
            r => FailPolicy::Reserve {
                per_gateway: r.min(limit),
            },
        },
        shadow: false,
    }
}

fn command_for(s: &Step) -> Option<Command> {
    let gw = |g: &u8| format!("gw{g}");
    Some(match s {
        Step::Acquire {
            gateway,
            dim,
            want,
            overrun,
        } => Command::Acquire {
            gateway: gw(gateway),
            wants: vec![Want {
                limit: key(DIMS[*dim]),
                want: *want,
                unit: 10,
                overrun: *overrun,
            }],
            returns: vec![],
            usage: vec![],
        },
        Step::Return {
            lease,
            unused,
            gateway,
        } => Command::Acquire {
            gateway: gw(gateway),
            wants: vec![],
            returns: vec![Return {
                lease_id: u64::from(*lease),
                unused: *unused,
            }],
            usage: vec![],
        },
        Step::Usage {
            rid,
            tokens,
            gateway,
            in_acquire: true,
        } => Command::Acquire {
            gateway: gw(gateway),
            wants: vec![],
            returns: vec![],
            usage: vec![record(*rid, *tokens, *gateway)],
        },
        Step::Usage {
            rid,
            tokens,
            gateway,
            in_acquire: false,
        } => Command::RecordUsage {
            records: vec![record(*rid, *tokens, *gateway)],
        },
        Step::SetLimit {
            dim,
            limit: l,
            reserve,
        } => Command::PutLimit(limit(*dim, *l, *reserve)),
        Step::Advance { .. } | Step::RetryLast => return None,
    })
}

/// What a retry of a request returns: the same outcome, except that usage records are
/// deduplicated per record (an accepted record comes back as a duplicate with the same seq).
fn retry_outcome(first: &Outcome) -> Outcome {
    let dup = |acks: &[UsageAck]| -> Vec<UsageAck> {
        acks.iter()
            .map(|a| match a {
                UsageAck::Accepted { seq } => UsageAck::Duplicate { seq: *seq },
                other => other.clone(),
            })
            .collect()
    };
    match first {
        Outcome::Usage { acks } => Outcome::Usage { acks: dup(acks) },
        other => other.clone(),
    }
}

/// The ack a usage step got, wherever it travelled.
fn usage_ack(out: &Outcome) -> Option<&UsageAck> {
    match out {
        Outcome::Usage { acks } | Outcome::Leases { acks, .. } => acks.first(),
        _ => None,
    }
}

/// I8 (no leaked holds): every bucket's hold is exactly what its live leases still hold.
fn holds_match_leases(s: &State) -> Result<(), String> {
    for (bid, b) in &s.buckets {
        let leased: u64 = s
            .leases
            .by_id
            .values()
            .filter(|l| &l.bucket == bid)
            .map(|l| l.remaining())
            .sum();
        if leased != b.held {
            return Err(format!(
                "bucket {bid:?}: held {} but leases hold {leased}",
                b.held
            ));
        }
    }
    Ok(())
}

/// The rate bound at the store: everything withdrawn from a rate bucket since it was created
/// is at most its depth plus the refill, plus what came back by returns.
#[derive(Default)]
struct RateBook {
    created_at: Option<u64>,
    withdrawn: u64,
    returned: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_match_the_model(steps in proptest::collection::vec(step(), 1..120)) {
        let mut f = Fixture::new();
        f.run(Command::PutLimit(limit(0, 1000, 0)));
        f.run(Command::PutLimit(limit(1, 600, 0)));
        f.run(Command::PutLimit(limit(2, 4, 0)));
        // the reference model: first accepted body per request id
        let mut accepted: BTreeMap<String, (u64, u8)> = BTreeMap::new();
        let mut rate = RateBook::default();
        let mut last: Option<(Request, Outcome)> = None;
        for s in &steps {
            match s {
                Step::Advance { ms } => { f.ts += ms; continue; }
                Step::RetryLast => {
                    if let Some((req, first)) = &last {
                        let again = f.state.apply(req).expect("no invariant violation");
                        prop_assert_eq!(&again, &retry_outcome(first), "a retry returns its first outcome");
                    }
                    continue;
                }
                // the rate book cannot follow depth changes; keep the rate limit fixed
                Step::SetLimit { dim: 1, .. } => continue,
                _ => {}
            }
            let cmd = command_for(s).expect("command step");
            let req = f.request(cmd);
            let rate_before = f.state.buckets.get(&(key(DIMS[1]), 0)).map(|b| b.held);
            let out = f.state.apply(&req).expect("no invariant violation");
            if let Step::Usage { rid, tokens, gateway, .. } = s
                && let Some(ack) = usage_ack(&out)
            {
                let body = (*tokens, *gateway);
                let rid = format!("r{rid}");
                match (ack, accepted.get(&rid)) {
                    (UsageAck::Accepted { .. }, None) => { accepted.insert(rid, body); }
                    (UsageAck::Duplicate { .. }, Some(b)) => prop_assert_eq!(b, &body),
                    (UsageAck::Conflict { .. }, Some(b)) => prop_assert_ne!(b, &body),
                    (ack, prev) => prop_assert!(false, "ack {:?} with model {:?}", ack, prev),
                }
            }
            if let (Step::Acquire { dim: 1, .. }, Outcome::Leases { grants, .. }) = (s, &out) {
                rate.created_at.get_or_insert(f.ts);
                rate.withdrawn += grants.iter().map(|g| g.granted).sum::<u64>();
                let held_after = f.state.buckets.get(&(key(DIMS[1]), 0)).map_or(0, |b| b.held);
                rate.withdrawn += held_after.saturating_sub(rate_before.unwrap_or(0));
            }
            if let (Step::Return { .. }, Some(before)) = (s, rate_before) {
                let after = f.state.buckets.get(&(key(DIMS[1]), 0)).map_or(0, |b| b.held);
                rate.returned += before.saturating_sub(after);
            }
            if let Some(t0) = rate.created_at {
                let bound = 600 + 600 * (f.ts - t0) / 60_000 + rate.returned;
                prop_assert!(rate.withdrawn <= bound, "rate: withdrew {} > bound {}", rate.withdrawn, bound);
            }
            last = Some((req, out));
            prop_assert!(f.state.check_all_invariants().is_ok(), "{:?}", f.state.check_all_invariants());
            prop_assert!(holds_match_leases(&f.state).is_ok(), "{:?}", holds_match_leases(&f.state));
        }
        // LG-1 and exactness: the ledger is exactly the accepted records
        let entries = f.state.ledger.recent();
        let ledger_total: u64 = entries.iter().map(|e| e.record.total_tokens()).sum();
        prop_assert_eq!(ledger_total, accepted.values().map(|b| b.0).sum::<u64>());
        prop_assert_eq!(f.state.ledger.len(), accepted.len() as u64);
        prop_assert_eq!(entries.len(), accepted.len(), "nothing took the entries");
        // the chain head commits to exactly these entries
        let chained = tollgate_ledger::ledger::chain_over(0, [0; 32], entries.iter());
        prop_assert_eq!(chained, Ok((f.state.ledger.len(), f.state.ledger.head())));
        let bucket = f.state.buckets.get(&(budget_key(), bucket_period(budget_key().dimension, f.ts)));
        prop_assert_eq!(bucket.map_or(0, |b| b.settled), ledger_total);
        // dead gateways: once every lease is past its release time, nothing is held any more
        f.ts += 2_000_000;
        f.run(Command::Acquire { gateway: "gw9".into(), wants: vec![], returns: vec![], usage: vec![] });
        prop_assert!(f.state.leases.by_id.is_empty());
        for b in f.state.buckets.values() {
            prop_assert_eq!(b.held, 0);
        }
    }

    #[test]
    fn replicas_that_apply_the_same_log_agree(steps in proptest::collection::vec(step(), 1..60)) {
        let mut a = Fixture::new();
        let mut log = Vec::new();
        for s in &steps {
            if let Step::Advance { ms } = s { a.ts += ms; }
            if let Some(cmd) = command_for(s) { log.push(a.request(cmd)); }
        }
        let mut b = State::default();
        let mut c = a.state.clone();
        for req in &log {
            let x = a.state.apply(req).expect("ok");
            let y = c.apply(req).expect("ok");
            prop_assert_eq!(x, y);
        }
        prop_assert_eq!(&a.state, &c);
        // an empty replica diverges from a bootstrapped one: the check can fail
        for req in &log { b.apply(req).expect("ok"); }
        prop_assert_ne!(&a.state, &b);
    }
}

fn grants(out: Outcome) -> Vec<tollgate_types::lease::Grant> {
    match out {
        Outcome::Leases { grants, .. } => grants,
        other => panic!("expected grants, got {other:?}"),
    }
}

fn acquire(gateway: u8, dim: usize, want: u64) -> Command {
    command_for(&Step::Acquire {
        gateway,
        dim,
        want,
        overrun: 0,
    })
    .expect("command")
}

#[test]
fn holds_never_exceed_the_limit_and_debt_records_overuse() {
    let mut f = Fixture::new();
    f.run(Command::PutLimit(limit(0, 100, 0)));
    assert_eq!(grants(f.run(acquire(0, 0, 80)))[0].granted, 80);
    let g = grants(f.run(acquire(1, 0, 80)));
    assert_eq!(g[0].granted, 20, "only what is left is granted");
    assert_eq!(g[0].available, 0);
    // gw0 uses 90 on an 80 lease: 10 over, recorded as debt
    f.run(
        command_for(&Step::Usage {
            rid: 1,
            tokens: 90,
            gateway: 0,
            in_acquire: true,
        })
        .expect("command"),
    );
    let b = f.state.buckets.values().next().expect("bucket");
    assert_eq!((b.settled, b.held, b.debt), (90, 20, 10));
    f.state
        .check_all_invariants()
        .expect("QL-1 holds with debt");
}

#[test]
fn water_filling_serves_small_wants_first_and_never_shrinks_a_lease() {
    let mut f = Fixture::new();
    f.run(Command::PutLimit(limit(0, 1000, 0)));
    // three gateways want 900, 50, 50: the busy one cannot starve the others
    f.run(acquire(1, 0, 0));
    f.run(acquire(2, 0, 0));
    let busy = grants(f.run(acquire(0, 0, 900)));
    assert_eq!(busy[0].granted, 900, "the others want nothing yet");
    assert_eq!(grants(f.run(acquire(1, 0, 50)))[0].granted, 50);
    assert_eq!(grants(f.run(acquire(2, 0, 50)))[0].granted, 50);
    // the bucket is spent; gw0's lease is still 900 (never shrunk), a new want gets nothing
    // but still names (and renews) the lease
    let again = grants(f.run(acquire(0, 0, 100)));
    assert_eq!((again[0].granted, again[0].lease_id), (0, busy[0].lease_id));
    let lease = f.state.leases.by_id.get(&busy[0].lease_id).expect("lease");
    assert_eq!(lease.remaining(), 900);
}

#[test]
fn nearly_exhausted_budgets_switch_to_pass_through() {
    let mut f = Fixture::new();
    f.run(Command::PutLimit(limit(0, 100, 0)));
    // unit 10, one active gateway: below 4 x 10 left, grants are exact
    assert_eq!(
        grants(f.run(acquire(0, 0, 50)))[0].mode,
        tollgate_types::lease::LeaseMode::Lease
    );
    let g = grants(f.run(acquire(0, 0, 20)));
    assert_eq!(g[0].mode, tollgate_types::lease::LeaseMode::PassThrough);
}

#[test]
fn rate_buckets_refill_with_store_time_and_reserves_are_held() {
    let mut f = Fixture::new();
    f.run(Command::PutLimit(limit(1, 600, 0)));
    let g = grants(f.run(acquire(0, 1, 1000)));
    assert_eq!(g[0].granted, 600, "a new bucket starts full");
    assert_eq!(grants(f.run(acquire(0, 1, 1000)))[0].granted, 0);
    f.ts += 1_000;
    assert_eq!(
        grants(f.run(acquire(0, 1, 1000)))[0].granted,
        10,
        "600/min = 10/s"
    );
    // fail policy reserve: held once per lease, counted in the bucket
    f.run(Command::PutLimit(limit(0, 100, 30)));
    let g = grants(f.run(acquire(0, 0, 10)));
    assert_eq!((g[0].granted, g[0].reserve), (10, 30));
    let g = grants(f.run(acquire(0, 0, 10)));
    assert_eq!(
        (g[0].granted, g[0].reserve),
        (10, 30),
        "the reserve is granted once"
    );
    let b = f.state.buckets.get(&(budget_key(), 0)).expect("bucket");
    assert_eq!(b.held, 50);
}

#[test]
fn unauthorized_and_revoked_tokens_are_refused_in_apply() {
    let mut f = Fixture::new();
    let secret = f.state.secret.clone().expect("bootstrapped");
    let viewer = AdminTokenRecord {
        id: id("admin_viewer"),
        name: "v".into(),
        role: Role::Viewer,
        digest: secret.digest("v-secret"),
        revoked: false,
        created_at_ms: 0,
    };
    f.run(Command::CreateAdminToken(viewer));
    let as_viewer = |f: &mut Fixture, presented: &str| {
        let mut req = f.request(Command::DeleteOrg { id: id("acme") });
        req.actor = Actor::Admin {
            token_id: id("admin_viewer"),
            digest: secret.digest(presented),
        };
        f.state.apply(&req).expect("ok")
    };
    let out = as_viewer(&mut f, "v-secret");
    assert_eq!(
        out.error().map(|e| e.code),
        Some(tollgate_types::ErrorCode::PermissionDenied)
    );
    let out = as_viewer(&mut f, "wrong");
    assert_eq!(
        out.error().map(|e| e.code),
        Some(tollgate_types::ErrorCode::InvalidApiKey)
    );
    assert!(f.state.orgs.contains_key(&id::<OrgId>("acme")));
}

#[test]
fn refusals_are_not_remembered_and_repeats_answer_only_authorized_callers() {
    let mut f = Fixture::new();
    let secret = f.state.secret.clone().expect("bootstrapped");
    let op = AdminTokenRecord {
        id: id("admin_op"),
        name: "op".into(),
        role: Role::Operator,
        digest: secret.digest("op-secret"),
        revoked: false,
        created_at_ms: 0,
    };
    f.run(Command::CreateAdminToken(op));
    let create = Command::CreateOrg(Org {
        id: id("beta"),
        name: "B".into(),
        status: OrgStatus::Active,
        tier: 0,
    });
    let mut req = f.request(create);
    // refused with a wrong secret: not cached under the id
    req.actor = Actor::Admin {
        token_id: id("admin_op"),
        digest: secret.digest("wrong"),
    };
    let refused = f.state.apply(&req).expect("ok");
    assert_eq!(
        refused.error().map(|e| e.code),
        Some(tollgate_types::ErrorCode::InvalidApiKey)
    );
    // the same id with the right secret runs
    req.actor = Actor::Admin {
        token_id: id("admin_op"),
        digest: secret.digest("op-secret"),
    };
    let done = f.state.apply(&req).expect("ok");
    assert!(matches!(done, Outcome::Done { .. }), "{done:?}");
    assert!(f.state.orgs.contains_key(&id::<OrgId>("beta")));
    // after revocation, a repeat of the id is refused, not answered from the dedup table
    f.run(Command::RevokeAdminToken { id: id("admin_op") });
    let repeat = f.state.apply(&req).expect("ok");
    assert_eq!(
        repeat.error().map(|e| e.code),
        Some(tollgate_types::ErrorCode::InvalidApiKey)
    );
}

#[test]
fn past_period_buckets_without_holds_are_pruned() {
    let mut f = Fixture::new();
    let daily = Limit {
        dimension: Dimension::TokenBudget {
            period: Period::Day,
        },
        ..limit(0, 1000, 0)
    };
    f.run(Command::PutLimit(daily));
    f.run(Command::RecordUsage {
        records: vec![record(1, 10, 0)],
    });
    let minutes = |s: &State| s.buckets.keys().map(|(_, p)| *p).collect::<Vec<_>>();
    let first = minutes(&f.state);
    assert_eq!(first.len(), 1);
    f.ts += 2 * 86_400_000;
    f.run(Command::RecordUsage {
        records: vec![record(2, 10, 0)],
    });
    let later = minutes(&f.state);
    assert_eq!(later.len(), 1, "the old day's bucket is gone: {later:?}");
    assert_ne!(later, first);
    assert_eq!(f.state.ledger.len(), 2, "the ledger keeps the history");
}

/// A gateway's record: a UUIDv7 request id minted at `at_ms` (as the gateway does).
fn v7_record(at_ms: u64, n: u16, tokens: u64) -> UsageRecord {
    let rid = format!(
        "{:08x}-{:04x}-7000-8000-{:012x}",
        at_ms >> 16,
        at_ms & 0xffff,
        n
    );
    UsageRecord {
        request_id: id::<RequestId>(&rid),
        started_at_ms: at_ms,
        ended_at_ms: at_ms,
        ..record(0, tokens, 0)
    }
}

#[test]
fn the_usage_index_forgets_ids_past_the_retention_and_refuses_them_as_late() {
    use tollgate_ledger::usage::{USAGE_DEDUP_RETENTION_MS, id_time_ms};
    let mut f = Fixture::new();
    let r = v7_record(f.ts, 1, 10);
    assert_eq!(id_time_ms(r.request_id.as_str()), Some(f.ts));
    assert_eq!(id_time_ms("r1"), None, "other ids carry no time");
    let send = |f: &mut Fixture, r: &UsageRecord| {
        usage_ack(&f.run(Command::RecordUsage {
            records: vec![r.clone()],
        }))
        .cloned()
    };
    assert_eq!(send(&mut f, &r), Some(UsageAck::Accepted { seq: 1 }));
    let old = v7_record(f.ts, 2, 10);
    // inside the retention: remembered, a repeat is a duplicate
    f.ts += USAGE_DEDUP_RETENTION_MS - 1;
    assert_eq!(send(&mut f, &r), Some(UsageAck::Duplicate { seq: 1 }));
    // past it: forgotten (the index is bounded), and a repeat — even with another body, or a
    // record never seen — is refused as late instead of counted (again)
    f.ts += 2;
    assert_eq!(f.state.usage_index.len(), 1);
    let closed_before_ms = f.ts - USAGE_DEDUP_RETENTION_MS;
    let late = Some(UsageAck::Late { closed_before_ms });
    assert_eq!(send(&mut f, &r), late);
    assert!(f.state.usage_index.is_empty(), "pruned");
    let changed = UsageRecord {
        prompt_tokens: 99,
        ..r.clone()
    };
    assert_eq!(send(&mut f, &changed), late);
    assert_eq!(send(&mut f, &old), late);
    assert_eq!(f.state.ledger.len(), 1, "nothing appended twice");
    f.state.check_all_invariants().expect("invariants");
    // ids without a time are remembered as before
    let plain = record(7, 10, 0);
    assert_eq!(send(&mut f, &plain), Some(UsageAck::Accepted { seq: 2 }));
    assert_eq!(send(&mut f, &plain), Some(UsageAck::Duplicate { seq: 2 }));
}

#[test]
fn usage_settles_into_the_period_it_was_admitted_in() {
    let mut f = Fixture::new();
    let daily = Limit {
        dimension: Dimension::TokenBudget {
            period: Period::Day,
        },
        ..limit(0, 1000, 0)
    };
    f.run(Command::PutLimit(daily.clone()));
    let day = |t: u64| bucket_period(daily.dimension, t);
    // admitted just before midnight, shipped just after: it counts for the day it ran in
    let midnight = (f.ts / 86_400_000 + 1) * 86_400_000;
    let r = v7_record(midnight - 1_000, 1, 10);
    f.ts = midnight + 2_000;
    f.run(Command::RecordUsage { records: vec![r] });
    let settled = |s: &State, p: u64| s.buckets.get(&(daily.key(), p)).map_or(0, |b| b.settled);
    assert_eq!(settled(&f.state, day(midnight - 1)), 10);
    assert_eq!(settled(&f.state, day(midnight)), 0);
    // a gateway clock ahead of the store's never books into a future period
    let ahead = v7_record(midnight + 3 * 86_400_000, 2, 5);
    f.run(Command::RecordUsage {
        records: vec![ahead],
    });
    assert_eq!(settled(&f.state, day(f.ts)), 5);
}

#[test]
fn the_ledger_chain_survives_the_store_taking_entries_and_catches_any_change() {
    use tollgate_ledger::ledger::{ChainError, chain_over};
    let mut f = Fixture::new();
    f.run(Command::RecordUsage {
        records: vec![record(1, 10, 0), record(2, 20, 0)],
    });
    // the store takes what was appended into its archive; later entries chain on
    let taken: Vec<_> = f.state.ledger.take_recent().into_iter().collect();
    assert!(f.state.ledger.recent().is_empty());
    let mid = chain_over(0, [0; 32], taken.iter()).expect("consecutive");
    assert_eq!(mid.0, 2);
    f.run(Command::RecordUsage {
        records: vec![record(3, 30, 0), record(1, 10, 0)],
    });
    assert_eq!(f.state.ledger.len(), 3, "the repeat of r1 is a duplicate");
    let rest: Vec<_> = f.state.ledger.recent().iter().cloned().collect();
    let all: Vec<_> = taken.iter().chain(&rest).cloned().collect();
    let head = (f.state.ledger.len(), f.state.ledger.head());
    assert_eq!(chain_over(mid.0, mid.1, rest.iter()), Ok(head));
    assert_eq!(chain_over(0, [0; 32], all.iter()), Ok(head));
    // any changed field, a reordering or a gap gives another head or an error
    let mut changed = all.clone();
    changed[1].record.completion_tokens += 1;
    assert_ne!(chain_over(0, [0; 32], changed.iter()), Ok(head));
    let mut stamped = all.clone();
    stamped[0].ts_ms += 1;
    assert_ne!(chain_over(0, [0; 32], stamped.iter()), Ok(head));
    assert_eq!(
        chain_over(0, [0; 32], [&all[0], &all[2]]),
        Err(ChainError::Gap { after: 1, found: 3 })
    );
    // the dedup index still tells a conflicting body apart without the entry at hand
    let conflicting = UsageRecord {
        prompt_tokens: 999,
        ..record(1, 10, 0)
    };
    let out = f.run(Command::RecordUsage {
        records: vec![conflicting],
    });
    assert_eq!(usage_ack(&out), Some(&UsageAck::Conflict { seq: 1 }));
}

/// A batch (the store's proposal batching) is exactly its requests applied one by one: the same
/// outcomes in order and the same state, retries and duplicates included; nesting is refused.
#[test]
fn a_batch_applies_like_its_requests_one_by_one() {
    let setup = testkit::tenant(&ClusterSecret::generate());
    let request = |n: u64, command: Command| Request {
        id: format!("req-{n}"),
        ts_ms: 1_700_000_000_000 + n,
        actor: Actor::System,
        command,
    };
    let usage = |ids: &[u8]| Command::RecordUsage {
        records: ids
            .iter()
            .map(|&i| record(i, 10 * u64::from(i), 0))
            .collect(),
    };
    let beta = request(
        11,
        Command::CreateOrg(Org {
            id: id("beta"),
            name: "Beta".into(),
            status: OrgStatus::Active,
            tier: 0,
        }),
    );
    // the repeat of request 11 answers with its first outcome (RQ-1), r2 is a duplicate (LG-1)
    let work = vec![
        request(10, usage(&[1, 2])),
        beta.clone(),
        request(12, usage(&[2, 3])),
        beta,
    ];
    let fresh = || {
        let mut s = State::default();
        for (n, c) in setup.iter().enumerate() {
            s.apply(&request(n as u64 + 1, c.clone())).expect("setup");
        }
        s
    };
    let mut one_by_one = fresh();
    let singles: Vec<Outcome> = work
        .iter()
        .map(|r| one_by_one.apply(r).expect("applies"))
        .collect();
    let mut batched = fresh();
    let nested = request(14, Command::Batch(vec![work[0].clone()]));
    let mut with_nested = work.clone();
    with_nested.push(nested);
    let out = batched
        .apply(&request(13, Command::Batch(with_nested)))
        .expect("applies");
    let Outcome::Batch(outs) = out else {
        panic!("a batch answers with one outcome per request: {out:?}")
    };
    assert_eq!(outs[..4], singles[..]);
    assert!(
        matches!(&outs[4], Outcome::Error(e) if e.message.contains("batch")),
        "{:?}",
        outs[4]
    );
    assert_eq!(batched, one_by_one, "the same state");
    assert_eq!(batched.ledger.len(), 3, "r2 once");
}

/// A restarted gateway (a new incarnation, `gw0:b`, of the same id) ships what its previous
/// incarnation `gw0:a` admitted, replayed from its journal: those records draw on `gw0:a`'s lease,
/// whose hold was taken for them, instead of counting twice (held there, settled here) as debt.
/// Another gateway's lease is never drawn on.
#[test]
fn records_a_restarted_gateway_replays_draw_on_its_earlier_incarnations_leases() {
    let mut f = Fixture::new();
    f.run(Command::PutLimit(limit(0, 100, 0)));
    let lease = |gateway: &str, want: u64| Command::Acquire {
        gateway: gateway.into(),
        wants: vec![Want {
            limit: budget_key(),
            want,
            unit: 10,
            overrun: 0,
        }],
        returns: vec![],
        usage: vec![],
    };
    assert_eq!(grants(f.run(lease("gw0:a", 70)))[0].granted, 70);
    assert_eq!(grants(f.run(lease("gw01:x", 30)))[0].granted, 30);
    // gw0 restarts: its new incarnation ships 60 units the first one admitted
    let replayed = |rid: u8, tokens: u64| Command::Acquire {
        gateway: "gw0:b".into(),
        wants: vec![],
        returns: vec![],
        usage: vec![record(rid, tokens, 0)],
    };
    f.run(replayed(1, 60));
    let b = f.state.buckets.values().next().expect("bucket");
    assert_eq!((b.settled, b.held, b.debt), (60, 40, 0));
    let left = |holder: &str| {
        f.state
            .leases
            .by_id
            .values()
            .find(|l| l.holder == holder)
            .map(|l| l.remaining())
    };
    assert_eq!(left("gw0:a"), Some(10));
    assert_eq!(
        left("gw01:x"),
        Some(30),
        "another gateway's lease is untouched"
    );
    // beyond what the earlier incarnation holds, the usage is over-admission: debt
    f.run(replayed(2, 25));
    let b = f.state.buckets.values().next().expect("bucket");
    assert_eq!((b.settled, b.held, b.debt), (85, 30, 15));
    f.state.check_all_invariants().expect("QL-1 holds");
}
