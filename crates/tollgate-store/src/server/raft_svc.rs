//! Server side of the Raft RPCs: decode, hand to openraft, encode `Result<reply, String>`.

use crate::codec::{decode, encode};
use crate::network::PeerToken;
use crate::storage::{SnapData, TransferFile};
use crate::types::{Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tollgate_proto::raft::{RaftPayload, SnapshotFrame, raft_server, snapshot_frame::Frame};
use tonic::{Request, Response, Status, Streaming};

/// Largest snapshot a node accepts: the disk one transfer may take while it arrives (it is
/// written to `incoming` chunk by chunk, never held in memory).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;

pub struct RaftService {
    raft: Raft,
    token: PeerToken,
    /// Mutual TLS on the listener: the caller must also hold a store certificate.
    mtls: bool,
    /// Where snapshots from the leader are written as they arrive (`SmHandle::incoming_dir`).
    incoming: PathBuf,
}

impl RaftService {
    pub fn new(raft: Raft, token: PeerToken, mtls: bool, incoming: PathBuf) -> RaftService {
        RaftService {
            raft,
            token,
            mtls,
            incoming,
        }
    }

    /// Only cluster members (holders of the peer token and, under mutual TLS, of a store
    /// certificate) may speak Raft to this node.
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        tollgate_proto::tls::require_role(req, self.mtls, &[tollgate_proto::tls::Role::Store])?;
        if self.token.verify(req) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "Raft RPCs need the cluster's peer token (--peer-token)",
            ))
        }
    }
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftPayload>, Status> {
    let r = r.map_err(|e| e.to_string());
    let data = encode(&r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

fn disk(e: std::io::Error) -> Status {
    Status::internal(format!("writing the incoming snapshot: {e}"))
}

/// Answers to a replication stream, in the order of its requests.
pub type AppendReplies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

/// Encodes one answer of `Raft::stream_append`: the follower's result, or why its Raft stopped.
fn stream_reply(r: Result<StreamAppendResult<TypeConfig>, String>) -> Result<RaftPayload, Status> {
    encode(&r)
        .map(|data| RaftPayload { data })
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    type StreamAppendStream = AppendReplies;

    /// The follower side of pipelined replication: requests go to openraft as they arrive
    /// (without waiting for the previous answer), answers come back in order. A message that
    /// does not decode ends the requests: the leader sees the stream end and opens another.
    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        self.check(&req)?;
        let requests = req.into_inner().scan((), |_, msg| {
            let rpc = match msg {
                Ok(p) => decode::<AppendEntriesRequest<TypeConfig>>(&p.data)
                    .inspect_err(|e| tracing::warn!(error = %e, "undecodable append in a replication stream"))
                    .ok(),
                // the leader closed or reset the stream
                Err(_) => None,
            };
            std::future::ready(rpc)
        });
        let replies = self
            .raft
            .stream_append(requests)
            .map(|r| stream_reply(r.map_err(|fatal| fatal.to_string())));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotFrame>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&req)?;
        let mut frames = req.into_inner();
        let header = match frames.next().await {
            Some(Ok(SnapshotFrame {
                frame: Some(Frame::Header(h)),
            })) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot stream must start with its header",
                ));
            }
        };
        let (vote, meta): (Vote, SnapshotMeta) = decode(&header).map_err(bad)?;
        let (transfer, file) = TransferFile::create(&self.incoming).map_err(disk)?;
        let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
        let mut received = 0u64;
        while let Some(frame) = frames.next().await {
            match frame?.frame {
                Some(Frame::Chunk(c)) if received + c.len() as u64 <= SNAPSHOT_BYTES_MAX => {
                    received += c.len() as u64;
                    file.write_all(&c).await.map_err(disk)?;
                }
                Some(Frame::Chunk(_)) => {
                    return Err(Status::resource_exhausted(
                        "snapshot larger than this node accepts",
                    ));
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only chunks may follow a snapshot header",
                    ));
                }
            }
        }
        file.flush().await.map_err(disk)?;
        drop(file);
        reply(
            self.raft
                .install_full_snapshot(
                    vote,
                    Snapshot {
                        meta,
                        snapshot: SnapData::Received(transfer),
                    },
                )
                .await,
        )
    }
}
