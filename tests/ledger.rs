//! The usage ledger over real processes: load through two gateways of a 3-node store, one gateway
//! `kill -9`ed in the middle of streaming and non-streaming requests and restarted on its data
//! dir, the store leader killed while batches ship. Afterwards, against the simulated upstream's
//! oracle: LG-1 (no request id twice), LG-2 (every request whose client saw a complete response
//! is in the ledger with the upstream's token counts; every request the upstream saw is in the
//! ledger, the cut ones flagged), LG-3 (ledger totals = oracle totals for completed requests =
//! the store's bucket counter over the whole ledger).

mod harness;

use harness::fleet::Fleet;
use harness::gateway::try_http;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_types::admin::AdminQuery;
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::{OrgId, ProjectId};

/// What one client saw.
#[derive(Debug, Clone)]
struct Seen {
    /// The gateway's request id (the ledger id), when a response head arrived.
    id: Option<String>,
    /// A complete response: a 200 JSON body, or a stream that reached `[DONE]`.
    complete: bool,
}

fn send(addr: &str, key: &str, stream: bool) -> Seen {
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "tell me something about ledgers"}],
        "max_tokens": 12,
        "stream": stream,
    });
    let auth = format!("Bearer {key}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    match try_http(
        addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        &body.to_string(),
    ) {
        Err(_) => Seen {
            id: None,
            complete: false,
        },
        Ok(r) => Seen {
            id: r.header("x-request-id").map(str::to_owned),
            complete: r.status == 200
                && if stream {
                    r.body.contains("data: [DONE]")
                } else {
                    serde_json::from_str::<Value>(&r.body)
                        .is_ok_and(|v| v["usage"]["completion_tokens"].as_u64().is_some())
                },
        },
    }
}

