use super::active::Pos;
use super::*;
use crate::codec::encode;
use crate::types::TypeConfig;
use openraft::testing::blank_ent;

/// Small segments so that a few entries span several files.
const SMALL: u64 = 100;

fn records(from: u64, to: u64) -> Vec<(LogId, Vec<u8>)> {
    (from..=to)
        .map(|i| {
            let e = blank_ent::<TypeConfig>(1, 1, i);
            (e.log_id, encode(&e).expect("encode"))
        })
        .collect()
}

fn open(dir: &Path, last_purged: Option<u64>) -> LogFiles {
    LogFiles::open_sized(dir, last_purged, SMALL).expect("open")
}

/// A log in `dir` with entries `1..=to`, one append each (so they span several segments).
fn filled(dir: &Path, to: u64) -> LogFiles {
    let mut log = open(dir, None);
    for i in 1..=to {
        log.append(&records(i, i)).expect("append");
    }
    log
}

/// The error opening the log in `dir` refuses with (`what`: the case, for the failure message).
fn refusal(dir: &Path, last_purged: Option<u64>, what: &str) -> String {
    match LogFiles::open_sized(dir, last_purged, SMALL) {
        Ok(_) => panic!("{what}: the log opened"),
        Err(e) => e.to_string(),
    }
}

fn indices(log: &LogFiles, start: u64, end: u64) -> Vec<u64> {
    read(log.locate(start, end))
        .expect("read")
        .iter()
        .map(|e| e.index())
        .collect()
}

fn segment_files(dir: &Path) -> Vec<u64> {
    let mut names: Vec<u64> = fs::read_dir(dir_of(dir))
        .expect("dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn entries_come_back_after_reopen_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = filled(dir.path(), 20);
        log.append(&records(21, 25)).expect("append of five");
        assert_eq!(indices(&log, 0, 100), (1..=25).collect::<Vec<_>>());
        log.active().sync().expect("sync");
    }
    let files = segment_files(dir.path());
    assert!(files.len() > 3, "segments rolled over: {files:?}");
    assert_eq!(files[0], 1);
    let log = open(dir.path(), None);
    assert_eq!(indices(&log, 0, 100), (1..=25).collect::<Vec<_>>());
    assert_eq!(indices(&log, 7, 9), vec![7, 8, 9]);
    assert_eq!(log.last_log_id().map(|l| l.index()), Some(25));
}

#[test]
fn appends_must_continue_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), None);
    log.append(&records(3, 5))
        .expect("an empty log takes any start");
    assert!(log.append(&records(7, 7)).is_err(), "a gap");
    assert!(log.append(&records(5, 5)).is_err(), "a repeat");
    let mut skip = records(6, 6);
    skip.extend(records(8, 8));
    assert!(log.append(&skip).is_err(), "a gap inside one append");
    assert_eq!(
        indices(&log, 0, 10),
        vec![3, 4, 5],
        "failed appends wrote nothing"
    );
}

#[test]
fn a_torn_tail_is_cut_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = open(dir.path(), None);
        log.append(&records(1, 3)).expect("append");
    }
    let path = segment_path(&dir_of(dir.path()), 1);
    let whole = fs::metadata(&path).expect("meta").len();
    // a frame whose record was cut short by a crash
    let mut tail = records(4, 4).remove(0).1;
    let mut frame = (tail.len() as u32).to_le_bytes().to_vec();
    tail.truncate(tail.len() / 2);
    frame.extend_from_slice(&tail);
    let f = OpenOptions::new().append(true).open(&path).expect("open");
    std::io::Write::write_all(&mut &f, &frame).expect("write");
    drop(f);
    let mut log = open(dir.path(), None);
    assert_eq!(indices(&log, 0, 10), vec![1, 2, 3]);
    assert_eq!(
        fs::metadata(&path).expect("meta").len(),
        whole,
        "cut at open"
    );
    log.append(&records(4, 5)).expect("append after the cut");
    drop(log);
    let log = open(dir.path(), None);
    assert_eq!(indices(&log, 0, 10), vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_bad_frame_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(filled(dir.path(), 10));
    let first = segment_path(&dir_of(dir.path()), 1);
    let mut bytes = fs::read(&first).expect("read");
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    fs::write(&first, bytes).expect("write");
    let err = refusal(dir.path(), None, "a damaged segment is refused");
    assert!(err.contains("damaged"), "{err}");
}

