//! `tollgate dev --store-nodes 3 --gateways 2`: one command brings up a three-node store, two
//! gateways and two simulated upstreams; both gateways serve the demo key; Ctrl-C (SIGINT)
//! stops everything and the process exits cleanly.

mod harness;

use harness::gateway::http;
use harness::{BIN, free_port};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn dev_runs_a_multi_node_stack_and_stops_on_sigint() {
    let port = |n: u16| {
        // a block of n consecutive free ports is not guaranteed; pick until the block is free
        loop {
            let p = free_port();
            if p < 60_000
                && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
            {
                return p;
            }
        }
    };
    let (store, gw) = (port(3), port(2));
    let ups = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--output",
            "json",
            "--store-nodes",
            "3",
            "--gateways",
            "2",
        ])
        .args(["--store-listen", &format!("127.0.0.1:{store}")])
        .args(["--gateway-listen", &format!("127.0.0.1:{gw}")])
        .args(["--upstream-listen", &ups])
        .env("TOLLGATE_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tollgate dev");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the ready line");
    let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("not JSON ({e}): {line}")
    });
    assert_eq!(info["store_addrs"].as_array().map(Vec::len), Some(3));
    let key = info["api_key"].as_str().expect("api key").to_owned();
    let auth = format!("Bearer {key}");
    for url in info["gateway_urls"].as_array().expect("gateway urls") {
        let addr = url
            .as_str()
            .and_then(|u| u.strip_prefix("http://"))
            .and_then(|u| u.strip_suffix("/v1"))
            .expect("gateway url");
        let body = json!({"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        let r = http(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("authorization", &auth)],
            &body.to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["usage"]["completion_tokens"], 2);
    }
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "SIGINT sent");
    let status = child.wait().expect("wait");
    assert!(status.success(), "tollgate dev exited with {status}");
}
