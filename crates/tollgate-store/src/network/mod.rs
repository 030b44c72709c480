//! The Raft network: one long-lived tonic channel per peer (HTTP/2 multiplexed, reconnecting),
//! with connect and per-RPC timeouts; replication pipelined on one stream per follower
//! (`append_stream.rs`); snapshots stream as a header frame plus 1 MiB chunks.

mod append_stream;

use crate::codec::{decode, encode};
use crate::storage::SnapData;
use crate::types::{NodeId, Snapshot, TypeConfig, Vote};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_proto::raft::{
    RaftPayload, SnapshotFrame, raft_client::RaftClient, snapshot_frame::Frame,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, ClientTlsConfig};

/// Bytes per snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest gRPC message between store nodes (a Raft append batch).
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT_MS: u64 = 1_000;
const KEEPALIVE_MS: u64 = 5_000;

/// Metadata carrying the cluster's peer token on every Raft RPC.
pub const PEER_TOKEN_METADATA: &str = "x-tollgate-peer-token";
/// Shortest accepted peer token.
pub const PEER_TOKEN_CHARS_MIN: usize = 32;

/// Checks a peer token's shape (length, printable ASCII) before a node starts with it.
pub fn check_peer_token(token: &str) -> Result<(), String> {
    let printable = token.bytes().all(|b| b.is_ascii_graphic());
    if token.len() < PEER_TOKEN_CHARS_MIN || token.len() > 256 || !printable {
        return Err(format!(
            "the peer token must be {PEER_TOKEN_CHARS_MIN} to 256 printable ASCII characters (the same on every node)"
        ));
    }
    Ok(())
}

/// Adds the peer token to every outgoing Raft RPC.
#[derive(Clone)]
pub struct PeerToken(MetadataValue<Ascii>);

impl PeerToken {
    pub fn new(token: &str) -> Result<PeerToken, String> {
        check_peer_token(token)?;
        token
            .parse()
            .map(PeerToken)
            .map_err(|_| "the peer token is not valid ASCII metadata".to_owned())
    }

    /// Server side: whether a request carries this token (constant-time compare).
    pub fn verify<T>(&self, req: &tonic::Request<T>) -> bool {
        use subtle::ConstantTimeEq;
        req.metadata().get(PEER_TOKEN_METADATA).is_some_and(|v| {
            v.as_bytes().len() == self.0.as_bytes().len()
                && bool::from(v.as_bytes().ct_eq(self.0.as_bytes()))
        })
    }
}

impl Interceptor for PeerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(PEER_TOKEN_METADATA, self.0.clone());
        Ok(req)
    }
}

/// Creates (and caches) one channel per peer address.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<BTreeMap<NodeId, (String, Channel)>>>,
    token: PeerToken,
    /// This node's client side of mutual TLS (its store certificate), when configured.
    tls: Option<ClientTlsConfig>,
}

impl Network {
    pub fn new(token: PeerToken, tls: Option<ClientTlsConfig>) -> Network {
        Network {
            channels: Arc::default(),
            token,
            tls,
        }
    }

    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached_addr, ch)) = map.get(&target)
            && cached_addr == addr
        {
            return Ok(ch.clone());
        }
        let ch = peer_channel(addr, self.tls.as_ref())?;
        map.insert(target, (addr.to_owned(), ch.clone()));
        Ok(ch)
    }
}

/// A lazily connecting channel to a peer's gRPC address (`host:port`), over mutual TLS when
/// `tls` is given.
pub fn peer_channel(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, String> {
    let dial = tollgate_types::faults::dial_addr(addr);
    let ep = tollgate_proto::tls::store_endpoint(dial, tls)
        .map_err(|e| format!("peer {addr}: {e}"))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_MS))
        .keep_alive_while_idle(true);
    Ok(ep.connect_lazy())
}

type Client = RaftClient<InterceptedService<Channel, PeerToken>>;

