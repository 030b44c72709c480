//! The cluster under test: store nodes, gateways and simulated upstreams as `tollgate` processes
//! on loopback, with a fault proxy on every link. Store node `i` reaches node `j` through proxy
//! `s{i}->s{j}` (`--dial-via`), gateway `g` reaches node `j` through `g{g}->s{j}`, and every
//! gateway reaches upstream `u` through `g->u{u}` (the model's route names the proxy). The harness
//! itself talks to the store directly: it is the operator, not part of the fault domain.

use crate::procs::Proc;
use crate::proxy::{Fault, Proxy};
use crate::tenants::{self, Tenants};
use anyhow::{Context, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tollgate_client::StoreClient;
use tollgate_types::admin::AdminQuery;
use tollgate_types::secret;

/// Sizes of a cluster.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Topology {
    /// Founding voters.
    pub stores: u64,
    /// Extra store ids (with their proxies) for membership changes; started when added.
    pub spare_stores: u64,
    pub gateways: usize,
    pub upstreams: usize,
}

pub struct StoreNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub proc: Proc,
    /// A voter now (founding, or added and not removed).
    pub member: bool,
    /// Removed from the cluster: never started again, its id never reused.
    pub removed: bool,
}

pub struct GatewayNode {
    pub idx: usize,
    pub addr: String,
    pub data_dir: PathBuf,
    pub proc: Proc,
}

pub struct UpstreamNode {
    pub addr: String,
    pub proc: Proc,
    /// The gateways' link to this upstream.
    pub proxy: Proxy,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub topology: Topology,
    pub stores: Vec<StoreNode>,
    pub gateways: Vec<GatewayNode>,
    pub upstreams: Vec<UpstreamNode>,
    /// `(from, to)` store ids.
    pub store_links: BTreeMap<(u64, u64), Proxy>,
    /// `(gateway, store id)`.
    pub gateway_links: BTreeMap<(usize, u64), Proxy>,
    pub admin_token: String,
    pub tenants: Tenants,
    http: crate::http::HttpClient,
}

