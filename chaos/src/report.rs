//! The run's report: `report.json` for machines, `summary.txt` for people, `timeline.html` (an
//! inline SVG: faults, leader, throughput, refusals and errors per second), `history.jsonl`
//! (every attempt).

use crate::checker::Check;
use crate::cluster::Topology;
use crate::nemesis::{Applied, Planned};
use crate::workload::Attempt;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The leader as sampled once a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: u64,
    pub leader: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub attempts: u64,
    pub complete: u64,
    pub streams_complete: u64,
    pub rate_limited: u64,
    pub quota_exhausted: u64,
    /// 5xx answers and transport failures (no head, or a cut body).
    pub failed: u64,
    pub idempotent_replays: u64,
    pub faults_applied: u64,
    pub faults_skipped: u64,
    pub ledger_entries: u64,
    pub served_by_upstreams: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_s: f64,
    pub topology: Topology,
    pub replay: String,
    pub ok: bool,
    pub counts: Counts,
    pub checks: Vec<Check>,
    pub plan: Vec<Planned>,
    pub faults: Vec<Applied>,
    pub samples: Vec<Sample>,
    /// Where the data dirs and process logs are.
    pub cluster_dir: String,
}

pub fn counts(attempts: &[Attempt], faults: &[Applied]) -> Counts {
    let mut c = Counts {
        attempts: attempts.len() as u64,
        ..Counts::default()
    };
    for a in attempts {
        if a.complete {
            c.complete += 1;
            c.streams_complete += a.stream as u64;
        }
        match a.error.as_str() {
            "rate_limit_exceeded" => c.rate_limited += 1,
            "insufficient_quota" => c.quota_exhausted += 1,
            _ => {}
        }
        if a.status == 0 || a.status >= 500 || (a.status == 200 && !a.complete) {
            c.failed += 1;
        }
        c.idempotent_replays += a.replayed as u64;
    }
    c.faults_applied = faults.iter().filter(|f| f.ok).count() as u64;
    c.faults_skipped = faults.iter().filter(|f| !f.ok).count() as u64;
    c
}

pub fn write(dir: &Path, r: &Report, attempts: &[Attempt]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("summary.txt"), summary(r))?;
    std::fs::write(dir.join("timeline.html"), timeline_html(r, attempts))?;
    let mut h = String::new();
    for a in attempts {
        h.push_str(&serde_json::to_string(a)?);
        h.push('\n');
    }
    std::fs::write(dir.join("history.jsonl"), h)?;
    Ok(())
}

