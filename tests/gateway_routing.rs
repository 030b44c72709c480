//! Gateway routing and failure semantics over real processes: a store, simulated upstreams and a
//! gateway on loopback. Outcomes only — which upstream served what, what the client received —
//! never timings.

mod harness;

use harness::gateway::{Stack, chat_body, model};
use serde_json::{Value, json};

fn rid(r: &harness::gateway::Resp) -> String {
    r.header("x-request-id").expect("x-request-id").to_owned()
}

fn served_by(s: &Stack, n: usize, id: &str) -> Vec<usize> {
    (0..n).filter(|i| s.served(*i, id).is_some()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_moves_off_a_failing_endpoint_to_its_peer() {
    // eject on the first failure, for longer than the test: with the default of 5 consecutive
    // failures, p2c (which prices a failure as 1 s of latency) may route too few requests to the
    // failing endpoint to eject it, and later probe it again as its cost decays
    let s = Stack::start(
        2,
        |m| vec![model("m", &[&[&m[0], &m[1]]])],
        &["--eject-after-failures", "1", "--eject-base-ms", "600000"],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(s.chat(chat_body(2, false)).status, 200);
    }
    s.behave(0, json!({"fail_rate": 1.0, "fail_status": 500}));
    // p2c between two endpoints always picks the cheaper one: make the healthy peer slow for a
    // moment, so that its peak-EWMA cost jumps above the failing endpoint's and the failing
    // one is tried (deterministically, not whenever the peer's latency happens to spike)
    s.behave(1, json!({"ttft_ms": 300}));
    let before = s.stats(0)["requests"].as_u64().expect("requests");
    let mut tried = false;
    for _ in 0..10 {
        // every request still succeeds: a failed attempt is retried on the peer
        let r = s.chat(chat_body(2, false));
        assert_eq!(r.status, 200, "{}", r.body);
        if s.stats(0)["requests"].as_u64() > Some(before) {
            tried = true;
            break;
        }
    }
    assert!(tried, "the failing endpoint was never tried");
    s.behave(1, json!({"ttft_ms": 0}));
    let seen_by_0 = s.stats(0)["requests"].as_u64().expect("requests");
    for _ in 0..20 {
        let r = s.chat(chat_body(2, false));
        assert_eq!(r.status, 200);
        assert_eq!(
            served_by(&s, 2, &rid(&r)),
            vec![1],
            "only the healthy peer serves"
        );
    }
    assert_eq!(
        s.stats(0)["requests"].as_u64(),
        Some(seen_by_0),
        "no traffic reaches the failing endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_failures_eject_an_endpoint() {
    // long ejection so the test sees it (the endpoint's /models keeps answering probes)
    let s = Stack::start(
        2,
        |m| vec![model("m", &[&[&m[0]], &[&m[1]]])],
        &["--eject-after-failures", "3", "--eject-base-ms", "600000"],
    )
    .await;
    s.behave(0, json!({"fail_rate": 1.0, "fail_status": 503}));
    for _ in 0..10 {
        let r = s.chat(chat_body(2, false));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(served_by(&s, 2, &rid(&r)).last(), Some(&1));
    }
    assert_eq!(
        s.stats(0)["requests"].as_u64(),
        Some(3),
        "tried until the third consecutive failure, then ejected"
    );
    let series = format!(
        "tollgate_gateway_endpoint_ejected{{endpoint=\"http://{}/v1\"}}",
        s.mock(0)
    );
    assert_eq!(s.metric(&series), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_that_is_all_down_falls_back_to_the_next() {
    let s = Stack::start(3, |m| vec![model("m", &[&[&m[0], &m[1]], &[&m[2]]])], &[]).await;
    s.behave(0, json!({"down": true}));
    s.behave(1, json!({"down": true}));
    for stream in [false, true] {
        for _ in 0..5 {
            let r = s.chat(chat_body(3, stream));
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(served_by(&s, 3, &rid(&r)).last(), Some(&2));
            let oracle = s.served(2, &rid(&r)).expect("fallback served it");
            assert_eq!(oracle["completion_tokens"], 3);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_happen_before_the_first_byte_and_never_after() {
    let s = Stack::start(2, |m| vec![model("m", &[&[&m[0], &m[1]]])], &[]).await;
    // before the first byte: a 500 from one endpoint is retried on the other
    s.behave(0, json!({"fail_rate": 1.0}));
    s.behave(1, json!({"fail_rate": 1.0}));
    let r = s.chat(chat_body(2, false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_error");
    assert_eq!(
        served_by(&s, 2, &rid(&r)),
        vec![0, 1],
        "both endpoints were tried once"
    );
    // after the first byte: a stream that breaks is not retried anywhere
    s.behave(0, json!({"fail_rate": 0.0, "drop_after_tokens": 2}));
    s.behave(1, json!({"fail_rate": 0.0, "drop_after_tokens": 2}));
    for _ in 0..5 {
        let r = s.chat(chat_body(10, true));
        assert_eq!(r.status, 200);
        let id = rid(&r);
        let who = served_by(&s, 2, &id);
        assert_eq!(who.len(), 1, "served exactly once: {who:?}");
        assert_eq!(
            s.served(who[0], &id).expect("served")["completion_tokens"],
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mid_stream_drop_ends_in_an_error_event_never_a_clean_end() {
    let s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    s.behave(0, json!({"drop_after_tokens": 3}));
    let r = s.chat(chat_body(10, true));
    assert_eq!(r.status, 200);
    let events = r.events();
    let content: Vec<&(Option<String>, String)> =
        events.iter().filter(|(n, _)| n.is_none()).collect();
    assert_eq!(
        content.len(),
        3,
        "the three chunks sent before the drop: {events:?}"
    );
    assert!(events.iter().all(|(_, d)| d != "[DONE]"), "no [DONE]");
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("error"));
    let err: Value = serde_json::from_str(data).expect("error JSON");
    assert_eq!(err["error"]["code"], "upstream_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_hits_the_idle_timeout() {
    let s = Stack::start(
        1,
        |m| vec![model("m", &[&[&m[0]]])],
        &["--stream-idle-timeout-ms", "300"],
    )
    .await;
    s.behave(0, json!({"stall_after_tokens": 2}));
    let r = s.chat(chat_body(10, true));
    let events = r.events();
    assert_eq!(events.iter().filter(|(n, _)| n.is_none()).count(), 2);
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("error"));
    let err: Value = serde_json::from_str(data).expect("error JSON");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert_eq!(
        s.metric("tollgate_gateway_stream_failures_total{reason=\"idle_timeout\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_stripped_unless_asked_and_always_metered() {
    let s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    let plain = s.chat(chat_body(4, true));
    assert!(!plain.body.contains("\"usage\""), "{}", plain.body);
    assert_eq!(plain.events().last().map(|e| e.1.as_str()), Some("[DONE]"));
    let mut asked = chat_body(4, true);
    asked["stream_options"] = json!({"include_usage": true});
    let r = s.chat(asked);
    let events = r.events();
    let usage: Value = serde_json::from_str(&events[events.len() - 2].1).expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["choices"], json!([]));
    // both streams were metered (3 prompt words each, 4 completion tokens each)
    assert_eq!(
        s.metric("tollgate_gateway_completion_tokens_total "),
        Some(8.0)
    );
    assert_eq!(s.metric("tollgate_gateway_prompt_tokens_total "), Some(6.0));
    // and journaled: a reservation and a settlement each, before the client saw the end
    assert_eq!(
        s.metric("tollgate_gateway_journal_appends_total "),
        Some(4.0)
    );
    assert_eq!(
        s.metric("tollgate_gateway_journal_errors_total "),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_reach_the_upstream_untouched() {
    let s = Stack::start(1, |m| vec![model("m", &[&[&m[0]]])], &[]).await;
    let last = || harness::gateway::http(s.mock(0), "GET", "/mock/last_request", &[], "").json();
    let mut body = chat_body(2, false);
    body["x_vendor_option"] = json!({"nested": [1, 2, {"k": "v"}]});
    body["seed"] = json!(42);
    assert_eq!(s.chat(body.clone()).status, 200);
    assert_eq!(
        last(),
        body,
        "a request the gateway need not change goes upstream as sent"
    );
    let mut stream = chat_body(2, true);
    stream["x_vendor_option"] = json!("kept");
    assert_eq!(s.chat(stream.clone()).status, 200);
    let seen = last();
    assert_eq!(seen["x_vendor_option"], "kept");
    assert_eq!(
        seen["stream_options"]["include_usage"], true,
        "usage is requested for metering"
    );
}

/// A raw HTTP/1.1 upstream on loopback for one streamed answer: one complete SSE event, then
/// `tail` bytes of an event that never ends; it holds the connection until the gateway closes
/// it (at most 20 s). Answers `GET` (health probes) with 404.
fn endless_event_upstream(tail: usize) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr").to_string();
    let serve = move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(20)));
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let (mut line, mut len, mut first) = (String::new(), 0usize, String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if first.is_empty() {
                    first = line.clone();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            if first.starts_with("GET") {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                continue;
            }
            let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
            let open = format!("data: {}", "x".repeat(tail));
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for chunk in [event, open.as_str()] {
                out.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
            }
            let _ = conn.write_all(&out);
            // the event never ends: wait for the gateway to give up and close
            let _ = reader.read_to_end(&mut Vec::new());
            return;
        }
    };
    (addr, std::thread::spawn(serve))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_never_ends_is_cut_at_the_size_cap() {
    let (raw, upstream) = endless_event_upstream(64 << 10);
    let s = Stack::start(
        0,
        |_| vec![model("m", &[&[&raw]])],
        &["--upstream-body-bytes-max", "16384"],
    )
    .await;
    let r = s.chat(chat_body(10, true));
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(
        events.iter().filter(|(n, _)| n.is_none()).count(),
        1,
        "the one complete event is relayed: {events:?}"
    );
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("error"), "{events:?}");
    let err: Value = serde_json::from_str(data).expect("error JSON");
    assert_eq!(err["error"]["code"], "upstream_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("16384")),
        "{err}"
    );
    assert_eq!(
        s.metric("tollgate_gateway_stream_failures_total{reason=\"upstream_broken\"}"),
        Some(1.0)
    );
    drop(s);
    upstream
        .join()
        .expect("the raw upstream ends once the gateway closed");
}
