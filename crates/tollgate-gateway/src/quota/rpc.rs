//! The gateway's `Acquire` call: to the leader it last found, following NOT_LEADER redirects and
//! moving on from unreachable nodes, with the same request id on every attempt (a retried
//! `Acquire` applies once), bounded by a deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tollgate_proto::quota::AcquireRequest;
use tollgate_proto::quota::quota_client::QuotaClient;
use tollgate_proto::{ERROR_CODE_METADATA, LEADER_METADATA};
use tollgate_types::lease::{AcquireBody, AcquireResult};
use tonic::transport::{Channel, ClientTlsConfig};

/// Why an `Acquire` failed.
#[derive(Debug)]
pub enum AcquireError {
    /// No store node answered in time (or none knows a leader): the store is unreachable.
    Unreachable(String),
    /// A store answered and refused the call itself (too large, malformed, not authorized).
    Refused(String),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcquireError::Unreachable(e) => write!(f, "store unreachable: {e}"),
            AcquireError::Refused(e) => write!(f, "acquire refused: {e}"),
        }
    }
}

/// Whether a gRPC status without a Tollgate error code may succeed on a retry.
fn transient(code: tonic::Code) -> bool {
    // a status without the store's error code came from the transport, not from the store's
    // answer: the call may well have been applied, so it must not count as refused (a refused
    // call is dropped, and a grant it committed would be stranded). An HTTP/2 stream or
    // connection reset surfaces as `Internal` (h2 protocol/internal error) or `Unknown`.
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::Unknown
            | tonic::Code::Internal
    )
}

/// One `Acquire`, all attempts included.
pub const CALL_DEADLINE: Duration = Duration::from_millis(2_000);
const RPC_TIMEOUT: Duration = Duration::from_millis(1_000);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

pub struct StoreRpc {
    addrs: Vec<String>,
    token: Option<String>,
    /// `gateway-id:incarnation`: whose leases these are.
    pub holder: String,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    /// The client side of mutual TLS, when the store runs it.
    tls: Option<ClientTlsConfig>,
}

impl StoreRpc {
    pub fn new(
        addrs: Vec<String>,
        token: Option<String>,
        holder: String,
        tls: Option<ClientTlsConfig>,
    ) -> StoreRpc {
        StoreRpc {
            addrs,
            token,
            holder,
            channels: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            tls,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let dial = tollgate_types::faults::dial_addr(addr);
        let c = tollgate_proto::tls::store_endpoint(dial, self.tls.as_ref())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    fn leader(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, l: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }

    /// Sends one `Acquire` under `request_id` (the store's dedup answers a repeat of the same
    /// id with the first outcome, so an unanswered call can be sent again safely).
    pub async fn acquire(
        &self,
        body: &AcquireBody,
        request_id: &str,
    ) -> Result<AcquireResult, AcquireError> {
        let bin = tollgate_proto::wire::encode(body)
            .map_err(|e| AcquireError::Refused(format!("encoding acquire: {e}")))?;
        let deadline = Instant::now() + CALL_DEADLINE;
        let mut next = 0usize;
        let mut target = self.leader();
        let mut last_err = "no store address".to_owned();
        while Instant::now() < deadline {
            let addr = match target.take() {
                Some(a) => a,
                None if self.addrs.is_empty() => break,
                None => {
                    next += 1;
                    self.addrs[(next - 1) % self.addrs.len()].clone()
                }
            };
            let mut req = tonic::Request::new(AcquireRequest {
                gateway_id: self.holder.clone(),
                request_id: request_id.to_owned(),
                body_bin: bin.clone(),
                ..Default::default()
            });
            if let Some(t) = &self.token
                && let Ok(v) = format!("Bearer {t}").parse()
            {
                req.metadata_mut().insert("authorization", v);
            }
            let mut client = QuotaClient::new(self.channel(&addr).map_err(AcquireError::Refused)?);
            match tokio::time::timeout(RPC_TIMEOUT, client.acquire(req)).await {
                Ok(Ok(resp)) => {
                    self.set_leader(Some(addr));
                    return tollgate_proto::wire::decode(&resp.into_inner().result_bin).map_err(
                        |e| AcquireError::Refused(format!("undecodable acquire result: {e}")),
                    );
                }
                Ok(Err(status)) => {
                    let code = status
                        .metadata()
                        .get(ERROR_CODE_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    last_err = format!("store {addr}: {}: {}", status.code(), status.message());
                    match code {
                        "not_leader" => {
                            target = status
                                .metadata()
                                .get(LEADER_METADATA)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                                .filter(|l| *l != addr);
                            if target.is_none() {
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                        }
                        "store_unavailable" => tokio::time::sleep(RETRY_PAUSE).await,
                        "" if transient(status.code()) => tokio::time::sleep(RETRY_PAUSE).await,
                        // refused for good (too large, bad token, bad body): retrying cannot help
                        _ => return Err(AcquireError::Refused(last_err)),
                    }
                }
                Err(_) => last_err = format!("store {addr}: no answer within {RPC_TIMEOUT:?}"),
            }
        }
        self.set_leader(None);
        Err(AcquireError::Unreachable(last_err))
    }
}
