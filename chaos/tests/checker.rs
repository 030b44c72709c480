//! The checker is able to fail: a healthy history passes every check, and each kind of broken
//! history — a lost record, a duplicate, a miscounted record, an over-admission beyond the rate
//! bound, a budget overspent, diverged replicas, a leaked hold, a double execution — is reported
//! by the check that owns it, and only by it.

use std::collections::BTreeMap;
use tollgate_chaos::checker::{
    BucketRow, Check, LedgerRow, Observed, OracleRow, RateSpec, ReplicaRow, check_all, idem_tag,
};
use tollgate_chaos::workload::Attempt;

const START: u64 = 1_800_000_000_000;

fn row(seq: u64, id: &str, project: &str, at_s: u64) -> LedgerRow {
    LedgerRow {
        seq,
        request_id: id.into(),
        org: "acme".into(),
        project: project.into(),
        key: "k1".into(),
        prompt_tokens: 7,
        completion_tokens: 12,
        status: "completed".into(),
        estimated: false,
        started_at_ms: START + at_s * 1000,
    }
}

fn served(prompt: u64, completion: u64) -> OracleRow {
    OracleRow {
        prompt_tokens: prompt,
        completion_tokens: completion,
        complete: true,
        attempts: 1,
        tries: vec![[prompt, completion, 1]],
        user: None,
    }
}

fn attempt(id: &str, at_s: u64) -> Attempt {
    Attempt {
        key: "budget".into(),
        request_id: Some(id.into()),
        status: 200,
        complete: true,
        usage: Some((7, 12)),
        sent_ms: at_s * 1000,
        ended_ms: at_s * 1000 + 100,
        ..Attempt::default()
    }
}

/// 100 requests on acme/p1 (budget 2 000 tokens) and 100 on acme/p2 (60 rpm), one a second;
/// three replicas in agreement; every request served once, complete.
fn healthy() -> Observed {
    let mut o = Observed {
        start_wall_ms: START,
        exact_estimates: true,
        recovery_ms: Some(40),
        recovery_bound_ms: 30_000,
        ..Observed::default()
    };
    for i in 0..100u64 {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        o.ledger.push(row(2 * i, &a, "p1", i));
        o.ledger.push(row(2 * i + 1, &b, "p2", i));
        o.attempts.push(attempt(&a, i));
        o.attempts.push(attempt(&b, i));
        for id in [a, b] {
            o.oracle.insert(id, served(7, 12));
        }
    }
    o.buckets.push(BucketRow {
        scope: "acme/p1".into(),
        dimension: "token_budget".into(),
        volume: true,
        checked_limit: 2_000,
        settled: 1_900,
        held: 60,
        debt: 0,
        lease_remaining: vec![40, 20],
        release_at_max_ms: START + 700_000,
        store_clock_ms: START + 100_000,
    });
    o.rates.push(RateSpec {
        scope: "acme/p2".into(),
        per_minute: 60,
        burst: 0,
    });
    for node in 1..=3 {
        o.replicas.push(ReplicaRow {
            node,
            applied: Some(420),
            digest: Some("d1".into()),
        });
    }
    o
}

fn failed(o: &Observed) -> Vec<Check> {
    check_all(o).into_iter().filter(|c| !c.ok).collect()
}

fn only_fails(o: &Observed, name: &str) -> Check {
    let f = failed(o);
    let names: Vec<&str> = f.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec![name], "{f:#?}");
    f.into_iter().next().expect("one failed check")
}

#[test]
fn a_healthy_history_passes_every_check() {
    let f = failed(&healthy());
    assert!(f.is_empty(), "{f:#?}");
    assert_eq!(check_all(&healthy()).len(), 13);
}

#[test]
fn a_lost_record_is_reported() {
    let mut o = healthy();
    // the client saw a complete response and the upstream served it, but the ledger lost it
    o.ledger.retain(|r| r.request_id != "a17");
    o.buckets[0].settled -= 19;
    let failed = failed(&o);
    let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["LG-2", "LG-2-SERVED"], "{failed:#?}");
    assert!(failed[0].violations[0].contains("a17"), "{failed:#?}");
}

