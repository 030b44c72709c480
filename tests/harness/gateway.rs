//! A gateway stack for black-box tests: a one-node store, simulated upstreams and a gateway, each
//! a `tollgate` process on loopback (stopped by PID on drop), plus a small blocking HTTP/1.1
//! client that returns exactly what came over the socket.

use super::{Cluster, free_port, spawn_logged};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};
use tollgate_types::admin::AdminOp;
use tollgate_types::amount::Price;
use tollgate_types::config::{ConfigDoc, Endpoint, ModelDef, Org, OrgStatus, Project, Tier};

/// Upper bound for a stack to come up (never a performance assertion).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process with a log file, killed on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[String], log: PathBuf) -> Proc {
        Proc {
            child: Some(spawn_logged(args, &log)),
            log,
        }
    }

    /// The process id (0 once it was stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a graceful stop) and waits for the exit; false if it had to be killed.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP response as received.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads and `event:` names of an SSE body, in order.
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        self.body
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut name = None;
                let mut data = String::new();
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                (name, data)
            })
            .collect()
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"))
}

/// `http`, reporting a refused or broken connection (a killed server) as an error.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no response head: {}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into(),
    })
}

pub fn endpoint(addr: &str) -> Endpoint {
    Endpoint {
        url: format!("http://{addr}/v1"),
        weight: 1,
        upstream_model: None,
    }
}

/// A model routed over `tiers` of upstream addresses.
pub fn model(name: &str, tiers: &[&[&str]]) -> ModelDef {
    ModelDef {
        name: tollgate_types::ModelName::parse(name).expect("model name"),
        max_output_tokens: 1000,
        default_output_tokens: 16,
        price: Price {
            input_per_mtok_micros: 1_000_000,
            output_per_mtok_micros: 2_000_000,
        },
        price_version: 1,
        tiers: tiers
            .iter()
            .map(|t| Tier {
                endpoints: t.iter().map(|a| endpoint(a)).collect(),
            })
            .collect(),
    }
}

pub struct Stack {
    pub cluster: Cluster,
    pub mocks: Vec<(String, Proc)>,
    pub gateway: Proc,
    pub gw: String,
    pub key: String,
}

impl Stack {
    /// Starts a store, `n_mocks` upstreams, seeds org `acme` (project `web`), the models
    /// `models(&mock_addrs)` and one API key, then a gateway with `gateway_flags`; waits until
    /// the gateway has its config.
    pub async fn start(
        n_mocks: usize,
        models: impl Fn(&[String]) -> Vec<ModelDef>,
        gateway_flags: &[&str],
    ) -> Stack {
        Stack::start_with(n_mocks, models, gateway_flags, false).await
    }

    /// [`Stack::start`]; with `tls`, the store runs mutual TLS and the gateway connects with
    /// the `gateway` certificate.
    pub async fn start_with(
        n_mocks: usize,
        models: impl Fn(&[String]) -> Vec<ModelDef>,
        gateway_flags: &[&str],
        tls: bool,
    ) -> Stack {
        let cluster = Cluster::start_with(1, 10_000, tls);
        let dir = cluster.dir.path().to_path_buf();
        let mocks: Vec<(String, Proc)> = (0..n_mocks)
            .map(|i| {
                let addr = format!("127.0.0.1:{}", free_port());
                let args: Vec<String> = [
                    "mock-upstream",
                    "--listen",
                    &addr,
                    "--name",
                    &format!("m{i}"),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let p = Proc::spawn(&args, dir.join(format!("mock-{i}.log")));
                (addr, p)
            })
            .collect();
        cluster.wait_ready().await;
        let addrs: Vec<String> = mocks.iter().map(|(a, _)| a.clone()).collect();
        let client = cluster.client();
        let doc = ConfigDoc {
            version: 1,
            orgs: vec![Org {
                id: tollgate_types::OrgId::parse("acme").expect("org"),
                name: "Acme".into(),
                status: OrgStatus::Active,
                tier: 0,
            }],
            projects: vec![Project {
                org: tollgate_types::OrgId::parse("acme").expect("org"),
                id: tollgate_types::ProjectId::parse("web").expect("project"),
                name: "Web".into(),
            }],
            models: models(&addrs),
            limits: vec![],
        };
        client
            .write(&AdminOp::ApplyConfig(doc))
            .await
            .expect("seed config");
        let key = create_key(&client, "acme", "web", vec![]).await;
        let gw = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "gateway".into(),
            "--listen".into(),
            gw.clone(),
            "--store".into(),
            cluster.addrs().join(","),
            "--store-token".into(),
            cluster.token.clone(),
            "--data-dir".into(),
            dir.join("gateway").display().to_string(),
        ];
        if let Some(c) = &cluster.certs {
            args.extend(super::tls_args(c, "gateway", "--store"));
        }
        args.extend(gateway_flags.iter().map(|s| s.to_string()));
        let gateway = Proc::spawn(&args, dir.join("gateway.log"));
        for (addr, p) in &mocks {
            wait_http(addr, "/healthz", 200, p);
        }
        wait_http(&gw, "/readyz", 200, &gateway);
        Stack {
            cluster,
            mocks,
            gateway,
            gw,
            key,
        }
    }

