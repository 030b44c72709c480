//! Property tests of the state machine against a simple reference model: random sequences of
//! config, lease, return and usage commands, with duplicate records, conflicting bodies, retried
//! request ids and time jumps. After every step: QL-1, LG-1 and the audit chain hold, settled
//! usage per bucket equals what the model summed, and a retried request id returns its first outcome.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tollgate_ledger::lease::{Return, Want, bucket_period};
use tollgate_ledger::{Actor, Command, Outcome, Request, State, UsageAck};
use tollgate_types::config::{AdminTokenRecord, ApiKeyRecord, KeyStatus, Org, OrgStatus, Project};
use tollgate_types::limits::{Dimension, FailPolicy, Limit, LimitKey, Period, Scope};
use tollgate_types::secret::{ClusterSecret, Role};
use tollgate_types::usage::{UsageRecord, UsageStatus};
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId, RequestId};

fn id<T: TryFrom<String>>(s: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s.to_owned()).expect("valid id")
}

struct Fixture {
    state: State,
    n: u64,
    ts: u64,
}

impl Fixture {
    fn new() -> Self {
        let secret = ClusterSecret::generate();
        let admin = AdminTokenRecord {
            id: id("admin_root"),
            name: "root".into(),
            role: Role::Admin,
            digest: secret.digest("x"),
            revoked: false,
            created_at_ms: 0,
        };
        let mut f = Fixture {
            state: State::default(),
            n: 0,
            ts: 1_700_000_000_000,
        };
        f.run(Command::Bootstrap {
            keygen: ClusterSecret::generate(),
            secret: secret.clone(),
            admin,
        });
        f.run(Command::CreateOrg(Org {
            id: id("acme"),
            name: "Acme".into(),
            status: OrgStatus::Active,
            tier: 0,
        }));
        f.run(Command::CreateProject(Project {
            org: id("acme"),
            id: id("web"),
            name: "Web".into(),
        }));
        f.run(Command::CreateKey(ApiKeyRecord {
            id: id("live_key1"),
            org: id("acme"),
            project: id("web"),
            name: "k".into(),
            digest: secret.digest("k"),
            status: KeyStatus::Active,
            allowed_models: vec![],
            scopes: vec![],
            expires_at_ms: None,
            created_at_ms: 0,
        }));
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

fn budget_key() -> LimitKey {
    LimitKey {
        scope: Scope::Org { org: id("acme") },
        model: None,
        dimension: Dimension::TokenBudget {
            period: Period::Total,
        },
    }
}

fn record(rid: u8, tokens: u64, gateway: u8) -> UsageRecord {
    UsageRecord {
        request_id: id::<RequestId>(&format!("r{rid}")),
        org: id::<OrgId>("acme"),
        project: id::<ProjectId>("web"),
        key: id::<KeyId>("live_key1"),
        model: id::<ModelName>("m"),
        gateway: format!("gw{gateway}"),
        prompt_tokens: tokens / 2,
        completion_tokens: tokens - tokens / 2,
        cost_micros: tokens,
        price_version: 1,
        status: UsageStatus::Completed,
        started_at_ms: 0,
        ended_at_ms: 0,
        estimated: false,
    }
}

#[derive(Debug, Clone)]
enum Step {
    Acquire { gateway: u8, want: u64 },
    Return { lease: u8, unused: u64, gateway: u8 },
    Usage { rid: u8, tokens: u64, gateway: u8 },
    SetLimit { limit: u64 },
    Advance { ms: u64 },
    RetryLast,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3, 0u64..400).prop_map(|(gateway, want)| Step::Acquire { gateway, want }),
        (1u8..6, 0u64..200, 0u8..3).prop_map(|(lease, unused, gateway)| Step::Return {
            lease,
            unused,
            gateway
        }),
        (0u8..40, 0u64..300, 0u8..3).prop_map(|(rid, tokens, gateway)| Step::Usage {
            rid,
            tokens,
            gateway
        }),
        (0u64..3000).prop_map(|limit| Step::SetLimit { limit }),
        (0u64..60_000).prop_map(|ms| Step::Advance { ms }),
        Just(Step::RetryLast),
    ]
}

fn command_for(s: &Step) -> Option<Command> {
    Some(match s {
        Step::Acquire { gateway, want } => Command::Acquire {
            gateway: format!("gw{gateway}"),
            wants: vec![Want {
                limit: budget_key(),
                amount: *want,
            }],
            returns: vec![],
        },
        Step::Return {
            lease,
            unused,
            gateway,
        } => Command::Acquire {
            gateway: format!("gw{gateway}"),
            wants: vec![],
            returns: vec![Return {
                lease_id: u64::from(*lease),
                unused: *unused,
            }],
        },
        Step::Usage {
            rid,
            tokens,
            gateway,
        } => Command::RecordUsage {
            records: vec![record(*rid, *tokens, *gateway)],
        },
        Step::SetLimit { limit } => Command::PutLimit(Limit {
            scope: budget_key().scope,
            model: None,
            dimension: budget_key().dimension,
            limit: *limit,
            burst: 0,
            fail_policy: FailPolicy::Strict,
            shadow: false,
        }),
        Step::Advance { .. } | Step::RetryLast => return None,
    })
}

