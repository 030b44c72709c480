use super::frame::EntryRef;
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

/// The request ids of the records a replay ships again, in order.
fn unacked_ids(replay: &Replay) -> Vec<String> {
    let ids = replay.unacked.iter().map(|(_, r)| r.request_id.to_string());
    ids.collect()
}

fn record(rid: &str, completion: u64) -> UsageRecord {
    let mut r = reserved(rid).in_doubt(1_800_000_000_500);
    r.status = UsageStatus::Completed;
    r.completion_tokens = completion;
    r.estimated = false;
    r
}

/// Bytes written by format v1 (JSON entries, before binary frames): still read.
const GOLDEN_V1_HEX: &str = include_str!("golden_v1.hex");
/// Bytes written by this version (format v2, the hex of `encode_golden()` when v2 was made):
/// they must always decode to the same entries. A new format adds a new file; this one stays.
const GOLDEN_V2_HEX: &str = include_str!("golden_v2.hex");

fn unhex(hex: &str) -> Vec<u8> {
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The two entries both golden files hold.
fn golden_entries() -> Vec<Entry> {
    vec![
        Entry::Reserved {
            seq: 1,
            reserved: reserved("r1"),
        },
        Entry::Settled {
            seq: 2,
            record: record("r1", 16),
        },
    ]
}

/// This version's frames of the golden entries.
fn encode_golden() -> Vec<u8> {
    let mut out = frame::encode(1, EntryRef::Reserved(&reserved("r1"))).expect("encode");
    out.extend(frame::encode(2, EntryRef::Settled(&record("r1", 16))).expect("encode"));
    out
}

#[test]
fn entries_captured_from_v1_decode() {
    let bytes = unhex(GOLDEN_V1_HEX);
    let d = frame::decode_all(&bytes);
    assert_eq!((d.end, d.damaged), (bytes.len(), 0));
    assert_eq!(d.entries, golden_entries());
}

#[test]
fn entries_captured_from_v2_decode_and_this_version_writes_the_same_bytes() {
    let bytes = unhex(GOLDEN_V2_HEX);
    let d = frame::decode_all(&bytes);
    assert_eq!((d.end, d.damaged), (bytes.len(), 0));
    assert_eq!(d.entries, golden_entries());
    assert_eq!(encode_golden(), bytes);
    // binary frames are a third of the JSON ones
    assert!(bytes.len() * 2 < unhex(GOLDEN_V1_HEX).len());
}

#[test]
fn a_journal_written_by_v1_replays_next_to_v2_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(segment_name(1)), unhex(GOLDEN_V1_HEX)).expect("v1 segment");
    let (j, replay) = Journal::open(dir.path()).expect("open");
    assert_eq!(replay.unacked.len(), 1);
    j.reserved(&reserved("r2")).expect("append");
    let s = j.settled(&record("r2", 3)).expect("append");
    assert_eq!(s, 4, "numbering continues after the v1 entries");
    drop(j);
    let (_, replay) = Journal::open(dir.path()).expect("reopen");
    let ids = unacked_ids(&replay);
    assert_eq!(ids, vec!["r1", "r2"]);
    assert_eq!(replay.torn_bytes, 0);
}

#[test]
fn a_torn_or_corrupt_tail_ends_the_readable_prefix() {
    let mut bytes = frame::encode(1, EntryRef::Reserved(&reserved("r1"))).expect("encode");
    let whole = bytes.len();
    bytes.extend(frame::encode(2, EntryRef::Settled(&record("r1", 4))).expect("encode"));
    let d = frame::decode_all(&bytes[..bytes.len() - 3]);
    assert_eq!((d.entries.len(), d.end, d.damaged), (1, whole, 0));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x40;
    let d = frame::decode_all(&flipped);
    assert_eq!((d.end, d.damaged), (whole, 0));
    // a zeroed end (the unused room of a live segment) is no damage either
    let mut roomy = bytes.clone();
    roomy.resize(bytes.len() + 4096, 0);
    let d = frame::decode_all(&roomy);
    assert_eq!((d.entries.len(), d.end, d.damaged), (2, bytes.len(), 0));
}

