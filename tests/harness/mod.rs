//! Test harness for black-box tests: starts `tollgate` processes on loopback ports, each with
//! its own data dir and log file, kills them by PID (`kill -9` for crashes), and always stops
//! every process it started when dropped.

#![allow(dead_code)]

pub mod fleet;
pub mod gateway;

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_client::StoreClient;
use tollgate_types::admin::{AdminOp, AdminWriteResult};
use tollgate_types::config::{Org, OrgStatus};
use tollgate_types::secret;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
/// Upper bound for a cluster to converge in a test (never a performance assertion).
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A free loopback port (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local addr").port()
}

/// Spawns `tollgate <args>` with stdout and stderr appended to `log`.
pub fn spawn_logged(args: &[String], log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open process log");
    Command::new(BIN)
        .args(args)
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("clone log fd"))
        .stderr(f)
        .spawn()
        .expect("spawn tollgate")
}

pub struct StoreProc {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl StoreProc {
    fn spawn(&mut self) {
        // appended: a restarted node keeps its earlier log
        self.child = Some(spawn_logged(
            &self.args,
            &self.data_dir.with_extension("log"),
        ));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<StoreProc>,
    pub token: String,
    pub peer_token: String,
    /// Mutual TLS: the directory of `tollgate certs` output (ca.pem, store.pem, admin.pem, …);
    /// nodes serve with `store`, the harness's clients use `admin`.
    pub certs: Option<PathBuf>,
}

/// What a `tollgate` command run to completion printed.
pub struct CliOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    /// Asserts the command succeeded (its stderr in the message) and returns it.
    pub fn expect_ok(self, what: &str) -> CliOut {
        assert!(self.ok, "tollgate {what}: {}", self.stderr);
        self
    }
}

/// Runs `tollgate <args>` with `envs` to completion.
pub fn cli(args: &[&str], envs: &[(&str, &str)]) -> CliOut {
    let out = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run tollgate");
    CliOut {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `tollgate certs` to make a CA and a certificate per name (`name`, role) in `dir`.
pub fn make_certs(dir: &Path, certs: &[(&str, &str)]) {
    let run = |args: &[&str]| {
        cli(args, &[]).expect_ok(&format!("{args:?}"));
    };
    let d = dir.display().to_string();
    run(&["certs", "init", "--dir", &d]);
    for (name, role) in certs {
        run(&[
            "certs", "issue", "--dir", &d, "--role", role, "--name", name,
        ]);
    }
}

/// The TLS files of certificate `name` made by [`make_certs`] in `dir`.
pub fn tls_files(dir: &Path, name: &str) -> tollgate_proto::tls::TlsFiles {
    tollgate_proto::tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

/// `<prefix>-ca <ca> <prefix>-cert <cert> <prefix>-key <key>` for certificate `name` in `dir`.
pub fn tls_args(dir: &Path, name: &str, prefix: &str) -> Vec<String> {
    let f = tls_files(dir, name);
    [("ca", f.ca), ("cert", f.cert), ("key", f.key)]
        .into_iter()
        .flat_map(|(what, path)| [format!("{prefix}-{what}"), path.display().to_string()])
        .collect()
}

impl Cluster {
    /// Starts `n` founding nodes with ids 1..=n.
    pub fn start(n: u64, snapshot_logs: u64) -> Cluster {
        Cluster::start_with(n, snapshot_logs, false)
    }

    /// Starts `n` founding nodes; with `tls`, a CA and `store`, `admin` and `gateway`
    /// certificates are made in `<dir>/certs` and the nodes run mutual TLS.
    pub fn start_with(n: u64, snapshot_logs: u64, tls: bool) -> Cluster {
        Cluster::found(n, snapshot_logs, tls, None)
    }

    /// Starts founding nodes 1..=n except `absent`, which is listed in `--initial-cluster` and
    /// has its entry in `nodes` but no process until `restart`.
    pub fn start_without(n: u64, snapshot_logs: u64, absent: u64) -> Cluster {
        Cluster::found(n, snapshot_logs, false, Some(absent))
    }

    fn found(n: u64, snapshot_logs: u64, tls: bool, absent: Option<u64>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = tls.then(|| {
            let c = dir.path().join("certs");
            make_certs(
                &c,
                &[
                    ("store", "store"),
                    ("admin", "admin"),
                    ("gateway", "gateway"),
                ],
            );
            c
        });
        let token = secret::generate(secret::ADMIN_ENV);
        let addrs: BTreeMap<u64, String> = (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", free_port())))
            .collect();
        let initial = addrs
            .iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let peer_token = secret::generate("peer");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            token,
            peer_token,
            certs,
        };
        for (id, addr) in &addrs {
            let extra = vec!["--initial-cluster".to_owned(), initial.clone()];
            let p = cluster.store_proc(*id, addr, extra, snapshot_logs);
            cluster.push(p, absent != Some(*id));
        }
        cluster
    }

    /// Spawns a node process (not yet a member unless `extra` says so).
    pub fn add_proc(
        &mut self,
        id: u64,
        addr: &str,
        extra: Vec<String>,
        snapshot_logs: u64,
    ) -> usize {
        let p = self.store_proc(id, addr, extra, snapshot_logs);
        self.push(p, true)
    }

    fn push(&mut self, mut p: StoreProc, spawn: bool) -> usize {
        if spawn {
            p.spawn();
        }
        self.nodes.push(p);
        self.nodes.len() - 1
    }

    fn store_proc(&self, id: u64, addr: &str, extra: Vec<String>, snapshot_logs: u64) -> StoreProc {
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let mut args: Vec<String> = vec![
            "store".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            addr.to_owned(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--bootstrap-admin-token".into(),
            self.token.clone(),
            "--snapshot-logs".into(),
            snapshot_logs.to_string(),
            "--peer-token".into(),
            self.peer_token.clone(),
        ];
        if let Some(c) = &self.certs {
            args.extend(tls_args(c, "store", "--tls"));
        }
        args.extend(extra);
        StoreProc {
            id,
            addr: addr.to_owned(),
            data_dir,
            args,
            child: None,
        }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.addr.clone())
            .collect()
    }

    pub fn client(&self) -> StoreClient {
        self.with_tls(StoreClient::new(self.addrs(), Some(self.token.clone())).expect("client"))
    }

    /// The client speaking mutual TLS with the `admin` certificate when the cluster runs it.
    fn with_tls(&self, c: StoreClient) -> StoreClient {
        match &self.certs {
            Some(dir) => c
                .with_tls(&tls_files(dir, "admin"))
                .expect("admin TLS files"),
            None => c,
        }
    }

    pub fn node(&mut self, id: u64) -> &mut StoreProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("node exists")
    }

    /// One node's own status (not redirected), if it answers.
    pub async fn status_of(&self, addr: &str) -> Option<Value> {
        let c =
            self.with_tls(StoreClient::new(vec![addr.to_owned()], Some(self.token.clone())).ok()?);
        c.node_status_with(Some(addr), true).await.ok()
    }

    /// Waits until a leader is elected and the cluster is bootstrapped (an admin read works).
    pub async fn wait_ready(&self) -> u64 {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let c = self.client();
            if c.read::<Value>(&tollgate_types::admin::AdminQuery::ListOrgs)
                .await
                .is_ok()
                && let Ok(s) = c.leader_status::<Value>().await
                && let Some(l) = s["leader"].as_u64()
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready in time; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every running node applied the same index and reports the same state
    /// digest; returns (applied index, digest).
    pub async fn wait_converged(&self) -> (u64, String) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for addr in self.addrs() {
                seen.push(self.status_of(&addr).await);
            }
            let all: Option<Vec<(u64, String)>> = seen
                .iter()
                .map(|s| {
                    s.as_ref().and_then(|s| {
                        Some((
                            s["applied_index"].as_u64()?,
                            s["state_digest"].as_str()?.to_owned(),
                        ))
                    })
                })
                .collect();
            if let Some(all) = all
                && !all.is_empty()
                && all.iter().all(|x| *x == all[0])
            {
                return all[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge: {seen:?}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn leader_id(&self) -> u64 {
        self.client()
            .leader_status::<Value>()
            .await
            .expect("leader status")["leader"]
            .as_u64()
            .expect("a leader")
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, tail(&n.log(), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn org_op(id: &str) -> AdminOp {
    AdminOp::CreateOrg(Org {
        id: tollgate_types::OrgId::parse(id).expect("org id"),
        name: id.to_owned(),
        status: OrgStatus::Active,
        tier: 0,
    })
}

/// Creates orgs `{prefix}-{i}` for i in range; returns the ids the store acknowledged.
pub async fn create_orgs(
    client: &StoreClient,
    prefix: &str,
    range: std::ops::Range<u32>,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in range {
        let id = format!("{prefix}-{i}");
        let r: Result<AdminWriteResult, _> = client
            .write_with_id(format!("create-{id}"), &org_op(&id))
            .await;
        r.unwrap_or_else(|e| panic!("write {id} failed: {e}"));
        acked.push(id);
    }
    acked
}

/// The org ids the leader returns (a linearizable read).
pub async fn org_ids(client: &StoreClient) -> Vec<String> {
    let v: Value = client
        .read(&tollgate_types::admin::AdminQuery::ListOrgs)
        .await
        .expect("list orgs");
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
