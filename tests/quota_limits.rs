//! Distributed limits over real processes on loopback: a 3-node store and 3 gateways, with the
//! simulated upstream as the oracle of what was actually served. Each test states the bound it
//! checks (docs/design/quotas.md): rate limits admit at most `B + r·(T + TTL + ε)` over a run of
//! `T`, and at least 97% of what an ideal bucket would; budgets end with usage ≤ budget + debt
//! (debt 0 when the input estimate is exact); concurrency is never exceeded; a leader crash costs
//! no quota errors while leases live; a cut-off gateway follows each limit's fail policy.

mod harness;

use harness::fleet::{Fleet, Shot, drive, post, shot};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tollgate_types::lease::LEASE_TTL_MS;
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::{OrgId, ProjectId};

fn limit(project: &str, dimension: Dimension, value: u64, fail_policy: FailPolicy) -> Limit {
    Limit {
        scope: Scope::Project {
            org: OrgId::parse("acme").expect("org"),
            project: ProjectId::parse(project).expect("project"),
        },
        model: None,
        dimension,
        limit: value,
        burst: 0,
        fail_policy,
        shadow: false,
    }
}

/// "tell me something": 3 input tokens for the gateway's estimate and the mock alike.
fn body(max_tokens: u64) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "tell me something"}],
        "max_tokens": max_tokens,
    })
}

fn count(shots: &[Shot], f: impl Fn(&Shot) -> bool) -> usize {
    shots.iter().filter(|s| f(s)).count()
}

fn header<'a>(s: &'a Shot, name: &str) -> Option<&'a str> {
    s.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

const RPM: u64 = 600;
const RUN: Duration = Duration::from_secs(30);
/// ε of the bound: request latency and clock-rate drift, generously.
const EPSILON_S: f64 = 1.0;

/// A 600 requests/minute project limit hit through three gateways at 40 requests/s in total
/// (4× the limit), split by `shares`.
async fn rate_limit_through_three_gateways(shares: [f64; 3]) {
    let fleet = Fleet::start(
        3,
        3,
        vec![limit(
            "p1",
            Dimension::RequestsPerMinute,
            RPM,
            FailPolicy::Strict,
        )],
        json!({"completion_tokens": 5}),
    )
    .await;
    let offered = 40.0;
    let rates: Vec<f64> = shares.iter().map(|s| s * offered).collect();
    let shots = drive(&fleet.addrs(), &rates, &fleet.keys[0], &body(5), RUN);
    let ok = count(&shots, |s| s.status == 200);
    let limited = count(&shots, |s| {
        s.status == 429 && s.code == "rate_limit_exceeded"
    });
    assert_eq!(
        ok + limited,
        shots.len(),
        "only 200s and 429 rate_limit_exceeded: {:?}\n{}",
        shots.iter().find(|s| s.status != 200 && s.status != 429),
        fleet.logs()
    );
    // the bound: depth B = 600, r = 10/s, over T = the run
    let r = RPM as f64 / 60.0;
    let t = RUN.as_secs_f64();
    let bound = RPM as f64 + r * (t + LEASE_TTL_MS as f64 / 1000.0 + EPSILON_S);
    let ideal = (RPM as f64 + r * t).min(shots.len() as f64);
    eprintln!(
        "shares {shares:?}: sent {}, admitted {ok}, ideal {ideal}, bound {bound}, per gateway {:?}",
        shots.len(),
        (0..3)
            .map(|g| count(&shots, |s| s.gateway == g && s.status == 200))
            .collect::<Vec<_>>()
    );
    let per_5s: Vec<usize> = (0..(RUN.as_secs() / 5))
        .map(|w| count(&shots, |s| s.status == 200 && s.sent.as_secs() / 5 == w))
        .collect();
    eprintln!(
        "admitted per 5 s: {per_5s:?}; gateway 0 status: {}",
        fleet.quota_status(0)
    );
    assert!(ok as f64 <= bound, "admitted {ok} > bound {bound}");
    assert!(
        ok as f64 >= 0.97 * ideal,
        "admitted {ok} < 97% of the {ideal} an exact bucket allows\n{}",
        fleet.logs()
    );
    // water-filling: a gateway asking for less than its fair share gets what it asks for
    for (g, rate) in rates.iter().enumerate() {
        let sent = count(&shots, |s| s.gateway == g);
        let got = count(&shots, |s| s.gateway == g && s.status == 200);
        if *rate < r / 3.0 {
            assert!(
                got as f64 >= 0.9 * sent as f64,
                "gateway {g} sent {sent} below its fair share but got only {got}"
            );
        }
    }
    // headers on both answers; 429s say when to come back
    for s in &shots {
        assert_eq!(
            header(s, "x-ratelimit-limit-requests"),
            Some("600"),
            "{s:?}"
        );
        let remaining: u64 = header(s, "x-ratelimit-remaining-requests")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("remaining header: {s:?}"));
        assert!(remaining <= RPM);
        assert!(header(s, "x-ratelimit-reset-requests").is_some());
        if s.status == 429 {
            assert!(header(s, "retry-after").is_some(), "{s:?}");
        }
    }
}

