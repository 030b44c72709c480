//! The write path syncs before it acknowledges: every vote save, log append, truncate and purge
//! performs at least one durable sync (`fdatasync` of the log segment, or sled flush + fdatasync
//! for the vote and the purge mark), and the append callback reports success only after it. The data is then readable by a store reopened from the same directory.

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::testing::{blank_ent, log_id};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::VoteOf;
use tollgate_store::storage::{Durable, LogStore, sync_count};
use tollgate_store::types::TypeConfig;

/// Opens a data dir an earlier handle of this process used. sled releases its file lock only
/// when its background work on the dropped handle has finished, so a reopen in the same
/// process waits for the lock (bounded); a restarted process never has to.
fn reopen(dir: &std::path::Path) -> Durable {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Durable::open(dir) {
            Ok(d) => return d,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

fn vote(term: u64, node: u64) -> VoteOf<TypeConfig> {
    openraft::impls::Vote::new(term, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_synced_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::open(Durable::open(dir.path()).expect("open")).expect("log store");

        let before = sync_count();
        log.save_vote(&vote(3, 1)).await.expect("save vote");
        assert!(sync_count() > before, "save_vote returned without a sync");

        for i in 1..=5u64 {
            let before = sync_count();
            let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
            let entries = vec![blank_ent::<TypeConfig>(1, 1, i)];
            log.append(entries, IOFlushed::signal(tx))
                .await
                .expect("append");
            let reported = rx.await.expect("callback fired");
            assert!(reported.is_ok());
            assert!(
                sync_count() > before,
                "append {i} was acknowledged without a sync"
            );
        }

        let before = sync_count();
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 4)))
            .await
            .expect("truncate");
        assert!(
            sync_count() > before,
            "truncate_after returned without a sync"
        );
        let before = sync_count();
        log.purge(log_id::<TypeConfig>(1, 1, 2))
            .await
            .expect("purge");
        assert!(sync_count() > before, "purge returned without a sync");
    }
    // reopen: the state is exactly what was acknowledged
    let mut log = LogStore::open(reopen(dir.path())).expect("log store");
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote(3, 1)));
    let entries = log.try_get_log_entries(0..100).await.expect("entries");
    let indexes: Vec<u64> = entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, vec![3, 4]);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id::<TypeConfig>(1, 1, 2))
    );
}

/// The snapshot policy's measure of the log (`LogMeter`) is the log itself: it grows with
/// appends, shrinks with purges and truncations, and comes back the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_meter_counts_what_is_in_the_log_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = {
        let durable = Durable::open(dir.path()).expect("open");
        let meter = durable.log_meter();
        let mut log = LogStore::open(durable).expect("log store");
        assert_eq!(meter.total(), 0);
        for i in 1..=6u64 {
            let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
            log.append(
                vec![blank_ent::<TypeConfig>(1, 1, i)],
                IOFlushed::signal(tx),
            )
            .await
            .expect("append");
            assert!(rx.await.expect("callback").is_ok());
        }
        let full = meter.total();
        assert!(full > 0);
        log.purge(log_id::<TypeConfig>(1, 1, 2))
            .await
            .expect("purge");
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 4)))
            .await
            .expect("truncate");
        // six equal entries, four removed
        assert_eq!(meter.total(), full / 3);
        full
    };
    let durable = reopen(dir.path());
    let meter = durable.log_meter();
    let _log = LogStore::open(durable).expect("log store");
    assert_eq!(
        meter.total(),
        full / 3,
        "counted again from the log at open"
    );
}