#[test]
fn a_duplicate_is_reported() {
    let mut o = healthy();
    let mut dup = o.ledger[10].clone();
    dup.seq = 999;
    o.ledger.push(dup);
    // the counter counted it twice too, so LG-3 (ledger = counter) still agrees: LG-1 alone
    o.buckets[0].settled += 19;
    o.buckets[0].held -= 19;
    o.buckets[0].lease_remaining = vec![41];
    let c = only_fails(&o, "LG-1");
    assert!(c.violations[0].contains("a5"), "{c:#?}");
}

#[test]
fn a_miscounted_record_is_reported() {
    let mut o = healthy();
    o.ledger[4].completion_tokens = 13;
    o.buckets[0].settled += 1;
    o.buckets[0].held -= 1;
    o.buckets[0].lease_remaining = vec![40, 19];
    let failed = failed(&o);
    let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["LG-2", "LG-3"], "{failed:#?}");
}

#[test]
fn a_counter_that_disagrees_with_the_ledger_is_reported() {
    let mut o = healthy();
    o.buckets[0].settled = 1_800;
    let c = only_fails(&o, "LG-3");
    assert!(c.violations[0].contains("store counter 1800"), "{c:#?}");
}

#[test]
fn an_over_admission_beyond_the_rate_bound_is_reported() {
    let mut o = healthy();
    // 60 rpm: bound 60 + 1/s·(60 + 10 + 1) = 131 in any minute; admit 140 within 20 s
    for i in 0..140u64 {
        let id = format!("burst{i}");
        o.ledger.push(row(1000 + i, &id, "p2", 30 + i / 7));
        o.oracle.insert(id, served(7, 12));
    }
    let c = only_fails(&o, "RATE-BOUND");
    assert!(c.violations[0].contains("> bound 131"), "{c:#?}");
}

