use super::record::{Entry, Reserved};
use super::*;
use tollgate_types::amount::Price;
use tollgate_types::usage::UsageStatus;

fn id<T: TryFrom<String>>(s: &str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s.to_owned()).expect("valid id")
}

fn reserved(rid: &str) -> Reserved {
    Reserved {
        request_id: id(rid),
        org: id("acme"),
        project: id("web"),
        key: id("live_key1"),
        model: id("m"),
        gateway: "gw-1:0000abcd".into(),
        input_estimate: 3,
        max_output: 16,
        price: Price {
            input_per_mtok_micros: 1_000_000,
            output_per_mtok_micros: 2_000_000,
        },
        price_version: 1,
        started_at_ms: 1_800_000_000_000,
    }
}

fn record(rid: &str, completion: u64) -> UsageRecord {
    let mut r = reserved(rid).in_doubt(1_800_000_000_500);
    r.status = UsageStatus::Completed;
    r.completion_tokens = completion;
    r.estimated = false;
    r
}

/// Bytes written by this version (format v1): they must always decode to the same entries.
const GOLDEN_HEX: &str = include_str!("golden_v1.hex");

#[test]
fn entries_captured_from_v1_decode() {
    let bytes: Vec<u8> = (0..GOLDEN_HEX.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&GOLDEN_HEX.trim()[i..i + 2], 16).expect("hex"))
        .collect();
    let (entries, valid) = frame::decode_all(&bytes);
    assert_eq!(valid, bytes.len());
    assert_eq!(
        entries,
        vec![
            Entry::Reserved {
                seq: 1,
                reserved: reserved("r1")
            },
            Entry::Settled {
                seq: 2,
                record: record("r1", 16)
            },
        ]
    );
    // and this version still writes exactly those bytes
    let mut again = frame::encode(&entries[0]);
    again.extend(frame::encode(&entries[1]));
    assert_eq!(again, bytes);
}

#[test]
fn a_torn_or_corrupt_tail_ends_the_readable_prefix() {
    let mut bytes = frame::encode(&Entry::Reserved {
        seq: 1,
        reserved: reserved("r1"),
    });
    let whole = bytes.len();
    bytes.extend(frame::encode(&Entry::Settled {
        seq: 2,
        record: record("r1", 4),
    }));
    let (e, valid) = frame::decode_all(&bytes[..bytes.len() - 3]);
    assert_eq!((e.len(), valid), (1, whole));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x40;
    assert_eq!(frame::decode_all(&flipped).1, whole);
}

#[test]
fn replay_ships_unacknowledged_records_and_settles_open_reservations_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (j, replay) = Journal::open(dir.path()).expect("open");
        assert!(replay.unacked.is_empty() && replay.in_doubt.is_empty());
        j.reserved(reserved("r1")).expect("append");
        let s1 = j.settled(&record("r1", 5)).expect("append");
        j.reserved(reserved("r2")).expect("append");
        j.settled(&record("r2", 6)).expect("append");
        j.reserved(reserved("r3")).expect("append"); // the process dies before r3 settles
        j.ack(s1).expect("ack");
    }
    // a torn write at the end of the last segment
    let seg = segments_in(dir.path())
        .expect("list")
        .last()
        .expect("segment")
        .1
        .clone();
    let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
    f.write_all(&[9, 0, 0, 0, 1, 2]).expect("write");
    drop(f);
    let (j, replay) = Journal::open(dir.path()).expect("reopen");
    assert_eq!(replay.torn_bytes, 6);
    let ids: Vec<String> = replay
        .unacked
        .iter()
        .map(|(_, r)| r.request_id.to_string())
        .collect();
    assert_eq!(ids, vec!["r2"], "r1 was acknowledged");
    assert_eq!(replay.in_doubt.len(), 1);
    let doubt = replay.in_doubt[0].in_doubt(0);
    assert_eq!(
        (
            doubt.status,
            doubt.prompt_tokens,
            doubt.completion_tokens,
            doubt.estimated
        ),
        (UsageStatus::InDoubt, 3, 0, true)
    );
    let seq = j.settled(&doubt).expect("settle in doubt");
    j.ack(seq).expect("ack all");
    drop(j);
    let (_, again) = Journal::open(dir.path()).expect("third open");
    assert!(again.unacked.is_empty() && again.in_doubt.is_empty());
    // acknowledged segments without open reservations are gone; only the newest ones remain
    assert!(segments_in(dir.path()).expect("list").len() <= 2);
}

#[test]
fn a_backlog_can_be_read_back_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, _) = Journal::open(dir.path()).expect("open");
    for i in 0..10 {
        j.settled(&record(&format!("r{i}"), i)).expect("append");
    }
    let (first, end) = j.settled_from(3, 4).expect("read");
    assert_eq!(
        first.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    assert!(!end);
    let (rest, end) = j.settled_from(7, 100).expect("read");
    assert_eq!(rest.len(), 4);
    assert!(end);
    j.sync().expect("sync");
    assert_eq!(j.stats.syncs.load(Ordering::Relaxed), 1);
}

#[test]
fn one_process_per_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, _) = Journal::open(dir.path()).expect("open");
    let second = Journal::open(dir.path()).map(|_| ());
    assert_eq!(
        second.map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock),
        "a second opener is refused"
    );
    drop(first);
    assert!(Journal::open(dir.path()).is_ok(), "free again once closed");
}

#[test]
fn late_records_are_set_aside_for_backfill_one_json_line_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, _) = Journal::open(dir.path()).expect("open");
    j.set_aside(&record("r1", 4), 77).expect("set aside");
    j.set_aside(&record("r2", 5), 78).expect("set aside");
    let text = std::fs::read_to_string(dir.path().join(LATE_FILE)).expect("late file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["closed_before_ms"], 77);
    assert_eq!(lines[1]["record"]["request_id"], "r2");
    assert_eq!(lines[1]["record"]["completion_tokens"], 5);
}