/// Upper bound for processes to come up (never a performance assertion).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A free loopback port (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Cluster {
    /// Starts everything, seeds the tenants, and waits until every gateway is ready.
    pub async fn start(bin: &Path, dir: &Path, topology: Topology) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let admin_token = secret::generate(secret::ADMIN_ENV);
        let peer_token = secret::generate("peer");
        let ids: Vec<u64> = (1..=topology.stores + topology.spare_stores).collect();
        let mut addrs = BTreeMap::new();
        for id in &ids {
            addrs.insert(*id, format!("127.0.0.1:{}", free_port()?));
        }
        let mut store_links = BTreeMap::new();
        for from in &ids {
            for to in ids.iter().filter(|t| *t != from) {
                let p = Proxy::start(&format!("s{from}->s{to}"), &addrs[to]).await?;
                store_links.insert((*from, *to), p);
            }
        }
        let mut gateway_links = BTreeMap::new();
        for g in 0..topology.gateways {
            for to in &ids {
                let p = Proxy::start(&format!("g{g}->s{to}"), &addrs[to]).await?;
                gateway_links.insert((g, *to), p);
            }
        }
        let mut upstreams = Vec::new();
        for u in 0..topology.upstreams {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let mut proc = Proc::new(
                &format!("upstream-{u}"),
                bin,
                strings(&[
                    "mock-upstream",
                    "--listen",
                    &addr,
                    "--name",
                    &format!("u{u}"),
                ]),
                dir.join(format!("upstream-{u}.log")),
            );
            proc.start()?;
            let proxy = Proxy::start(&format!("g->u{u}"), &addr).await?;
            upstreams.push(UpstreamNode { addr, proc, proxy });
        }
        let initial = (1..=topology.stores)
            .map(|i| format!("{i}={}", addrs[&i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut stores = Vec::new();
        for id in &ids {
            let data_dir = dir.join(format!("store-{id}"));
            std::fs::create_dir_all(&data_dir)?;
            let dial = ids
                .iter()
                .filter(|t| *t != id)
                .map(|t| format!("{}={}", addrs[t], store_links[&(*id, *t)].addr()))
                .collect::<Vec<_>>()
                .join(",");
            let mut args = strings(&[
                "store",
                "--node-id",
                &id.to_string(),
                "--listen",
                &addrs[id],
                "--data-dir",
                &data_dir.display().to_string(),
                "--bootstrap-admin-token",
                &admin_token,
                "--peer-token",
                &peer_token,
                "--snapshot-logs",
                "2000",
                "--dial-via",
                &dial,
            ]);
            let founding = *id <= topology.stores;
            if founding {
                args.extend(strings(&["--initial-cluster", &initial]));
            }
            let log = dir.join(format!("store-{id}.log"));
            let mut proc = Proc::new(&format!("store-{id}"), bin, args, log);
            if founding {
                proc.start()?;
            }
            stores.push(StoreNode {
                id: *id,
                addr: addrs[id].clone(),
                data_dir,
                proc,
                member: founding,
                removed: false,
            });
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            topology,
            stores,
            gateways: Vec::new(),
            upstreams,
            store_links,
            gateway_links,
            admin_token,
            tenants: Tenants::default(),
            http: crate::http::client(),
        };
        cluster.wait_store_ready().await?;
        let upstream_urls: Vec<String> = cluster
            .upstreams
            .iter()
            .map(|u| format!("http://{}/v1", u.proxy.addr()))
            .collect();
        cluster.tenants = tenants::seed(&cluster.client()?, &upstream_urls).await?;
        for u in &cluster.upstreams {
            let url = format!("http://{}/mock/behavior", u.addr);
            crate::http::json(&cluster.http, "POST", &url, Some(&tenants::mock_behavior()))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        for g in 0..topology.gateways {
            cluster.add_gateway(bin, g, &addrs)?;
        }
        for g in 0..topology.gateways {
            cluster.wait_gateway_ready(g).await?;
        }
        Ok(cluster)
    }

    fn add_gateway(
        &mut self,
        bin: &Path,
        g: usize,
        addrs: &BTreeMap<u64, String>,
    ) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data_dir = self.dir.join(format!("gateway-{g}"));
        std::fs::create_dir_all(&data_dir)?;
        // every store id, spares included: after membership changes the founding nodes may all
        // be gone, and a gateway (re)started then must still find the cluster
        let stores: Vec<String> = addrs.values().cloned().collect();
        let dial = addrs
            .iter()
            .map(|(id, a)| format!("{a}={}", self.gateway_links[&(g, *id)].addr()))
            .collect::<Vec<_>>()
            .join(",");
        let args = strings(&[
            "gateway",
            "--listen",
            &addr,
            "--store",
            &stores.join(","),
            "--store-token",
            &self.admin_token,
            "--data-dir",
            &data_dir.display().to_string(),
            "--gateway-id",
            &format!("gw-{g}"),
            "--dial-via",
            &dial,
            "--total-timeout-ms",
            "30000",
            "--stream-idle-timeout-ms",
            "5000",
            "--first-byte-timeout-ms",
            "5000",
        ]);
        let mut proc = Proc::new(
            &format!("gateway-{g}"),
            bin,
            args,
            self.dir.join(format!("gateway-{g}.log")),
        );
        proc.start()?;
        self.gateways.push(GatewayNode {
            idx: g,
            addr,
            data_dir,
            proc,
        });
        Ok(())
    }

    /// An admin client to the member nodes, direct (not through the proxies).
    pub fn client(&self) -> anyhow::Result<StoreClient> {
        let addrs: Vec<String> = self
            .stores
            .iter()
            .filter(|s| s.member)
            .map(|s| s.addr.clone())
            .collect();
        StoreClient::new(addrs, Some(self.admin_token.clone())).map_err(anyhow::Error::from)
    }

    /// A client that asks only `addr` (its own view, no redirect).
    pub fn node_client(&self, addr: &str) -> Option<StoreClient> {
        StoreClient::new(vec![addr.to_owned()], Some(self.admin_token.clone())).ok()
    }

    async fn wait_store_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let c = self.client()?;
            if c.read::<Value>(&AdminQuery::ListOrgs).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the store did not become ready:\n{}", self.logs(20));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_gateway_ready(&mut self, g: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("http://{}/readyz", self.gateways[g].addr);
        loop {
            let r = crate::http::request(&self.http, "GET", &url, &[], "", Duration::from_secs(2))
                .await;
            if r.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if let Some(st) = self.gateways[g].proc.exited() {
                bail!(
                    "gateway {g} exited ({st}):\n{}",
                    self.gateways[g].proc.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway {g} not ready:\n{}",
                    self.gateways[g].proc.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn store(&mut self, id: u64) -> Option<&mut StoreNode> {
        self.stores.iter_mut().find(|s| s.id == id)
    }

    pub fn member_ids(&self) -> Vec<u64> {
        self.stores
            .iter()
            .filter(|s| s.member)
            .map(|s| s.id)
            .collect()
    }

    /// The leader as the member nodes see it (the first answer wins).
    pub async fn leader(&self) -> Option<u64> {
        let c = self.client().ok()?;
        let s: Value = tokio::time::timeout(Duration::from_secs(2), c.leader_status())
            .await
            .ok()?
            .ok()?;
        s["leader"].as_u64()
    }

    /// Every link that touches store node `id` (both directions, gateways included).
    pub fn links_of(&self, id: u64) -> Vec<&Proxy> {
        self.store_links
            .iter()
            .filter(|((a, b), _)| *a == id || *b == id)
            .map(|(_, p)| p)
            .chain(
                self.gateway_links
                    .iter()
                    .filter(|((_, b), _)| *b == id)
                    .map(|(_, p)| p),
            )
            .collect()
    }

    pub fn all_links(&self) -> Vec<&Proxy> {
        self.store_links
            .values()
            .chain(self.gateway_links.values())
            .chain(self.upstreams.iter().map(|u| &u.proxy))
            .collect()
    }

    /// Every link back to `Pass`, with connections that lived through a fault reset (a real
    /// network heals the same way: the stuck TCP connections time out and reconnect).
    pub fn heal_links(&self) {
        for p in self.all_links() {
            if p.fault() != Fault::Pass {
                p.set(Fault::Pass);
                p.reset_all();
            }
        }
    }

    /// POSTs a behaviour patch to every simulated upstream.
    pub async fn upstream_behavior(&self, patch: &Value) -> anyhow::Result<()> {
        for u in &self.upstreams {
            let url = format!("http://{}/mock/behavior", u.addr);
            crate::http::json(&self.http, "POST", &url, Some(patch))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// Every request the upstreams served, by request id (the oracle), merged.
    pub async fn oracle(&self) -> anyhow::Result<BTreeMap<String, Value>> {
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        for u in &self.upstreams {
            let url = format!("http://{}/mock/served", u.addr);
            let v = crate::http::json(&self.http, "GET", &url, None)
                .await
                .map_err(anyhow::Error::msg)?;
            let Value::Object(m) = v else {
                bail!("{url}: not an object")
            };
            for (id, s) in m {
                match out.get_mut(&id) {
                    // one id served by two upstreams (a retry after a failure): sum what was sent
                    Some(prev) => {
                        for f in ["prompt_tokens", "completion_tokens", "attempts"] {
                            let sum = prev[f].as_u64().unwrap_or(0) + s[f].as_u64().unwrap_or(0);
                            prev[f] = sum.into();
                        }
                        prev["complete"] =
                            (prev["complete"] == true || s["complete"] == true).into();
                        let mut tries = prev["tries"].as_array().cloned().unwrap_or_default();
                        tries.extend(s["tries"].as_array().cloned().unwrap_or_default());
                        prev["tries"] = Value::Array(tries);
                        if prev["user"].is_null() {
                            prev["user"] = s["user"].clone();
                        }
                    }
                    None => {
                        out.insert(id, s);
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn http(&self) -> &crate::http::HttpClient {
        &self.http
    }

    /// The last lines of every process's log.
    pub fn logs(&self, n: usize) -> String {
        let mut s = String::new();
        for st in &self.stores {
            s.push_str(&format!("--- store {}\n{}\n", st.id, st.proc.log_tail(n)));
        }
        for g in &self.gateways {
            s.push_str(&format!("--- gateway {}\n{}\n", g.idx, g.proc.log_tail(n)));
        }
        s
    }
}
