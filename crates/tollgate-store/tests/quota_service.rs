//! The gateway-facing Quota service on a real node over gRPC: the config watch stream delivers
//! the current config and every change, usage records are applied once per request id (a repeat
//! returns the original outcome, a changed body is a conflict), leases never exceed the limit,
//! and callers without an operator token are refused.

use futures::StreamExt;
use std::collections::BTreeMap;
use tollgate_client::StoreClient;
use tollgate_ledger::UsageAck;
use tollgate_proto::quota::{
    AcquireRequest, RecordUsageRequest, WatchConfigRequest, quota_client::QuotaClient,
};
use tollgate_proto::wire;
use tollgate_store::node::{StoreConfig, StoreNode};
use tollgate_types::admin::AdminOp;
use tollgate_types::config::{GatewayConfig, Org, OrgStatus, Project};
use tollgate_types::lease::AcquireResult;
use tollgate_types::limits::{Dimension, FailPolicy, Limit, Period, Scope};
use tollgate_types::secret;
use tollgate_types::usage::UsageRecord;

fn with_token<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

fn record(key: &str, rid: &str, tokens: u64) -> UsageRecord {
    UsageRecord {
        key: key.parse_id(),
        cost_micros: 0,
        ..tollgate_ledger::testkit::usage(rid, tokens, 0)
    }
}