#[tokio::test]
async fn rate_limit_with_skewed_load_90_5_5() {
    rate_limit_through_three_gateways([0.9, 0.05, 0.05]).await;
}

#[tokio::test]
async fn rate_limit_with_even_load() {
    rate_limit_through_three_gateways([1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]).await;
}

/// Sends until every client saw `quiet` of nothing but refusals; returns every result.
fn exhaust(
    fleet: &Fleet,
    key: &str,
    body: &Value,
    clients_per_gw: usize,
    quiet: Duration,
) -> Vec<Shot> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(90);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..fleet.gateways.len() * clients_per_gw)
            .map(|i| {
                let gi = i % fleet.gateways.len();
                let addr = fleet.gateways[gi].0.clone();
                let body = body.to_string();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut last_ok = Instant::now();
                    while last_ok.elapsed() < quiet && Instant::now() < deadline {
                        let sent = start.elapsed();
                        let r = post(&addr, key, &body);
                        if r.status == 200 {
                            last_ok = Instant::now();
                        } else {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        out.push(shot(sent, gi, &r));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    })
}

/// Waits until the store's bucket for `dimension` settled `want` (usage ships with refreshes).
async fn settled_bucket(fleet: &Fleet, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let buckets = fleet.buckets().await;
        if let Some(b) = buckets
            .iter()
            .find(|b| b["limit"]["dimension"].get("token_budget").is_some())
            && b["settled"].as_u64() == Some(want)
        {
            return b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "settled usage never reached {want}: {buckets:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_token_budget_consumed_through_three_gateways_ends_exactly() {
    const BUDGET: u64 = 3_000;
    let fleet = Fleet::start(
        3,
        3,
        vec![limit(
            "p1",
            Dimension::TokenBudget {
                period: Period::Total,
            },
            BUDGET,
            FailPolicy::Strict,
        )],
        json!({"completion_tokens": 20}),
    )
    .await;
    // 3 input + 20 output tokens per request, exactly what the gateway reserves
    let per_request = 23;
    let shots = exhaust(&fleet, &fleet.keys[0], &body(20), 3, Duration::from_secs(4));
    let ok = count(&shots, |s| s.status == 200) as u64;
    let refused = count(&shots, |s| {
        s.status == 429 && s.code == "insufficient_quota"
    });
    assert_eq!(
        ok as usize + refused,
        shots.len(),
        "only 200s and 429 insufficient_quota: {:?}",
        shots.iter().find(|s| s.status != 200 && s.status != 429)
    );
    let stats = fleet.mock_stats();
    let served = stats["prompt_tokens"].as_u64().expect("prompt")
        + stats["completion_tokens"].as_u64().expect("completion");
    assert_eq!(
        stats["requests"].as_u64(),
        Some(ok),
        "every admitted request was served once"
    );
    assert_eq!(served, ok * per_request);
    let bucket = settled_bucket(&fleet, served).await;
    let debt = bucket["debt"].as_u64().expect("debt");
    eprintln!(
        "budget {BUDGET}: served {served} tokens in {ok} requests, debt {debt}, bucket {bucket}"
    );
    assert_eq!(debt, 0, "the input estimate is exact: no debt");
    assert!(
        served <= BUDGET + debt,
        "usage {served} > budget {BUDGET} + debt {debt}"
    );
    assert!(
        BUDGET - served < per_request,
        "the budget ends exactly: {} tokens left, less than one request ({per_request})",
        BUDGET - served
    );
}

#[tokio::test]
async fn a_concurrency_limit_is_never_exceeded_across_gateways() {
    const SLOTS: u64 = 4;
    let fleet = Fleet::start(
        3,
        3,
        vec![limit(
            "p1",
            Dimension::ConcurrentRequests,
            SLOTS,
            FailPolicy::Strict,
        )],
        json!({"completion_tokens": 5, "ttft_ms": 150}),
    )
    .await;
    let start = Instant::now();
    let shots: Vec<Shot> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..9)
            .map(|i| {
                let gi = i % 3;
                let addr = fleet.gateways[gi].0.clone();
                let key = fleet.keys[0].clone();
                scope.spawn(move || {
                    let mut out = Vec::new();
                    while start.elapsed() < Duration::from_secs(8) {
                        let r = post(&addr, &key, &body(5).to_string());
                        if r.status != 200 {
                            // a client that was refused backs off a little
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        out.push(shot(start.elapsed(), gi, &r));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let ok = count(&shots, |s| s.status == 200);
    let limited = count(&shots, |s| {
        s.status == 429 && s.code == "rate_limit_exceeded"
    });
    assert_eq!(
        ok + limited,
        shots.len(),
        "only 200s and 429 rate_limit_exceeded: {:?}",
        shots.iter().find(|s| s.status != 200 && s.status != 429)
    );
    let peak = fleet.mock_stats()["inflight_max"]
        .as_u64()
        .expect("inflight_max");
    eprintln!("concurrency {SLOTS}: {ok} served, {limited} refused, upstream peak {peak}");
    eprintln!("store buckets: {:?}", fleet.buckets().await);
    for g in 0..3 {
        eprintln!("gateway {g}: {}", fleet.quota_status(g));
    }
    assert!(
        peak <= SLOTS,
        "the upstream saw {peak} concurrent requests > {SLOTS}"
    );
    assert!(peak >= 2, "the limit was exercised (peak {peak})");
    assert!(limited > 0, "the limit was binding");
    // liveness: slots come back after each request (10 times the limit served, of ~200 possible)
    assert!(
        ok as u64 >= 10 * SLOTS,
        "only {ok} served: slots are not coming back"
    );
}

#[tokio::test]
async fn killing_the_store_leader_under_load_causes_no_quota_errors() {
    let fleet = Fleet::start(
        3,
        3,
        vec![
            limit(
                "p1",
                Dimension::RequestsPerMinute,
                60_000,
                FailPolicy::Strict,
            ),
            limit(
                "p1",
                Dimension::TokenBudget {
                    period: Period::Month,
                },
                100_000_000,
                FailPolicy::Strict,
            ),
        ],
        json!({"completion_tokens": 5}),
    )
    .await;
    let leader = fleet.cluster.leader_id().await;
    let mut fleet = fleet;
    let (addrs, key) = (fleet.addrs(), fleet.keys[0].clone());
    // leases first: each gateway's first request waits (at most --admit-wait-ms) for its first
    // lease, which on a loaded machine can take longer than that; the claim is about requests
    // while leases live, so every gateway is admitted once before the measured run
    for addr in &addrs {
        let admitted = (0..200).any(|_| {
            let ok = post(addr, &key, &body(5).to_string()).status == 200;
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(
            admitted,
            "gateway {addr} never admitted a request\n{}",
            fleet.logs()
        );
    }
    let driver = std::thread::spawn(move || {
        drive(
            &addrs,
            &[4.0, 4.0, 4.0],
            &key,
            &body(5),
            Duration::from_secs(16),
        )
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    fleet.cluster.node(leader).kill9();
    let shots = driver.join().expect("driver");
    let new_leader = fleet.cluster.leader_id().await;
    let bad: Vec<&Shot> = shots.iter().filter(|s| s.status != 200).collect();
    eprintln!(
        "leader {leader} killed at 5 s, new leader {new_leader}: {} requests, {} not 200",
        shots.len(),
        bad.len()
    );
    assert_ne!(new_leader, leader);
    assert!(
        bad.is_empty(),
        "no quota (or any) errors while leases live: {:?}\n{}",
        bad.first(),
        fleet.logs()
    );
    // the gateways kept refreshing through the new leader
    for g in 0..3 {
        let st = fleet.quota_status(g);
        assert_eq!(st["store_reachable"], json!(true), "{st}");
    }
}

/// A gateway process whose every connection to the store goes through its own fault proxy (one
/// per store node, via `--dial-via`), so the test can cut that gateway alone off the store.
async fn gateway_behind_proxies(
    fleet: &Fleet,
    name: &str,
) -> (
    String,
    harness::gateway::Proc,
    Vec<tollgate_chaos::proxy::Proxy>,
) {
    let mut proxies = Vec::new();
    let mut dial = Vec::new();
    for addr in fleet.cluster.addrs() {
        let p = tollgate_chaos::proxy::Proxy::start(&format!("{name}->{addr}"), &addr)
            .await
            .expect("proxy");
        dial.push(format!("{addr}={}", p.addr()));
        proxies.push(p);
    }
    let dir = fleet.cluster.dir.path().to_path_buf();
    let addr = format!("127.0.0.1:{}", harness::free_port());
    let args: Vec<String> = vec![
        "gateway".into(),
        "--listen".into(),
        addr.clone(),
        "--store".into(),
        fleet.cluster.addrs().join(","),
        "--store-token".into(),
        fleet.cluster.token.clone(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--gateway-id".into(),
        name.into(),
        "--dial-via".into(),
        dial.join(","),
    ];
    let p = harness::gateway::Proc::spawn(&args, dir.join(format!("{name}.log")));
    harness::gateway::wait_http(&addr, "/readyz", 200, &p);
    (addr, p, proxies)
}

fn quota_status_of(fleet: &Fleet, gw: &str) -> Value {
    let auth = format!("Bearer {}", fleet.cluster.token);
    let r = harness::gateway::http(gw, "GET", "/admin/quota", &[("authorization", &auth)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// One gateway cut off from the store by a silent network partition (its links blackholed;
/// the store and another gateway carry on): within its leases it admits, past them each limit's
/// fail policy decides; the other gateway is unaffected; after the heal the cut gateway's
/// `open` admissions reach the ledger flagged `unbacked`.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_cut_off_from_the_store_follows_each_fail_policy() {
    use tollgate_chaos::proxy::Fault;
    // p1 strict, p2 reserve (5 requests per gateway), p3 open; all 600 requests per minute
    let fleet = Fleet::start(
        3,
        0,
        vec![
            limit("p1", Dimension::RequestsPerMinute, RPM, FailPolicy::Strict),
            limit(
                "p2",
                Dimension::RequestsPerMinute,
                RPM,
                FailPolicy::Reserve { per_gateway: 5 },
            ),
            limit("p3", Dimension::RequestsPerMinute, RPM, FailPolicy::Open),
        ],
        json!({"completion_tokens": 5}),
    )
    .await;
    let (gw, _cut_proc, links) = gateway_behind_proxies(&fleet, "gw-cut").await;
    // (the proxies live as long as their binding: `_` would drop them at once)
    let (other, other_proc, _other_links) = gateway_behind_proxies(&fleet, "gw-other").await;
    let keys = fleet.keys.clone();
    let send_to = |addr: String, k: usize| {
        let key = keys[k].clone();
        tokio::task::spawn_blocking(move || post(&addr, &key, &body(5).to_string()))
    };
    // some demand first, so the lease covers a few seconds of it
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for k in 0..3 {
            let r = send_to(gw.clone(), k).await.expect("request");
            assert_eq!(r.status, 200, "well under the limits: {}", r.body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = quota_status_of(&fleet, &gw);
        let covered = st["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .all(|b| b["local_available"].as_u64().unwrap_or(0) >= 3);
        if covered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leases never covered the demand: {st}"
        );
    }
    // the partition: every byte between this gateway and the store vanishes
    for p in &links {
        p.set(Fault::Blackhole);
    }
    // within the lease: everything is still admitted on the leases
    for k in 0..3 {
        let r = send_to(gw.clone(), k).await.expect("request");
        assert_eq!(
            r.status, 200,
            "a live lease admits while the store is unreachable"
        );
    }
    // past the TTL (and a failed refresh): the policies take over
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = quota_status_of(&fleet, &gw);
        let states: Vec<String> = st["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["state"].as_str().unwrap_or("").to_owned())
            .collect();
        if st["store_reachable"] == json!(false) && states.iter().all(|s| s != "lease") {
            break;
        }
        assert!(Instant::now() < deadline, "leases never lapsed: {st}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // strict: denied, and says why
    let r = send_to(gw.clone(), 0).await.expect("request");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "store_unavailable");
    // reserve: exactly the reserve, then refused
    let mut reserve = Vec::new();
    for _ in 0..8 {
        reserve.push(send_to(gw.clone(), 1).await.expect("request").status);
    }
    assert_eq!(
        reserve,
        vec![200, 200, 200, 200, 200, 429, 429, 429],
        "reserve of 5"
    );
    // open: admitted and flagged
    let mut open_ids = Vec::new();
    for _ in 0..4 {
        let r = send_to(gw.clone(), 2).await.expect("request");
        assert_eq!(r.status, 200);
        open_ids.push(r.header("x-request-id").expect("request id").to_owned());
    }
    let st = quota_status_of(&fleet, &gw);
    let open = st["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .find(|b| b["fail_policy"] == json!("open"))
        .expect("open bucket");
    assert_eq!(open["state"], "open");
    assert_eq!(open["unbacked_units"], 4, "{st}");
    let text = harness::gateway::http(&gw, "GET", "/metrics", &[], "").body;
    assert!(
        text.contains("tollgate_gateway_quota_store_reachable 0"),
        "{text}"
    );
    assert!(
        text.contains("tollgate_gateway_quota_buckets{state=\"open\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tollgate_gateway_quota_unbacked_units_total 4"),
        "{text}"
    );
    // meanwhile the store and the other gateway carry on under every policy
    for k in 0..3 {
        let r = send_to(other.clone(), k).await.expect("request");
        assert_eq!(
            r.status,
            200,
            "the other gateway is not cut off: {}\n{}\n{}",
            r.body,
            other_proc.log_text(),
            quota_status_of(&fleet, &other)
        );
    }
    // heal: the cut gateway ships what it admitted unbacked, flagged in the ledger
    for p in &links {
        p.set(Fault::Pass);
        p.reset_all();
    }
    let client = fleet.cluster.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entries: Vec<Value> = client
            .read(&tollgate_types::admin::AdminQuery::UsageExport {
                since_seq: 0,
                limit: 1000,
            })
            .await
            .expect("export");
        let flagged: Vec<&Value> = entries
            .iter()
            .filter(|e| {
                open_ids
                    .iter()
                    .any(|id| e["record"]["request_id"] == json!(id))
            })
            .collect();
        if flagged.len() == open_ids.len() {
            assert!(
                flagged.iter().all(|e| e["record"]["unbacked"] == true),
                "{flagged:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the open admissions never reached the ledger: {} of {}",
            flagged.len(),
            open_ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One gateway: limits added, changed and removed at run time; OpenAI's headers and error codes;
/// `max_tokens` clamped to the reservation; shadow limits measure without refusing.
#[tokio::test(flavor = "multi_thread")]
async fn limits_change_at_run_time_and_answer_like_openai() {
    use harness::gateway::{Stack, http, model};
    use tollgate_types::admin::AdminOp;
    // a long admission wait: on a loaded machine a lease refresh can take a while, and this
    // test is about which answers come back, not how fast
    let s = Stack::start(
        1,
        |m| vec![model("m", &[&[&m[0]]])],
        &["--admit-wait-ms", "5000"],
    )
    .await;
    s.behave(0, json!({"completion_tokens": 16}));
    let client = s.cluster.client();
    let web = |dimension, value, shadow| Limit {
        shadow,
        ..limit("web", dimension, value, FailPolicy::Strict)
    };
    let no_max =
        json!({"model": "m", "messages": [{"role": "user", "content": "tell me something"}]});
    let r = s.chat(no_max.clone());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ratelimit-limit-requests"),
        None,
        "no limit, no headers"
    );
    let last = || http(s.mock(0), "GET", "/mock/last_request", &[], "").json();
    assert!(
        last().get("max_tokens").is_none(),
        "nothing to clamp without a limit"
    );

    // a rate limit of 3 per minute: three pass with headers, the fourth is a rate limit
    let v = client
        .write(&AdminOp::PutLimit(web(
            Dimension::RequestsPerMinute,
            3,
            false,
        )))
        .await
        .expect("put")
        .config_version;
    s.wait_config(v);
    for _ in 0..3 {
        let r = s.chat(no_max.clone());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
    }
    let r = s.chat(no_max.clone());
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!(
        (1..=20).contains(&retry),
        "one request refills in 20 s: {retry}"
    );

    // swapped for a token budget of 100: without max_tokens the upstream gets the reserved
    // default (16), so each request costs exactly 3 + 16 = 19; five fit, the sixth is quota
    client
        .write(&AdminOp::DeleteLimit(
            web(Dimension::RequestsPerMinute, 3, false).key(),
        ))
        .await
        .expect("delete");
    let budget = Dimension::TokenBudget {
        period: Period::Total,
    };
    let v = client
        .write(&AdminOp::PutLimit(web(budget, 100, false)))
        .await
        .expect("put")
        .config_version;
    s.wait_config(v);
    for i in 0..5 {
        let r = s.chat(no_max.clone());
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(last()["max_tokens"], 16, "clamped to the reservation");
    }
    let r = s.chat(no_max.clone());
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    assert!(
        r.header("retry-after").is_none(),
        "a spent budget does not refill"
    );

    // the budget raised at run time: admitted again without a restart
    let v = client
        .write(&AdminOp::PutLimit(web(budget, 1_000, false)))
        .await
        .expect("put")
        .config_version;
    s.wait_config(v);
    let r = s.chat(no_max.clone());
    assert_eq!(r.status, 200, "{}", r.body);

    // shadow: a 1 per minute limit that only measures
    let v = client
        .write(&AdminOp::PutLimit(web(
            Dimension::RequestsPerMinute,
            1,
            true,
        )))
        .await
        .expect("put")
        .config_version;
    s.wait_config(v);
    for _ in 0..4 {
        let r = s.chat(no_max.clone());
        assert_eq!(r.status, 200, "shadow limits never refuse: {}", r.body);
    }
    let auth = format!("Bearer {}", s.cluster.token);
    let st = http(
        &s.gw,
        "GET",
        "/admin/quota",
        &[("authorization", &auth)],
        "",
    )
    .json();
    let shadow = st["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .find(|b| b["shadow"] == json!(true))
        .expect("shadow bucket");
    assert!(shadow["shadow_exceeded"].as_u64().unwrap_or(0) >= 2, "{st}");
    // the status view is for operators only
    let r = http(
        &s.gw,
        "GET",
        "/admin/quota",
        &[("authorization", &format!("Bearer {}", s.key))],
        "",
    );
    assert_eq!(r.status, 403);
}

/// The store's held units of the token budget bucket.
async fn budget_held(fleet: &Fleet) -> u64 {
    fleet
        .buckets()
        .await
        .iter()
        .find(|b| b["limit"]["dimension"].get("token_budget").is_some())
        .and_then(|b| b["held"].as_u64())
        .unwrap_or(0)
}

/// An `Acquire` that commits in the store but whose answer is lost (requests reach the store,
/// answers do not) is sent again as is — same request id, same body — once the link heals: the
/// gateway learns the grant it missed, so its closing call on SIGTERM gives everything back and
/// nothing stays held in the store. (A fresh call instead would leave the missed grant held
/// until its lease lapses, ~11 minutes, and report any overrun twice.)
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_acquire_is_sent_again_so_no_grant_is_stranded() {
    use tollgate_chaos::proxy::Fault;
    let budget = limit(
        "p1",
        Dimension::TokenBudget {
            period: Period::Month,
        },
        1_000_000,
        FailPolicy::Strict,
    );
    let fleet = Fleet::start(1, 0, vec![budget], json!({"completion_tokens": 4})).await;
    // one store node: one proxy between it and the gateway
    let (addr, mut gw, links) = gateway_behind_proxies(&fleet, "gw-a").await;
    let proxy = &links[0];
    let key = fleet.keys[0].clone();
    let send = |addr: String, key: String| {
        tokio::task::spawn_blocking(move || post(&addr, &key, &body(8).to_string()))
    };
    // answers from the store are lost from here on; requests still arrive
    proxy.set(Fault::OneWay { to_target: true });
    proxy.reset_all();
    let r = send(addr.clone(), key.clone()).await.expect("request");
    assert_eq!(r.status, 503, "strict, no lease: {}", r.body);
    // the store committed a grant the gateway never heard of
    let deadline = Instant::now() + Duration::from_secs(30);
    while budget_held(&fleet).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the Acquire never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set(Fault::Pass);
    proxy.reset_all();
    // refreshes succeed again: requests are admitted
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(addr.clone(), key.clone()).await.expect("request");
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never admitted again: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw.terminate(), "the gateway did not stop on SIGTERM");
    // the closing call returned every unit the gateway held, including the missed grant
    let held = budget_held(&fleet).await;
    assert_eq!(
        held,
        0,
        "units left held in the store: {:?}\ngateway log:\n{}",
        fleet.buckets().await,
        gw.log_text()
    );
}
