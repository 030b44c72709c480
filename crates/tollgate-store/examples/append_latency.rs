//! Measures `LogStore::append` latency until the entry is reported durable (insert, then the
//! group commit's flush + fdatasync and callback) for entries of a given size:
//! `cargo run --release -p tollgate-store --example append_latency -- <entries> <value-bytes>`.

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, LogId};
use std::time::Instant;
use tollgate_ledger::{Actor, Command, Request};
use tollgate_store::storage::{Durable, LogStore};
use tollgate_store::types::{Entry, TypeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, size) = (
        args.first().copied().unwrap_or(500),
        args.get(1).copied().unwrap_or(20_000),
    );
    let dir = tempfile::tempdir()?;
    let mut log = LogStore::open(Durable::open(dir.path())?)?;
    let mut lat = Vec::new();
    for i in 1..=n {
        let org = tollgate_types::OrgId::parse(&"a".repeat(60))?;
        let name = "x".repeat(size as usize);
        let req = Request {
            id: format!("r{i}"),
            ts_ms: i,
            actor: Actor::System,
            command: Command::UpdateOrg {
                id: org,
                name: Some(name),
                status: None,
                tier: None,
            },
        };
        let entry = Entry {
            log_id: LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                i,
            ),
            payload: EntryPayload::Normal(req),
        };
        let t = Instant::now();
        // until durable: the group-commit thread reports it through the callback
        let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
        log.append(vec![entry], IOFlushed::signal(tx)).await?;
        rx.await??;
        lat.push(t.elapsed().as_micros());
    }
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "entries={n} bytes={size} p50={}us p90={}us p99={}us max={}us",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
