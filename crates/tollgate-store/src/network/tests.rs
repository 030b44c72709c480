//! The replication stream's client side against a fake peer on loopback: the fallback to one
//! request at a time for a peer without `StreamAppend`, and the deadline on a silent one.

use super::*;
use futures::StreamExt;
use openraft::testing::{blank_ent, log_id};
use tollgate_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use tonic::{Request, Response, Status, Streaming};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A peer that answers unary appends with success; its `StreamAppend` is either missing (an
/// older version) or accepts a stream and never answers, and reports on `ended` when the
/// stream of requests it got ends.
#[derive(Default)]
struct FakePeer {
    streams: bool,
    ended: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

#[tonic::async_trait]
impl RaftRpc for FakePeer {
    type StreamAppendStream = crate::server::raft_svc::AppendReplies;

    async fn append_entries(
        &self,
        _req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let ok: Result<AppendEntriesResponse<TypeConfig>, String> =
            Ok(AppendEntriesResponse::Success);
        let data = encode(&ok).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftPayload { data }))
    }

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        if let Some(ended) = self.ended.clone() {
            let mut requests = req.into_inner();
            tokio::spawn(async move {
                while let Ok(Some(_)) = requests.message().await {}
                let _ = ended.send(());
            });
        }
        if self.streams {
            Ok(Response::new(Box::pin(futures::stream::pending())))
        } else {
            Err(Status::unimplemented("StreamAppend"))
        }
    }

    async fn vote(&self, _req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("vote"))
    }

    async fn install_snapshot(
        &self,
        _req: Request<Streaming<SnapshotFrame>>,
    ) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("install_snapshot"))
    }
}

/// Serves `peer` on a loopback port until the returned sender is dropped.
async fn serve(peer: FakePeer) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(peer))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    (addr, tx)
}

async fn peer_client(addr: &str) -> PeerClient {
    let token = PeerToken::new(TOKEN).expect("token");
    let node = BasicNode {
        addr: addr.to_owned(),
    };
    Network::new(token, None).new_client(2, &node).await
}

fn one_append() -> futures::stream::Iter<std::vec::IntoIter<AppendEntriesRequest<TypeConfig>>> {
    let req = AppendEntriesRequest {
        vote: openraft::impls::Vote::new_committed(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![blank_ent::<TypeConfig>(1, 1, 1)],
    };
    futures::stream::iter(vec![req])
}

#[tokio::test]
async fn a_peer_without_the_stream_rpc_is_served_one_request_at_a_time() {
    let (addr, _stop) = serve(FakePeer::default()).await;
    let mut client = peer_client(&addr).await;
    let option = RPCOption::new(Duration::from_secs(5));
    let failed = client
        .stream_append(one_append(), option.clone())
        .await
        .is_err();
    assert!(failed, "the first session fails on Unimplemented");
    assert!(client.one_at_a_time.is_some());
    let mut answers = client
        .stream_append(one_append(), option)
        .await
        .expect("a session of unary appends");
    let answer = answers.next().await.expect("one answer");
    assert_eq!(
        answer.expect("delivered").expect("accepted"),
        Some(log_id::<TypeConfig>(1, 1, 1))
    );
}

#[tokio::test]
async fn an_append_without_an_answer_ends_the_stream_with_an_error() {
    let (addr, _stop) = serve(FakePeer {
        streams: true,
        ..FakePeer::default()
    })
    .await;
    let mut client = peer_client(&addr).await;
    let mut answers = client
        .stream_append(one_append(), RPCOption::new(Duration::from_millis(200)))
        .await
        .expect("the stream opens");
    let answer = answers.next().await.expect("an answer or an error");
    let err = answer.expect_err("the silent peer is reported");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(answers.next().await.is_none(), "the session ends");
    drop(answers);
    assert!(
        client.one_at_a_time.is_none(),
        "a silent peer is no reason to stop streaming"
    );
}

/// A session that ended (here: no answer in time) ends its stream of requests too, even though
/// openraft's request stream, which the next session reuses, has not ended.
#[tokio::test]
async fn an_ended_session_stops_sending_requests() {
    let (tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _stop) = serve(FakePeer {
        streams: true,
        ended: Some(tx),
    })
    .await;
    let mut client = peer_client(&addr).await;
    let requests = one_append().chain(futures::stream::pending());
    let mut answers = client
        .stream_append(requests, RPCOption::new(Duration::from_millis(200)))
        .await
        .expect("the stream opens");
    let answer = answers.next().await.expect("an answer or an error");
    assert!(answer.is_err(), "the silent peer is reported");
    drop(answers);
    let end = tokio::time::timeout(Duration::from_secs(30), ended.recv()).await;
    assert!(
        end.is_ok_and(|e| e.is_some()),
        "the peer still has an open stream of requests"
    );
}
