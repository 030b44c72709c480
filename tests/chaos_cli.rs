//! `tollgate chaos` rejects bad input with a message that says what to fix, before starting
//! anything (the scenarios themselves run in `scripts/test`: the smoke run, and by operators).

mod harness;

fn chaos(args: &[&str]) -> (bool, String) {
    let all: Vec<&str> = std::iter::once("chaos")
        .chain(args.iter().copied())
        .collect();
    let out = harness::cli(&all, &[]);
    (out.ok, out.stdout + &out.stderr)
}

#[test]
fn unknown_scenarios_short_durations_and_bad_units_are_refused() {
    let (ok, text) = chaos(&["run", "--scenario", "nope"]);
    assert!(!ok);
    assert!(
        text.contains("unknown scenario 'nope'") && text.contains("smoke"),
        "{text}"
    );
    let (ok, text) = chaos(&["run", "--scenario", "smoke", "--duration", "5s"]);
    assert!(!ok);
    assert!(text.contains("--duration must be at least 15 s"), "{text}");
    let (ok, text) = chaos(&["run", "--scenario", "smoke", "--duration", "5x"]);
    assert!(!ok);
    assert!(text.contains("the unit must be ms, s, m or h"), "{text}");
}

#[test]
fn list_names_every_scenario() {
    let (ok, text) = chaos(&["list"]);
    assert!(ok, "{text}");
    for s in [
        "smoke",
        "leader-churn",
        "partitions",
        "gateway-crash",
        "clock-skew",
        "disk-full",
        "membership",
        "nightly",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(s)),
            "{s} missing: {text}"
        );
    }
}

/// The live (not zombie) children of process `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces, so parse after the last ')'
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state != Some("Z") && ppid == Some(parent)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z'))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

/// An operator stopping a run (Ctrl-C, or SIGTERM from a CI timeout) leaves nothing behind: the
/// stores, gateways and upstreams it started are stopped with it, and it says so.
#[test]
fn a_run_stopped_by_a_signal_stops_its_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report").display().to_string();
    let args: Vec<String> = [
        "chaos",
        "run",
        "--scenario",
        "smoke",
        "--seed",
        "3",
        "--report",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([report])
    .collect();
    let mut run = harness::gateway::Proc::spawn(&args, dir.path().join("chaos.log"));
    let pid = run.pid();
    // the cluster is up once the second gateway (started last) runs
    let deadline = std::time::Instant::now() + harness::gateway::READY_TIMEOUT;
    let started = loop {
        let children = children_of(pid);
        if children.iter().any(|&c| cmdline(c).contains("gateway-1")) {
            break children;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not start: {}",
            run.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let upstreams = started
        .iter()
        .filter(|&&c| cmdline(c).contains("mock-upstream"))
        .count();
    assert!(
        started.len() >= 7,
        "3 stores, 2 gateways, 2 upstreams: {started:?}"
    );
    assert_eq!(upstreams, 2, "{started:?}");
    assert!(run.terminate(), "the run did not exit on SIGTERM");
    let left: Vec<u32> = started.into_iter().filter(|&c| alive(c)).collect();
    for p in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(
        run.log_text().contains("stopped by a signal"),
        "{}",
        run.log_text()
    );
}
