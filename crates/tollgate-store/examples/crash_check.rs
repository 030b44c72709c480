//! Process-crash check of the log store alone: `write <dir>` appends entries forever, printing
//! each index once its append was reported durable (the group commit's callback); kill it with SIGKILL, then `check <dir> <index>`
//! reopens the store and reports whether the last printed index is present.

use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, LogId};
use std::io::Write;
use tollgate_ledger::{Actor, Command, Request};
use tollgate_store::storage::{Durable, LogStore};
use tollgate_store::types::{Entry, TypeConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.get(1).cloned().unwrap_or_default());
    let mut log = LogStore::open(Durable::open(&dir)?)?;
    if args.first().map(String::as_str) == Some("check") {
        let want: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
        let state = log.get_log_state().await?;
        let last = state.last_log_id.map_or(0, |l| l.index);
        let found = !log.try_get_log_entries(want..=want).await?.is_empty();
        println!("last index {last}, acknowledged {want} present: {found}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for i in 1.. {
        let org = tollgate_types::OrgId::parse("a")?;
        let req = Request {
            id: format!("r{i}"),
            ts_ms: i,
            actor: Actor::System,
            command: Command::DeleteOrg { id: org },
        };
        let log_id = LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            i,
        );
        let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
        log.append(
            vec![Entry {
                log_id,
                payload: EntryPayload::Normal(req),
            }],
            IOFlushed::signal(tx),
        )
        .await?;
        rx.await??;
        writeln!(out, "{i}")?;
        out.flush()?;
    }
    Ok(())
}
