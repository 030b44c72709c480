//! A fleet for quota tests: an N-node store, one simulated upstream, one org (`acme`) with
//! projects `p1..p3` (one API key each), the given limits, and M gateways — every one a
//! `tollgate` process on loopback, stopped by PID on drop — plus an open-loop load driver that
//! records what each request got back, and when.

use super::gateway::{Proc, Resp, create_key, http, model, wait_http};
use super::{Cluster, free_port};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_types::admin::{AdminOp, AdminQuery};
use tollgate_types::config::{ConfigDoc, Org, OrgStatus, Project};
use tollgate_types::limits::Limit;
use tollgate_types::{OrgId, ProjectId};

pub const PROJECTS: [&str; 3] = ["p1", "p2", "p3"];

pub struct Fleet {
    pub cluster: Cluster,
    pub mock: (String, Proc),
    pub gateways: Vec<(String, Proc)>,
    /// How each gateway was started (to restart it on the same data dir).
    pub gateway_args: Vec<Vec<String>>,
    /// One API key per project, in `PROJECTS` order.
    pub keys: Vec<String>,
}

impl Fleet {
    pub async fn start(
        store_nodes: u64,
        n_gateways: usize,
        limits: Vec<Limit>,
        mock: Value,
    ) -> Fleet {
        let cluster = Cluster::start(store_nodes, 10_000);
        let dir = cluster.dir.path().to_path_buf();
        let mock_addr = format!("127.0.0.1:{}", free_port());
        let args: Vec<String> = ["mock-upstream", "--listen", &mock_addr, "--name", "m0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mock_proc = Proc::spawn(&args, dir.join("mock.log"));
        cluster.wait_ready().await;
        let org = || OrgId::parse("acme").expect("org");
        let doc = ConfigDoc {
            version: 1,
            orgs: vec![Org {
                id: org(),
                name: "Acme".into(),
                status: OrgStatus::Active,
                tier: 0,
            }],
            projects: PROJECTS
                .iter()
                .map(|p| Project {
                    org: org(),
                    id: ProjectId::parse(p).expect("project"),
                    name: p.to_string(),
                })
                .collect(),
            models: vec![model("m", &[&[mock_addr.as_str()]])],
            limits,
        };
        let client = cluster.client();
        client
            .write(&AdminOp::ApplyConfig(doc))
            .await
            .expect("seed config");
        let mut keys = Vec::new();
        for p in PROJECTS {
            keys.push(create_key(&client, "acme", p, vec![]).await);
        }
        let mut gateway_args = Vec::new();
        let gateways: Vec<(String, Proc)> = (0..n_gateways)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", free_port());
                let args: Vec<String> = vec![
                    "gateway".into(),
                    "--listen".into(),
                    addr.clone(),
                    "--store".into(),
                    cluster.addrs().join(","),
                    "--store-token".into(),
                    cluster.token.clone(),
                    "--data-dir".into(),
                    dir.join(format!("gateway-{i}")).display().to_string(),
                    "--gateway-id".into(),
                    format!("gw-{i}"),
                ];
                let p = Proc::spawn(&args, dir.join(format!("gateway-{i}.log")));
                gateway_args.push(args);
                (addr, p)
            })
            .collect();
        wait_http(&mock_addr, "/healthz", 200, &mock_proc);
        let r = http(&mock_addr, "POST", "/mock/behavior", &[], &mock.to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        for (addr, p) in &gateways {
            wait_http(addr, "/readyz", 200, p);
        }
        Fleet {
            cluster,
            mock: (mock_addr, mock_proc),
            gateways,
            gateway_args,
            keys,
        }
    }

    /// Starts gateway `i` again with its arguments (same id, same data dir); waits until ready.
    pub fn restart_gateway(&mut self, i: usize) {
        self.gateways[i].1.kill();
        let dir = self.cluster.dir.path().to_path_buf();
        let log = dir.join(format!("gateway-{i}-restarted.log"));
        let p = Proc::spawn(&self.gateway_args[i], log);
        wait_http(&self.gateways[i].0, "/readyz", 200, &p);
        self.gateways[i].1 = p;
    }

    pub fn mock_stats(&self) -> Value {
        http(&self.mock.0, "GET", "/mock/stats", &[], "").json()
    }

    /// The store's live buckets (settled, held, debt, tokens, leases).
    pub async fn buckets(&self) -> Vec<Value> {
        self.cluster
            .client()
            .read::<Vec<Value>>(&AdminQuery::Buckets { org: None })
            .await
            .expect("buckets")
    }

    /// A gateway's quota status view.
    pub fn quota_status(&self, gw: usize) -> Value {
        let auth = format!("Bearer {}", self.cluster.token);
        let r = http(
            &self.gateways[gw].0,
            "GET",
            "/admin/quota",
            &[("authorization", &auth)],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.gateways.iter().map(|(a, _)| a.clone()).collect()
    }

    pub fn logs(&self) -> String {
        let mut s = self.cluster.logs();
        for (i, (_, p)) in self.gateways.iter().enumerate() {
            s.push_str(&format!("\n--- gateway {i}\n{}", p.log_text()));
        }
        s
    }
}

/// One request's result as the client saw it.
#[derive(Debug, Clone)]
pub struct Shot {
    /// When it was sent, from the start of the run.
    pub sent: Duration,
    pub gateway: usize,
    pub status: u16,
    pub code: String,
    pub headers: Vec<(String, String)>,
}

/// Sends `body` as chat completions with `key` to each gateway at its rate (requests per
/// second), open loop (each of `threads` per gateway keeps its own schedule), for `dur`.
pub fn drive(
    gateways: &[String],
    rates: &[f64],
    key: &str,
    body: &Value,
    dur: Duration,
) -> Vec<Shot> {
    let start = Instant::now();
    let shots = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for (gi, rate) in rates.iter().enumerate() {
        if *rate <= 0.0 {
            continue;
        }
        let threads = (rate / 2.0).ceil().max(1.0) as usize;
        for t in 0..threads {
            let addr = gateways[gi].clone();
            let key = key.to_owned();
            let body = body.to_string();
            let shots = shots.clone();
            let period = Duration::from_secs_f64(threads as f64 / rate);
            let offset = period.mul_f64(t as f64 / threads as f64);
            handles.push(std::thread::spawn(move || {
                let mut next = start + offset;
                while next < start + dur {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let sent = start.elapsed();
                    let r = post(&addr, &key, &body);
                    let shot = shot(sent, gi, &r);
                    shots.lock().expect("shots").push(shot);
                    next += period;
                }
            }));
        }
    }
    for h in handles {
        h.join().expect("driver thread");
    }
    let mut v = shots.lock().expect("shots").clone();
    v.sort_by_key(|s| s.sent);
    v
}

pub fn post(addr: &str, key: &str, body: &str) -> Resp {
    let auth = format!("Bearer {key}");
    http(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
}

pub fn shot(sent: Duration, gateway: usize, r: &Resp) -> Shot {
    let code = if r.status == 200 {
        String::new()
    } else {
        serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    Shot {
        sent,
        gateway,
        status: r.status,
        code,
        headers: r.headers.clone(),
    }
}
