//! Client for the Tollgate quota store: finds the leader (following NOT_LEADER redirects),
//! retries unavailable nodes with the same request id (so a retried write applies once), and
//! bounds every call by a deadline.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};
use tollgate_proto::admin::admin_client::AdminClient;
use tollgate_proto::admin::*;
use tollgate_proto::{ERROR_CODE_METADATA, LEADER_METADATA};
use tollgate_types::ErrorCode;
use tollgate_types::admin::{AdminOp, AdminQuery, AdminWriteResult};
use tonic::transport::{Channel, ClientTlsConfig};

/// Deadline for one logical call, across redirects and retries.
pub const CALL_DEADLINE_MS: u64 = 20_000;
/// Most attempts for one logical call.
pub const CALL_ATTEMPTS_MAX: u32 = 200;
const RPC_TIMEOUT_MS: u64 = 10_000;
/// Largest admin write document (the store accepts 128 KiB messages; leave room for framing).
pub const WRITE_BYTES_MAX: usize = 120 << 10;
const RETRY_PAUSE_MS: u64 = 150;
const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// A failed call: the store's error code (when it sent one) and a message for a person.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    pub code: Option<ErrorCode>,
    pub message: String,
}

impl ClientError {
    fn from_status(addr: &str, s: &tonic::Status) -> ClientError {
        let code = s
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::from_code_str);
        let message = match code {
            Some(c) => format!("{c}: {}", s.message()),
            None => format!("store {addr}: {}: {}", s.code(), s.message()),
        };
        ClientError { code, message }
    }

    fn local(message: String) -> ClientError {
        ClientError {
            code: None,
            message,
        }
    }

    /// Whether another node (or the same, later) may succeed.
    fn retryable(&self, status: &tonic::Status) -> bool {
        matches!(
            self.code,
            Some(ErrorCode::NotLeader | ErrorCode::StoreUnavailable)
        ) || matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ) || (self.code.is_none() && status.code() == tonic::Code::DeadlineExceeded)
    }
}

#[derive(Clone)]
pub struct StoreClient {
    addrs: Vec<String>,
    token: Option<String>,
    /// Client side of mutual TLS, when the store runs it.
    tls: Option<ClientTlsConfig>,
}

fn channel(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, ClientError> {
    let dial = tollgate_types::faults::dial_addr(addr);
    let ep = tollgate_proto::tls::store_endpoint(dial, tls)
        .map_err(ClientError::local)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_millis(RPC_TIMEOUT_MS))
        .tcp_nodelay(true);
    Ok(ep.connect_lazy())
}