/// Flips one byte of segment `name` at `at`.
fn flip(dir: &Path, name: u64, at: u64) {
    let path = segment_path(&dir_of(dir), name);
    let mut bytes = fs::read(&path).expect("read");
    bytes[at as usize] ^= 0xff;
    fs::write(&path, bytes).expect("write");
}

/// Where entry `index`'s frame starts.
fn frame_at(log: &LogFiles, index: u64) -> u64 {
    log.locate(index, index)[0].1
}

/// F7 of the session-12 review: media damage to a frame the log had synced, in the last
/// segment, used to look like a torn tail and was cut off with every entry after it —
/// acknowledged entries gone without a word. The header's synced-to mark tells the two apart;
/// it takes the watermark as soon as a sync returns, so one sync protects its own frames.
#[test]
fn a_synced_frame_damaged_in_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (second, fourth) = {
        let mut log = LogFiles::open(dir.path(), None).expect("open");
        log.append(&records(1, 3)).expect("append");
        log.active().sync().expect("sync");
        log.append(&records(4, 4)).expect("append, never synced");
        (frame_at(&log, 2), frame_at(&log, 4))
    };
    let copy = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir_of(copy.path())).expect("mkdir");
    fs::copy(
        segment_path(&dir_of(dir.path()), 1),
        segment_path(&dir_of(copy.path()), 1),
    )
    .expect("copy");

    flip(dir.path(), 1, second + 9);
    let err = refusal(dir.path(), None, "damage below the mark is refused");
    assert!(err.contains("synced-to mark"), "{err}");

    // past the mark the same damage is what a crash leaves: cut, the rest opens
    flip(copy.path(), 1, fourth + 9);
    let log = LogFiles::open(copy.path(), None).expect("open");
    assert_eq!(indices(&log, 0, 10), vec![1, 2, 3]);
}

/// A truncation syncs its lowered mark before it shortens the file, so no crash leaves a
/// segment ending below its mark: when one does, synced entries are missing.
#[test]
fn a_segment_shortened_below_its_mark_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let third = {
        let mut log = LogFiles::open(dir.path(), None).expect("open");
        log.append(&records(1, 3)).expect("append");
        log.active().sync().expect("sync");
        frame_at(&log, 3)
    };
    OpenOptions::new()
        .write(true)
        .open(segment_path(&dir_of(dir.path()), 1))
        .and_then(|f| f.set_len(third))
        .expect("cut entry 3 off");
    let err = refusal(dir.path(), None, "a synced entry cut off is refused");
    assert!(err.contains("ends below"), "{err}");
}

#[test]
fn a_damaged_segment_header_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = open(dir.path(), None);
        log.append(&records(1, 1)).expect("append");
        log.active().sync().expect("sync");
    }
    flip(dir.path(), 1, 10);
    let err = refusal(dir.path(), None, "a damaged header is refused");
    assert!(err.contains("header"), "{err}");
}

/// Segments written before headers existed (frames from byte 0) open as before, take appends,
/// and are never given a header over their first frame.
#[test]
fn a_segment_from_before_headers_opens_and_takes_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir_of(dir.path())).expect("mkdir");
    let mut legacy = Vec::new();
    for (_, record) in records(1, 3) {
        legacy.extend_from_slice(&(record.len() as u32).to_le_bytes());
        legacy.extend_from_slice(&record);
    }
    let path = segment_path(&dir_of(dir.path()), 1);
    fs::write(&path, &legacy).expect("write");
    {
        let mut log = LogFiles::open(dir.path(), None).expect("open");
        assert_eq!(indices(&log, 0, 10), vec![1, 2, 3]);
        log.append(&records(4, 4)).expect("append");
        log.active().sync().expect("sync");
    }
    let bytes = fs::read(&path).expect("read");
    assert_eq!(&bytes[..legacy.len()], &legacy[..], "rewritten in place");
    let log = LogFiles::open(dir.path(), None).expect("reopen");
    assert_eq!(indices(&log, 0, 10), vec![1, 2, 3, 4]);
}