pub struct PeerClient {
    target: NodeId,
    client: Result<Client, String>,
    /// Since when the peer has not taken `StreamAppend` (an older version): one unary RPC per
    /// request, and a stream is tried again after `STREAM_RETRY` (the peer may be upgraded).
    one_at_a_time: Option<Instant>,
}

/// How long a peer that refused the replication stream is served one request at a time before
/// a stream is tried again.
const STREAM_RETRY: Duration = Duration::from_secs(60);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self.channel(target, &node.addr).map(|ch| {
            RaftClient::with_interceptor(ch, self.token.clone())
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
        });
        PeerClient {
            target,
            client,
            one_at_a_time: None,
        }
    }
}

fn unreachable(msg: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(msg.to_string()))
}

fn status_error(target: NodeId, s: &tonic::Status) -> RPCError<TypeConfig> {
    let msg = format!("node {target}: {} {}", s.code(), s.message());
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            unreachable(msg)
        }
        _ => RPCError::Network(NetworkError::from_string(msg)),
    }
}

impl PeerClient {
    fn client(&self) -> Result<Client, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    /// Decodes a peer's `Result<T, E>`; a remote error (the peer's Raft is shutting down or
    /// failed) makes openraft back off like an unreachable peer.
    fn decode_reply<T: serde::de::DeserializeOwned>(
        &self,
        data: &[u8],
    ) -> Result<T, RPCError<TypeConfig>> {
        let reply: Result<T, String> =
            decode(data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|remote| unreachable(format!("node {}: {remote}", self.target)))
    }

    /// One unary Raft RPC: `rpc` encoded, sent by `call` with the option's deadline, the
    /// peer's `Result` decoded.
    async fn unary<Q, R, F, Fut>(
        &self,
        rpc: &Q,
        option: &RPCOption,
        call: F,
    ) -> Result<R, RPCError<TypeConfig>>
    where
        Q: serde::Serialize,
        R: serde::de::DeserializeOwned,
        F: FnOnce(Client, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let data = encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let req = with_timeout(tonic::Request::new(RaftPayload { data }), option);
        let resp = call(self.client()?, req)
            .await
            .map_err(|s| status_error(self.target, &s))?;
        self.decode_reply(&resp.into_inner().data)
    }
}

fn with_timeout<T>(mut req: tonic::Request<T>, option: &RPCOption) -> tonic::Request<T> {
    req.set_timeout(option.hard_ttl());
    req
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapData;

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        if self
            .one_at_a_time
            .is_some_and(|t| t.elapsed() < STREAM_RETRY)
        {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        self.one_at_a_time = None;
        append_stream::stream_append(self, input, option)
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, req| async move {
            c.append_entries(req).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, |mut c, req| async move { c.vote(req).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        // streamed: the ledger is read from the archive frame by frame on a blocking thread
        // while earlier chunks are on the wire (a few chunks in memory, whatever its size)
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let header = SnapshotFrame {
            frame: Some(Frame::Header(header)),
        };
        tx.try_send(header).map_err(|e| {
            StreamingError::Network(NetworkError::new(&io::Error::other(e.to_string())))
        })?;
        let producer = tokio::task::spawn_blocking(move || {
            let mut sink = ChunkSink {
                tx,
                buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
            };
            snapshot.snapshot.write_transfer(&mut sink)?;
            sink.send_chunk()
        });
        let mut client = self.client()?;
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|s| StreamingError::from(status_error(self.target, &s)))?,
        };
        // a read error on this side cut the stream short: report it rather than the
        // receiver's complaint about a short transfer
        producer
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        self.decode_reply(&resp.into_inner().data)
            .map_err(StreamingError::from)
    }
}

/// Cuts the transfer bytes into `SNAPSHOT_CHUNK_BYTES` frames for the snapshot stream.
struct ChunkSink {
    tx: tokio::sync::mpsc::Sender<SnapshotFrame>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn send_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.tx
            .blocking_send(SnapshotFrame {
                frame: Some(Frame::Chunk(chunk)),
            })
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "snapshot stream closed"))
    }
}

impl io::Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(SNAPSHOT_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= SNAPSHOT_CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