/// What a retry of a request returns: the same outcome, except that usage records are
/// deduplicated per record (an accepted record comes back as a duplicate with the same seq).
fn retry_outcome(first: &Outcome) -> Outcome {
    match first {
        Outcome::Usage { acks } => Outcome::Usage {
            acks: acks
                .iter()
                .map(|a| match a {
                    UsageAck::Accepted { seq } => UsageAck::Duplicate { seq: *seq },
                    other => other.clone(),
                })
                .collect(),
        },
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_match_the_model(steps in proptest::collection::vec(step(), 1..120)) {
        let mut f = Fixture::new();
        f.run(command_for(&Step::SetLimit { limit: 1000 }).expect("command"));
        // the reference model: first accepted body per request id
        let mut accepted: BTreeMap<String, (u64, u8)> = BTreeMap::new();
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
                _ => {}
            }
            let cmd = command_for(s).expect("command step");
            let req = f.request(cmd);
            let out = f.state.apply(&req).expect("no invariant violation");
            if let (Step::Usage { rid, tokens, gateway }, Outcome::Usage { acks }) = (s, &out) {
                let body = (*tokens, *gateway);
                let rid = format!("r{rid}");
                match (&acks[0], accepted.get(&rid)) {
                    (UsageAck::Accepted { .. }, None) => { accepted.insert(rid, body); }
                    (UsageAck::Duplicate { .. }, Some(b)) => prop_assert_eq!(b, &body),
                    (UsageAck::Conflict { .. }, Some(b)) => prop_assert_ne!(b, &body),
                    (ack, prev) => prop_assert!(false, "ack {:?} with model {:?}", ack, prev),
                }
            }
            last = Some((req, out));
            prop_assert!(f.state.check_all_invariants().is_ok(), "{:?}", f.state.check_all_invariants());
        }
        // LG-1 and exactness: the ledger is exactly the accepted records
        let ledger_total: u64 = f.state.ledger.iter().map(|e| e.record.total_tokens()).sum();
        prop_assert_eq!(ledger_total, accepted.values().map(|b| b.0).sum::<u64>());
        prop_assert_eq!(f.state.ledger.len(), accepted.len());
        let bucket = f.state.buckets.get(&(budget_key(), bucket_period(budget_key().dimension, f.ts)));
        prop_assert_eq!(bucket.map_or(0, |b| b.settled), ledger_total);
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

#[test]
fn holds_never_exceed_the_limit_and_debt_records_overuse() {
    let mut f = Fixture::new();
    f.run(command_for(&Step::SetLimit { limit: 100 }).expect("command"));
    let out = f.run(
        command_for(&Step::Acquire {
            gateway: 0,
            want: 80,
        })
        .expect("command"),
    );
    let Outcome::Leases { grants } = out else {
        panic!("expected grants, got {out:?}")
    };
    assert_eq!(grants[0].amount, 80);
    let out = f.run(
        command_for(&Step::Acquire {
            gateway: 1,
            want: 80,
        })
        .expect("command"),
    );
    let Outcome::Leases { grants } = out else {
        panic!("expected grants, got {out:?}")
    };
    assert_eq!(grants[0].amount, 20, "only what is left is granted");
    // gw0 uses 90 on an 80 lease: 10 over, recorded as debt
    f.run(
        command_for(&Step::Usage {
            rid: 1,
            tokens: 90,
            gateway: 0,
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
fn past_minute_buckets_without_holds_are_pruned() {
    let mut f = Fixture::new();
    let rpm = Limit {
        scope: Scope::Org { org: id("acme") },
        model: None,
        dimension: Dimension::RequestsPerMinute,
        limit: 600,
        burst: 0,
        fail_policy: FailPolicy::Strict,
        shadow: false,
    };
    f.run(Command::PutLimit(rpm));
    f.run(Command::RecordUsage {
        records: vec![record(1, 10, 0)],
    });
    let minutes = |s: &State| s.buckets.keys().map(|(_, p)| *p).collect::<Vec<_>>();
    let first = minutes(&f.state);
    assert_eq!(first.len(), 1);
    f.ts += 120_000;
    f.run(Command::RecordUsage {
        records: vec![record(2, 10, 0)],
    });
    let later = minutes(&f.state);
    assert_eq!(later.len(), 1, "the old minute's bucket is gone: {later:?}");
    assert_ne!(later, first);
    assert_eq!(f.state.ledger.len(), 2, "the ledger keeps the history");
}