/// What a crashed process left unsynced is synced at open and put below the mark, so a torn
/// append after the open cannot be taken for damage, and damage to those frames later can.
#[test]
fn the_open_marks_every_frame_it_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogFiles::open(dir.path(), None).expect("open");
        log.append(&records(1, 3)).expect("append, never synced");
    }
    let path = segment_path(&dir_of(dir.path()), 1);
    let whole = fs::metadata(&path).expect("meta").len();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    assert_eq!(
        header::read(&file, whole).expect("read"),
        header::Marking::Marked {
            synced_to: HEADER_BYTES
        },
        "nothing was synced"
    );
    drop(LogFiles::open(dir.path(), None).expect("open"));
    assert_eq!(
        header::read(&file, whole).expect("read"),
        header::Marking::Marked { synced_to: whole }
    );
    // an append after the open, torn by a crash
    let mut torn = (100u32).to_le_bytes().to_vec();
    torn.extend_from_slice(&[7u8; 20]);
    file.write_all_at(&torn, whole).expect("torn frame");
    let log = LogFiles::open(dir.path(), None).expect("a torn tail past the mark is cut");
    assert_eq!(indices(&log, 0, 10), vec![1, 2, 3]);
}

#[test]
fn truncation_cuts_across_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = filled(dir.path(), 20);
        let all = log.bytes();
        let last = records(4, 4)[0].0;
        let removed = log.truncate(5, Some(last)).expect("truncate");
        assert_eq!(log.bytes(), all - removed);
        assert_eq!(indices(&log, 0, 100), vec![1, 2, 3, 4]);
        assert_eq!(log.last_log_id(), Some(last));
        log.append(&records(5, 6)).expect("append after truncation");
        assert_eq!(log.truncate(50, None).expect("past the end"), 0);
    }
    let log = open(dir.path(), None);
    assert_eq!(indices(&log, 0, 100), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn truncating_everything_empties_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), None);
    log.append(&records(1, 6)).expect("append");
    log.truncate(0, None).expect("truncate");
    assert!(indices(&log, 0, 100).is_empty());
    assert_eq!(log.last_log_id(), None);
    assert_eq!(log.bytes(), 0);
    log.append(&records(1, 2)).expect("append");
    drop(log);
    assert_eq!(indices(&open(dir.path(), None), 0, 9), vec![1, 2]);
}

#[test]
fn purge_deletes_emptied_segments_and_reopen_skips_purged_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = filled(dir.path(), 20);
        let before = segment_files(dir.path());
        log.purge(12);
        assert_eq!(indices(&log, 0, 100), (13..=20).collect::<Vec<_>>());
        let after = segment_files(dir.path());
        assert!(after.len() < before.len(), "{before:?} → {after:?}");
        assert!(after[0] <= 13, "the segment holding 13 stays: {after:?}");
    }
    let log = open(dir.path(), Some(12));
    assert_eq!(indices(&log, 0, 100), (13..=20).collect::<Vec<_>>());
    assert_eq!(
        indices(&log, 5, 14),
        vec![13, 14],
        "reads are clipped to the log"
    );
}

#[test]
fn purging_past_the_end_starts_the_next_append_in_a_new_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = open(dir.path(), None);
        log.append(&records(1, 3)).expect("append");
        log.purge(100); // a snapshot installed beyond the log
        assert_eq!(log.last_log_id(), None);
        log.append(&records(101, 102)).expect("append");
        assert_eq!(segment_files(dir.path()), vec![101]);
    }
    let log = open(dir.path(), Some(100));
    assert_eq!(indices(&log, 0, 200), vec![101, 102]);
}

#[test]
fn a_gap_between_live_entries_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(filled(dir.path(), 20));
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let middle = files[1];
    fs::remove_file(segment_path(&dir_of(dir.path()), middle)).expect("rm");
    let err = refusal(dir.path(), None, "a missing segment is refused");
    assert!(err.contains("gap"), "{err}");
}

#[test]
fn a_log_missing_the_entries_right_after_the_purged_ones_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(filled(dir.path(), 20));
    let files = segment_files(dir.path());
    // the mark says entries up to 3 are purged: the log must go on at 4
    fs::remove_file(segment_path(&dir_of(dir.path()), files[0])).expect("rm");
    let err = refusal(dir.path(), Some(3), "a lost first segment is refused");
    assert!(err.contains("missing"), "{err}");
    assert!(LogFiles::open_sized(dir.path(), Some(files[1] - 1), SMALL).is_ok());
}