#[test]
fn admissions_at_the_bound_pass() {
    let mut o = healthy();
    // exactly the bound in one window: 131 admissions within the first minute
    o.ledger.retain(|r| r.project != "p2");
    o.attempts
        .retain(|a| a.request_id.as_deref().is_some_and(|i| i.starts_with('a')));
    o.oracle.retain(|k, _| k.starts_with('a'));
    for i in 0..131u64 {
        o.ledger
            .push(row(1000 + i, &format!("c{i}"), "p2", i * 59 / 131));
    }
    let f = failed(&o);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn an_overspent_budget_is_reported() {
    let mut o = healthy();
    o.buckets[0].checked_limit = 1_850;
    let failed = failed(&o);
    let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
    // S + H > L + D on the store, and U > L + D from the ledger
    assert_eq!(names, vec!["QL-1", "BUDGET-BOUND"], "{failed:#?}");
}

#[test]
fn diverged_replicas_are_reported() {
    let mut o = healthy();
    o.replicas[2].digest = Some("d2".into());
    let c = only_fails(&o, "RP-1");
    assert!(c.violations[0].contains("disagree"), "{c:#?}");
    // a replica that never caught up is reported as well
    let mut o = healthy();
    o.replicas[1].applied = Some(400);
    o.replicas[1].digest = Some("d0".into());
    let c = only_fails(&o, "RP-1");
    assert!(c.violations[0].contains("never reached"), "{c:#?}");
    // and one that does not answer
    let mut o = healthy();
    o.replicas[0] = ReplicaRow {
        node: 1,
        ..ReplicaRow::default()
    };
    only_fails(&o, "RP-1");
}

#[test]
fn a_leaked_hold_is_reported() {
    let mut o = healthy();
    o.buckets[0].lease_remaining = vec![40];
    let c = only_fails(&o, "QL-2");
    assert!(
        c.violations[0].contains("held 60 but live leases hold 40"),
        "{c:#?}"
    );
}

#[test]
fn a_double_execution_of_an_idempotency_key_is_reported() {
    let mut o = healthy();
    // two requests the upstream served under the same key's tag, both completed by the gateway
    // (say the first answer was lost on the way back and the retry ran again)
    for (i, id) in ["a1", "a2"].iter().enumerate() {
        o.oracle.get_mut(*id).expect("served").user = Some(idem_tag("k-1"));
        let a = o
            .attempts
            .iter_mut()
            .find(|a| a.request_id.as_deref() == Some(id))
            .expect("attempt");
        a.idempotency_key = Some("k-1".into());
        a.retry = i as u32;
        a.complete = i == 1;
    }
    let c = only_fails(&o, "GW-4");
    assert!(c.violations[0].contains("executed 2 times"), "{c:#?}");
    // a gateway restart in between explains it (the key store is in memory)
    o.gateway_restarts.push((0, 1_500));
    assert!(failed(&o).is_empty());
}

#[test]
fn a_replay_is_neither_billed_nor_an_execution() {
    let mut o = healthy();
    o.oracle.get_mut("a1").expect("served").user = Some(idem_tag("k-2"));
    o.attempts
        .iter_mut()
        .find(|a| a.request_id.as_deref() == Some("a1"))
        .expect("attempt")
        .idempotency_key = Some("k-2".into());
    // the repeat: answered from the gateway's store under a fresh request id, never billed
    o.attempts.push(Attempt {
        idempotency_key: Some("k-2".into()),
        retry: 1,
        replayed: true,
        ..attempt("replay-of-a1", 2)
    });
    let f = failed(&o);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn a_slow_recovery_and_a_crash_are_reported() {
    let mut o = healthy();
    o.recovery_ms = None;
    only_fails(&o, "RECOVERY");
    let mut o = healthy();
    o.crashed.push("store 2 exited: signal 6".into());
    only_fails(&o, "NO-CRASH");
    let mut o = healthy();
    o.observe_error = Some("no leader".into());
    only_fails(&o, "OBSERVE");
}

#[test]
fn a_retried_upstream_attempt_is_billed_for_the_delivered_try_only() {
    let mut o = healthy();
    // served twice (the first try cut before the gateway had it whole, then retried on another
    // upstream): the ledger bills the try that was delivered
    let twice = OracleRow {
        prompt_tokens: 14,
        completion_tokens: 24,
        complete: true,
        attempts: 2,
        tries: vec![[7, 12, 0], [7, 12, 1]],
        user: None,
    };
    o.oracle.insert("a3".into(), twice.clone());
    let f = failed(&o);
    assert!(f.is_empty(), "{f:#?}");
    // billing the sum of both tries is a difference, though it is within what was served
    let a3 = o
        .ledger
        .iter_mut()
        .find(|r| r.request_id == "a3")
        .expect("a3");
    a3.prompt_tokens = 14;
    a3.completion_tokens = 24;
    o.buckets[0].settled += 19;
    o.buckets[0].held -= 19;
    o.buckets[0].lease_remaining = vec![41];
    let failed = failed(&o);
    assert!(
        failed
            .iter()
            .any(|c| c.name == "LG-3" && c.violations[0].contains("a3")),
        "{failed:#?}"
    );
}

#[test]
fn debt_under_exact_estimates_is_an_over_admission() {
    let mut o = healthy();
    o.buckets[0].debt = 5;
    let c = only_fails(&o, "BUDGET-BOUND");
    assert!(c.violations[0].contains("debt 5"), "{c:#?}");
    // without exact estimates, debt within L + D is the documented bound
    o.exact_estimates = false;
    assert!(failed(&o).is_empty());
}

#[test]
fn observed_round_trips_through_json() {
    let o = healthy();
    let back: Observed =
        serde_json::from_slice(&serde_json::to_vec(&o).expect("encode")).expect("decode");
    assert_eq!(check_all(&back), check_all(&o));
    let _: BTreeMap<String, OracleRow> = back.oracle;
}