/// The whole ledger, in sequence order.
async fn ledger(fleet: &Fleet) -> Vec<Value> {
    let client = fleet.cluster.client();
    let mut out: Vec<Value> = Vec::new();
    loop {
        let page: Vec<Value> = client
            .read(&AdminQuery::UsageExport {
                since_seq: out.len() as u64,
                limit: 1000,
            })
            .await
            .expect("export");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_gateways_and_leaders_lose_nothing_and_count_nothing_twice() {
    let budget = Limit {
        scope: Scope::Project {
            org: OrgId::parse("acme").expect("org"),
            project: ProjectId::parse("p1").expect("project"),
        },
        model: None,
        dimension: Dimension::TokenBudget {
            period: Period::Month,
        },
        limit: 100_000_000,
        burst: 0,
        fail_policy: FailPolicy::Strict,
        shadow: false,
    };
    // 12 tokens at 60 tokens/s in chunks of 2: a stream lasts ~200 ms, so kills land mid-stream
    let mut fleet = Fleet::start(
        3,
        2,
        vec![budget],
        json!({"completion_tokens": 12, "tokens_per_sec": 60, "chunk_tokens": 2, "ttft_ms": 20}),
    )
    .await;
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let addr = fleet.gateways[i % 2].0.clone();
            let key = fleet.keys[0].clone();
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let s = send(&addr, &key, (n + i as u64).is_multiple_of(2));
                    if s.id.is_none() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    seen.lock().expect("seen").push(s);
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // kill -9 gateway 1 with requests (streams among them) in flight; restart it on its data dir
    fleet.gateways[1].1.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.restart_gateway(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // kill the store leader while batches ship
    let leader = fleet.cluster.leader_id().await;
    fleet.cluster.node(leader).kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let seen = seen.lock().expect("seen").clone();

    // wait until the ledger holds every request the upstream saw (shipping runs every 2.5 s)
    let oracle: BTreeMap<String, Value> = serde_json::from_str::<BTreeMap<String, Value>>(
        &harness::gateway::http(&fleet.mock.0, "GET", "/mock/served", &[], "").body,
    )
    .expect("oracle");
    let deadline = Instant::now() + Duration::from_secs(60);
    let entries = loop {
        let entries = ledger(&fleet).await;
        let ids: BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| e["record"]["request_id"].as_str())
            .collect();
        if oracle.keys().all(|k| ids.contains(k.as_str())) {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} served requests never reached the ledger\n{}",
            oracle.keys().filter(|k| !ids.contains(k.as_str())).count(),
            oracle.len(),
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // LG-1: no request id twice
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for e in &entries {
        let id = e["record"]["request_id"].as_str().expect("id").to_owned();
        assert!(
            by_id.insert(id.clone(), e["record"].clone()).is_none(),
            "LG-1: {id} twice"
        );
    }
    // LG-2: complete responses are in the ledger with the upstream's counts
    let complete: Vec<&Seen> = seen.iter().filter(|s| s.complete).collect();
    assert!(
        complete.len() > 50,
        "enough load: {} complete",
        complete.len()
    );
    for s in &complete {
        let id = s.id.as_deref().expect("a complete response has an id");
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("LG-2: {id} missing"));
        let o = &oracle[id];
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["estimated"], false, "{r}");
        assert_eq!(
            (&r["prompt_tokens"], &r["completion_tokens"]),
            (&o["prompt_tokens"], &o["completion_tokens"]),
            "LG-2: {id} counts"
        );
    }
    // LG-3: for every record with the upstream's own usage, the ledger matches the oracle; the
    // store's bucket counter equals the whole ledger
    let exact: Vec<&Value> = by_id.values().filter(|r| r["estimated"] == false).collect();
    let sum = |f: &dyn Fn(&Value) -> u64| -> u64 { exact.iter().map(|r| f(r)).sum() };
    let ledger_tokens = sum(&|r| {
        r["prompt_tokens"].as_u64().unwrap_or(0) + r["completion_tokens"].as_u64().unwrap_or(0)
    });
    let oracle_tokens: u64 = exact
        .iter()
        .map(|r| {
            let o = &oracle[r["request_id"].as_str().unwrap_or_default()];
            o["prompt_tokens"].as_u64().unwrap_or(0) + o["completion_tokens"].as_u64().unwrap_or(0)
        })
        .sum();
    assert_eq!(ledger_tokens, oracle_tokens, "LG-3: ledger = oracle");
    let all_tokens: u64 = by_id
        .values()
        .map(|r| {
            r["prompt_tokens"].as_u64().unwrap_or(0) + r["completion_tokens"].as_u64().unwrap_or(0)
        })
        .sum();
    let bucket = fleet
        .buckets()
        .await
        .into_iter()
        .find(|b| b["limit"]["dimension"].get("token_budget").is_some())
        .expect("budget bucket");
    assert_eq!(
        bucket["settled"].as_u64(),
        Some(all_tokens),
        "LG-3: ledger = store counter"
    );
    // the billing export: the same entries, in order, resumable; CSV and JSON Lines agree
    let store = fleet.cluster.addrs().join(",");
    let export = |args: &[&str]| -> (String, String) {
        let all: Vec<&str> = ["usage", "export"].iter().chain(args).copied().collect();
        let env = [
            ("TOLLGATE_STORE", store.as_str()),
            ("TOLLGATE_ADMIN_TOKEN", fleet.cluster.token.as_str()),
        ];
        let out = harness::cli(&all, &env).expect_ok("usage export");
        (out.stdout, out.stderr)
    };
    let (jsonl, _) = export(&[]);
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines, entries, "the export is the ledger, in order");
    let (csv, _) = export(&["--format", "csv"]);
    assert_eq!(
        csv.lines().count(),
        entries.len() + 1,
        "a header and one line per entry"
    );
    let (first, cursor) = export(&["--limit", "10"]);
    assert_eq!(first.lines().count(), 10);
    assert!(cursor.contains("next --since-seq 10"), "{cursor}");
    let (rest, _) = export(&["--since-seq", "10"]);
    assert_eq!(
        rest.lines().count(),
        entries.len() - 10,
        "resuming from the cursor"
    );
    // the HTTP/JSON export a billing system polls with a viewer token: the same entries
    let viewer = fleet
        .cluster
        .client()
        .write(&tollgate_types::admin::AdminOp::CreateAdminToken {
            name: "billing".into(),
            role: tollgate_types::secret::Role::Viewer,
        })
        .await
        .expect("viewer token")
        .secret
        .expect("secret");
    let gw = fleet.gateways[0].0.clone();
    let get = |path: &str, token: &str| {
        let auth = format!("Bearer {token}");
        harness::gateway::http(&gw, "GET", path, &[("authorization", auth.as_str())], "")
    };
    let mut polled: Vec<Value> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let r = get(
            &format!("/admin/usage/export?since_seq={cursor}&limit=50"),
            &viewer,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        polled.extend(page["data"].as_array().expect("data").iter().cloned());
        cursor = page["next_since_seq"].as_u64().expect("cursor");
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(polled, entries, "the HTTP export is the ledger, in order");
    assert_eq!(
        get("/admin/usage/export", &fleet.keys[0]).status,
        401,
        "an API key is not an admin token"
    );
    assert_eq!(get("/admin/usage/export?limit=0", &viewer).status, 400);
    // reconcile against the oracle: the only differences are the flagged (estimated) records
    let counts = fleet.cluster.dir.path().join("oracle.json");
    std::fs::write(&counts, serde_json::to_vec(&oracle).expect("json")).expect("write oracle");
    let out = std::process::Command::new(harness::BIN)
        .args([
            "usage",
            "reconcile",
            "--output",
            "json",
            "--upstream-counts",
        ])
        .arg(&counts)
        .env("TOLLGATE_STORE", fleet.cluster.addrs().join(","))
        .env("TOLLGATE_ADMIN_TOKEN", &fleet.cluster.token)
        .output()
        .expect("tollgate usage reconcile");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    for d in report["differences"].as_array().expect("differences") {
        assert_ne!(d["kind"], "not_in_ledger", "{d}");
        assert_eq!(d["estimated"], true, "only flagged records may differ: {d}");
    }
    let flagged = by_id.values().filter(|r| r["estimated"] == true).count();
    eprintln!(
        "{} requests sent, {} complete, {} served by the upstream, {} in the ledger ({} estimated: cut by the kill), {} tokens",
        seen.len(),
        complete.len(),
        oracle.len(),
        by_id.len(),
        flagged,
        all_tokens
    );
}