/// Damage is not a crash: a crash cuts the end, while a bad frame with good ones after it is the
/// medium. The frames after it used to be cut off with it — every record in them lost to
/// billing; now only the damaged frame is.
#[test]
fn a_damaged_frame_is_skipped_and_the_frames_after_it_are_kept() {
    let first = frame::encode(1, EntryRef::Reserved(&reserved("r1"))).expect("encode");
    let second = frame::encode(2, EntryRef::Settled(&record("r1", 4))).expect("encode");
    let third = frame::encode(3, EntryRef::Reserved(&reserved("r2"))).expect("encode");
    for at in [0, 3, 5, 9, second.len() - 1] {
        let mut bytes = [first.clone(), second.clone(), third.clone()].concat();
        bytes[first.len() + at] ^= 0x21;
        let d = frame::decode_all(&bytes);
        let seqs: Vec<u64> = d.entries.iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, vec![1, 3], "byte {at} of the second frame damaged");
        assert_eq!((d.end, d.damaged), (bytes.len(), second.len()), "byte {at}");
    }
    // and in the JSON frames of format v1
    let mut v1 = unhex(GOLDEN_V1_HEX);
    v1[12] ^= 0x21;
    let d = frame::decode_all(&v1);
    assert_eq!(d.entries, golden_entries()[1..].to_vec());
    assert_eq!(d.end, v1.len());
}

#[test]
fn replay_ships_unacknowledged_records_and_settles_open_reservations_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (j, replay) = Journal::open(dir.path()).expect("open");
        assert!(replay.unacked.is_empty() && replay.in_doubt.is_empty());
        j.reserved(&reserved("r1")).expect("append");
        let s1 = j.settled(&record("r1", 5)).expect("append");
        j.reserved(&reserved("r2")).expect("append");
        j.settled(&record("r2", 6)).expect("append");
        j.reserved(&reserved("r3")).expect("append"); // the process dies before r3 settles
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
    let ids = unacked_ids(&replay);
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
fn the_cursor_may_lag_behind_acks_after_a_kill_and_a_clean_stop_writes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, _) = Journal::open(dir.path()).expect("open");
    j.set_cursor_every(Duration::MAX);
    let s1 = j.settled(&record("r1", 5)).expect("append");
    let s2 = j.settled(&record("r2", 6)).expect("append");
    j.ack(s1).expect("ack");
    j.ack(s2).expect("ack");
    assert_eq!(j.acked(), s2);
    j.abandon();
    // killed before the cursor was written: both are shipped again (the store answers
    // duplicates), none is lost
    let (j, replay) = Journal::open(dir.path()).expect("reopen");
    assert_eq!(unacked_ids(&replay), vec!["r1", "r2"]);
    j.set_cursor_every(Duration::MAX);
    j.ack(s2).expect("ack");
    drop(j);
    let (j, replay) = Journal::open(dir.path()).expect("third open");
    assert!(
        unacked_ids(&replay).is_empty(),
        "a clean stop wrote the cursor"
    );
    // written by the acknowledgement itself once the interval passed (zero here)
    j.set_cursor_every(Duration::ZERO);
    let s3 = j.settled(&record("r3", 7)).expect("append");
    j.ack(s3).expect("ack");
    j.abandon();
    let (_, replay) = Journal::open(dir.path()).expect("fourth open");
    assert!(
        unacked_ids(&replay).is_empty(),
        "{:?}",
        unacked_ids(&replay)
    );
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

#[test]
fn a_killed_process_leaves_a_zeroed_tail_that_replay_cuts_without_calling_it_torn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, _) = Journal::open_with(dir.path(), 1 << 16).expect("open");
    j.reserved(&reserved("r1")).expect("append");
    j.settled(&record("r1", 5)).expect("append");
    j.reserved(&reserved("r2")).expect("append");
    j.abandon();
    let seg = segments_in(dir.path()).expect("list")[0].1.clone();
    assert_eq!(std::fs::metadata(&seg).expect("stat").len(), 1 << 16);
    let (_, replay) = Journal::open(dir.path()).expect("reopen");
    assert_eq!(
        replay.torn_bytes, 0,
        "zeros are unused room, not a torn write"
    );
    assert_eq!(replay.unacked.len(), 1);
    assert_eq!(replay.in_doubt.len(), 1);
    let written = frame::encode(1, EntryRef::Reserved(&reserved("r1")))
        .expect("encode")
        .len();
    let len = std::fs::metadata(&seg).expect("stat").len() as usize;
    assert!(len > written && len < 1 << 12, "cut to its frames: {len}");
}