fn fault_label(a: &Applied) -> String {
    serde_json::to_value(&a.fault)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn summary(r: &Report) -> String {
    let c = &r.counts;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tollgate chaos: scenario {} seed {} — {} ({:.0} s)",
        r.scenario,
        r.seed,
        if r.ok { "PASS" } else { "FAIL" },
        r.duration_s
    );
    let _ = writeln!(
        s,
        "cluster: {} store nodes (+{} spare), {} gateways, {} upstreams",
        r.topology.stores, r.topology.spare_stores, r.topology.gateways, r.topology.upstreams
    );
    let _ = writeln!(
        s,
        "requests: {} attempts, {} complete ({} streams), {} rate limited, {} over budget, {} failed, {} idempotent replays",
        c.attempts,
        c.complete,
        c.streams_complete,
        c.rate_limited,
        c.quota_exhausted,
        c.failed,
        c.idempotent_replays
    );
    let _ = writeln!(
        s,
        "ledger: {} entries; upstreams served {} request ids",
        c.ledger_entries, c.served_by_upstreams
    );
    let _ = writeln!(
        s,
        "faults: {} applied, {} skipped",
        c.faults_applied, c.faults_skipped
    );
    for f in &r.faults {
        let _ = writeln!(
            s,
            "  {:>7.1}s – {:>7.1}s  {:<14} {}",
            f.at_ms as f64 / 1e3,
            f.healed_ms as f64 / 1e3,
            fault_label(f),
            f.note
        );
    }
    let _ = writeln!(s, "checks:");
    for ch in &r.checks {
        let _ = writeln!(
            s,
            "  [{}] {:<12} {} — {}",
            if ch.ok { "ok" } else { "FAIL" },
            ch.name,
            ch.what,
            ch.detail
        );
        for v in &ch.violations {
            let _ = writeln!(s, "        ✗ {v}");
        }
    }
    let _ = writeln!(s, "replay: {}", r.replay);
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Per-second series from the attempts: (complete, refused, failed) by second sent.
fn per_second(attempts: &[Attempt], secs: usize) -> Vec<(u32, u32, u32)> {
    let mut v = vec![(0u32, 0u32, 0u32); secs + 1];
    for a in attempts {
        let i = ((a.sent_ms / 1000) as usize).min(secs);
        if a.complete {
            v[i].0 += 1;
        } else if a.status == 429 {
            v[i].1 += 1;
        } else if a.status == 0 || a.status >= 500 || a.status == 200 {
            v[i].2 += 1;
        }
    }
    v
}

pub fn timeline_html(r: &Report, attempts: &[Attempt]) -> String {
    let secs = r.duration_s.ceil().max(1.0) as usize;
    let (w, left) = (1100.0f64, 120.0f64);
    let x = |ms: u64| left + (ms as f64 / 1e3) / secs as f64 * (w - left - 10.0);
    let series = per_second(attempts, secs);
    let ymax = series
        .iter()
        .map(|(a, b, c)| a.max(b).max(c))
        .max()
        .copied()
        .unwrap_or(1)
        .max(1) as f64;
    let lanes = r.faults.len().max(1) as f64;
    let fault_h = 14.0;
    let chart_top = 40.0 + lanes * (fault_h + 2.0) + 40.0;
    let chart_h = 200.0;
    let h = chart_top + chart_h + 80.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="monospace" font-size="11">"##
    );
    let _ = write!(
        svg,
        r##"<text x="10" y="20" font-size="14">{} seed {} — {}</text>"##,
        esc(&r.scenario),
        r.seed,
        if r.ok { "PASS" } else { "FAIL" }
    );
    // faults, one lane each
    for (i, f) in r.faults.iter().enumerate() {
        let y = 40.0 + i as f64 * (fault_h + 2.0);
        let (x0, x1) = (x(f.at_ms), x(f.healed_ms).max(x(f.at_ms) + 2.0));
        let color = if f.ok { "#d9534f" } else { "#aaa" };
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{fault_h}" fill="{color}"><title>{}</title></rect><text x="4" y="{:.1}">{}</text>"##,
            x1 - x0,
            esc(&f.note),
            y + 11.0,
            esc(&fault_label(f))
        );
    }
    // leader band
    let ly = chart_top - 30.0;
    let _ = write!(svg, r##"<text x="4" y="{:.1}">leader</text>"##, ly + 11.0);
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#ff9da7", "#9c755f",
        "#bab0ac",
    ];
    for (i, s) in r.samples.iter().enumerate() {
        let next = r.samples.get(i + 1).map_or(s.t_ms + 1000, |n| n.t_ms);
        let color = s
            .leader
            .map_or("#fff", |l| palette[(l as usize) % palette.len()]);
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{ly:.1}" width="{:.1}" height="14" fill="{color}" stroke="#ccc" stroke-width="0.2"><title>{:.0}s leader {}</title></rect>"##,
            x(s.t_ms),
            (x(next) - x(s.t_ms)).max(0.5),
            s.t_ms as f64 / 1e3,
            s.leader.map_or("none".into(), |l| l.to_string())
        );
    }
    // request series
    let y = |v: u32| chart_top + chart_h - v as f64 / ymax * chart_h;
    for (idx, (name, color)) in [
        ("complete/s", "#59a14f"),
        ("429/s", "#edc948"),
        ("failed/s", "#e15759"),
    ]
    .iter()
    .enumerate()
    {
        let pts: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(s, t)| {
                let v = [t.0, t.1, t.2][idx];
                format!("{:.1},{:.1}", x(s as u64 * 1000), y(v))
            })
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/><text x="4" y="{:.1}" fill="{color}">{name}</text>"##,
            pts.join(" "),
            chart_top + 14.0 * (idx as f64 + 1.0)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><text x="{left}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}">{secs} s</text><text x="4" y="{:.1}">max {ymax:.0}/s</text>"##,
        chart_top + chart_h,
        w - 10.0,
        chart_top + chart_h,
        chart_top + chart_h + 14.0,
        w - 40.0,
        chart_top + chart_h + 14.0,
        chart_top + chart_h + 30.0,
    );
    svg.push_str("</svg>");
    let mut checks = String::new();
    for c in &r.checks {
        let _ = write!(
            checks,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.ok { "ok" } else { "<b>FAIL</b>" },
            esc(&c.name),
            esc(&c.detail),
            esc(&c.violations.join("; "))
        );
    }
    format!(
        "<!doctype html><meta charset=utf-8><title>tollgate chaos {}</title><body style=\"font-family:sans-serif\">{svg}<table border=1 cellpadding=4 style=\"border-collapse:collapse;font-size:12px\"><tr><th></th><th>check</th><th>numbers</th><th>violations</th></tr>{checks}</table><pre>{}</pre></body>",
        esc(&r.scenario),
        esc(&summary(r))
    )
}
