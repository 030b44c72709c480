//! Pipelined replication: openraft's stream of AppendEntries requests to one follower travels
//! on one long-lived gRPC stream (`Raft.StreamAppend`), each request a message, the follower's
//! answers coming back in order. Without it (openraft's default) every request is a unary RPC —
//! HTTP/2 headers, trailers and a task hand-off each way — and the next one waits for the
//! previous answer, which includes the follower's `fdatasync`; a commit index change alone
//! costs another round trip.
//!
//! A follower that does not know the RPC (a node of an older version during a rolling upgrade)
//! answers `Unimplemented`: the session fails once and the peer is then served one request at
//! a time, as before, with a stream tried again a minute later.
//!
//! Deadline: an answer must come within `hard_ttl` (the heartbeat interval) of its request being
//! sent, like the unary RPC's deadline; an idle stream (nothing outstanding) never times out.

use super::{PeerClient, status_error, unreachable};
use crate::codec::{decode, encode};
use crate::types::TypeConfig;
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tollgate_proto::raft::RaftPayload;
use tonic::Streaming;

type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// When each request still waiting for its answer was sent, oldest first.
#[derive(Clone, Default)]
struct Outstanding(Arc<Mutex<VecDeque<Instant>>>);

impl Outstanding {
    fn with<T>(&self, f: impl FnOnce(&mut VecDeque<Instant>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Encodes requests as they are pulled from openraft's stream; an encoding failure ends the
/// stream (the follower answers what it got, openraft opens another session).
fn outbound<S>(input: S, outstanding: Outstanding) -> impl Stream<Item = RaftPayload> + Send
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    input.scan((), move |_, rpc| {
        let msg = match encode(&rpc) {
            Ok(data) => {
                outstanding.with(|o| o.push_back(Instant::now()));
                Some(RaftPayload { data })
            }
            Err(e) => {
                tracing::warn!(error = %e, "encoding an append for a replication stream");
                None
            }
        };
        std::future::ready(msg)
    })
}

struct Inbound {
    target: u64,
    answers: Streaming<RaftPayload>,
    outstanding: Outstanding,
    ttl: Duration,
    /// Dropped with the session: ends the request stream. Dropping the answers alone does not
    /// reset an HTTP/2 stream whose response head arrived, and hyper would go on pulling
    /// requests from openraft's stream — which the next session shares — onto a stream whose
    /// answers nobody reads.
    _ends_requests: oneshot::Sender<()>,
}

impl Inbound {
    /// The next answer; `None` when the stream ended (after an error, which is yielded first).
    async fn next(&mut self) -> Option<(Answer, bool)> {
        loop {
            let oldest = self.outstanding.with(|o| o.front().copied());
            let deadline = oldest.unwrap_or_else(Instant::now) + self.ttl;
            tokio::select! {
                msg = self.answers.message() => return self.answer(msg),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if oldest.is_some_and(|t| t.elapsed() >= self.ttl) {
                        let msg = format!("node {}: no answer to an append within {:?}", self.target, self.ttl);
                        return Some((Err(unreachable(msg)), false));
                    }
                }
            }
        }
    }

    fn answer(&self, msg: Result<Option<RaftPayload>, tonic::Status>) -> Option<(Answer, bool)> {
        let payload = match msg {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(s) => return Some((Err(status_error(self.target, &s)), false)),
        };
        self.outstanding.with(|o| o.pop_front());
        let reply: Result<StreamAppendResult<TypeConfig>, String> = match decode(&payload.data) {
            Ok(r) => r,
            Err(e) => return Some((Err(RPCError::Network(NetworkError::new(&e))), false)),
        };
        match reply {
            Ok(r) => {
                let go_on = r.is_ok();
                Some((Ok(r), go_on))
            }
            Err(remote) => Some((
                Err(unreachable(format!("node {}: {remote}", self.target))),
                false,
            )),
        }
    }
}

/// `RaftNetworkV2::stream_append` for a peer that takes the streaming RPC.
pub(super) fn stream_append<'s, S>(
    peer: &'s mut PeerClient,
    input: S,
    option: RPCOption,
) -> BoxFuture<'s, Result<BoxStream<'s, Answer>, RPCError<TypeConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    Box::pin(async move {
        let mut client = peer.client()?;
        let outstanding = Outstanding::default();
        let ttl = option.hard_ttl();
        let (ends_requests, ended) = oneshot::channel();
        let requests = outbound(input, outstanding.clone()).take_until(ended);
        let call = client.stream_append(requests);
        let answers = match tokio::time::timeout(ttl, call).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                peer.one_at_a_time = Some(Instant::now());
                return Err(status_error(peer.target, &s));
            }
            Ok(Err(s)) => return Err(status_error(peer.target, &s)),
            Err(_) => {
                let msg = format!(
                    "node {}: opening a replication stream timed out",
                    peer.target
                );
                return Err(unreachable(msg));
            }
        };
        let inbound = Inbound {
            target: peer.target,
            answers,
            outstanding,
            ttl,
            _ends_requests: ends_requests,
        };
        // yields answers until the stream ends, an error, or an answer that stops the session
        // (a conflict or a higher vote), which is yielded and ends it
        let answers = futures::stream::unfold(Some(inbound), |state| async move {
            let mut inbound = state?;
            let (answer, go_on) = inbound.next().await?;
            Some((answer, go_on.then_some(inbound)))
        });
        let answers: BoxStream<'s, Answer> = Box::pin(answers);
        Ok(answers)
    })
}