#[test]
fn full_segments_roll_over_and_everything_reads_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, _) = Journal::open_with(dir.path(), 512).expect("open");
    let mut seqs = Vec::new();
    for i in 0..40 {
        j.reserved(&reserved(&format!("r{i}"))).expect("append");
        seqs.push(j.settled(&record(&format!("r{i}"), i)).expect("append"));
    }
    let files = segments_in(dir.path()).expect("list");
    assert!(files.len() > 5, "{} segments", files.len());
    // sealed segments are cut to their frames
    for (_, path) in &files[..files.len() - 1] {
        let buf = read_file(path).expect("read");
        let d = frame::decode_all(&buf);
        assert_eq!((d.end, d.damaged), (buf.len(), 0));
    }
    let (all, end) = j.settled_from(0, 1000).expect("read");
    assert!(end);
    assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    let (tail, _) = j.settled_from(seqs[30], 1000).expect("read");
    assert_eq!(tail.len(), 10);
    // acknowledging everything but the last 5 frees the front segments
    j.ack(seqs[34]).expect("ack");
    assert!(segments_in(dir.path()).expect("list").len() < files.len());
    drop(j);
    let (_, replay) = Journal::open(dir.path()).expect("reopen");
    assert_eq!(replay.torn_bytes, 0);
    assert!(replay.in_doubt.is_empty());
    assert_eq!(
        replay.unacked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        seqs[35..].to_vec()
    );
}

#[test]
fn an_entry_larger_than_a_segment_is_refused_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, _) = Journal::open_with(dir.path(), 64).expect("open");
    assert!(j.settled(&record("r1", 1)).is_err());
    assert_eq!(j.stats.errors.load(Ordering::Relaxed), 1);
    let (none, _) = j.settled_from(0, 10).expect("read");
    assert!(none.is_empty());
}

/// Through a restart: a damaged `Settled` in a closed segment costs that record only. Its
/// reservation is settled as in doubt (charged by policy, flagged), the records after it are
/// shipped, and the damage is counted for `/metrics`.
#[test]
fn replay_skips_a_damaged_entry_and_ships_the_ones_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let damaged_at = {
        let (j, _) = Journal::open(dir.path()).expect("open");
        j.reserved(&reserved("r1")).expect("append");
        j.settled(&record("r1", 5)).expect("append");
        j.reserved(&reserved("r2")).expect("append");
        let used_before = j.writer().seg.as_ref().map(|s| s.used).expect("live");
        j.settled(&record("r2", 6)).expect("append");
        j.reserved(&reserved("r3")).expect("append");
        j.settled(&record("r3", 7)).expect("append");
        used_before
    };
    let seg = segments_in(dir.path()).expect("list")[0].1.clone();
    let mut bytes = read_file(&seg).expect("read");
    bytes[damaged_at + 20] ^= 0x5a;
    std::fs::write(&seg, &bytes).expect("write");
    let (j, replay) = Journal::open(dir.path()).expect("reopen");
    let shipped = unacked_ids(&replay);
    assert_eq!(shipped, vec!["r1", "r3"]);
    let doubt: Vec<String> = replay
        .in_doubt
        .iter()
        .map(|r| r.request_id.to_string())
        .collect();
    assert_eq!(doubt, vec!["r2"], "its settlement was lost");
    assert!(replay.damaged_bytes > 0);
    assert_eq!(replay.torn_bytes, 0);
    assert_eq!(
        j.stats.damaged_bytes.load(Ordering::Relaxed),
        replay.damaged_bytes
    );
}