/// A truncation while a sync of the same segment is running: when that sync returns, frames
/// written after the cut (at offsets below what the sync read as written) were not covered by
/// it, so the watermark stays at the cut and the next sync is a real one.
#[test]
fn a_sync_overtaken_by_a_truncation_does_not_vouch_for_what_came_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = open(dir.path(), None);
    log.append(&records(1, 3)).expect("append");
    let active = log.active();
    let covers = active.begin().expect("unsynced frames");
    let cut = active.durable();
    log.truncate(2, Some(records(1, 1)[0].0)).expect("truncate");
    let at_cut = active.durable();
    assert!(at_cut > cut, "the truncation synced the cut");
    log.append(&records(2, 2)).expect("append after the cut");
    active.finish(&covers).expect("finish");
    assert_eq!(
        active.durable(),
        at_cut,
        "the overtaken sync moved the watermark"
    );
    let path = segment_path(&dir_of(dir.path()), 1);
    let size = fs::metadata(&path).expect("meta").len();
    let file = File::open(&path).expect("open");
    match header::read(&file, size).expect("read") {
        header::Marking::Marked { synced_to } => assert!(
            synced_to <= at_cut.1,
            "the overtaken sync raised the mark past the cut: {synced_to} > {}",
            at_cut.1
        ),
        other => panic!("{other:?}"),
    }
    assert!(active.begin().is_some(), "the new frame still needs a sync");
    active.sync().expect("sync");
    assert!(active.begin().is_none());
}

/// xorshift64: a seeded sequence for the power-cut rounds (no dependency, reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a power loss may leave: every segment from the watermark's on keeps its durable bytes
/// and any prefix of what was written after them; the last one may end in garbage.
fn power_cut(dir: &Path, durable: Pos, rng: &mut Rng) {
    let log_dir = dir_of(dir);
    let names = segment_files(dir);
    for &name in names.iter().filter(|&&n| n >= durable.0) {
        let path = segment_path(&log_dir, name);
        let written = fs::metadata(&path).expect("meta").len();
        let kept = if name == durable.0 { durable.1 } else { 0 };
        assert!(
            kept <= written,
            "the watermark is past the end of segment {name}"
        );
        let cut = kept + rng.below(written - kept + 1);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(cut))
            .expect("cut");
    }
    if let Some(&last) = names.last()
        && rng.below(2) == 0
    {
        let garbage: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
        let f = OpenOptions::new()
            .append(true)
            .open(segment_path(&log_dir, last))
            .expect("open");
        std::io::Write::write_all(&mut &f, &garbage).expect("garbage");
    }
}

/// DU-1 and DU-4 under simulated power loss: appends, syncs (the group commit's) and
/// truncations in a seeded order, maybe a sync cut short, then the files are cut back to the
/// durable watermark plus any prefix of the unsynced bytes, with garbage after — never read as
/// damage below a segment's synced-to mark. Reopened, the log must be a prefix of what
/// was written that holds every entry a sync covered.
#[test]
fn after_a_power_cut_every_synced_entry_is_back_and_nothing_else_is_damaged() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), None);
        let (mut next, mut synced) = (1u64, 0u64);
        for _ in 0..rng.below(40) + 1 {
            match rng.below(10) {
                0..=5 => {
                    let n = rng.below(3) + 1;
                    log.append(&records(next, next + n - 1)).expect("append");
                    next += n;
                }
                6..=8 => {
                    log.active().sync().expect("sync");
                    synced = next - 1;
                }
                _ if next > 2 => {
                    // a follower's conflicting suffix removed (durable when it returns)
                    let from = next - rng.below(next.min(4) - 1) - 1;
                    let last = records(from - 1, from - 1)[0].0;
                    log.truncate(from, Some(last)).expect("truncate");
                    next = from;
                    // the cut segment is synced at its new end, earlier ones were at their roll
                    synced = from - 1;
                }
                _ => {}
            }
        }
        if rng.below(2) == 0 {
            // the power went while a sync was under way: its `fdatasync` never returned
            let _under_way = log.active().begin();
        }
        let durable = log.active().durable();
        drop(log);
        power_cut(dir.path(), durable, &mut rng);
        let log = LogFiles::open_sized(dir.path(), None, SMALL)
            .unwrap_or_else(|e| panic!("round {round}: the log does not open: {e}"));
        let back = indices(&log, 0, u64::MAX);
        let want: Vec<u64> = (1..=back.len() as u64).collect();
        assert_eq!(back, want, "round {round}: not a prefix of the log");
        assert!(
            back.len() as u64 >= synced,
            "round {round}: {synced} entries were synced, {} came back",
            back.len()
        );
        let came_back = back.len() as u64;
        assert!(came_back < next, "round {round}: more than was written");
        // and the log goes on from there
        let mut log = log;
        log.append(&records(came_back + 1, came_back + 1))
            .expect("append after recovery");
        drop(log);
        let again = indices(&open(dir.path(), None), 0, u64::MAX);
        assert_eq!(
            again.len() as u64,
            came_back + 1,
            "round {round}: after recovery"
        );
    }
}
