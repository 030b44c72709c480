//! Mutual TLS on the store's port (DESIGN.md §11), over real processes on loopback: a CA and
//! role certificates from `tollgate certs`, a 3-node cluster replicating over TLS, a gateway
//! serving with its gateway certificate, and each role refused where it does not belong.

mod harness;

use harness::gateway::{Stack, chat_body, model};
use harness::{Cluster, tls_files};
use serde_json::Value;
use tollgate_client::StoreClient;
use tollgate_proto::quota::{AcquireRequest, quota_client::QuotaClient};
use tollgate_proto::raft::{RaftPayload, raft_client::RaftClient};
use tollgate_proto::tls::{TlsFiles, store_endpoint};
use tollgate_types::admin::AdminQuery;

async fn channel(addr: &str, files: &TlsFiles) -> tonic::transport::Channel {
    let tls = files.client_config().expect("client TLS config");
    store_endpoint(addr, Some(&tls))
        .expect("endpoint")
        .connect()
        .await
        .expect("TLS connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_replicates_over_mutual_tls_and_each_role_stays_in_its_lane() {
    let cluster = Cluster::start_with(3, 10_000, true);
    cluster.wait_ready().await;
    harness::create_orgs(&cluster.client(), "tls", 0..3).await;
    let (_, digest) = cluster.wait_converged().await;
    assert!(!digest.is_empty(), "three nodes agree over TLS");
    let certs = cluster.certs.clone().expect("certs");
    let addr = cluster.addrs()[0].clone();

    // no certificate: the handshake itself is refused (plain HTTP/2 to a TLS port fails too)
    let plain = StoreClient::new(vec![addr.clone()], Some(cluster.token.clone())).expect("client");
    assert!(plain.read::<Value>(&AdminQuery::ListOrgs).await.is_err());

    // a gateway certificate may read (the usage export a gateway serves) but never write
    let as_gateway = StoreClient::new(cluster.addrs(), Some(cluster.token.clone()))
        .expect("client")
        .with_tls(&tls_files(&certs, "gateway"))
        .expect("gateway TLS");
    let read: Value = as_gateway
        .read(&AdminQuery::ListOrgs)
        .await
        .expect("a gateway certificate reads");
    assert_eq!(read.as_array().map(Vec::len), Some(3));
    let denied = as_gateway
        .write(&harness::org_op("tls-from-gateway"))
        .await
        .expect_err("a gateway certificate may not write");
    assert!(
        denied.to_string().contains("gateway certificate"),
        "{denied}"
    );

    // an admin certificate may not take leases or watch config (the quota service)
    let mut quota = QuotaClient::new(channel(&addr, &tls_files(&certs, "admin")).await);
    let status = quota
        .acquire(AcquireRequest {
            gateway_id: "intruder".into(),
            request_id: "r1".into(),
            body_json: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("an admin certificate may not acquire leases");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // and only store certificates speak Raft, even with the peer token
    let mut raft = RaftClient::new(channel(&addr, &tls_files(&certs, "gateway")).await);
    let mut req = tonic::Request::new(RaftPayload { data: Vec::new() });
    req.metadata_mut().insert(
        "x-tollgate-peer-token",
        cluster.peer_token.parse().expect("ascii"),
    );
    let status = raft
        .vote(req)
        .await
        .expect_err("a gateway certificate may not vote");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_with_its_certificate_gets_config_leases_and_ships_usage_over_tls() {
    let s = Stack::start_with(1, |m| vec![model("m", &[&[&m[0]]])], &[], true).await;
    let r = s.chat(chat_body(4, false));
    assert_eq!(r.status, 200, "{}", r.body);
    // the usage record travels in the next Acquire and lands in the ledger
    let client = s.cluster.client();
    let deadline = std::time::Instant::now() + harness::CONVERGE_TIMEOUT;
    loop {
        let page: Vec<Value> = client
            .read(&AdminQuery::UsageExport {
                since_seq: 0,
                limit: 10,
            })
            .await
            .expect("export");
        if let Some(e) = page.first() {
            assert_eq!(e["record"]["org"], "acme", "{e}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage never reached the ledger: {page:?}\n{}",
            s.gateway.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs a one-node `tollgate store` with `extra` flags that must make it refuse to start;
/// returns its stderr.
fn store_refuses(data_dir: &str, extra: &[&str]) -> String {
    let listen = format!("127.0.0.1:{}", harness::free_port());
    let out = std::process::Command::new(harness::BIN)
        .args([
            "store",
            "--node-id",
            "1",
            "--listen",
            &listen,
            "--data-dir",
            data_dir,
        ])
        .args(["--initial-cluster", "1=127.0.0.1:1"])
        .args(["--peer-token", "0123456789abcdef0123456789abcdef"])
        .args(extra)
        .output()
        .expect("run");
    assert!(!out.status.success(), "started with {extra:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_flags_come_all_three_or_not_at_all() {
    let err = store_refuses("/nonexistent", &["--tls-ca", "ca.pem"]);
    assert!(err.contains("--tls-ca, --tls-cert and --tls-key"), "{err}");
}

#[test]
fn a_store_with_unreadable_or_malformed_tls_files_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |f: &str| dir.path().join(f).display().to_string();
    let start = |ca: &str, cert: &str, key: &str| {
        store_refuses(
            &d("node"),
            &["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key],
        )
    };
    let err = start(&d("ca.pem"), &d("c.pem"), &d("k.pem"));
    assert!(err.contains("reading the certificate"), "{err}");
    for f in ["ca.pem", "c.pem", "k.pem"] {
        std::fs::write(dir.path().join(f), "not a PEM file\n").expect("write");
    }
    let err = start(&d("ca.pem"), &d("c.pem"), &d("k.pem"));
    assert!(err.contains("TLS"), "{err}");
}

#[test]
fn certs_refuses_to_replace_a_ca_or_issue_an_unknown_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    harness::make_certs(dir.path(), &[("n1", "store")]);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(harness::BIN)
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let d = dir.path().display().to_string();
    assert!(run(&["certs", "init", "--dir", &d]).contains("already exists"));
    let e = run(&[
        "certs", "issue", "--dir", &d, "--role", "root", "--name", "x",
    ]);
    assert!(e.contains("use store, gateway or admin"), "{e}");
    let e = run(&[
        "certs", "issue", "--dir", &d, "--role", "admin", "--name", "ca",
    ]);
    assert!(e.contains("not `ca`"), "{e}");
    // the key of an issued certificate is private to its owner
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("n1-key.pem"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
