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
