//! Gateway configuration and tenancy over real processes: changes from the store apply without a
//! restart, keys and orgs are checked on every request, tenants cannot see each other's
//! idempotent responses, and the gateway serves from its last config while the store is down.

mod harness;

use harness::free_port;
use harness::gateway::{Proc, Stack, chat_body, create_key, http, model, wait_http};
use serde_json::json;
use tollgate_types::admin::AdminOp;
use tollgate_types::config::{OrgStatus, Project};
use tollgate_types::{KeyId, ModelName, OrgId, ProjectId};

fn code(r: &harness::gateway::Resp) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn model_ids(s: &Stack, key: &str) -> Vec<String> {
    let auth = format!("Bearer {key}");
    let r = http(&s.gw, "GET", "/v1/models", &[("authorization", &auth)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_apply_without_restart() {
    let s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    let client = s.cluster.client();
    assert_eq!(model_ids(&s, &s.key), vec!["m"]);
    let v = client
        .write(&AdminOp::PutModel(model("m2", &[&[s.mock(0)]])))
        .await
        .expect("put model")
        .config_version;
    s.wait_config(v);
    assert_eq!(model_ids(&s, &s.key), vec!["m", "m2"]);
    let mut body = chat_body(2, false);
    body["model"] = json!("m2");
    assert_eq!(s.chat(body).status, 200);

    // a key restricted to one model sees and uses only that one
    let narrow = create_key(
        &client,
        "acme",
        "web",
        vec![ModelName::parse("m").expect("m")],
    )
    .await;
    let v = client
        .write(&AdminOp::PutModel(model("m3", &[&[s.mock(0)]])))
        .await
        .expect("put model")
        .config_version;
    s.wait_config(v);
    assert_eq!(model_ids(&s, &narrow), vec!["m"]);
    let mut body = chat_body(2, false);
    body["model"] = json!("m2");
    let r = s.post("/v1/chat/completions", &narrow, body);
    assert_eq!((r.status, code(&r)), (403, "permission_denied".into()));
    let auth = format!("Bearer {narrow}");
    let r = http(
        &s.gw,
        "GET",
        "/v1/models/m2",
        &[("authorization", &auth)],
        "",
    );
    assert_eq!((r.status, code(&r)), (404, "model_not_found".into()));

    // revoking the key and freezing the org take effect without a restart
    let key_id = tollgate_types::secret::parse(&narrow)
        .expect("key")
        .key_id();
    let v = client
        .write(&AdminOp::RevokeKey {
            id: KeyId::parse(key_id).expect("key id"),
        })
        .await
        .expect("revoke")
        .config_version;
    s.wait_config(v);
    let r = s.post("/v1/chat/completions", &narrow, chat_body(2, false));
    assert_eq!((r.status, code(&r)), (403, "permission_denied".into()));
    let v = client
        .write(&AdminOp::UpdateOrg {
            id: OrgId::parse("acme").expect("org"),
            name: None,
            status: Some(OrgStatus::Frozen),
            tier: None,
        })
        .await
        .expect("freeze")
        .config_version;
    s.wait_config(v);
    let r = s.chat(chat_body(2, false));
    assert_eq!((r.status, code(&r)), (403, "permission_denied".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_are_scoped_to_the_org() {
    let s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    let client = s.cluster.client();
    client.write(&harness::org_op("other")).await.expect("org");
    let v = client
        .write(&AdminOp::CreateProject(Project {
            org: OrgId::parse("other").expect("org"),
            id: ProjectId::parse("p").expect("project"),
            name: "P".into(),
        }))
        .await
        .expect("project")
        .config_version;
    let other = create_key(&client, "other", "p", vec![]).await;
    s.wait_config(v + 1);
    let send = |key: &str| {
        let auth = format!("Bearer {key}");
        http(
            &s.gw,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth), ("idempotency-key", "same-key")],
            &chat_body(3, false).to_string(),
        )
    };
    let first = send(&s.key);
    let replay = send(&s.key);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], first.json()["id"]);
    // another tenant using the same key string gets its own request, not acme's response
    let theirs = send(&other);
    assert_eq!(theirs.status, 200);
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(theirs.json()["id"], first.json()["id"]);
    // a wrong key never reaches anyone's stored response
    let r = send("tg_test_0000000000000000000000000000000_000000");
    assert_eq!((r.status, code(&r)), (401, "invalid_api_key".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_from_its_last_config_while_the_store_is_down() {
    let mut s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    for n in &mut s.cluster.nodes {
        n.kill9();
    }
    for _ in 0..10 {
        let r = s.chat(chat_body(2, false));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let ready = http(&s.gw, "GET", "/readyz", &[], "");
    assert_eq!(ready.status, 200);
    assert!(ready.json()["config_version"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_and_unavailable_until_the_first_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = format!("127.0.0.1:{}", free_port());
    let dead_store = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "gateway",
        "--listen",
        &gw,
        "--store",
        &dead_store,
        "--data-dir",
        &dir.path().join("gw").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = Proc::spawn(&args, dir.path().join("gw.log"));
    wait_http(&gw, "/readyz", 503, &p);
    assert_eq!(http(&gw, "GET", "/healthz", &[], "").status, 200);
    let r = http(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer tg_test_x")],
        &chat_body(1, false).to_string(),
    );
    assert_eq!((r.status, code(&r)), (503, "store_unavailable".into()));
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_while_the_first_is_in_flight_conflicts_then_replays() {
    let s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    // the upstream holds every answer for a while, so the first request stays in flight
    s.behave(0, json!({"ttft_ms": 3000}));
    let send = {
        let gw = s.gw.clone();
        let auth = format!("Bearer {}", s.key);
        move || {
            http(
                &gw,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &auth), ("idempotency-key", "in-flight-1")],
                &chat_body(3, false).to_string(),
            )
        }
    };
    let first = std::thread::spawn(send.clone());
    // wait until the gateway holds the key (state, not time)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.metric("tollgate_gateway_idempotency_keys ") != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "key never registered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dup = send();
    assert_eq!(
        (dup.status, code(&dup)),
        (409, "idempotency_conflict".into())
    );
    let first = first.join().expect("first request");
    assert_eq!(first.status, 200);
    let replay = send();
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], first.json()["id"]);
    assert_eq!(
        s.stats(0)["requests"].as_u64(),
        Some(1),
        "the upstream served the key once"
    );
}

/// Customer connections are served by several event loops (`--event-loops`, one thread each,
/// sharing the listener): many connections at once all get answers, and on SIGTERM a stream
/// already under way is relayed to its end (`[DONE]`) before the process exits, while the
/// listener stops taking new connections.
#[tokio::test(flavor = "multi_thread")]
async fn event_loops_serve_together_and_a_stop_lets_a_running_stream_finish() {
    use std::io::{BufRead, BufReader, Write};
    let mut s = Stack::start(
        1,
        |m| vec![model("m", &[&[&m[0]]])],
        &["--event-loops", "3"],
    )
    .await;
    let answered: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| s.chat(chat_body(4, false)).status))
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    assert_eq!(answered, vec![200; 12]);

    // 40 tokens at 20 per second: about two seconds of stream
    s.behave(0, json!({"tokens_per_sec": 20, "chunk_tokens": 1}));
    let body = chat_body(40, true).to_string();
    let mut conn = std::net::TcpStream::connect(&s.gw).expect("connect");
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.key,
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !line.starts_with("data: {") {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "the stream ended before its first event"
        );
    }
    // the first event is here: stop the gateway while the stream runs
    let pid = s.gateway.pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(sent.is_ok_and(|st| st.success()), "SIGTERM sent");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    assert!(
        rest.contains("data: [DONE]"),
        "the stream was cut by the stop: {rest}"
    );
    assert!(
        s.gateway.terminate(),
        "the gateway did not exit after the drain"
    );
    assert!(
        std::net::TcpStream::connect(&s.gw).is_err(),
        "the listener still takes connections"
    );
}