trait ParseId {
    fn parse_id<T: TryFrom<String>>(&self) -> T
    where
        T::Error: std::fmt::Debug;
}
impl ParseId for str {
    fn parse_id<T: TryFrom<String>>(&self) -> T
    where
        T::Error: std::fmt::Debug,
    {
        T::try_from(self.to_owned()).expect("valid id")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_usage_and_leases_over_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = secret::generate(secret::ADMIN_ENV);
    let mut cfg = StoreConfig::new(
        1,
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().to_path_buf(),
        secret::generate("peer"),
    );
    // port 0: the node learns its port at bind; membership needs the real address, so bind first
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    cfg.listen = addr;
    cfg.initial_cluster = Some(BTreeMap::from([(1, addr.to_string())]));
    cfg.bootstrap_admin_token = Some(token.clone());
    let node = StoreNode::start(cfg).await.expect("start node");
    let admin = StoreClient::new(vec![addr.to_string()], Some(token.clone())).expect("client");
    let mut ready = false;
    for _ in 0..100 {
        if admin
            .write_with_id(
                "org".into(),
                &AdminOp::CreateOrg(Org {
                    id: "acme".parse_id(),
                    name: "A".into(),
                    status: OrgStatus::Active,
                    tier: 0,
                }),
            )
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "node became ready");
    admin
        .write(&AdminOp::CreateProject(Project {
            org: "acme".parse_id(),
            id: "web".parse_id(),
            name: "W".into(),
        }))
        .await
        .expect("project");
    let create_key = AdminOp::CreateKey {
        org: "acme".parse_id(),
        project: "web".parse_id(),
        name: "k".into(),
        env: "live".into(),
        allowed_models: vec![],
        scopes: vec![],
        expires_at_ms: None,
    };
    let key = admin
        .write_with_id("key-1".into(), &create_key)
        .await
        .expect("key");
    // a retry with the same request id (say, after a timeout) shows the same key again
    let retried = admin
        .write_with_id("key-1".into(), &create_key)
        .await
        .expect("retry");
    assert_eq!((&retried.id, &retried.secret), (&key.id, &key.secret));
    assert!(
        key.secret
            .as_deref()
            .is_some_and(|s| s.starts_with("tg_live_"))
    );
    let key_id = key.id.expect("key id");
    let budget = Limit {
        scope: Scope::Org {
            org: "acme".parse_id(),
        },
        model: None,
        dimension: Dimension::TokenBudget {
            period: Period::Total,
        },
        limit: 1000,
        burst: 0,
        fail_policy: FailPolicy::Strict,
        shadow: false,
    };
    admin
        .write(&AdminOp::PutLimit(budget.clone()))
        .await
        .expect("limit");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut q = QuotaClient::new(channel.clone());

    // Raft RPCs without the cluster's peer token are refused before they reach openraft
    let mut raft = tollgate_proto::raft::raft_client::RaftClient::new(channel.clone());
    let forged = raft
        .vote(tollgate_proto::raft::RaftPayload {
            data: vec![1, 2, 3],
        })
        .await;
    assert_eq!(
        forged.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );

    // unauthenticated callers are refused
    let denied = q
        .watch_config(tonic::Request::new(WatchConfigRequest { known_version: 0 }))
        .await;
    assert_eq!(
        denied.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );

    // the watch stream starts with the current config, and delivers the next change
    let mut stream = q
        .watch_config(with_token(WatchConfigRequest { known_version: 0 }, &token))
        .await
        .expect("watch")
        .into_inner();
    let first = stream.next().await.expect("a snapshot").expect("ok");
    let cfg: GatewayConfig = serde_json::from_slice(&first.config_json).expect("json");
    assert!(
        cfg.keys.iter().any(|k| k.id.as_str() == key_id),
        "the key digest is shipped"
    );
    assert_eq!(cfg.limits, vec![budget.clone()]);
    admin
        .write(&AdminOp::UpdateOrg {
            id: "acme".parse_id(),
            name: Some("Acme 2".into()),
            status: None,
            tier: None,
        })
        .await
        .expect("update");
    let second = stream.next().await.expect("a change").expect("ok");
    assert!(second.version > first.version);
    let cfg2: GatewayConfig = serde_json::from_slice(&second.config_json).expect("json");
    assert_eq!(cfg2.orgs[0].name, "Acme 2");

    // leases: never more than the limit across gateways
    let want = serde_json::json!({"wants": [{"limit": budget.key(), "want": 700}]});
    let acquire = |gw: &str| AcquireRequest {
        gateway_id: gw.into(),
        request_id: format!("acq-{gw}"),
        body_json: want.to_string().into_bytes(),
        ..Default::default()
    };
    let g1: AcquireResult = serde_json::from_slice(
        &q.acquire(with_token(acquire("gw1"), &token))
            .await
            .expect("acquire")
            .into_inner()
            .result_json,
    )
    .expect("json");
    let g2: AcquireResult = serde_json::from_slice(
        &q.acquire(with_token(acquire("gw2"), &token))
            .await
            .expect("acquire")
            .into_inner()
            .result_json,
    )
    .expect("json");
    assert_eq!((g1.grants[0].granted, g2.grants[0].granted), (700, 300));

    // usage: exactly once per request id, conflicts reported, bodies of failed ids stay failed
    let ship = |rid: &str, recs: Vec<UsageRecord>| RecordUsageRequest {
        gateway_id: "gw1".into(),
        request_id: rid.into(),
        records_json: serde_json::to_vec(&recs).expect("json"),
        ..Default::default()
    };
    let batch = vec![record(&key_id, "r1", 50), record(&key_id, "r2", 60)];
    let acks = |bytes: Vec<u8>| -> Vec<UsageAck> { serde_json::from_slice(&bytes).expect("acks") };
    let a1 = acks(
        q.record_usage(with_token(ship("b1", batch.clone()), &token))
            .await
            .expect("usage")
            .into_inner()
            .acks_json,
    );
    assert_eq!(
        a1,
        vec![UsageAck::Accepted { seq: 1 }, UsageAck::Accepted { seq: 2 }]
    );
    // the same batch again (a shipping retry, same or new id): duplicates with the original
    // sequence numbers, nothing added
    let again = acks(
        q.record_usage(with_token(ship("b1", batch.clone()), &token))
            .await
            .expect("usage")
            .into_inner()
            .acks_json,
    );
    assert_eq!(
        again,
        vec![
            UsageAck::Duplicate { seq: 1 },
            UsageAck::Duplicate { seq: 2 }
        ]
    );
    // the same records under a new shipping id: duplicates, nothing added
    let dup = acks(
        q.record_usage(with_token(ship("b2", batch), &token))
            .await
            .expect("usage")
            .into_inner()
            .acks_json,
    );
    assert_eq!(
        dup,
        vec![
            UsageAck::Duplicate { seq: 1 },
            UsageAck::Duplicate { seq: 2 }
        ]
    );
    let conflict = acks(
        q.record_usage(with_token(
            ship("b3", vec![record(&key_id, "r1", 999)]),
            &token,
        ))
        .await
        .expect("usage")
        .into_inner()
        .acks_json,
    );
    assert_eq!(conflict, vec![UsageAck::Conflict { seq: 1 }]);

    // the binary encoding gateways send (tollgate_proto::wire) means the same: a repeat of
    // acquire "acq-gw1" in binary gets the first outcome, in binary; records in binary dedup
    // against the same records sent as JSON; a malformed binary body is refused with its field
    let body: tollgate_types::lease::AcquireBody =
        serde_json::from_value(want.clone()).expect("body");
    let bin_acquire = AcquireRequest {
        gateway_id: "gw1".into(),
        request_id: "acq-gw1".into(),
        body_bin: wire::encode(&body).expect("encode"),
        ..Default::default()
    };
    let answer = q
        .acquire(with_token(bin_acquire, &token))
        .await
        .expect("acquire")
        .into_inner();
    assert!(answer.result_json.is_empty());
    let g1_bin: AcquireResult = wire::decode(&answer.result_bin).expect("binary result");
    assert_eq!((g1_bin.grants, g1_bin.acks), (g1.grants, g1.acks));
    let bin_usage = RecordUsageRequest {
        gateway_id: "gw1".into(),
        request_id: "b4".into(),
        records_bin: wire::encode(&vec![record(&key_id, "r2", 60)]).expect("encode"),
        ..Default::default()
    };
    let acks_bin: Vec<UsageAck> = wire::decode(
        &q.record_usage(with_token(bin_usage, &token))
            .await
            .expect("usage")
            .into_inner()
            .acks_bin,
    )
    .expect("binary acks");
    assert_eq!(acks_bin, vec![UsageAck::Duplicate { seq: 2 }]);
    let garbage = RecordUsageRequest {
        gateway_id: "gw1".into(),
        request_id: "b5".into(),
        records_bin: vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40],
        ..Default::default()
    };
    let refused = q
        .record_usage(with_token(garbage, &token))
        .await
        .expect_err("a malformed binary body");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("records_bin"), "{refused:?}");

    let ledger: serde_json::Value = admin
        .read(&tollgate_types::admin::AdminQuery::UsageExport {
            since_seq: 0,
            limit: 100,
        })
        .await
        .expect("export");
    assert_eq!(ledger.as_array().map(Vec::len), Some(2), "{ledger}");
    node.shutdown().await;
}