impl StoreClient {
    /// `addrs`: one or more store nodes (`host:port`), tried in order; `token`: an admin token.
    pub fn new(addrs: Vec<String>, token: Option<String>) -> Result<StoreClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::local(
                "no store address: pass --store or set TOLLGATE_STORE".into(),
            ));
        }
        for a in &addrs {
            channel(a, None)?;
        }
        Ok(StoreClient {
            addrs,
            token,
            tls: None,
        })
    }

    /// Speaks mutual TLS to the store with these files (CA, own certificate and key).
    pub fn with_tls(mut self, files: &tollgate_proto::tls::TlsFiles) -> Result<Self, ClientError> {
        self.tls = Some(files.client_config().map_err(ClientError::local)?);
        Ok(self)
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// Calls `f` on the leader: follows redirects, moves on from dead nodes, same body each time.
    async fn call<T, R, F, Fut>(&self, body: T, mut f: F) -> Result<R, ClientError>
    where
        T: Clone,
        F: FnMut(AdminClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut target = self.addrs[0].clone();
        let mut next = 0usize;
        let mut last_err = ClientError::local("no attempt made".into());
        let mut tried_leaders: Vec<String> = Vec::new();
        for _ in 0..CALL_ATTEMPTS_MAX {
            if start.elapsed() > Duration::from_millis(CALL_DEADLINE_MS) {
                break;
            }
            let client = AdminClient::new(channel(&target, self.tls.as_ref())?)
                .max_decoding_message_size(MESSAGE_BYTES_MAX);
            match f(client, self.request(body.clone())).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let err = ClientError::from_status(&target, &status);
                    if !err.retryable(&status) {
                        return Err(err);
                    }
                    last_err = err;
                    // a follower may still name a leader that just died: pause before every
                    // retry except a first jump to a newly named leader
                    let leader = status
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let fresh = leader
                        .as_ref()
                        .filter(|l| **l != target && !tried_leaders.contains(*l))
                        .cloned();
                    target = match fresh {
                        Some(l) => {
                            tried_leaders.push(l.clone());
                            l
                        }
                        None => {
                            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                            tried_leaders.clear();
                            next = (next + 1) % self.addrs.len();
                            self.addrs[next].clone()
                        }
                    };
                }
            }
        }
        Err(ClientError {
            code: last_err.code,
            message: format!("gave up after retries: {}", last_err.message),
        })
    }

    /// Applies an admin write exactly once under `request_id` (retries reuse it).
    pub async fn write_with_id(
        &self,
        request_id: String,
        op: &AdminOp,
    ) -> Result<AdminWriteResult, ClientError> {
        let op_json = serde_json::to_vec(op).map_err(|e| ClientError::local(e.to_string()))?;
        if op_json.len() > WRITE_BYTES_MAX {
            return Err(ClientError {
                code: Some(ErrorCode::InvalidRequest),
                message: format!(
                    "this write is {} KiB; the store takes at most {} KiB per write (split a config document into several files)",
                    op_json.len() >> 10,
                    WRITE_BYTES_MAX >> 10
                ),
            });
        }
        let body = WriteRequest {
            request_id,
            op_json,
        };
        let resp = self
            .call(body, |mut c, r| async move { c.write(r).await })
            .await?;
        decode(&resp.result_json)
    }

    pub async fn write(&self, op: &AdminOp) -> Result<AdminWriteResult, ClientError> {
        self.write_with_id(uuid::Uuid::now_v7().to_string(), op)
            .await
    }

    pub async fn read<R: DeserializeOwned>(&self, query: &AdminQuery) -> Result<R, ClientError> {
        let query_json =
            serde_json::to_vec(query).map_err(|e| ClientError::local(e.to_string()))?;
        let resp = self
            .call(ReadRequest { query_json }, |mut c, r| async move {
                c.read(r).await
            })
            .await?;
        decode(&resp.result_json)
    }

    /// Status as seen by one node (no redirect): `addr` or the first address.
    pub async fn node_status<R: DeserializeOwned>(
        &self,
        addr: Option<&str>,
    ) -> Result<R, ClientError> {
        self.node_status_with(addr, false).await
    }

    /// `node_status`, optionally with the node's state digest (hashes the whole state).
    pub async fn node_status_with<R: DeserializeOwned>(
        &self,
        addr: Option<&str>,
        with_digest: bool,
    ) -> Result<R, ClientError> {
        let addr = addr.unwrap_or(&self.addrs[0]).to_owned();
        let mut client = AdminClient::new(channel(&addr, self.tls.as_ref())?);
        let resp = client
            .cluster_status(self.request(ClusterStatusRequest { with_digest }))
            .await
            .map_err(|s| ClientError::from_status(&addr, &s))?;
        decode(&resp.into_inner().status_json)
    }

    /// Status from the leader (its view includes every member's lag).
    pub async fn leader_status<R: DeserializeOwned>(&self) -> Result<R, ClientError> {
        // ask the given nodes who leads, then ask the leader itself
        let leader = self.find_leader().await?;
        self.node_status(Some(&leader)).await
    }

    async fn find_leader(&self) -> Result<String, ClientError> {
        let addrs = self.addrs.clone();
        let mut found = None;
        for a in &addrs {
            if let Ok(s) = self.node_status::<serde_json::Value>(Some(a)).await
                && let Some(leader) = s.get("leader").and_then(serde_json::Value::as_u64)
            {
                let members = s
                    .get("members")
                    .and_then(serde_json::Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                found = members
                    .iter()
                    .find(|m| m.get("id").and_then(serde_json::Value::as_u64) == Some(leader))
                    .and_then(|m| {
                        m.get("addr")
                            .and_then(serde_json::Value::as_str)
                            .map(str::to_owned)
                    });
                if found.is_some() {
                    break;
                }
            }
        }
        found.ok_or_else(|| ClientError {
            code: Some(ErrorCode::StoreUnavailable),
            message: "no store node knows a leader".into(),
        })
    }

    pub async fn add_node<R: DeserializeOwned>(
        &self,
        node_id: u64,
        addr: &str,
    ) -> Result<R, ClientError> {
        let body = AddNodeRequest {
            node_id,
            addr: addr.to_owned(),
        };
        let resp = self
            .call(body, |mut c, r| async move { c.add_node(r).await })
            .await?;
        decode(&resp.status_json)
    }

    pub async fn remove_node<R: DeserializeOwned>(&self, node_id: u64) -> Result<R, ClientError> {
        let resp = self
            .call(RemoveNodeRequest { node_id }, |mut c, r| async move {
                c.remove_node(r).await
            })
            .await?;
        decode(&resp.status_json)
    }
}

fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, ClientError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::local(format!("unexpected reply from the store: {e}")))
}

/// Serializes a value for `--output json`.
pub fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
