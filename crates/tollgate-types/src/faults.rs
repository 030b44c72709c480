//! Process-wide network and clock hooks, set once at startup from CLI flags and the identity
//! otherwise:
//!
//! - **dial rewrites** (`--dial-via advertised=actual`): whenever this process would connect to
//!   `advertised` (a peer's or the leader's advertised address), it connects to `actual` instead.
//!   For NAT and sidecars, and how the chaos harness puts a fault proxy on every single link.
//! - **clock skew** (`--clock-offset-ms`, `--clock-drift-ppm`, hidden flags): the wall clock the
//!   store leader stamps commands with and the gateway records usage with, and the monotonic
//!   clock the gateway measures leases with, run offset and/or fast or slow. Only the chaos
//!   harness sets these, to check the bounds under the clock assumptions of docs/design/quotas.md.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static DIAL_VIA: OnceLock<Vec<(String, String)>> = OnceLock::new();
static CLOCK: OnceLock<Clock> = OnceLock::new();

/// Largest drift accepted, in parts per million (a clock at most 10% fast or slow).
pub const DRIFT_PPM_MAX: i64 = 100_000;

/// Parses `advertised=actual,advertised=actual` (both `host:port`).
pub fn parse_dial_via(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not advertised=actual (host:port=host:port)"))?;
        for a in [from, to] {
            if a.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!("'{a}' in --dial-via is not host:port"));
            }
        }
        out.push((from.trim().to_owned(), to.trim().to_owned()));
    }
    Ok(out)
}

/// Installs the dial rewrites (once per process).
pub fn set_dial_via(map: Vec<(String, String)>) -> Result<(), String> {
    DIAL_VIA
        .set(map)
        .map_err(|_| "dial rewrites are already set".to_owned())
}

/// The address to connect to for `addr` (itself unless a rewrite names it).
pub fn dial_addr(addr: &str) -> &str {
    DIAL_VIA
        .get()
        .and_then(|m| m.iter().find(|(from, _)| from == addr))
        .map_or(addr, |(_, to)| to.as_str())
}

/// A clock offset (ms, either sign) and drift (ppm: positive runs fast).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skew {
    pub offset_ms: i64,
    pub drift_ppm: i64,
}

struct Clock {
    skew: Skew,
    base: Instant,
}

/// Installs a clock skew (once per process, before the clocks are read).
pub fn set_clock_skew(skew: Skew) -> Result<(), String> {
    if skew.drift_ppm.abs() > DRIFT_PPM_MAX {
        return Err(format!(
            "clock drift {} ppm is beyond ±{DRIFT_PPM_MAX}",
            skew.drift_ppm
        ));
    }
    CLOCK
        .set(Clock {
            skew,
            base: Instant::now(),
        })
        .map_err(|_| "the clock skew is already set".to_owned())
}

/// Drifted time since the skew was set, minus the real time: what drift adds (ms, either sign).
fn drift_ms(c: &Clock) -> i64 {
    let real = c.base.elapsed().as_millis() as i64;
    real.saturating_mul(c.skew.drift_ppm) / 1_000_000
}

/// Wall-clock milliseconds since the Unix epoch, skewed when a skew is set.
pub fn wall_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match CLOCK.get() {
        None => real,
        Some(c) => real.saturating_add_signed(c.skew.offset_ms.saturating_add(drift_ms(c))),
    }
}

/// The monotonic clock, running fast or slow when a drift is set (an offset means nothing here).
pub fn mono_now() -> Instant {
    match CLOCK.get() {
        Some(c) if c.skew.drift_ppm != 0 => {
            let real = c.base.elapsed();
            let scaled =
                real.as_nanos() as i128 * (1_000_000 + c.skew.drift_ppm as i128) / 1_000_000;
            c.base + Duration::from_nanos(scaled.max(0) as u64)
        }
        _ => Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_via_parses_and_rejects() {
        assert_eq!(
            parse_dial_via("127.0.0.1:1=127.0.0.1:2, a:3=b:4").expect("parse"),
            vec![
                ("127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()),
                ("a:3".to_owned(), "b:4".to_owned())
            ]
        );
        assert!(parse_dial_via("127.0.0.1:1").is_err());
        assert!(parse_dial_via("127.0.0.1:1=nope").is_err());
        assert!(parse_dial_via("").expect("empty").is_empty());
    }

    #[test]
    fn without_hooks_addresses_and_clocks_are_untouched() {
        // nothing in this test binary sets the hooks
        assert_eq!(dial_addr("127.0.0.1:9"), "127.0.0.1:9");
        let before = Instant::now();
        assert!(mono_now() >= before);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        assert!(wall_ms() >= wall);
    }
}
