//! The ledger archive under the state machine store (DU-2): usage applied on one store is read
//! back from its archive, travels inside a snapshot to another store, survives a reopen from the
//! data dir (the archive cut back to the snapshot, the log re-applied on top), and a snapshot
//! whose ledger does not match its state is refused before anything changes.

use futures::stream;
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use tollgate_ledger::testkit;
use tollgate_ledger::usage::LedgerEntry;
use tollgate_ledger::{Actor, Command, Request};
use tollgate_store::storage::{Durable, SmHandle, SnapData, StateMachineStore, TransferFile};
use tollgate_store::types::{Entry, TypeConfig};
use tollgate_types::secret::ClusterSecret;
use tollgate_types::usage::UsageRecord;

fn record(n: u64) -> UsageRecord {
    testkit::usage(&format!("r{n}"), n, 1)
}

/// The commands that set up a tenant, then `batches` usage batches of 100 records.
fn commands(batches: u64) -> Vec<Command> {
    let mut cmds = testkit::tenant(&ClusterSecret::generate());
    for b in 0..batches {
        cmds.push(Command::RecordUsage {
            records: (b * 100..(b + 1) * 100).map(record).collect(),
        });
    }
    cmds
}

fn entries(cmds: Vec<Command>, first_index: u64) -> Vec<Entry> {
    cmds.into_iter()
        .enumerate()
        .map(|(i, command)| {
            let index = first_index + i as u64;
            let req = Request {
                id: format!("req-{index}"),
                ts_ms: 1_700_000_000_000 + index,
                actor: Actor::System,
                command,
            };
            Entry::new_normal(log_id::<TypeConfig>(1, 1, index), req)
        })
        .collect()
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(stream::iter(items)).await.expect("apply");
}

fn ledger(h: &SmHandle) -> Vec<LedgerEntry> {
    let len = h.read(|d| d.state.ledger.len());
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        let page = h
            .ledger_page(out.len() as u64, 333, len)
            .expect("ledger page");
        assert!(
            !page.is_empty(),
            "the archive holds every entry up to {len}"
        );
        out.extend(page);
    }
    out
}

fn open(dir: &std::path::Path) -> StateMachineStore {
    let durable = Durable::open(dir).expect("open durable");
    StateMachineStore::open(dir, durable.log_meter()).expect("open sm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_lives_in_the_archive_through_snapshots_and_restarts() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let mut a = open(dir_a.path());
    let cmds = commands(5);
    let setup = cmds.len() as u64 - 5;
    apply(&mut a, entries(cmds, 1)).await;
    let written = ledger(&a.handle());
    assert_eq!(written.len(), 500);
    assert!(
        written
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1)
    );
    assert_eq!(written[42].record, record(42));
    assert!(
        a.handle().read(|d| d.state.ledger.recent().is_empty()),
        "the state keeps no entries once applied"
    );

    // a snapshot, sent as bytes to another store, brings the whole ledger over
    let built = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let current = a.get_current_snapshot().await.expect("read").expect("one");
    assert_eq!(current.meta, built.meta);
    let sent = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        current.snapshot.write_transfer(&mut out).map(|()| out)
    })
    .await
    .expect("join")
    .expect("transfer bytes");
    let incoming = tempfile::tempdir().expect("dir");
    let received = |bytes: &[u8]| {
        let file = TransferFile::from_bytes(incoming.path(), bytes).expect("transfer file");
        SnapData::Received(file)
    };
    let mut b = open(dir_b.path());
    b.install_snapshot(&built.meta, received(&sent))
        .await
        .expect("install");
    assert_eq!(
        std::fs::read_dir(incoming.path()).expect("ls").count(),
        0,
        "an installed transfer file is removed"
    );
    assert_eq!(ledger(&b.handle()), written);

    // more usage after the snapshot, then a restart: the snapshot plus the replayed log
    let more = entries(
        vec![Command::RecordUsage {
            records: (500..600).map(record).collect(),
        }],
        setup + 6,
    );
    apply(&mut b, more.clone()).await;
    let full = ledger(&b.handle());
    assert_eq!(full.len(), 600);
    drop(b);
    let mut b = open(dir_b.path());
    let own = b.get_current_snapshot().await.expect("read").expect("one");
    b.install_snapshot(&own.meta, own.snapshot)
        .await
        .expect("reopen");
    assert_eq!(
        b.handle().read(|d| d.state.ledger.len()),
        500,
        "back at the snapshot; entries 501.. were cut from the archive"
    );
    assert_eq!(ledger(&b.handle()), written);
    apply(&mut b, more).await;
    assert_eq!(
        ledger(&b.handle()),
        full,
        "the replayed log appends the same entries"
    );

    // a snapshot whose ledger was tampered with, or left out, is refused, and nothing changes
    let state_len = u64::from_le_bytes(sent[..8].try_into().expect("8 bytes")) as usize;
    let without_ledger = sent[..8 + state_len].to_vec();
    let err = b
        .install_snapshot(&built.meta, received(&without_ledger))
        .await
        .expect_err("a snapshot without its ledger");
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = b
        .install_snapshot(&built.meta, received(&sent[..sent.len() - 3]))
        .await
        .expect_err("a transfer cut short");
    assert!(err.to_string().contains("cut short"), "{err}");
    let mut bad = sent;
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let err = b
        .install_snapshot(&built.meta, received(&bad))
        .await
        .expect_err("a damaged ledger chunk");
    assert!(!err.to_string().is_empty());
    assert_eq!(ledger(&b.handle()), full, "the archive is untouched");
}

/// Before the first snapshot a restart re-applies the whole log: the archive starts over with it
/// instead of refusing entries it already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_before_any_snapshot_rebuilds_the_archive_from_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let log = entries(commands(3), 1);
    let mut a = open(dir.path());
    apply(&mut a, log.clone()).await;
    let written = ledger(&a.handle());
    assert_eq!(written.len(), 300);
    drop(a);
    let mut a = open(dir.path());
    assert!(a.get_current_snapshot().await.expect("read").is_none());
    assert!(
        ledger(&a.handle()).is_empty(),
        "state and archive start empty"
    );
    apply(&mut a, log).await;
    assert_eq!(ledger(&a.handle()), written);
}