    pub fn mock(&self, i: usize) -> &str {
        &self.mocks[i].0
    }

    /// Changes a simulated upstream's behaviour.
    pub fn behave(&self, i: usize, patch: Value) {
        let r = http(
            self.mock(i),
            "POST",
            "/mock/behavior",
            &[],
            &patch.to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// What upstream `i` served under a request id (None if it never saw it).
    pub fn served(&self, i: usize, request_id: &str) -> Option<Value> {
        let r = http(
            self.mock(i),
            "GET",
            &format!("/mock/served/{request_id}"),
            &[],
            "",
        );
        (r.status == 200).then(|| r.json())
    }

    pub fn stats(&self, i: usize) -> Value {
        http(self.mock(i), "GET", "/mock/stats", &[], "").json()
    }

    /// `POST /v1/chat/completions` with the stack's key.
    pub fn chat(&self, body: Value) -> Resp {
        self.post("/v1/chat/completions", &self.key, body)
    }

    pub fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        let auth = format!("Bearer {key}");
        http(
            &self.gw,
            "POST",
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
    }

    pub fn get(&self, path: &str) -> Resp {
        let auth = format!("Bearer {}", self.key);
        http(&self.gw, "GET", path, &[("authorization", &auth)], "")
    }

    /// The value of a metric line (exact name and labels) on the gateway.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = http(&self.gw, "GET", "/metrics", &[], "").body;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    /// Waits until the gateway reports a config version at least `v`.
    pub fn wait_config(&self, v: u64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while self
            .metric("tollgate_gateway_config_version ")
            .unwrap_or(0.0)
            < v as f64
        {
            assert!(Instant::now() < deadline, "config {v} never arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub async fn create_key(
    client: &tollgate_client::StoreClient,
    org: &str,
    project: &str,
    allowed_models: Vec<tollgate_types::ModelName>,
) -> String {
    let op = AdminOp::CreateKey {
        org: tollgate_types::OrgId::parse(org).expect("org"),
        project: tollgate_types::ProjectId::parse(project).expect("project"),
        name: "test key".into(),
        env: "test".into(),
        allowed_models,
        scopes: vec![],
        expires_at_ms: None,
    };
    client
        .write(&op)
        .await
        .expect("create key")
        .secret
        .expect("new key secret")
}

/// Waits until `GET path` answers `status` (the process is alive and listening).
pub fn wait_http(addr: &str, path: &str, status: u16, p: &Proc) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            if s.write_all(req.as_bytes()).is_ok() && s.read_to_end(&mut buf).is_ok() {
                let head = String::from_utf8_lossy(&buf);
                if head.starts_with(&format!("HTTP/1.1 {status}")) {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr}{path} never answered {status}; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn chat_body(max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "tell me something"}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}