/// The move out of sled crashed after the entries were in the files but while sled was still
/// removing them from its tree (one key at a time): the next open finishes the removal and
/// keeps the files as they are instead of copying the leftover suffix over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_out_of_sled_cut_short_while_emptying_the_tree_keeps_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entry = |i: u64| {
        let e = blank_ent::<TypeConfig>(1, 1, i);
        tollgate_store::codec::encode(&e).expect("encode")
    };
    {
        let durable = Durable::open(dir.path()).expect("open");
        let tree = durable.tree("raft_log").expect("tree");
        for i in 1..=5u64 {
            tree.insert(&i.to_be_bytes()[..], entry(i)).expect("insert");
        }
        durable.sync_blocking().expect("sync");
    }
    drop(LogStore::open(reopen(dir.path())).expect("moved"));
    {
        // what a crash part-way through the tree's removal leaves: a suffix of it
        let durable = reopen(dir.path());
        let tree = durable.tree("raft_log").expect("tree");
        for i in 4..=5u64 {
            tree.insert(&i.to_be_bytes()[..], entry(i)).expect("insert");
        }
        durable.sync_blocking().expect("sync");
    }
    let durable = reopen(dir.path());
    let mut log = LogStore::open(durable.clone()).expect("log store");
    let entries = log.try_get_log_entries(0..100).await.expect("entries");
    let indexes: Vec<u64> = entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, vec![1, 2, 3, 4, 5]);
    assert!(durable.tree("raft_log").expect("tree").is_empty());
}

/// A data dir written before the log had files of its own keeps its entries in sled's
/// `raft_log` tree: the next open moves them into the log files (synced), empties the tree, and
/// the log goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_kept_in_sled_by_an_older_version_moves_into_the_log_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let durable = Durable::open(dir.path()).expect("open");
        let tree = durable.tree("raft_log").expect("tree");
        for i in 1..=5u64 {
            let entry = blank_ent::<TypeConfig>(1, 1, i);
            let bytes = tollgate_store::codec::encode(&entry).expect("encode");
            tree.insert(&i.to_be_bytes()[..], bytes).expect("insert");
        }
        durable.sync_blocking().expect("sync");
    }
    {
        let durable = reopen(dir.path());
        let meter = durable.log_meter();
        let mut log = LogStore::open(durable.clone()).expect("log store");
        let indexes = |entries: Vec<tollgate_store::types::Entry>| {
            entries.iter().map(|e| e.index()).collect::<Vec<u64>>()
        };
        let moved = log.try_get_log_entries(0..100).await.expect("entries");
        assert_eq!(indexes(moved), vec![1, 2, 3, 4, 5]);
        assert!(meter.total() > 0, "the moved entries are counted");
        assert!(durable.tree("raft_log").expect("tree").is_empty());
        let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
        log.append(
            vec![blank_ent::<TypeConfig>(1, 1, 6)],
            IOFlushed::signal(tx),
        )
        .await
        .expect("append");
        assert!(rx.await.expect("callback").is_ok());
    }
    let mut log = LogStore::open(reopen(dir.path())).expect("log store");
    let entries = log.try_get_log_entries(0..100).await.expect("entries");
    assert_eq!(entries.len(), 6);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id.map(|l| l.index()), Some(6));
}

/// Appends `entries` and waits until the log reports them durable.
async fn append_all(log: &mut LogStore, entries: Vec<tollgate_store::types::Entry>) {
    let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    assert!(rx.await.expect("callback fired").is_ok());
}

/// A read of entries from the files racing a truncation of them (a leader just deposed, still
/// replicating, while the new leader's entries replace its tail) returns the entries as they
/// were or as they are, never an error: openraft stops on any storage error. The replacing
/// entries differ in size, so a read at positions located before the cut would find broken
/// frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_truncations_of_the_same_entries_never_fail() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = LogStore::open(Durable::open(dir.path()).expect("open")).expect("log store");
    // more entries than the log keeps decoded in memory: the first ones are read from the files
    append_all(
        &mut log,
        (1..=5000)
            .map(|i| blank_ent::<TypeConfig>(1, 1, i))
            .collect(),
    )
    .await;
    let mut reader = log.get_log_reader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let reads = tokio::spawn(async move {
        let mut n = 0u64;
        while !stopped.load(Ordering::Relaxed) {
            let r = reader.try_get_log_entries(10..=60).await;
            assert!(r.is_ok(), "read {n} failed: {r:?}");
            n += 1;
            tokio::task::yield_now().await;
        }
        n
    });
    for round in 0..300u64 {
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 20)))
            .await
            .expect("truncate");
        let term = if round % 2 == 0 { 1_000_000_000 } else { 1 };
        append_all(
            &mut log,
            (21..=60)
                .map(|i| blank_ent::<TypeConfig>(term, 1, i))
                .collect(),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reads.await.expect("no read failed") > 0);
}
